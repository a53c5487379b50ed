"""gradcheck_cli.watch in a plain training loop: measured steps only, the report, stop_on, DDP."""

from __future__ import annotations

import json
import math
import os
import socket
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")
import torch.nn as nn  # noqa: E402

import gradcheck_cli  # noqa: E402
from gradcheck_cli.errors import InputError  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent


def mlp() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(16, 64), nn.ReLU(), nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 4))


def data(n: int = 256):
    g = torch.Generator().manual_seed(1)
    return torch.randn(n, 16, generator=g), torch.randint(0, 4, (n,), generator=g)


def hooked(model: nn.Module) -> bool:
    return any(m._forward_hooks or m._forward_pre_hooks or m._backward_hooks for m in model.modules())


def train(model, monitor, lr, steps=20, nan_at=None):
    """The contract's loop; returns which steps ran with hooks on the model."""
    opt = torch.optim.SGD(model.parameters(), lr=lr)
    x, y = data()
    seen = []
    for step in range(steps):
        seen.append(hooked(model))
        loss = nn.functional.cross_entropy(model(x), y)
        if step == nan_at:
            loss = loss * float("nan")
        opt.zero_grad()
        loss.backward()
        monitor.step(loss)
        if step != nan_at:
            opt.step()
    return seen


def test_healthy_loop_is_silent_and_hooks_only_measured_steps(tmp_path):
    model = mlp()
    out = tmp_path / "r.json"
    mon = gradcheck_cli.watch(model, every=5, output=[f"json:{out}"])
    seen = train(model, mon, lr=0.1)
    report = mon.close()
    assert report.verdict == "pass" and report.findings == []
    assert [i for i, h in enumerate(seen) if h] == [0, 5, 10, 15]
    assert not hooked(model)
    assert report.settings["steps"] == 20 and report.settings["measured_steps"] == 4
    doc = json.loads(out.read_text())
    assert doc["summary"]["verdict"] == "pass"
    assert len(doc["layers"]) == len(report.layers) > 0
    # the series holds the measured steps' values; the losses go down on a healthy run
    series = mon.monitor.mon.acc
    assert len(series.total_norms) == 4 and series.losses[-1] < series.losses[0]
    assert mon.close() is report   # idempotent


def test_report_validates_against_the_schema_and_renders(tmp_path):
    jsonschema = pytest.importorskip("jsonschema")
    from gradcheck_cli.report import render

    model = mlp()
    mon = gradcheck_cli.watch(model, every=4)
    train(model, mon, lr=0.1, steps=8)
    report = mon.close()
    schema = json.loads((ROOT / "gradcheck_cli" / "report" / "schema.json").read_text())
    jsonschema.validate(report.to_dict(), schema)
    import io

    for fmt in ("text", "markdown", "html", "junit", "sarif"):
        buf = io.StringIO()
        render(report, fmt, buf, color=False, width=100)
        assert buf.getvalue()
    text = io.StringIO()
    render(report, "text", text, color=False, width=100)
    assert "8 steps" in text.getvalue() and "every 4" in text.getvalue()


def test_too_large_learning_rate_is_caught_and_written(tmp_path):
    model = mlp()
    out = tmp_path / "r.html"
    mon = gradcheck_cli.watch(model, every=5, output=[str(out)])
    train(model, mon, lr=1e5)
    report = mon.close()
    codes = {(f.code, f.severity.value) for f in report.findings}
    assert ("GC103", "error") in codes, codes
    assert report.exit_code == 1
    assert "GC103" in out.read_text()


def test_stop_on_error_raises_after_writing_and_before_the_bad_update(tmp_path):
    model = mlp()
    out = tmp_path / "r.json"
    mon = gradcheck_cli.watch(model, every=5, stop_on="error", output=[f"json:{out}"])
    with pytest.raises(gradcheck_cli.GradcheckStop) as info:
        train(model, mon, lr=1e5)
    exc = info.value
    assert exc.step < 19
    assert "gradcheck stopped training at step" in str(exc) and str(out) in str(exc)
    assert exc.findings and all(f.severity.value == "error" for f in exc.findings)
    assert json.loads(out.read_text())["summary"]["verdict"] == "fail"
    assert exc.report.settings["stopped_at_step"] == exc.step
    assert not hooked(model)
    # raised before optimizer.step(): the NaN gradient never reached the weights
    assert all(torch.isfinite(p).all() for p in model.parameters())


