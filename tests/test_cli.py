"""The real command line: exit codes, one-line errors, JSON output, rules/explain, batches."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from gradcheck_cli import __version__
from gradcheck_cli.cli import app

from conftest import EXAMPLES, ROOT

runner = CliRunner()

RULE_IDS = ["vanishing-gradients", "exploding-gradients", "non-finite", "saturated-activations", "dead-relus",
            "unused-parameters", "initial-loss"]

# A small healthy model (He init, no dead units to speak of) and a few broken user files.
MODEL_PY = """
import torch
import torch.nn as nn


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(10, 16)
        self.act = nn.Tanh()
        self.out = nn.Linear(16, 3)

    def forward(self, x):
        return self.out(self.act(self.fc(x)))


def build():
    return Net()


def needs_args(width):
    return Net()


def boom():
    raise ValueError("factory exploded on purpose")


def not_a_module():
    return 42


NUMBER = 7


class Frozen(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(10, 3).requires_grad_(False)

    def forward(self, x):
        return self.fc(x)
"""


def ex(spec: str) -> str:
    return str(EXAMPLES / spec)


@pytest.fixture(autouse=True)
def _isolated_cwd(tmp_path, monkeypatch):
    # No gradcheck.yaml from the repository (or anywhere else) may leak into these runs.
    monkeypatch.chdir(tmp_path)


@pytest.fixture
def model_py(write_file) -> Path:
    return write_file("usermodel.py", MODEL_PY)


def invoke(*args: str):
    return runner.invoke(app, list(args))


def check(*args: str):
    return invoke("check", *args)


def assert_clean_error(result, code: int, *needles: str) -> str:
    """Exit `code`, no traceback anywhere, exactly one stderr line starting with 'error:'."""
    assert result.exit_code == code, (result.exit_code, result.stdout, result.stderr)
    assert "Traceback" not in result.stdout and "Traceback" not in result.stderr
    assert result.exception is None or isinstance(result.exception, SystemExit)
    lines = [l for l in result.stderr.splitlines() if l.strip()]
    assert len(lines) == 1, result.stderr
    line = lines[0]
    assert line.startswith("error:"), line
    for n in needles:
        assert n in line, (n, line)
    return line


# --------------------------------------------------------------------------------------------------------
# Exit codes 0 and 1
# --------------------------------------------------------------------------------------------------------

def test_healthy_example_exits_0():
    r = check(ex("healthy_mlp.py:build"))
    assert r.exit_code == 0, r.stderr
    assert "PASS" in r.stdout and "exit 0" in r.stdout
    assert "error:" not in r.stderr
    assert "\x1b[" not in r.stdout, "no colour codes when the output is not a terminal"


def test_vanishing_example_exits_1():
    r = check(ex("vanishing_sigmoid_mlp.py:build"))
    assert r.exit_code == 1
    assert "GC101" in r.stdout and "vanishing-gradients" in r.stdout and "FAIL" in r.stdout


def test_fail_on_never_gives_0_on_a_broken_model():
    r = check(ex("vanishing_sigmoid_mlp.py:build"), "--fail-on", "never")
    assert r.exit_code == 0
    assert "GC101" in r.stdout, "findings are still reported"


def test_fail_on_error_ignores_warnings():
    r = check(ex("saturated_tanh.py:build"), "--fail-on", "error")
    assert r.exit_code == 0
    assert "GC104" in r.stdout and "WARNING" in r.stdout
    # ... and the same model fails at the default threshold (warning).
    assert check(ex("saturated_tanh.py:build")).exit_code == 1


def test_fail_on_error_fails_on_errors():
    r = check(ex("vanishing_sigmoid_mlp.py:build"), "--fail-on", "error")
    assert r.exit_code == 1 and "ERROR" in r.stdout


def test_fail_on_info_fails_on_info_findings():
    # The healthy LSTM gets an informational through-time finding (gated cell): fine by default, not at info.
    assert check(ex("healthy_lstm.py:build")).exit_code == 0
    assert check(ex("healthy_lstm.py:build"), "--fail-on", "info").exit_code == 1


def test_config_file_in_cwd_is_used_and_flags_win(tmp_path):
    (tmp_path / "gradcheck.yaml").write_text("fail_on: never\n")
    assert check(ex("vanishing_sigmoid_mlp.py:build")).exit_code == 0
    assert check(ex("vanishing_sigmoid_mlp.py:build"), "--fail-on", "warning").exit_code == 1


def test_config_can_disable_a_rule(tmp_path):
    cfg = tmp_path / "cfg.yaml"
    cfg.write_text("rules:\n  vanishing-gradients: false\n")
    r = check(ex("vanishing_sigmoid_mlp.py:build"), "--config", str(cfg))
    assert r.exit_code == 0 and "GC101" not in r.stdout


def test_config_severity_override(tmp_path):
    cfg = tmp_path / "cfg.yaml"
    cfg.write_text("rules:\n  dead-relus: {severity: info}\n  unused-parameters: false\n")
    r = check(ex("dead_relu.py:build"), "--config", str(cfg), "-f", "json")
    assert r.exit_code == 0
    doc = json.loads(r.stdout)
    assert [(f["rule"], f["severity"]) for f in doc["findings"]] == [("dead-relus", "info")]


# --------------------------------------------------------------------------------------------------------
# Exit code 2: usage, configuration, input
# --------------------------------------------------------------------------------------------------------

def test_missing_file(tmp_path):
    assert_clean_error(check(str(tmp_path / "nofile.py") + ":build"), 2, "not found", "nofile.py")


def test_spec_without_name(model_py):
    assert_clean_error(check(str(model_py)), 2, "bad model spec", "NAME")


def test_missing_attribute_lists_close_matches(model_py):
    line = assert_clean_error(check(f"{model_py}:buidl"), 2, "'buidl'")
    assert "did you mean" in line and "build" in line


@pytest.mark.parametrize("shape", ["8,x", "8,0", "", "8,-3"])
def test_bad_input_shape(model_py, shape):
    assert_clean_error(check(f"{model_py}:build", f"--input-shape={shape}"), 2, "--input-shape")


def test_factory_needing_arguments(model_py):
    assert_clean_error(check(f"{model_py}:needs_args"), 2, "width")


@pytest.mark.parametrize("name", ["not_a_module", "NUMBER"])
def test_not_a_module(model_py, name):
    assert_clean_error(check(f"{model_py}:{name}"), 2, "nn.Module")


def test_no_trainable_parameters(model_py):
    assert_clean_error(check(f"{model_py}:Frozen"), 2, "trainable")


def test_unknown_loss_name(model_py):
    assert_clean_error(check(f"{model_py}:build", "--loss", "hinge"), 2, "hinge", "cross-entropy")


def test_missing_batch_file(model_py, tmp_path):
    assert_clean_error(check(f"{model_py}:build", "--batch", str(tmp_path / "nope.pt")), 2, "nope.pt")


def test_corrupt_pt_batch(model_py, tmp_path):
    bad = tmp_path / "corrupt.pt"
    bad.write_bytes(b"this is not a torch file\x00\x01\x02")
    assert_clean_error(check(f"{model_py}:build", "--batch", str(bad)), 2, "batch file", "corrupt.pt")


def test_truncated_pt_batch(model_py, tmp_path):
    import torch

    good = tmp_path / "good.pt"
    torch.save((torch.randn(4, 10), torch.randint(0, 3, (4,))), good)
    cut = tmp_path / "cut.pt"
    cut.write_bytes(good.read_bytes()[:200])
    assert_clean_error(check(f"{model_py}:build", "--batch", str(cut)), 2, "batch file", "cut.pt")


class _Payload:
    """Unpickling this runs code: open(<marker>, "w") creates a file."""

    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self):
        return (open, (self.marker, "w"))


def test_pickled_object_in_pt_is_refused_and_never_executed(model_py, tmp_path):
    import torch

    marker = tmp_path / "PWNED"
    evil = tmp_path / "evil.pt"
    torch.save({"x": torch.randn(4, 10), "payload": _Payload(str(marker))}, evil)
    assert not marker.exists()
    r = check(f"{model_py}:build", "--batch", str(evil))
    assert_clean_error(r, 2, "batch file", "evil.pt", "weights_only")
    assert not marker.exists(), "the pickle payload ran: the batch file was not loaded with weights_only=True"
    # The payload is real: an unrestricted load does run it (so the assertion above means something).
    torch.load(evil, weights_only=False)
    assert marker.exists()


def test_npy_with_object_array_is_refused(model_py, tmp_path):
    np = pytest.importorskip("numpy")
    p = tmp_path / "obj.npy"
    np.save(p, np.array([{"a": 1}], dtype=object), allow_pickle=True)
    assert_clean_error(check(f"{model_py}:build", "--batch", str(p)), 2, "batch file", "obj.npy")


def test_npz_with_object_array_is_refused(model_py, tmp_path):
    np = pytest.importorskip("numpy")
    p = tmp_path / "obj.npz"
    np.savez(p, x=np.array([{"a": 1}], dtype=object))
    assert_clean_error(check(f"{model_py}:build", "--batch", str(p)), 2, "batch file", "obj.npz")


def test_corrupt_npz(model_py, tmp_path):
    p = tmp_path / "bad.npz"
    p.write_bytes(b"PK\x03\x04 definitely not a zip archive")
    assert_clean_error(check(f"{model_py}:build", "--batch", str(p)), 2, "batch file", "bad.npz")


def test_unsupported_batch_suffix(model_py, tmp_path):
    p = tmp_path / "batch.csv"
    p.write_text("1,2,3\n")
    assert_clean_error(check(f"{model_py}:build", "--batch", str(p)), 2)


def test_bad_config_file(model_py, tmp_path):
    cfg = tmp_path / "bad.yaml"
    cfg.write_text("stepz: 3\n")
    assert_clean_error(check(f"{model_py}:build", "--config", str(cfg)), 2, "bad.yaml", "'stepz'", "'steps'")


def test_bad_discovered_config_file(model_py, tmp_path):
    (tmp_path / "gradcheck.yaml").write_text("rules:\n  dead-relus: {severity: loud}\n")
    assert_clean_error(check(f"{model_py}:build"), 2, "gradcheck.yaml", "rules.dead-relus.severity")


def test_config_steps_zero(model_py, tmp_path):
    cfg = tmp_path / "c.yaml"
    cfg.write_text("steps: 0\n")
    assert_clean_error(check(f"{model_py}:build", "--config", str(cfg)), 2, "'steps'", "at least 1")


def test_device_cuda_without_cuda(model_py):
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    assert_clean_error(check(f"{model_py}:build", "--device", "cuda"), 2, "CUDA")


def test_steps_zero_is_a_usage_error(model_py):
    r = check(f"{model_py}:build", "--steps", "0")
    assert r.exit_code == 2
    assert "Traceback" not in r.stdout + r.stderr
    assert "--steps" in r.stderr


@pytest.mark.parametrize("args", [["--steps", "0"], ["--format", "xml"]])
def test_click_usage_errors_are_one_error_line(model_py, args):
    assert_clean_error(check(f"{model_py}:build", *args), 2)


def test_output_in_missing_directory(model_py, tmp_path):
    target = tmp_path / "no" / "such" / "dir" / "report.json"
    assert_clean_error(check(f"{model_py}:build", "-f", "json", "--output", str(target)), 2, "does not exist")
    assert not target.parent.exists()


def test_batch_generator_runs_out(model_py, write_file):
    src = write_file("gen.py", """
        import torch
        def two():
            for _ in range(2):
                yield torch.randn(4, 10)
    """)
    assert_clean_error(check(f"{model_py}:build", "--batch", f"{src}:two", "--steps", "3"), 2, "ran out")


# --------------------------------------------------------------------------------------------------------
# Exit code 3: the user's code raised
# --------------------------------------------------------------------------------------------------------

def test_syntax_error_in_user_file(write_file):
    p = write_file("broken.py", """
        import torch.nn as nn

        def build(:
            return nn.Linear(2, 2)
    """)
    assert_clean_error(check(f"{p}:build"), 3, "import failed", "SyntaxError", "broken.py:3")


def test_import_time_exception_names_the_line(write_file):
    p = write_file("imp.py", """
        X = 1
        raise RuntimeError("cannot import this")
    """)
    assert_clean_error(check(f"{p}:X"), 3, "import failed", "imp.py:2", "RuntimeError", "cannot import this")


def test_exception_while_building(model_py):
    assert_clean_error(check(f"{model_py}:boom"), 3, "build failed", "ValueError", "factory exploded on purpose",
                       "usermodel.py:")


def test_build_error_inside_torch_is_located_in_the_users_file(write_file):
    p = write_file("badinit.py", """
        import torch.nn as nn

        def build():
            return nn.Sequential(nn.Linear(4, 3), nn.Dropout(p=2.0))
    """)
    assert_clean_error(check(f"{p}:build"), 3, "build failed", "badinit.py:4", "dropout probability")


def test_forward_shape_mismatch_names_the_module(model_py):
    line = assert_clean_error(check(f"{model_py}:build", "--input-shape", "8,20"), 3, "forward failed",
                              "`fc`", "Linear", "RuntimeError")
    assert "(8, 20)" in line, "the hint shows the batch shape"


def test_json_format_prints_no_report_on_errors(model_py):
    r = check(f"{model_py}:build", "--input-shape", "8,20", "--format", "json")
    assert r.exit_code == 3 and r.stdout == ""


def test_forward_raising_names_the_model(write_file):
    p = write_file("fwd.py", """
        import torch.nn as nn

        class Net(nn.Module):
            def __init__(self):
                super().__init__()
                self.fc = nn.Linear(4, 2)

            def forward(self, x):
                raise KeyError("missing feature")
    """)
    assert_clean_error(check(f"{p}:Net", "--input-shape", "2,4"), 3, "forward failed", "Net", "KeyError")


def test_loss_callable_raising(model_py, write_file):
    loss = write_file("myloss.py", """
        def bad(output, target):
            raise ZeroDivisionError("loss blew up")
    """)
    assert_clean_error(check(f"{model_py}:build", "--loss", f"{loss}:bad"), 3, "loss failed", "ZeroDivisionError")


def test_batch_callable_raising(model_py, write_file):
    src = write_file("badbatch.py", """
        def make():
            raise OSError("dataset not mounted")
    """)
    assert_clean_error(check(f"{model_py}:build", "--batch", f"{src}:make"), 3, "dataset not mounted")


def test_verbose_shows_traceback_for_exit_3(model_py):
    r = check(f"{model_py}:build", "--input-shape", "8,20", "--verbose")
    assert r.exit_code == 3
    assert "Traceback (most recent call last)" in r.stderr
    assert "mat1 and mat2" in r.stderr
    assert r.stderr.strip().splitlines()[-1].startswith("error: forward failed")


def test_verbose_build_failure_traceback_shows_user_frame(model_py):
    r = check(f"{model_py}:boom", "-v")
    assert r.exit_code == 3
    assert "Traceback" in r.stderr and "usermodel.py" in r.stderr and "factory exploded" in r.stderr


def test_internal_error_exits_4_without_traceback(model_py, monkeypatch):
    import gradcheck_cli.pipeline as pipeline

    def broken(settings, **kwargs):
        raise ZeroDivisionError("oops in gradcheck")

    monkeypatch.setattr(pipeline, "run_check", broken)
    assert_clean_error(check(f"{model_py}:build"), 4, "internal error", "ZeroDivisionError", "--verbose")


def test_internal_error_with_verbose_still_exits_4(model_py, monkeypatch):
    """--verbose adds the traceback; it must not turn our bug's exit 4 into 1 ("findings")."""
    import gradcheck_cli.pipeline as pipeline

    def broken(settings, **kwargs):
        raise ZeroDivisionError("oops in gradcheck")

    monkeypatch.setattr(pipeline, "run_check", broken)
    r = check(f"{model_py}:build", "--verbose")
    assert r.exit_code == 4
    assert "Traceback (most recent call last)" in r.stderr and "oops in gradcheck" in r.stderr
    assert r.stderr.strip().splitlines()[-1].startswith("error: internal error in gradcheck: ZeroDivisionError")


# --------------------------------------------------------------------------------------------------------
# JSON report and --output
# --------------------------------------------------------------------------------------------------------

def _strict_json(text: str):
    def no_constants(name):
        raise AssertionError(f"non-standard JSON constant {name}")

    return json.loads(text, parse_constant=no_constants)


@pytest.mark.parametrize("spec, code", [("vanishing_sigmoid_mlp.py:build", 1), ("healthy_mlp.py:build", 0),
                                        ("nan_loss.py:Net", 1)])
def test_json_report(spec, code):
    r = check(ex(spec), "--format", "json")
    assert r.exit_code == code
    doc = _strict_json(r.stdout)
    for key in ("schema_version", "tool", "model", "settings", "layers", "findings", "summary", "timings"):
        assert key in doc, key
    assert doc["tool"] == {"name": "gradcheck", "version": __version__}
    assert isinstance(doc["schema_version"], int)
    assert doc["model"]["spec"] == ex(spec)
    assert doc["summary"]["exit_code"] == r.exit_code
    assert doc["summary"]["verdict"] == ("fail" if code else "pass")
    assert doc["settings"]["steps"] == 3 and doc["settings"]["seed"] == 0
    assert doc["layers"] and all("name" in l and "output_grad_norm" in l for l in doc["layers"])
    counts = {"error": 0, "warning": 0, "info": 0}
    for f in doc["findings"]:
        assert set(f) >= {"rule", "code", "severity", "layer", "message", "evidence", "fixes"}
        assert f["rule"] in RULE_IDS and f["severity"] in counts and f["fixes"]
        counts[f["severity"]] += 1
    assert doc["summary"]["counts"] == counts
    assert bool(code) == bool(counts["error"] + counts["warning"])


def test_json_findings_of_vanishing_example():
    doc = json.loads(check(ex("vanishing_sigmoid_mlp.py:build"), "-f", "json").stdout)
    (f,) = doc["findings"]
    assert (f["rule"], f["code"], f["severity"], f["layer"]) == ("vanishing-gradients", "GC101", "error", "0")
    assert f["evidence"]["early_late_ratio"] < f["evidence"]["error_threshold"]


def test_json_respects_steps_and_seed(model_py):
    doc = json.loads(check(f"{model_py}:build", "-f", "json", "--steps", "2", "--seed", "5").stdout)
    assert doc["settings"]["steps"] == 2 and doc["settings"]["seed"] == 5
    assert len(doc["run"]["losses"]) == 2


def test_output_writes_json_file_and_text_to_stdout(tmp_path):
    out = tmp_path / "report.json"
    r = check(ex("vanishing_sigmoid_mlp.py:build"), "--format", "json", "--output", str(out))
    assert r.exit_code == 1
    doc = _strict_json(out.read_text())
    assert doc["summary"]["exit_code"] == 1
    assert doc["findings"][0]["rule"] == "vanishing-gradients"
    assert "GC101" in r.stdout and "FAIL" in r.stdout
    with pytest.raises(json.JSONDecodeError):
        json.loads(r.stdout)
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".report.json")] == [], "no temp file left"


