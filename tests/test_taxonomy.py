"""The README's error taxonomy, row by row: each case runs the real CLI and checks the exit code, the
one-line message (what is wrong, what to do) and that no traceback reaches the user. With --output, a
failed run still leaves a schema-valid JSON report with an `error` object."""
from __future__ import annotations

import json
import pickle
import textwrap
from pathlib import Path

import pytest
from typer.testing import CliRunner

from gradcheck_cli.cli import app

torch = pytest.importorskip("torch")
runner = CliRunner()

GOOD = """
import torch
import torch.nn as nn

class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(10, 4)
    def forward(self, x):
        return self.fc(x)

def build():
    return Net()
"""


class Payload:
    """Unpickling this would create a file: the batch loader must refuse it without executing it."""

    def __init__(self, target: str):
        self.target = target

    def __reduce__(self):
        return (Path.touch, (Path(self.target),))


def files(tmp: Path) -> dict[str, Path]:
    def w(name: str, text: str) -> Path:
        p = tmp / name
        p.write_text(textwrap.dedent(text))
        return p

    w("good.py", GOOD)
    w("syntax.py", "def build(:\n    pass\n")
    w("importerr.py", "import not_a_real_module_xyz\n")
    w("factories.py", """
        import time
        import torch
        import torch.nn as nn

        def needs(width, depth):
            return nn.Linear(width, depth)

        def not_module():
            return 42

        def raises():
            raise RuntimeError("cannot build")

        class Oom(nn.Module):
            def __init__(self):
                super().__init__()
                self.fc = nn.Linear(10, 4)
            def forward(self, x):
                raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB")

        class Hang(nn.Module):
            def __init__(self):
                super().__init__()
                self.fc = nn.Linear(10, 4)
            def forward(self, x):
                while True:
                    time.sleep(0.01)

        class IntOut(nn.Module):
            def __init__(self):
                super().__init__()
                self.fc = nn.Linear(10, 4)
            def forward(self, x):
                return self.fc(x).argmax(-1)

        class Detached(nn.Module):
            def __init__(self):
                super().__init__()
                self.fc = nn.Linear(10, 4)
            def forward(self, x):
                return self.fc(x).detach()

        class Frozen(nn.Module):
            def __init__(self):
                super().__init__()
                self.fc = nn.Linear(10, 4).requires_grad_(False)
            def forward(self, x):
                return self.fc(x)

        def nan_batch():
            x = torch.randn(8, 10)
            x[0, 0] = float("nan")
            return x

        def text_batch():
            return "not a batch"

        def per_example_loss(output, target):
            return (output - output.mean()).pow(2).mean(-1)
    """)
    w("bad_yaml.yaml", "steps: 3\nrules: [unclosed\n")
    w("unknown_key.yaml", "stepz: 3\n")
    w("bad_value.yaml", "steps: 0\n")
    w("unknown_rule.yaml", "rules:\n  dead-relu: {fraction: 0.4}\n")
    (tmp / "corrupt.pt").write_bytes(b"\x00not a torch file")
    torch.save({"x": Payload(str(tmp / "PWNED"))}, tmp / "evil.pt", pickle_module=pickle)
    (tmp / "a_directory").mkdir()
    return {}


