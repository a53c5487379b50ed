"""The `gradcheck` command pauses Python's cyclic garbage collector while it imports torch and itself
(gradcheck_cli/startup.py): the user's code must still run with the collector on, and a library user's
process must keep its collector as it was."""

from __future__ import annotations

import gc
import subprocess
import sys
import textwrap

import pytest


MODEL = textwrap.dedent("""
    import gc, sys
    import torch.nn as nn

    print("gc at import", gc.isenabled(), file=sys.stderr)

    def build():
        print("gc in build", gc.isenabled(), "frozen", gc.get_freeze_count() > 0, file=sys.stderr)
        return nn.Sequential(nn.Linear(4, 4), nn.ReLU(), nn.Linear(4, 2))
""")


@pytest.mark.parametrize("entry", ["module", "script"])
def test_user_code_runs_with_the_collector_on(tmp_path, entry):
    (tmp_path / "m.py").write_text(MODEL)
    argv = ["check", f"{tmp_path / 'm.py'}:build", "--input-shape", "8,4", "--device", "cpu"]
    if entry == "module":
        cmd = [sys.executable, "-m", "gradcheck_cli", *argv]
    else:   # the installed console script (pyproject: gradcheck = "gradcheck_cli.startup:main")
        from conftest import console_script

        cmd = [str(console_script()), *argv]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=180)
    assert r.returncode == 0, r.stderr
    assert "gc at import True" in r.stderr
    # the startup's imports were frozen (so the collector had been paused and was resumed), and the
    # user's build runs with it enabled
    assert "gc in build True frozen True" in r.stderr


def test_console_script_entry_point_is_the_startup():
    from pathlib import Path

    text = (Path(__file__).resolve().parent.parent / "pyproject.toml").read_text()
    assert 'gradcheck = "gradcheck_cli.startup:main"' in text


def test_library_use_leaves_the_collector_alone():
    """Importing the CLI module or calling the API does not pause (or freeze) anything."""
    code = textwrap.dedent("""
        import gc
        import torch.nn as nn
        import gradcheck_cli.cli
        from gradcheck_cli import check, startup
        startup.resume()   # a no-op: nothing was paused
        r = check(nn.Sequential(nn.Linear(4, 4), nn.ReLU(), nn.Linear(4, 2)), input_shape=(8, 4), device="cpu")
        print(gc.isenabled(), gc.get_freeze_count(), r.exit_code)
    """)
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=180)
    assert r.returncode == 0, r.stderr
    assert r.stdout.split() == ["True", "0", "0"]


def test_pause_and_resume_are_scoped():
    from gradcheck_cli import startup

    was = gc.isenabled()
    frozen = gc.get_freeze_count()
    try:
        gc.enable()
        startup.pause()
        assert not gc.isenabled()
        startup.resume()
        assert gc.isenabled()
        startup.resume()   # idempotent
        assert gc.isenabled()
        gc.disable()   # a caller that disabled it itself: resume() must not turn it on
        startup.pause()
        startup.resume()
        assert not gc.isenabled()
    finally:
        gc.unfreeze()   # this test process froze its objects once: put them back
        assert gc.get_freeze_count() == 0 or frozen
        (gc.enable if was else gc.disable)()