def test_output_text_file(model_py, tmp_path):
    out = tmp_path / "report.txt"
    r = check(f"{model_py}:build", "--output", str(out))
    assert r.exit_code == 0
    text = out.read_text()
    assert "gradcheck" in text and "PASS" in text and "\x1b[" not in text


# --------------------------------------------------------------------------------------------------------
# Batches
# --------------------------------------------------------------------------------------------------------

def _json_check(*args):
    r = check(*args, "-f", "json")
    assert r.exit_code == 0, (r.stdout, r.stderr)
    return json.loads(r.stdout)


def test_pt_batch_with_targets(model_py, tmp_path):
    import torch

    p = tmp_path / "batch.pt"
    torch.save((torch.randn(5, 10), torch.randint(0, 3, (5,))), p)
    doc = _json_check(f"{model_py}:build", "--batch", str(p))
    assert "batch.pt" in doc["settings"]["batch"] and "(5, 10)" in doc["settings"]["batch"]
    assert doc["settings"]["loss"] == "cross-entropy", "integer targets from the file: no synthetic targets"


def test_npz_batch_x_y(model_py, tmp_path):
    np = pytest.importorskip("numpy")
    p = tmp_path / "batch.npz"
    rng = np.random.default_rng(0)
    np.savez(p, x=rng.standard_normal((6, 10)), y=rng.standard_normal((6, 3)).astype("float32"))
    doc = _json_check(f"{model_py}:build", "--batch", str(p))
    assert "batch.npz" in doc["settings"]["batch"] and "(6, 10)" in doc["settings"]["batch"]
    assert doc["settings"]["loss"] == "mse", "float targets from the file select MSE"


