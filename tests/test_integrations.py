"""The Lightning and Hugging Face Trainer callbacks, with the real frameworks on the CPU (~20 steps)."""

from __future__ import annotations

import copy
import csv
import json
import os
import socket
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")
import torch.nn as nn  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent


def hooked(model: nn.Module) -> bool:
    return any(m._forward_hooks or m._forward_pre_hooks or m._backward_hooks for m in model.modules())


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# -- lazy imports ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("module, blocked, extra", [
    ("lightning", ["lightning", "lightning.pytorch", "pytorch_lightning"], "lightning"),
    ("transformers", ["transformers"], "transformers"),
])
def test_missing_framework_is_a_one_line_error(module, blocked, extra):
    code = textwrap.dedent(f"""
        import sys
        for name in {blocked!r}:
            sys.modules[name] = None          # as if not installed
        import gradcheck_cli.integrations.{module} as m   # importing the module needs no framework
        try:
            m.GradcheckCallback
        except ImportError as exc:
            print("ERR", exc)
    """)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    lines = out.stdout.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("ERR ")
    assert f"pip install 'gradcheck[{extra}]'" in lines[0]


def test_importing_an_integration_module_does_not_import_the_framework():
    code = ("import sys, gradcheck_cli.integrations.lightning, gradcheck_cli.integrations.transformers; "
            "print(sorted(m for m in ('lightning', 'pytorch_lightning', 'transformers') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.stdout.strip() == "[]", out.stdout + out.stderr


# -- Lightning --------------------------------------------------------------------------------------------------

pl = None
try:
    import lightning.pytorch as pl  # noqa: F811
except ImportError:   # pragma: no cover - an optional extra
    pass
needs_lightning = pytest.mark.skipif(pl is None, reason="lightning is not installed")

LIGHTNING_MODULE = textwrap.dedent("""
    import torch, torch.nn as nn
    import lightning.pytorch as pl

    class Classifier(pl.LightningModule):
        def __init__(self, lr):
            super().__init__()
            self.lr = lr
            self.net = nn.Sequential(nn.Linear(16, 64), nn.ReLU(), nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 4))

        def training_step(self, batch, batch_idx):
            x, y = batch
            return nn.functional.cross_entropy(self.net(x), y)

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=self.lr)

    def loader():
        g = torch.Generator().manual_seed(1)
        ds = torch.utils.data.TensorDataset(torch.randn(640, 16, generator=g), torch.randint(0, 4, (640,), generator=g))
        return torch.utils.data.DataLoader(ds, batch_size=32)
""")


def lightning_fit(tmp_path, lr, stop_on=None, every=5, steps=20):
    from gradcheck_cli.integrations.lightning import GradcheckCallback

    ns: dict = {}
    exec(LIGHTNING_MODULE, ns)
    from lightning.pytorch.loggers import CSVLogger

    torch.manual_seed(0)
    module = ns["Classifier"](lr)
    cb = GradcheckCallback(every=every, stop_on=stop_on, output=[f"json:{tmp_path / 'report.json'}"])
    trainer = pl.Trainer(max_steps=steps, callbacks=[cb], accelerator="cpu", logger=CSVLogger(str(tmp_path / "logs")),
                         enable_progress_bar=False, enable_model_summary=False, enable_checkpointing=False,
                         log_every_n_steps=1)
    trainer.fit(module, ns["loader"]())
    return trainer, module, cb


def logged_metrics(tmp_path) -> list[dict]:
    files = list((tmp_path / "logs").rglob("metrics.csv"))
    assert files, "the trainer's logger got nothing"
    with open(files[0]) as fh:
        return [row for row in csv.DictReader(fh) if row.get("gradcheck/grad_norm")]


@needs_lightning
@pytest.mark.slow
def test_lightning_healthy_run_is_silent_and_logged(tmp_path):
    trainer, module, cb = lightning_fit(tmp_path, lr=0.1)
    assert trainer.global_step == 20
    assert cb.report.verdict == "pass" and cb.report.findings == []
    assert cb.report.settings["measured_steps"] == 4 and cb.report.settings["steps"] == 20
    assert not hooked(module)
    rows = logged_metrics(tmp_path)
    assert [int(r["step"]) for r in rows] == [0, 5, 10, 15]
    assert {"gradcheck/grad_norm/net.0", "gradcheck/findings/error"} <= set(rows[0])
    assert float(rows[0]["gradcheck/grad_norm"]) > 0
    assert json.loads((tmp_path / "report.json").read_text())["summary"]["verdict"] == "pass"


@needs_lightning
@pytest.mark.slow
def test_lightning_too_large_learning_rate_is_caught(tmp_path):
    trainer, module, cb = lightning_fit(tmp_path, lr=1e5)
    assert trainer.global_step == 20
    assert ("GC103", "error") in {(f.code, f.severity.value) for f in cb.report.findings}
    assert json.loads((tmp_path / "report.json").read_text())["summary"]["verdict"] == "fail"
    assert any(float(r["gradcheck/findings/error"]) > 0 for r in logged_metrics(tmp_path))


@needs_lightning
@pytest.mark.slow
def test_lightning_stop_on_error_stops_early(tmp_path):
    trainer, module, cb = lightning_fit(tmp_path, lr=1e5, stop_on="error")
    assert trainer.global_step < 20
    assert cb.report.settings["stopped_at_step"] is not None
    assert json.loads((tmp_path / "report.json").read_text())["summary"]["verdict"] == "fail"
    assert not hooked(module)


LIGHTNING_DDP = LIGHTNING_MODULE + textwrap.dedent("""
    import json, sys
    from gradcheck_cli.integrations.lightning import GradcheckCallback

    if __name__ == "__main__":
        out = sys.argv[1]
        torch.manual_seed(0)
        cb = GradcheckCallback(every=2, output=[f"json:{out}/report.json"])
        trainer = pl.Trainer(max_steps=4, callbacks=[cb], accelerator="cpu", devices=2, strategy="ddp",
                             logger=False, enable_progress_bar=False, enable_model_summary=False,
                             enable_checkpointing=False)
        trainer.fit(Classifier(0.1), loader())
        r = cb.report
        with open(f"{out}/rank{trainer.global_rank}.json", "w") as fh:
            json.dump({"ranks": r.settings["ranks"], "total": r.run["total_grad_norm"], "loss": r.run["losses"],
                       "verdict": r.verdict}, fh)
""")


@needs_lightning
@pytest.mark.slow
def test_lightning_ddp_two_cpu_ranks(tmp_path):
    script = tmp_path / "ddp_fit.py"
    script.write_text(LIGHTNING_DDP)
    env = {**os.environ, "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(_free_port()), "OMP_NUM_THREADS": "1"}
    run = subprocess.run([sys.executable, str(script), str(tmp_path)], env=env, cwd=tmp_path,
                         capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(2)]
    assert ranks[0] == ranks[1] and ranks[0]["ranks"] == 2 and ranks[0]["verdict"] == "pass"
    assert len(ranks[0]["loss"]) == 2   # steps 0 and 2 measured
    assert json.loads((tmp_path / "report.json").read_text())["summary"]["verdict"] == "pass"


# -- Hugging Face Trainer ---------------------------------------------------------------------------------------

try:
    import accelerate  # noqa: F401
    import transformers
except ImportError:   # pragma: no cover
    transformers = None
needs_trainer = pytest.mark.skipif(transformers is None, reason="transformers/accelerate are not installed")


def hf_train(tmp_path, lr, stop_on=None, steps=20, max_grad_norm=1.0):
    from transformers import GPT2Config, GPT2LMHeadModel, Trainer, TrainingArguments

    from gradcheck_cli.integrations.transformers import GradcheckCallback

    transformers.logging.set_verbosity_error()

    class Tokens(torch.utils.data.Dataset):
        def __init__(self):
            self.x = torch.randint(0, 64, (256, 16), generator=torch.Generator().manual_seed(0))

        def __len__(self):
            return len(self.x)

        def __getitem__(self, i):
            return {"input_ids": self.x[i], "labels": self.x[i]}

    torch.manual_seed(0)
    model = GPT2LMHeadModel(GPT2Config(vocab_size=64, n_positions=16, n_embd=32, n_layer=2, n_head=2))
    cb = GradcheckCallback(every=5, stop_on=stop_on, output=[f"json:{tmp_path / 'report.json'}"])
    args = TrainingArguments(output_dir=str(tmp_path / "out"), max_steps=steps, per_device_train_batch_size=8,
                             learning_rate=lr, logging_steps=100, report_to=[], use_cpu=True, save_strategy="no",
                             disable_tqdm=True, lr_scheduler_type="constant", max_grad_norm=max_grad_norm)
    trainer = Trainer(model=model, args=args, train_dataset=Tokens(), callbacks=[cb])
    trainer.train()
    return trainer, model, cb, args


@needs_trainer
@pytest.mark.slow
def test_trainer_healthy_run_is_silent_and_logged(tmp_path):
    trainer, model, cb, args = hf_train(tmp_path, lr=1e-3)
    assert trainer.state.global_step == 20
    assert cb.report.verdict == "pass" and cb.report.findings == []
    assert cb.report.settings["measured_steps"] == 4
    assert not hooked(model) and args.max_grad_norm == 1.0   # clipping setting restored
    logged = [h for h in trainer.state.log_history if "gradcheck/grad_norm" in h]
    assert [h["step"] for h in logged] == [1, 6, 11, 16]
    assert "gradcheck/grad_norm/transformer.h.0.attn.c_attn" in logged[0]
    assert len(cb.report.run["losses"]) == 4 and all(3.0 < v < 5.0 for v in cb.report.run["losses"])


@needs_trainer
@pytest.mark.slow
def test_trainer_reads_gradients_before_clipping(tmp_path):
    """Clipping at 1e-3 would make every norm 1e-3; the callback reads the unclipped ones."""
    t1, _, clipped, _ = hf_train(tmp_path / "a", lr=0.0, steps=1, max_grad_norm=1e-3)
    t2, _, free, _ = hf_train(tmp_path / "b", lr=0.0, steps=1, max_grad_norm=0.0)
    a, b = clipped.report.run["total_grad_norm"], free.report.run["total_grad_norm"]
    assert b > 0.1 and a == pytest.approx(b, rel=1e-5)


@needs_trainer
@pytest.mark.slow
def test_trainer_too_large_learning_rate_is_caught_and_stops_early(tmp_path):
    trainer, model, cb, _ = hf_train(tmp_path, lr=1e5, stop_on="error")
    assert trainer.state.global_step < 20
    assert ("GC103", "error") in {(f.code, f.severity.value) for f in cb.report.findings}
    assert json.loads((tmp_path / "report.json").read_text())["summary"]["verdict"] == "fail"
    assert not hooked(model)


TRAINER_DDP = textwrap.dedent("""
    import json, sys, torch, transformers
    from transformers import GPT2Config, GPT2LMHeadModel, Trainer, TrainingArguments
    from gradcheck_cli.integrations.transformers import GradcheckCallback

    transformers.logging.set_verbosity_error()

    class Tokens(torch.utils.data.Dataset):
        def __init__(self):
            self.x = torch.randint(0, 64, (256, 16), generator=torch.Generator().manual_seed(0))
        def __len__(self):
            return len(self.x)
        def __getitem__(self, i):
            return {"input_ids": self.x[i], "labels": self.x[i]}

    out = sys.argv[1]
    torch.manual_seed(0)
    model = GPT2LMHeadModel(GPT2Config(vocab_size=64, n_positions=16, n_embd=32, n_layer=2, n_head=2))
    cb = GradcheckCallback(every=2, output=[f"json:{out}/report.json"])
    args = TrainingArguments(output_dir=f"{out}/o", max_steps=4, per_device_train_batch_size=4, report_to=[],
                             use_cpu=True, save_strategy="no", disable_tqdm=True, ddp_backend="gloo")
    Trainer(model=model, args=args, train_dataset=Tokens(), callbacks=[cb]).train()
    r = cb.report
    with open(f"{out}/rank{args.process_index}.json", "w") as fh:
        json.dump({"ranks": r.settings["ranks"], "total": r.run["total_grad_norm"], "loss": r.run["losses"],
                   "verdict": r.verdict}, fh)
""")


@needs_trainer
@pytest.mark.slow
def test_trainer_under_torchrun_two_cpu_ranks(tmp_path):
    script = tmp_path / "ddp_train.py"
    script.write_text(TRAINER_DDP)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    run = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
                          "--master_port", str(_free_port()), str(script), str(tmp_path)],
                         env=env, cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(2)]
    assert ranks[0] == ranks[1] and ranks[0]["ranks"] == 2 and ranks[0]["verdict"] == "pass"
    # the global batch's mean token loss, about ln(64) = 4.16 untrained (not half of it, nor twice)
    assert len(ranks[0]["loss"]) == 2 and all(3.5 < v < 4.5 for v in ranks[0]["loss"])
    assert json.loads((tmp_path / "report.json").read_text())["summary"]["verdict"] == "pass"


