"""Hostile inputs, round two (issue 10): model code that exits, outputs that would clobber inputs, special
files, hostile YAML, numbers out of range, unusual models, escaping, stdout purity, misleading hints.

Every case runs the real command line in a subprocess (`python -m gradcheck_cli`, the interpreter running
the tests) and checks the exit code, the one-line `error: ...` on stderr and that no traceback reaches the
user. Cases that stop before torch is imported are fast; the others are marked slow (they stay in the suite).
"""
from __future__ import annotations

import json
import os
import signal
import stat
import subprocess
import sys
import textwrap
import time
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from pathlib import Path

import pytest

slow = pytest.mark.slow

MODELS = """
import os
import sys
import threading
import time

import torch
import torch.nn as nn


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(10, 4)
        self.act = nn.ReLU()

    def forward(self, x):
        return self.act(self.fc(x))


def build():
    return Net()


class ExitZero(Net):
    def forward(self, x):
        sys.exit(0)


class ExitMessage(Net):
    def forward(self, x):
        sys.exit("bye from forward")


def exit_batch():
    sys.exit(0)


def exit_loss(output, target):
    sys.exit(0)


class Chdir(Net):
    def forward(self, x):
        os.chdir(os.environ["GC_ELSEWHERE"])
        return super().forward(x)


class Complex(nn.Module):
    def __init__(self):
        super().__init__()
        self.w = nn.Parameter(torch.randn(10, 4, dtype=torch.cfloat))

    def forward(self, x):
        return (x.to(torch.cfloat) @ self.w).abs()


def scripted():
    return torch.jit.script(Net())


class BadTrain(Net):
    def train(self, mode=True):
        raise RuntimeError("train() is disabled here")


class Unprintable(Exception):
    def __str__(self):
        raise ValueError("no text")


class RaisesUnprintable(Net):
    def forward(self, x):
        raise Unprintable()


def empty_batch():
    return torch.randn(0, 10)


class RemovesHooks(Net):
    def forward(self, x):
        for m in self.modules():
            m._forward_hooks.clear()
        return super().forward(x)


class MutatesInput(Net):
    def forward(self, x):
        x.div_(0.0)                        # NaN/Inf in its own input, made by the model
        return super().forward(x)


def meta():
    with torch.device("meta"):
        return Net()


class HugeAlloc(Net):
    def forward(self, x):
        torch.empty(10**14)                # 400 TB: an allocation failure on any machine
        return super().forward(x)


class Chatty(Net):
    def forward(self, x):
        print("chatter from forward")
        os.system("echo chatter from a child process")
        return super().forward(x)


class StartsThread(Net):
    def forward(self, x):
        threading.Thread(target=time.sleep, args=(600,)).start()
        return super().forward(x)


class Stubborn(Net):
    def forward(self, x):
        ready = False
        while True:
            try:
                if not ready:                  # inside the try: no KeyboardInterrupt escapes
                    ready = True
                    sys.stderr.write("READY\\n")
                    sys.stderr.flush()
                time.sleep(0.05)
            except KeyboardInterrupt:
                pass


class Named(nn.Module):
    def __init__(self):
        super().__init__()
        self.add_module("a\\n::error title=pwned::injected", nn.Linear(10, 4))
        self.add_module("b]]>\\x1b[31m\\x07\\x1b]0;title\\x07c", nn.Linear(4, 4))

    def forward(self, x):
        for m in self.children():
            x = m(x)
        return x
"""


@pytest.fixture
def work(tmp_path, monkeypatch):
    (tmp_path / "models.py").write_text(textwrap.dedent(MODELS), encoding="utf-8")
    monkeypatch.chdir(tmp_path)
    return tmp_path


@dataclass
class Run:
    returncode: int
    stdout: bytes
    stderr: bytes