def test_callable_batch(model_py, write_file):
    src = write_file("batches.py", """
        import torch

        def make():
            return torch.randn(7, 10), torch.randint(0, 3, (7,))
    """)
    doc = _json_check(f"{model_py}:build", "--batch", f"{src}:make")
    assert doc["settings"]["batch"] == f"from {src}:make"
    assert doc["settings"]["loss"] == "cross-entropy"


def test_dict_batch_with_keyword_arguments(write_file):
    src = write_file("kwmodel.py", """
        import torch
        import torch.nn as nn

        class KW(nn.Module):
            def __init__(self):
                super().__init__()
                self.fc = nn.Linear(6, 3)

            def forward(self, *, features, mask):
                return self.fc(features * mask)

        def make():
            return {"features": torch.randn(5, 6), "mask": torch.ones(5, 6)}
    """)
    doc = _json_check(f"{src}:KW", "--batch", f"{src}:make")
    assert doc["settings"]["batch"] == f"from {src}:make"
    names = [l["name"] for l in doc["layers"]]
    assert "fc" in names


def test_explicit_loss_name(model_py):
    doc = _json_check(f"{model_py}:build", "--loss", "mse")
    assert doc["settings"]["loss"].startswith("mse")


def test_loss_callable(model_py, write_file):
    loss = write_file("l.py", """
        def l1(output, target):
            return (output - output.detach().mean()).abs().mean()
    """)
    doc = _json_check(f"{model_py}:build", "--loss", f"{loss}:l1")
    assert f"{loss}:l1" in doc["settings"]["loss"]


