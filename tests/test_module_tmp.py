"""The suite's own disk use: a module's fixture folders go when its tests pass and stay when one fails."""

from __future__ import annotations

from pathlib import Path

import pytest

pytest_plugins = ["pytester"]

MODULE = """
import pytest

@pytest.fixture(scope="module")
def built(module_tmp):
    folder = module_tmp("built")
    (folder / "weights.bin").write_bytes(bytes(1000))
    return folder

def test_reads(built, pytestconfig):
    (pytestconfig.rootpath / "{name}.path").write_text(str(built))
    assert (built / "weights.bin").stat().st_size == 1000

def test_{outcome}(built):
    assert {outcome!r} == "passes"
"""


def test_a_modules_folders_go_when_its_tests_pass_and_stay_when_one_fails(pytester: pytest.Pytester) -> None:
    pytester.makeconftest(Path(__file__).with_name("conftest.py").read_text())
    pytester.makepyfile(test_a_passing=MODULE.format(name="passing", outcome="passes"),
                        test_b_failing=MODULE.format(name="failing", outcome="fails"))
    result = pytester.runpytest_inprocess("-p", "no:xdist")
    result.assert_outcomes(passed=3, failed=1)
    passing, failing = (Path((pytester.path / f"{name}.path").read_text()) for name in ("passing", "failing"))
    assert not passing.exists()
    assert (failing / "weights.bin").stat().st_size == 1000