def gc(*args, cwd: Path, env: dict | None = None, timeout: float = 180) -> Run:
    """The real CLI in a subprocess, run with the interpreter that runs the tests (never whatever PATH finds)."""
    full_env = {**os.environ, **(env or {})}
    r = subprocess.run([sys.executable, "-m", "gradcheck_cli", "check", *args], cwd=cwd, env=full_env,
                       capture_output=True, timeout=timeout)
    return Run(r.returncode, r.stdout, r.stderr)


def gc_in_process(*args, cwd: Path) -> Run:
    """The same command line in this process (Typer's test runner): for the many variants of a class whose
    representative also runs in a subprocess above; saves a torch import per case."""
    from typer.testing import CliRunner

    from gradcheck_cli.cli import app

    assert Path.cwd() == cwd
    r = CliRunner().invoke(app, ["check", *args])
    return Run(r.exit_code, r.stdout_bytes, r.stderr_bytes)


def one_error(r: Run, code: int, *needles: str) -> str:
    out, err = r.stdout.decode("utf-8", "replace"), r.stderr.decode("utf-8", "replace")
    assert r.returncode == code, (r.returncode, out[-2000:], err[-2000:])
    assert "Traceback" not in out + err, err
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    for n in needles:
        assert n in lines[0], (n, lines[0])
    return lines[0]


REAL = pytest.param(True, marks=slow, id="real-cli")    # the representative case: a subprocess


def run(real: bool):
    return gc if real else gc_in_process


# --------------------------------------------------------------------------------------------------------
# 1. The model's code ends the process
# --------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("real,args,phase", [
    (REAL, ["models.py:ExitZero"], "forward failed in `(model)` (ExitZero)"),
    (False, ["models.py:ExitMessage"], "forward failed in `(model)` (ExitMessage)"),
    (False, ["models.py:build", "--batch", "models.py:exit_batch"], "batch failed in models.py:exit_batch"),
    (False, ["models.py:build", "--loss", "models.py:exit_loss"], "loss failed"),
])
def test_sys_exit_in_user_code_is_exit_3_with_a_report(work, real, args, phase):
    r = run(real)(*args, "--output", "json:report.json", cwd=work)
    one_error(r, 3, phase, "SystemExit", "sys.exit(")
    doc = json.loads((work / "report.json").read_text())
    assert doc["error"]["exit_code"] == 3 and doc["error"]["type"] == "user-code"
    assert doc["summary"]["verdict"] == "error"


# --------------------------------------------------------------------------------------------------------
# 2. Outputs that would destroy inputs
# --------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("real,args,needle", [
    (True, ["models.py:ExitZero", "--output", "json:models.py"], "would overwrite the model file models.py"),
    (False, ["models.py:build", "--output", "models.py"], "--output models.py would overwrite the model file"),
    (False, ["models.py:build", "--write-baseline", "models.py"], "--write-baseline models.py would overwrite"),
    (False, ["models.py:build", "--config", "cfg.yaml", "--output", "cfg.yaml"], "would overwrite the config cfg.yaml"),
    (False, ["models.py:build", "--batch", "batch.pt", "--output", "json:batch.pt"], "would overwrite the batch file"),
    (False, ["models.py:build", "--batch", "models.py:empty_batch", "-o", "json:./models.py"], "would overwrite"),
    (False, ["models.py:build", "--loss", "losses.py:mine", "-o", "losses.py"], "would overwrite the loss file"),
    (False, ["models.py:build", "--baseline", "base.json", "-o", "json:base.json"], "would overwrite the baseline"),
    (False, ["models.py:build", "-o", "r.json", "-o", "json:./r.json"], "are the same file"),
    (False, ["models.py:build", "-o", "r.json", "--write-baseline", "r.json"], "are the same file"),
    (False, ["models.py:build", "-o", "json:-", "-o", "sarif:-"], "stdout is already the destination"),
])
def test_an_output_never_overwrites_an_input_or_another_output(work, real, args, needle):
    (work / "cfg.yaml").write_text("steps: 1\n")
    (work / "batch.pt").write_bytes(b"not really a batch")
    (work / "losses.py").write_text("def mine(o, t):\n    return o.sum()\n")
    (work / "base.json").write_text('{"kind": "gradcheck-baseline", "schema_version": 1, "findings": []}')
    before = {p.name: p.read_bytes() for p in work.iterdir() if p.is_file()}
    one_error(run(real)(*args, cwd=work), 2, needle)
    after = {p.name: p.read_bytes() for p in work.iterdir() if p.is_file()}
    assert after == before, "an input file was modified, or a report written"


