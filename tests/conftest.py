"""Shared fixtures for the gradcheck test suite.

Everything here is cheap: no torch import at collection time (test_rules / test_config must run
without torch), tiny user files written to tmp_path.
"""

from __future__ import annotations

import tempfile
import textwrap
from pathlib import Path
from typing import Callable

import pytest

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = ROOT / "examples"

try:   # keep Hypothesis' example database and caches out of the repository
    from hypothesis import settings as _hyp_settings
    from hypothesis.configuration import set_hypothesis_home_dir

    set_hypothesis_home_dir(str(Path(tempfile.gettempdir()) / "gradcheck-tests-hypothesis"))
    _hyp_settings.register_profile("gradcheck", database=None, deadline=None)
    _hyp_settings.load_profile("gradcheck")
except ImportError:   # pragma: no cover - hypothesis is a test dependency
    pass


# The width every CLI test sees: Rich reads COLUMNS (and LINES) when a console is created, and a test's
# output must not depend on the terminal that runs the suite. Subprocesses inherit it from os.environ.
PINNED_COLUMNS = "100"


@pytest.fixture(autouse=True)
def _pinned_terminal(monkeypatch):
    monkeypatch.setenv("COLUMNS", PINNED_COLUMNS)
    monkeypatch.setenv("LINES", "50")
    monkeypatch.delenv("GITHUB_ACTIONS", raising=False)
    monkeypatch.delenv("GITHUB_STEP_SUMMARY", raising=False)
    monkeypatch.delenv("NO_COLOR", raising=False)
    monkeypatch.delenv("FORCE_COLOR", raising=False)


def console_script(name: str = "gradcheck") -> Path:
    """The console script installed beside this interpreter (not whatever PATH finds first)."""
    import sys

    folder = Path(sys.executable).parent
    for candidate in (folder / name, folder / f"{name}.exe", folder / "Scripts" / f"{name}.exe"):
        if candidate.exists():
            return candidate
    raise AssertionError(f"the {name} console script is not installed beside {sys.executable}; "
                         "install the package (pip install -e .) into this environment")


@pytest.fixture
def write_file(tmp_path: Path) -> Callable[[str, str], Path]:
    """write_file("net.py", source) -> absolute path of a dedented file in tmp_path."""

    def _write(name: str, source: str) -> Path:
        path = tmp_path / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(textwrap.dedent(source).lstrip("\n"), encoding="utf-8")
        return path

    return _write


@pytest.fixture
def examples_dir() -> Path:
    return EXAMPLES