# --------------------------------------------------------------------------------------------------------
# rules / explain / version / help
# --------------------------------------------------------------------------------------------------------

def test_rules_lists_every_rule():
    r = invoke("rules")
    assert r.exit_code == 0
    for rid, code in zip(RULE_IDS, ["GC101", "GC102", "GC103", "GC104", "GC105", "GC106", "GC107"]):
        line = next((l for l in r.stdout.splitlines() if rid in l), None)
        assert line is not None, rid
        assert code in line


@pytest.mark.parametrize("key", ["dead-relus", "GC105", "gc105"])
def test_explain_prints_sections(key):
    r = invoke("explain", key)
    assert r.exit_code == 0
    out = r.stdout
    assert out.startswith("GC105 dead-relus")
    for title in ("What it does", "Why it matters", "Example", "Fix", "References", "Options"):
        assert title in out, title
    assert "fraction = 0.5" in out and "min_units = 16" in out


def test_explain_by_code_equals_explain_by_id():
    assert invoke("explain", "GC101").stdout == invoke("explain", "vanishing-gradients").stdout


def test_explain_unknown_rule():
    assert_clean_error(invoke("explain", "dead-relu"), 2, "unknown rule", "dead-relus")
    assert_clean_error(invoke("explain", "GC999"), 2, "unknown rule")