def test_the_default_config_is_an_input_too(work):
    (work / "gradcheck.yaml").write_text("steps: [broken\n")
    before = (work / "gradcheck.yaml").read_bytes()
    one_error(gc_in_process("models.py:build", "-o", "gradcheck.yaml", cwd=work), 2,
              "would overwrite the config gradcheck.yaml")
    assert (work / "gradcheck.yaml").read_bytes() == before


@slow
def test_output_dash_chdir_and_permissions(work, tmp_path_factory):
    """`--output -` is stdout; outputs are resolved before a forward that calls os.chdir; reports get the
    umask's permissions (not mkstemp's 0600), an existing file keeps its own."""
    elsewhere = tmp_path_factory.mktemp("elsewhere")
    (work / "kept.json").write_text("{}")
    os.chmod(work / "kept.json", 0o640)
    old = os.umask(0o022)
    try:
        r = gc("models.py:Chdir", "-o", "json:-", "-o", "markdown:report.md", "-o", "kept.json",
               "--write-baseline", "b.json", cwd=work, env={"GC_ELSEWHERE": str(elsewhere)})
    finally:
        os.umask(old)
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["model"]["class"] == "Chdir"      # the JSON replaced the text report
    assert not (work / "-").exists()
    assert (work / "report.md").exists() and not list(elsewhere.iterdir())
    assert stat.S_IMODE((work / "report.md").stat().st_mode) == 0o644
    assert stat.S_IMODE((work / "b.json").stat().st_mode) == 0o644
    assert stat.S_IMODE((work / "kept.json").stat().st_mode) == 0o640


# --------------------------------------------------------------------------------------------------------
# 3. Paths and special files
# --------------------------------------------------------------------------------------------------------

@pytest.mark.skipif(sys.platform != "linux", reason="non-UTF-8 file names: Linux file systems take any bytes")
@slow
def test_a_name_that_is_not_utf8_is_exit_2_with_the_name(work):
    bad = b"\xff\xfemodel"
    (work / os.fsdecode(bad + b".py")).write_text("x = 1\n")
    one_error(gc(bad + b".py:nope", cwd=work), 2, "\\xff\\xfemodel.py", "has no attribute 'nope'")
    one_error(gc("models.py:build", "--config", bad + b".yaml", cwd=work), 2,
              "config file not found: \\xff\\xfemodel.yaml")


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="needs FIFOs")
@pytest.mark.parametrize("flag,name,needle", [
    (None, "pipe.py", "model file pipe.py is a FIFO (named pipe), not a regular file"),
    ("--batch", "pipe.pt", "batch file pipe.pt is a FIFO (named pipe), not a regular file"),
    ("--config", "pipe.yaml", "config file pipe.yaml is a FIFO (named pipe), not a regular file"),
    ("--baseline", "pipe.json", "baseline file pipe.json is a FIFO (named pipe), not a regular file"),
])
def test_a_fifo_is_refused_not_read(work, flag, name, needle):
    os.mkfifo(work / name)
    args = [f"{name}:build"] if flag is None else ["models.py:build", flag, name]
    one_error(gc_in_process(*args, cwd=work), 2, needle)


@pytest.mark.skipif(not Path("/dev/zero").exists(), reason="needs /dev/zero")
@pytest.mark.parametrize("flag", ["--config", "--baseline", "--batch"])
def test_dev_zero_is_refused(work, flag):
    path = "/dev/zero"
    if flag == "--batch":
        (work / "zero.pt").symlink_to("/dev/zero")
        path = "zero.pt"
    one_error(gc_in_process("models.py:build", flag, path, cwd=work), 2, "is a character device, not a regular")