def test_clip_with_the_measured_norm_equals_torch_clipping():
    """The Trainer callback clips a measured step's gradients with the norm it measured (one pass fewer):
    the same result as torch.nn.utils.clip_grad_norm_, clipping or not, and torch's own on a NaN norm."""
    from gradcheck_cli.integrations.transformers import clip_with_norm

    for max_norm in (0.05, 1e3):
        torch.manual_seed(0)
        a = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.Linear(16, 2))
        b = copy.deepcopy(a)
        x = torch.randn(4, 8)
        for m in (a, b):
            m(x).pow(2).sum().backward()
        norm = torch.nn.utils.clip_grad_norm_(a.parameters(), max_norm)
        clip_with_norm(b.parameters(), max_norm, float(norm))
        for pa, pb in zip(a.parameters(), b.parameters()):
            assert torch.allclose(pa.grad, pb.grad, rtol=1e-6, atol=0), max_norm
        after = torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(p.grad) for p in b.parameters()]))
        assert float(after) == pytest.approx(min(float(norm), max_norm), rel=1e-5)   # clipped, or left as it was
    b.zero_grad()
    b(x).pow(2).sum().backward()
    before = [p.grad.clone() for p in b.parameters()]
    clip_with_norm(b.parameters(), 1e-3, float("nan"))   # falls back to torch: it computes the norm itself
    assert all(torch.linalg.vector_norm(p.grad) < torch.linalg.vector_norm(g) for p, g in zip(b.parameters(), before))
