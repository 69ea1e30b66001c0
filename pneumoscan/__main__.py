"""`python -m pneumoscan` (what torchrun launches: `torchrun ... -m pneumoscan train ...`)."""

import sys

from .cli import main

sys.exit(main())