def test_config_has_a_size_cap(work):
    (work / "big.yaml").write_text("# padding\n" * 200_000)
    one_error(gc_in_process("models.py:build", "--config", "big.yaml", cwd=work), 2, "config file big.yaml is too large")


@pytest.mark.parametrize("flag", [None, "--config", "--batch", "--output"])
def test_a_300_character_name_is_exit_2_with_the_name(work, flag):
    name = "m" * 300 + {None: ".py", "--config": ".yaml", "--batch": ".pt", "--output": ".json"}[flag]
    args = [f"{name}:build"] if flag is None else ["models.py:build", flag, name]
    line = one_error(gc_in_process(*args, cwd=work), 2)
    assert "mmmm" in line and ("too long" in line or "not found" in line), line


def test_a_symlink_loop_is_not_not_found(work):
    (work / "loop.py").symlink_to("loop.py")
    one_error(gc_in_process("loop.py:build", cwd=work), 2, "loop.py: symbolic link loop")


# --------------------------------------------------------------------------------------------------------
# 4. YAML
# --------------------------------------------------------------------------------------------------------

LAUGHS = "\n".join(["a: &a [lol, lol, lol, lol, lol, lol, lol, lol, lol]"]
                   + [f"{c}: &{c} [" + ", ".join([f"*{p}"] * 9) + "]" for p, c in zip("abcdefgh", "bcdefghi")]
                   + ["steps: *i"]) + "\n"


def test_billion_laughs_is_refused_fast_and_not_echoed(work):
    (work / "laughs.yaml").write_text(LAUGHS)
    assert len(LAUGHS) < 600
    t0 = time.monotonic()
    line = one_error(gc("models.py:build", "--config", "laughs.yaml", cwd=work, timeout=120), 2,
                     "laughs.yaml: the YAML expands to more than 100,000 values")
    assert time.monotonic() - t0 < 60 and len(line) < 300 and "lol" not in line


def test_duplicate_keys_are_an_error_naming_both_lines(work):
    (work / "dup.yaml").write_text("steps: 2\nrules:\n  dead-relus: {fraction: 0.4}\nseed: 1\nrules:\n"
                                   "  non-finite: false\n")
    one_error(gc_in_process("models.py:build", "--config", "dup.yaml", cwd=work), 2,
              "dup.yaml: key 'rules' appears twice (lines 2 and 5)")


def test_nested_duplicate_keys_too(work):
    (work / "dup2.yaml").write_text("rules:\n  dead-relus:\n    fraction: 0.4\n    fraction: 0.9\n")
    one_error(gc_in_process("models.py:build", "--config", "dup2.yaml", cwd=work), 2,
              "key 'fraction' appears twice (lines 3 and 4)")


def test_a_huge_value_is_not_echoed_whole(work):
    (work / "long.yaml").write_text("steps: '" + "x" * 50_000 + "'\n")
    line = one_error(gc_in_process("models.py:build", "--config", "long.yaml", cwd=work), 2,
                     "key 'steps': expected an integer")
    assert len(line) < 300


def test_the_c_loader_is_used_when_available():
    yaml = pytest.importorskip("yaml")
    from gradcheck_cli.config_yaml import _yaml_loader

    assert _yaml_loader() is (getattr(yaml, "CSafeLoader", None) or yaml.SafeLoader)


# --------------------------------------------------------------------------------------------------------
# 5. Numbers
# --------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("config,needles", [
    ("rules:\n  dead-relus: {fraction: .nan}\n", ["key 'rules.dead-relus.fraction'", "finite number (0 to 1)"]),
    ("rules:\n  exploding-gradients: {ratio: .inf}\n", ["key 'rules.exploding-gradients.ratio'", "finite number"]),
    ("timeout: .inf\n", ["key 'timeout'", "greater than 0 and at most 1e+06"]),
    ("timeout: .nan\n", ["key 'timeout'", "greater than 0 and at most 1e+06"]),
    ("seed: 99999999999999999999999\n", ["key 'seed'", "between 0 and 4,294,967,295"]),
    ("steps: 100000000000\n", ["key 'steps'", "between 1 and 10,000"]),
    ("input_shape: [100000, 100000, 4]\n", ["key 'input_shape'", "40,000,000,000 values", "1 to 1,073,741,824"]),
])
def test_numbers_out_of_range_in_the_config(work, config, needles):
    (work / "n.yaml").write_text(config)
    one_error(gc_in_process("models.py:build", "--config", "n.yaml", cwd=work), 2, *needles)