def test_version_via_python_m():
    r = subprocess.run([sys.executable, "-m", "gradcheck_cli", "--version"], capture_output=True, text=True,
                       timeout=60, cwd=ROOT)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == f"gradcheck {__version__}"


def test_python_m_check_exit_code_end_to_end(tmp_path):
    r = subprocess.run([sys.executable, "-m", "gradcheck_cli", "check", ex("vanishing_sigmoid_mlp.py:build"),
                        "--format", "json"], capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert r.returncode == 1, r.stderr
    assert json.loads(r.stdout)["summary"]["exit_code"] == 1
    assert "Traceback" not in r.stderr


def test_python_m_user_error_end_to_end(tmp_path):
    r = subprocess.run([sys.executable, "-m", "gradcheck_cli", "check", str(tmp_path / "missing.py:build")],
                       capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert r.returncode == 2
    assert "Traceback" not in r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:")


LIGHT_COMMANDS = [["--help"], ["rules"], ["explain", "GC101"], ["--version"], ["check", "--help"]]


@pytest.mark.parametrize("argv", LIGHT_COMMANDS, ids=" ".join)
def test_light_commands_do_not_import_torch(argv):
    code = (
        "import sys\n"
        "from gradcheck_cli.cli import app\n"
        "try:\n"
        f"    app({argv!r})\n"
        "except SystemExit as e:\n"
        "    assert e.code in (0, None), e.code\n"
        "heavy = sorted(m for m in ('torch', 'numpy', 'transformers') if m in sys.modules)\n"
        "sys.stderr.write('HEAVY=' + ','.join(heavy) + '\\n')\n"
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    assert "HEAVY=\n" in r.stderr, r.stderr[-500:]
    assert r.stdout.strip(), "the command printed something"


@pytest.mark.parametrize("argv", LIGHT_COMMANDS[:4], ids=" ".join)
def test_light_commands_importtime_has_no_torch(argv):
    r = subprocess.run([sys.executable, "-X", "importtime", "-m", "gradcheck_cli", *argv], capture_output=True,
                       text=True, timeout=60, env={**os.environ, "PYTHONDONTWRITEBYTECODE": "1"})
    assert r.returncode == 0, r.stderr[-2000:]
    modules = [line.rsplit("|", 1)[-1].strip() for line in r.stderr.splitlines() if line.startswith("import time:")]
    assert "gradcheck_cli.cli" in modules, "importtime output was parsed"
    assert not [m for m in modules if m == "torch" or m.startswith("torch.")]


# --------------------------------------------------------------------------------------------------------
# Misc behaviour
# --------------------------------------------------------------------------------------------------------

def test_missing_explicit_config_file(model_py, tmp_path):
    assert_clean_error(check(f"{model_py}:build", "--config", str(tmp_path / "nope.yaml")), 2, "nope.yaml")


def test_forward_returning_nothing_usable(write_file):
    p = write_file("none.py", """
        import torch.nn as nn

        class Net(nn.Module):
            def __init__(self):
                super().__init__()
                self.fc = nn.Linear(4, 2)

            def forward(self, x):
                self.fc(x)
                return None
    """)
    assert_clean_error(check(f"{p}:Net"), 2, "NoneType")


def test_runs_are_reproducible_and_seed_matters(model_py):
    a = _json_check(f"{model_py}:build")
    b = _json_check(f"{model_py}:build")
    c = _json_check(f"{model_py}:build", "--seed", "1")
    assert a["run"]["losses"] == b["run"]["losses"]
    assert [l["output_grad_norm"] for l in a["layers"]] == [l["output_grad_norm"] for l in b["layers"]]
    assert a["run"]["losses"] != c["run"]["losses"]


def test_max_rows_elides_but_keeps_flagged_layers():
    full = check(ex("vanishing_sigmoid_mlp.py:build"), "--max-rows", "0").stdout
    short = check(ex("vanishing_sigmoid_mlp.py:build"), "--max-rows", "4").stdout
    assert "…" in short and "…" not in full
    assert len(short.splitlines()) < len(full.splitlines())
    assert "◀ GC101" in short, "the flagged layer stays in the table"


def test_module_spec_from_the_current_directory_with_the_console_script(write_file, tmp_path):
    from conftest import console_script

    exe = str(console_script())
    write_file("tinymod_for_gc.py", MODEL_PY)
    r = subprocess.run([exe, "check", "tinymod_for_gc:build"], capture_output=True, text=True, timeout=120,
                       cwd=tmp_path, env={k: v for k, v in os.environ.items() if k != "PYTHONPATH"})
    assert r.returncode == 0, r.stderr


def test_user_file_can_import_its_sibling(write_file):
    write_file("gc_sibling_helpers_x1.py", """
        import torch.nn as nn

        def block():
            return nn.Sequential(nn.Linear(6, 6), nn.Tanh())
    """)
    p = write_file("gc_sibling_main_x1.py", """
        import torch.nn as nn
        from gc_sibling_helpers_x1 import block

        def build():
            return nn.Sequential(block(), nn.Linear(6, 2))
    """)
    r = check(f"{p}:build")
    assert r.exit_code == 0, r.stderr


@pytest.mark.parametrize("body, needle", [
    ("return (output.sum() > 0).long()", "integer"),
    ("return output.detach().pow(2).mean()", "does not require grad"),
    ("return 1.5", "float"),
])
def test_loss_that_cannot_be_differentiated_is_an_input_error(model_py, write_file, body, needle):
    loss = write_file("badloss.py", f"""
        def loss(output, target):
            {body}
    """)
    assert_clean_error(check(f"{model_py}:build", "--loss", f"{loss}:loss"), 2, needle)


def test_backward_raising_is_exit_3(write_file):
    p = write_file("bwd.py", """
        import torch
        import torch.nn as nn

        class Explode(torch.autograd.Function):
            @staticmethod
            def forward(ctx, x):
                return x.clone()

            @staticmethod
            def backward(ctx, g):
                raise RuntimeError("custom backward is broken")

        class Net(nn.Module):
            def __init__(self):
                super().__init__()
                self.fc = nn.Linear(4, 3)

            def forward(self, x):
                return Explode.apply(self.fc(x))
    """)
    assert_clean_error(check(f"{p}:Net"), 3, "backward failed", "custom backward is broken")