def test_step_after_a_nonfinite_loss_is_measured_and_diagnosed():
    model = mlp()
    mon = gradcheck_cli.watch(model, every=10)
    seen = train(model, mon, lr=0.05, steps=12, nan_at=3)
    report = mon.close()
    assert [i for i, h in enumerate(seen) if h] == [0, 4, 10]
    f = [f for f in report.findings if f.code == "GC103"]
    assert f and "1 of 12 steps" in f[0].message
    assert any("step 3" in n for n in report.notes)


def test_loss_scale_divides_the_statistics():
    """AMP-style: a backward of loss * S with grad_scale=S gives the statistics of the plain backward."""
    x, y = data(64)
    norms = []
    for scale in (1.0, 1024.0):
        model = mlp()
        mon = gradcheck_cli.watch(model, every=1)
        loss = nn.functional.cross_entropy(model(x), y)
        (loss * scale).backward()
        mon.step(loss, grad_scale=scale)
        r = mon.close()
        norms.append((r.run["total_grad_norm"], [l["output_grad_norm"] for l in r.layers]))
    assert norms[0][0] == pytest.approx(norms[1][0], rel=1e-4)
    for a, b in zip(norms[0][1], norms[1][1]):
        if a is not None:
            assert a == pytest.approx(b, rel=1e-4)


@pytest.mark.parametrize("kwargs, words", [
    ({"every": 0}, "every=0"),
    ({"stop_on": "fatal"}, "stop_on='fatal'"),
    ({"fail_on": "sometimes"}, "fail_on='sometimes'"),
    ({"output": ["pdf:r.pdf"]}, "unknown format 'pdf'"),
    ({"rules": {"no-such-rule": {}}}, "no-such-rule"),
])
def test_bad_arguments_are_one_line_input_errors(kwargs, words):
    with pytest.raises(InputError) as info:
        gradcheck_cli.watch(mlp(), **kwargs)
    assert words in str(info.value) and "\n" not in str(info.value)


def test_not_a_module():
    with pytest.raises(InputError, match="needs an nn.Module"):
        gradcheck_cli.watch("model.py:build")


def test_watch_function_is_not_shadowed_by_its_module():
    import gradcheck_cli.watching  # noqa: F401

    assert callable(gradcheck_cli.watch) and gradcheck_cli.watch.__module__ == "gradcheck_cli"


DDP_SCRIPT = textwrap.dedent("""
    import json, sys
    import torch, torch.distributed as dist, torch.nn as nn
    import gradcheck_cli

    sys.path.insert(0, sys.argv[3])
    import distributed_models as M   # tests/data: the torchrun check's models (rank-dependent halves)

    def mlp_batch():
        return torch.randn(16, 16, generator=torch.Generator().manual_seed(1))

    CASES = [("mlp", M.mlp, mlp_batch), ("DeadHalf", M.DeadHalf, M.dead_batch), ("SqrtNaN", M.SqrtNaN, M.nan_batch)]
    out, mode = sys.argv[1], sys.argv[2]
    if mode == "ddp":
        dist.init_process_group("gloo")
        rank, world = dist.get_rank(), dist.get_world_size()
        CASES.append(("fsdp_mlp", M.mlp, mlp_batch))   # FSDP2: sharded .grad, read from the local shards
    result = {}
    for name, build, batch in CASES:
        torch.manual_seed(0)
        model = build()
        x = batch()
        if mode == "ddp" and name.startswith("fsdp_"):
            from torch.distributed.fsdp import fully_shard
            for layer in model:
                if isinstance(layer, nn.Linear):
                    fully_shard(layer)
            ddp = fully_shard(model)
            x = x.tensor_split(world)[rank]
        elif mode == "ddp":
            ddp = nn.parallel.DistributedDataParallel(model)
            x = x.tensor_split(world)[rank]     # this rank's half of the global batch
        else:
            ddp = model
        mon = gradcheck_cli.watch(model, every=1, output=[f"json:{out}/{mode}_{name}.json"])
        for step in range(2):                  # step 1: the diagnosis after SqrtNaN's NaN loss
            model.zero_grad()
            loss = ddp(x).pow(2).mean()          # each rank's mean over its half (DDP averages)
            loss.backward()
            mon.step(loss)
        r = mon.close()
        result[name] = {"total": r.run["total_grad_norm"], "loss": r.run["losses"],
                        "first_nonfinite_forward": r.run["first_nonfinite_forward"],
                        "distributed": r.run["distributed"],
                        "layers": {l["name"]: [l["grad_norm"], l["output_grad_norm"], l["units"], l["dead_units"],
                                               l["calls"]] for l in r.layers}}
    who = "single" if mode == "single" else f"rank{rank}"
    with open(f"{out}/{who}.json", "w") as fh:
        json.dump(result, fh, default=str)
    if mode == "ddp":
        dist.destroy_process_group()
""")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _approx(a, b) -> bool:
    if isinstance(a, float) and isinstance(b, float):
        return math.isclose(a, b, rel_tol=1e-4, abs_tol=1e-9) or (math.isnan(a) and math.isnan(b))
    return a == b