@pytest.mark.parametrize("real,args,needles", [
    (True, ["--input-shape", "100000,100000,4"], ["bad --input-shape '100000,100000,4'", "1 to 1,073,741,824"]),
    (False, ["--seed", "99999999999999999999999"], ["--seed", "4294967295"]),
    (False, ["--timeout", "nan"], ["--timeout"]),
    (False, ["--timeout", "inf"], ["--timeout", "1000000"]),
])
def test_numbers_out_of_range_on_the_command_line(work, real, args, needles):
    one_error(run(real)("models.py:build", *args, cwd=work), 2, *needles)


def test_a_rule_option_nan_is_refused():
    from gradcheck_cli.rules import get_rule

    opt = next(o for o in get_rule("dead-relus").options if o.name == "fraction")
    with pytest.raises(ValueError, match="finite"):
        opt.coerce(float("nan"))


# --------------------------------------------------------------------------------------------------------
# 6. Unusual but legal models
# --------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("real,args,code,needles", [
    (REAL, ["models.py:RemovesHooks"], 3, ["no layer was measured", "removed the forward hooks"]),
    (False, ["models.py:Complex", "--input-shape", "8,10"], 2, ["complex parameters (w: complex64)"]),
    (False, ["models.py:scripted", "--input-shape", "8,10"], 2, ["TorchScript module", "before scripting"]),
    (False, ["models.py:BadTrain"], 3, ["build failed in BadTrain.train()", "train() is disabled here"]),
    (False, ["models.py:RaisesUnprintable"], 3, ["forward failed in `(model)`", "Unprintable",
                                                 "__str__ raised ValueError"]),
    (False, ["models.py:build", "--batch", "models.py:empty_batch"], 2, ["the batch is empty: inputs (0, 10)"]),
    (False, ["models.py:build", "--batch", "empty.pt"], 2, ["the batch is empty"]),
])
def test_unusual_models_get_a_clear_message(work, real, args, code, needles):
    import torch

    torch.save(torch.randn(0, 10), work / "empty.pt")
    one_error(run(real)(*args, cwd=work), code, *needles)


def test_a_forward_that_mutates_its_input_does_not_blame_the_batch_file(work):
    import torch

    torch.save(torch.randn(8, 10), work / "batch.pt")
    before = (work / "batch.pt").read_bytes()
    r = gc_in_process("models.py:MutatesInput", "--batch", "batch.pt", "-f", "json", cwd=work)
    assert r.returncode == 1, r.stderr
    doc = json.loads(r.stdout)
    assert doc["run"]["input_nonfinite"] == 0
    assert not any("input batch itself" in f["message"] for f in doc["findings"])
    assert any(f["rule"] == "non-finite" for f in doc["findings"])     # the model's own NaN/Inf is found
    assert (work / "batch.pt").read_bytes() == before


# --------------------------------------------------------------------------------------------------------
# 7. Escaping
# --------------------------------------------------------------------------------------------------------

