"""Rank 0's error report under torchrun when torchrun's SIGTERM arrives (gradcheck_cli.distributed): the
handler writes the report without importing anything, and does nothing once the rank is already ending
by itself (writing its own report). No torchrun here: the handler and its guards are called directly."""

from __future__ import annotations

import subprocess
import sys
import textwrap


def _run(code: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True,
                          timeout=120)


def test_a_rank_already_ending_ignores_sigterm():
    r = _run("""
        from gradcheck_cli import distributed
        calls = []
        distributed.on_terminated = lambda: calls.append(1)
        distributed.ending()
        distributed._terminated()          # returns: the rank ends by itself after its report
        print("returned", calls)
    """)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "returned []"


def test_sigterm_writes_the_report_then_exits_3_and_says_why_when_it_cannot():
    r = _run("""
        from gradcheck_cli import distributed
        distributed.on_terminated = lambda: print("report written", flush=True)
        distributed._terminated()
        print("not reached")
    """)
    assert r.returncode == 3 and r.stdout.strip() == "report written", (r.stdout, r.stderr)
    r = _run("""
        from gradcheck_cli import distributed
        def broken():
            raise ImportError("cannot import name 'x' from partially initialized module")
        distributed.on_terminated = broken
        distributed._terminated()
    """)
    assert r.returncode == 3
    assert "the error report could not be written after SIGTERM: ImportError" in r.stderr


def test_preload_imports_what_the_handler_would_need():
    r = _run("""
        import sys
        from gradcheck_cli import report
        assert "gradcheck_cli.report.json_report" not in sys.modules
        report.preload({"json", "junit"})
        print(all(m in sys.modules for m in ("gradcheck_cli.report.json_report", "gradcheck_cli.report.junit",
                                             "gradcheck_cli.report.view")),
              "gradcheck_cli.report.html" in sys.modules)
    """)
    assert r.returncode == 0, r.stderr
    assert r.stdout.split() == ["True", "False"]


def test_peer_lost_survives_an_exception_whose_str_raises():
    """A user's exception whose __str__ raises must not break the rank's error path (its report, exit 3)."""
    from gradcheck_cli import distributed

    class Odd(Exception):
        def __str__(self):
            raise RuntimeError("no text")

    assert distributed.peer_lost(Odd()) is False