# (case, args, exit code, substrings of the one-line message)
CASES = [
    # model spec
    ("model file missing", ["missing.py:build"], 2, ["file not found: missing.py"]),
    ("module missing", ["no_such_pkg_xyz.mod:build"], 2, ["module not found: no_such_pkg_xyz.mod"]),
    ("attribute missing", ["good.py:biuld"], 2, ["has no attribute 'biuld'", "did you mean build"]),
    ("spec without :NAME", ["good.py"], 2, ["bad model spec 'good.py'", "file.py:NAME"]),
    ("syntax error in the user's file", ["syntax.py:build"], 3, ["import failed in", "syntax.py:1", "SyntaxError"]),
    ("import error in the user's file", ["importerr.py:build"], 3, ["import failed in", "importerr.py:1",
                                                                     "not_a_real_module_xyz"]),
    ("factory needs arguments", ["factories.py:needs"], 2, ["needs arguments (width, depth)",
                                                            "zero-argument factory"]),
    ("factory returns a non-module", ["factories.py:not_module"], 2, ["returned int, not an nn.Module"]),
    ("factory raises", ["factories.py:raises"], 3, ["build failed in", "factories.py", "cannot build"]),
    # batches
    ("batch file missing", ["good.py:build", "--batch", "missing.pt"], 2, ["batch file not found: missing.pt"]),
    ("corrupt batch file", ["good.py:build", "--batch", "corrupt.pt"], 2, ["cannot read batch file corrupt.pt",
                                                                           "not a valid torch.save file"]),
    ("pickled object in batch file", ["good.py:build", "--batch", "evil.pt"], 2, ["refused batch file evil.pt",
                                                                                  "weights_only=True"]),
    ("batch of the wrong type", ["good.py:build", "--batch", "factories.py:text_batch"], 2,
     ["a batch must be a tensor", "got str"]),
    ("shape string that does not parse", ["good.py:build", "--input-shape", "8,x"], 2,
     ["bad --input-shape '8,x'", "e.g. 8,3,32,32"]),
    ("input shape that does not fit", ["good.py:build", "--input-shape", "8,7"], 3,
     ["forward failed in `fc` (Linear)", "8x7", "(8, 7)", "--input-shape"]),
    # loss
    ("integer model output", ["factories.py:IntOut"], 2, ["integer tensor", "carries no gradient"]),
    ("detached model output", ["factories.py:Detached"], 2, ["does not require grad", "detached"]),
    ("no trainable parameters", ["factories.py:Frozen"], 2, ["no trainable parameters"]),
    # config
    ("YAML syntax error", ["good.py:build", "--config", "bad_yaml.yaml"], 2,
     ["bad_yaml.yaml: YAML syntax error at line", "column"]),
    ("unknown config key", ["good.py:build", "--config", "unknown_key.yaml"], 2,
     ["unknown_key.yaml: key 'stepz'", "did you mean 'steps'"]),
    ("out-of-range config value", ["good.py:build", "--config", "bad_value.yaml"], 2,
     ["bad_value.yaml: key 'steps'", "at least 1"]),
    ("unknown rule id", ["good.py:build", "--config", "unknown_rule.yaml"], 2,
     ["key 'rules.dead-relu': unknown rule", "did you mean 'dead-relus'"]),
    ("config file missing", ["good.py:build", "--config", "nope.yaml"], 2, ["config file not found: nope.yaml"]),
    # output
    ("output directory missing", ["good.py:build", "-o", "no/such/dir/r.json"], 2,
     ["cannot write no/such/dir/r.json", "does not exist"]),
    ("output path is a directory", ["good.py:build", "-o", "a_directory"], 2, ["it is a directory"]),
    # runtime
    ("out of memory", ["factories.py:Oom"], 3, ["forward failed in", "out of memory", "smaller batch"]),
    ("--steps 0", ["good.py:build", "--steps", "0"], 2, ["--steps", "must be at least 1"]),
    ("--steps negative", ["good.py:build", "--steps", "-2"], 2, ["--steps"]),
    ("forward that never returns", ["factories.py:Hang", "--timeout", "1"], 3,
     ["forward failed in", "did not finish within --timeout 1 s"]),
    ("--device cuda without CUDA", ["good.py:build", "--device", "cuda"], 2, ["CUDA is not available"]),
]


@pytest.fixture
def workdir(tmp_path, monkeypatch):
    files(tmp_path)
    monkeypatch.chdir(tmp_path)
    return tmp_path


@pytest.mark.parametrize("case,args,code,needles", CASES, ids=[c[0] for c in CASES])
def test_taxonomy(workdir, case, args, code, needles):
    if "--device" in args and torch.cuda.is_available():
        pytest.skip("CUDA is available here")
    r = runner.invoke(app, ["check", *args])
    assert r.exit_code == code, (case, r.exit_code, r.stdout, r.stderr)
    assert "Traceback" not in r.stdout + r.stderr
    lines = [l for l in r.stderr.splitlines() if l.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), r.stderr
    for n in needles:
        assert n in lines[0], (n, lines[0])
    assert not (workdir / "PWNED").exists(), "the pickle payload ran"


@pytest.mark.parametrize("case,args,code,needles", [c for c in CASES if c[2] in (2, 3) and "-o" not in c[1]
                                                    and "--steps" not in c[1]], ids=lambda c: str(c)[:40])
def test_failed_runs_still_write_a_json_report(workdir, case, args, code, needles):
    if "--device" in args and torch.cuda.is_available():
        pytest.skip("CUDA is available here")
    jsonschema = pytest.importorskip("jsonschema")
    schema = json.loads((Path(__file__).resolve().parent.parent / "gradcheck_cli/report/schema.json").read_text())
    r = runner.invoke(app, ["check", *args, "--format", "json", "--output", "report.json"])
    assert r.exit_code == code
    doc = json.loads((workdir / "report.json").read_text())
    assert not list(jsonschema.Draft202012Validator(schema).iter_errors(doc))
    assert doc["error"]["exit_code"] == code and doc["summary"]["exit_code"] == code
    assert doc["error"]["type"] == ("user-code" if code == 3 else "input")
    assert doc["error"]["message"]
    assert needles[-1] in json.dumps(doc["error"]), (needles[-1], doc["error"])   # message, where or hint
    if code == 3:
        assert doc["error"]["phase"] in ("import", "build", "batch", "forward", "loss", "backward")
    assert not list(workdir.glob(".report.json.*.tmp")), "atomic write left a temporary file"


def test_nan_in_the_inputs_is_a_finding_that_names_the_input(workdir):
    r = runner.invoke(app, ["check", "good.py:build", "--batch", "factories.py:nan_batch", "-f", "json"])
    assert r.exit_code == 1, r.stderr
    doc = json.loads(r.stdout)
    (f,) = [f for f in doc["findings"] if f["rule"] == "non-finite" and f["layer"] is None]
    assert "input batch itself contains 1 NaN/Inf" in f["message"]


def test_non_scalar_loss_is_reduced_with_mean_and_said(workdir):
    r = runner.invoke(app, ["check", "good.py:build", "--loss", "factories.py:per_example_loss", "-f", "json"])
    assert r.exit_code in (0, 1), r.stderr
    doc = json.loads(r.stdout)
    assert any("not a scalar" in n and "mean()" in n for n in doc["notes"])
