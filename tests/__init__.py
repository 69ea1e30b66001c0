"""The test suite as one package: pytest imports each test module as ``tests.NAME``, the name under which the modules
that share another's fixtures and helpers import it (``from tests import test_page``). Without this file a module
was imported twice, once under each name, its asserts rewritten and its body run twice a worker, and the
conftest's record of the shared fixtures had a second copy that the check after each test never read."""
