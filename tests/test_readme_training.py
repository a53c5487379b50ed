"""The README's "In your training loop" examples run as written (each in a fresh interpreter, in a
temporary directory), print what their comments say, and write their reports."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def section_examples() -> list[str]:
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    section = text.split("## In your training loop", 1)[1].split("\n## ", 1)[0]
    return re.findall(r"```python\n(.*?)```", section, flags=re.S)


def example(marker: str) -> str:
    found = [code for code in section_examples() if marker in code]
    assert len(found) == 1, f"expected one README example using {marker}"
    return found[0]


def expected_output(code: str) -> str:
    """The comment after the last print(...): what the example prints."""
    last = [line for line in code.splitlines() if line.startswith("print(")][-1]
    return last.rsplit("#", 1)[1].strip()


def run_example(code: str, tmp_path: Path) -> str:
    script = tmp_path / "example.py"
    script.write_text(code, encoding="utf-8")
    out = subprocess.run([sys.executable, str(script)], cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    return out.stdout.strip().splitlines()[-1]


def test_the_section_has_one_example_per_integration():
    assert len(section_examples()) == 3


@pytest.mark.slow
def test_readme_plain_loop_example(tmp_path):
    code = example("gradcheck_cli.watch(")
    assert run_example(code, tmp_path) == expected_output(code)
    assert json.loads((tmp_path / "gradcheck.json").read_text())["summary"]["verdict"] == "pass"
    assert "<html" in (tmp_path / "gradcheck.html").read_text().lower()


@pytest.mark.slow
def test_readme_plain_loop_example_with_a_huge_learning_rate_stops(tmp_path):
    code = example("gradcheck_cli.watch(").replace("lr=0.1", "lr=1e5")
    script = tmp_path / "example.py"
    script.write_text(code, encoding="utf-8")
    out = subprocess.run([sys.executable, str(script)], cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert out.returncode == 1
    assert "GradcheckStop: gradcheck stopped training at step" in out.stderr
    assert "error GC103 non-finite" in out.stderr
    assert json.loads((tmp_path / "gradcheck.json").read_text())["summary"]["verdict"] == "fail"


@pytest.mark.slow
def test_readme_lightning_example(tmp_path):
    pytest.importorskip("lightning")
    code = example("integrations.lightning")
    assert run_example(code, tmp_path) == expected_output(code)
    assert (tmp_path / "gradcheck.json").exists()


@pytest.mark.slow
def test_readme_trainer_example(tmp_path):
    pytest.importorskip("transformers")
    pytest.importorskip("accelerate")
    code = example("integrations.transformers")
    assert run_example(code, tmp_path) == expected_output(code)
    assert json.loads((tmp_path / "gradcheck.json").read_text())["summary"]["verdict"] == "pass"