@slow
def test_hostile_layer_names_in_every_format(work):
    r = gc("models.py:Named", "--input-shape", "8,10", "--fail-on", "never", "-o", "junit:r.xml", "-o", "r.sarif",
           "-o", "r.md", "-o", "r.html", "-o", "r.json", cwd=work, env={"GITHUB_ACTIONS": "true"})
    assert r.returncode == 0, r.stderr
    out = r.stdout.decode()
    ET.parse(work / "r.xml")                                   # still well-formed XML
    assert "\x1b" not in out and "\x07" not in out              # no escape sequences reach the terminal
    # the only workflow commands run are ours: the report is fenced with stop-commands
    lines = out.splitlines()
    assert lines[0].startswith("::stop-commands::")
    token = lines[0].split("::")[2]
    end = lines.index(f"::{token}::")
    assert all(not line.startswith("::") for line in lines[1:end])
    assert not any(line.startswith("::error title=pwned") for line in lines)
    json.loads((work / "r.sarif").read_text())
    json.loads((work / "r.json").read_text())
    md = (work / "r.md").read_text()
    html = (work / "r.html").read_text()
    assert "\x1b" not in md + html and "\x07" not in md + html
    assert "b]]&gt;" in html                                   # markup escaped, the name still readable


# --------------------------------------------------------------------------------------------------------
# 8. Stdout purity and exit
# --------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("real,fmt", [(REAL, "json"), (False, "sarif"), (False, "junit")])
def test_model_prints_go_to_stderr(work, real, fmt, capfd):
    r = run(real)("models.py:Chatty", "-f", fmt, cwd=work)
    assert r.returncode == 0, r.stderr
    out = r.stdout.decode()
    assert "chatter" not in out
    if real:   # in a real process, also what a child process writes to file descriptor 1
        assert "chatter from forward" in r.stderr.decode() and "chatter from a child process" in r.stderr.decode()
    if fmt == "junit":
        ET.fromstring(out)
    else:
        json.loads(out)


@slow
def test_a_thread_the_model_started_does_not_hold_the_exit(work):
    t0 = time.monotonic()
    r = gc("models.py:StartsThread", "-f", "json", cwd=work, timeout=300)
    assert r.returncode == 0, r.stderr
    json.loads(r.stdout)
    assert time.monotonic() - t0 < 300      # the thread sleeps 600 s


@slow
@pytest.mark.skipif(os.name != "posix", reason="signals")
def test_a_second_ctrl_c_stops_at_once(work):
    p = subprocess.Popen([sys.executable, "-m", "gradcheck_cli", "check", "models.py:Stubborn"], cwd=work,
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert p.stderr.readline().strip() == "READY"
        p.send_signal(signal.SIGINT)       # the model swallows the first KeyboardInterrupt
        time.sleep(0.3)
        p.send_signal(signal.SIGINT)
        out, err = p.communicate(timeout=60)
    finally:
        if p.poll() is None:
            p.kill()
    assert p.returncode == 130, err
    assert "error: interrupted twice during forward" in err and "Traceback" not in err


# --------------------------------------------------------------------------------------------------------
# 9. Hints that mislead
# --------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("real,args,code,needles,absent", [
    (REAL, ["models.py:meta"], 2, ["meta device", "to_empty", "initialise"], "smaller model"),
    (False, ["models.py:HugeAlloc"], 3, ["out of memory", "smaller batch"], None),
])
def test_hints_fit_the_failure(work, real, args, code, needles, absent):
    line = one_error(run(real)(*args, cwd=work), code, *needles)
    assert absent is None or absent not in line


@slow
def test_timeout_does_not_count_the_torch_import_and_numpy_comes_first(work):
    """A timeout far shorter than `import torch` still checks a small model (the clock starts after it);
    numpy is imported before torch (a Ctrl-C during torch's import is lost when numpy is first imported
    inside it)."""
    r = subprocess.run([sys.executable, "-X", "importtime", "-m", "gradcheck_cli", "check", "models.py:build",
                        "--timeout", "0.5"], cwd=work, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    rows = [line.split("|")[-1] for line in r.stderr.splitlines() if line.startswith("import time:")]
    names = [row.strip() for row in rows]
    if "numpy" in names:
        depth = {name: len(row) - len(row.lstrip()) for name, row in zip(names, rows)}
        assert names.index("numpy") < names.index("torch")
        assert depth["numpy"] <= depth["torch"], "numpy was first imported inside torch's import"