@pytest.mark.slow
def test_ddp_two_ranks_reduce_to_the_single_process_statistics(tmp_path):
    """watch() under DDP (2 gloo ranks, each on half the batch) reduces with the torchrun check's reduction
    (measure.distributed.reduce_record): per-layer parameter- and output-gradient norms and the loss equal one
    process on the whole batch (a sum instead of rank 0's DDP gradients, or output gradients divided by N
    instead of N**2, would be off by sqrt(2)); a ReLU unit is dead only if dead on both ranks (DeadHalf: 2 of
    4, each rank alone sees 3); NaN only in rank 1's half is found and rank 1 named as where it started. The
    same MLP sharded with FSDP2 (each rank holds half of every gradient) gives the same per-layer norms."""
    script = tmp_path / "ddp_watch.py"
    script.write_text(DDP_SCRIPT)
    models = str(ROOT / "tests" / "data")
    env = {**os.environ, "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(_free_port()), "WORLD_SIZE": "2",
           "OMP_NUM_THREADS": "1"}
    subprocess.run([sys.executable, str(script), str(tmp_path), "single", models], check=True, env=env, timeout=120)
    procs = [subprocess.Popen([sys.executable, str(script), str(tmp_path), "ddp", models],
                              env={**env, "RANK": str(r), "LOCAL_RANK": str(r)}) for r in range(2)]
    assert [p.wait(timeout=180) for p in procs] == [0, 0]
    single = json.loads((tmp_path / "single.json").read_text())
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(2)]
    assert ranks[0] == ranks[1]                      # every rank has the reduced statistics
    ddp = ranks[0]
    for name in ("mlp", "DeadHalf", "SqrtNaN", "fsdp_mlp"):
        a, b = single[name.removeprefix("fsdp_")], ddp[name]
        assert a["distributed"] is None
        strategy = "fsdp" if name.startswith("fsdp_") else "ddp"
        assert b["distributed"]["world_size"] == 2 and b["distributed"]["strategy"] == strategy, name
        assert _approx(a["total"], b["total"]), (name, a["total"], b["total"])
        assert all(_approx(x, y) for x, y in zip(a["loss"], b["loss"])), (name, a["loss"], b["loss"])
        assert a["first_nonfinite_forward"] == b["first_nonfinite_forward"], name
        assert a["layers"].keys() == b["layers"].keys()
        for layer, va in a["layers"].items():
            assert all(_approx(x, y) for x, y in zip(va, b["layers"][layer])), (name, layer, va, b["layers"][layer])
    assert single["mlp"]["total"] > 0 and single["mlp"]["layers"]["0"][1] > 0   # norms were measured at all
    assert ddp["DeadHalf"]["layers"]["act"][2:4] == [4, 2]
    assert ddp["SqrtNaN"]["first_nonfinite_forward"] is not None
    assert ddp["SqrtNaN"]["distributed"]["first_nonfinite_rank"]["forward"] == 1
    assert (tmp_path / "ddp_mlp.json").exists() and (tmp_path / "single_mlp.json").exists()   # rank 0 wrote it
