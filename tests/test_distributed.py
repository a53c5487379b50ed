"""gradcheck under a real `torchrun --nproc-per-node 2` (gloo, CPU): the 2-rank report equals the
1-process report on the same global batch; FSDP2 (gradcheck's --fsdp sharding) equals plain data parallel;
a rank that raises ends both ranks with exit 3. The same for the training rehearsal (--train-steps, per
`models:` entry): its optimizer steps are the DDP / FSDP2 steps, and its series equal one process's.

Four launches in all (process start and the imports of torch and transformers in every rank dominate the
time, not the checks): one process; one torchrun with every model twice, plain (data parallel) and sharded
by its build() with `distributed.shard`, the function --fsdp calls (a model already sharded with FSDP2 is
measured as it is); two torchruns with `--fsdp` in which rank 1 raises (the flag's own path), in the
check and in the rehearsal.
"""

from __future__ import annotations

import json
import math
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow
NAN_RULE = "non-finite"

DATA = Path(__file__).parent / "data" / "distributed_models.py"
MODELS = [
    {"model": f"{DATA}:mlp", "input_shape": [8, 16]},
    {"model": f"{DATA}:Blocks", "input_shape": [8, 16]},
    {"model": f"{DATA}:gpt2", "batch": f"{DATA}:gpt2_batch"},
    {"model": f"{DATA}:SqrtNaN", "batch": f"{DATA}:nan_batch"},
    {"model": f"{DATA}:DeadHalf", "batch": f"{DATA}:dead_batch"},
    {"model": f"{DATA}:mlp", "batch": f"{DATA}:ranked_batch"},
    # the training rehearsal (--train-steps): its optimizer steps are the DDP / FSDP2 steps
    {"model": f"{DATA}:train_mlp", "input_shape": [8, 16], "train_steps": 20, "optimizer": "sgd", "lr": 0.05},
    {"model": f"{DATA}:train_mlp", "input_shape": [8, 16], "train_steps": 20, "optimizer": "sgd", "lr": 1.0},
    # 7 examples: slices of 4 and 3 (the ranks' losses weighted); an optimizer missing the last layer
    {"model": f"{DATA}:train_mlp", "input_shape": [7, 16], "train_steps": 4, "optimizer": f"{DATA}:partial_sgd"},
    # NaN from the third training step, in rank 1's half of the batch only
    {"model": f"{DATA}:LateNaN", "batch": f"{DATA}:nan_batch", "train_steps": 5, "optimizer": "sgd"},
]
TRAINING = [i for i, m in enumerate(MODELS) if m.get("train_steps")]
HEALTHY_TRAIN, DIVERGING_TRAIN, PARTIAL_TRAIN, NAN_TRAIN = TRAINING


def _env() -> dict:
    env = dict(os.environ, OMP_NUM_THREADS="1", COLUMNS="200", PYTHONHASHSEED="0")
    env.pop("WORLD_SIZE", None)
    return env


def _fsdp(spec: dict) -> dict:
    """The same model built sharded (tests/data/distributed_models.py: fsdp_<name>)."""
    path, name = spec["model"].rsplit(":", 1)
    return dict(spec, model=f"{path}:fsdp_{name}")


def _config(tmp_path: Path, models: list[dict]) -> Path:
    import yaml

    cfg = tmp_path / "gradcheck.yaml"
    cfg.write_text(yaml.safe_dump({"steps": 2, "models": models, "fail_on": "never"}))
    return cfg


def _torchrun(*args: str, cwd: Path, timeout: float = 300) -> subprocess.CompletedProcess:
    # --standalone: a free port of its own. Without it every launch uses 127.0.0.1:29500, and two test runs at
    # the same time on one machine (CI jobs, or parallel sessions) join each other's ranks.
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
           "--monitor-interval", "0.1",
           "-m", "gradcheck_cli", "check", *args]
    return subprocess.run(cmd, cwd=cwd, env=_env(), capture_output=True, text=True, timeout=timeout)


def _single(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "gradcheck_cli", "check", *args], cwd=cwd, env=_env(),
                          capture_output=True, text=True, timeout=300)


# Layers whose output has no batch dimension (GPT-2's position embedding: (1, T, E), broadcast over the
# batch): their dLoss/dOutput is the sum of the ranks' gradients, whose norm the ranks' sums of squares
# do not give (a documented limit, README "Distributed"); their parameter gradients are exact.
SHARED_OUTPUTS = {"transformer.wpe"}


def _close(a, b, rel=1e-4) -> bool:
    if a is None or b is None:
        return a is b
    if isinstance(a, str) or isinstance(b, str):   # "NaN", "Infinity" in JSON
        return a == b
    return math.isclose(a, b, rel_tol=rel, abs_tol=1e-9)


def _same_report(one: dict, dist: dict) -> None:
    spec = one["model"]["spec"]
    assert [(f["code"], f["layer"]) for f in one["findings"]] == [(f["code"], f["layer"]) for f in dist["findings"]], spec
    assert [lv["name"] for lv in one["layers"]] == [lv["name"] for lv in dist["layers"]], spec
    for la, lb in zip(one["layers"], dist["layers"]):
        for key in ("grad_norm", "grad_norm_max", "output_grad_norm", "weight_norm", "saturated_fraction"):
            if key == "output_grad_norm" and la["name"] in SHARED_OUTPUTS:
                continue
            assert _close(la[key], lb[key]), (spec, la["name"], key, la[key], lb[key])
        if la.get("off_units"):
            # ReLU pre-activation moments are summed over ranks: the same margins and coherence. (A layer whose
            # units all fired stops being tracked at a step that depends on how the batch is split.)
            for key in ("coherence", "unit_margin_min", "off_margin_median", "unit_samples"):
                assert _close(la[key], lb[key]), (spec, la["name"], key, la[key], lb[key])
        for key in ("units", "dead_units", "off_units", "calls", "nonfinite_outputs", "nonfinite_output_grads",
                    "nonfinite_param_grads"):
            assert la[key] == lb[key], (spec, la["name"], key, la[key], lb[key])
    for key in ("first_nonfinite_forward", "first_nonfinite_backward", "unused_parameters"):
        assert one["run"][key] == dist["run"][key], (spec, key)
    assert all(_close(x, y) for x, y in zip(one["run"]["losses"], dist["run"]["losses"])), spec


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict:
    """One process, and 2 ranks with every model plain (ddp) then sharded (fsdp): combined JSON reports."""
    tmp = tmp_path_factory.mktemp("dist")
    one_dir, dist_dir = tmp / "one", tmp / "dist"
    one_dir.mkdir()
    dist_dir.mkdir()
    _config(one_dir, MODELS)
    _config(dist_dir, MODELS + [_fsdp(m) for m in MODELS])
    out = {}
    for name, run, cwd in (("one", _single, one_dir), ("dist", _torchrun, dist_dir)):
        proc = run("-o", f"json:{name}.json", cwd=cwd)
        assert proc.returncode == 0, (name, proc.stdout[-2000:], proc.stderr[-3000:])
        out[name] = json.loads((cwd / f"{name}.json").read_text())
        out[name + "_proc"] = proc
    reports = out["dist"]["reports"]
    out["ddp"], out["fsdp"] = {"reports": reports[:len(MODELS)]}, {"reports": reports[len(MODELS):]}
    out["ddp_proc"] = out["dist_proc"]
    return out


def test_two_ranks_equal_one_process(runs):
    one, ddp = runs["one"]["reports"], runs["ddp"]["reports"]
    assert len(one) == len(ddp) == len(MODELS)
    for a, b in zip(one, ddp):
        assert a["run"]["distributed"] is None
        assert b["run"]["distributed"]["world_size"] == 2
        assert b["run"]["distributed"]["backend"] == "gloo"
        assert b["run"]["distributed"]["strategy"] == "ddp"
        _same_report(a, b)


def test_fsdp_equals_data_parallel(runs):
    ddp, fsdp = runs["ddp"]["reports"], runs["fsdp"]["reports"]
    assert len(fsdp) == len(MODELS)
    for a, b in zip(ddp, fsdp):
        assert b["run"]["distributed"]["strategy"] == "fsdp"
        assert b["model"]["spec"].rsplit(":", 1)[1] == "fsdp_" + a["model"]["spec"].rsplit(":", 1)[1]
        _same_report(a, b)


def test_reductions_that_one_rank_alone_gets_wrong(runs):
    """Dead units: dead only if dead on every rank (each rank alone sees 3 of 4); NaN only in rank 1's half:
    found, and rank 1 named as where it started."""
    by_spec = {r["model"]["spec"].rsplit(":", 1)[1]: r for r in runs["ddp"]["reports"]}
    dead = next(lv for lv in by_spec["DeadHalf"]["layers"] if lv["name"] == "act")
    assert (dead["units"], dead["dead_units"]) == (4, 2)
    assert dead["off_units"] == 2 and dead["coherence"] is not None, "margins from the moments of both ranks"
    nan = by_spec["SqrtNaN"]
    assert any(f["rule"] == NAN_RULE for f in nan["findings"])
    assert nan["run"]["first_nonfinite_forward"] is not None
    assert nan["run"]["distributed"]["first_nonfinite_rank"]["forward"] == 1


def test_rank0_alone_writes_and_prints(runs):
    """Rank 0 renders; the text header names the distribution; nothing is printed twice."""
    proc = runs["ddp_proc"]
    assert proc.stdout.count("2 ranks (gloo, ddp)") == len(MODELS)
    assert proc.stdout.count("2 ranks (gloo, fsdp)") == len(MODELS)
    assert "error:" not in proc.stderr


def _close_tree(a, b, rel=1e-4) -> bool:
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(_close_tree(a[k], b[k], rel) for k in a)
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(_close_tree(x, y, rel) for x, y in zip(a, b))
    if isinstance(a, float) or isinstance(b, float):
        return _close(a, b, rel)
    return a == b


def _same_training(one: dict, dist: dict) -> None:
    """The rehearsal on 2 ranks equals the one on one process on the same global batch: same steps run,
    same stop, per step the loss, the global gradient norm and the largest |update|/|weight| (and its
    layer) within 1e-4 relative, and the findings' evidence (onset steps, dying units per step, update
    ratios) the same."""
    a, b = one["training"], dist["training"]
    spec = one["model"]["spec"]
    assert a is not None and b is not None, spec
    for fa, fb in zip(one["findings"], dist["findings"]):
        assert _close_tree(fa["evidence"], fb["evidence"]), (spec, fa["rule"], fa["evidence"], fb["evidence"])
    for key in ("steps_requested", "steps_run", "optimizer", "lr", "stopped", "params_not_in_optimizer", "onsets"):
        assert a[key] == b[key], (spec, key, a[key], b[key])
    assert len(a["steps"]) == len(b["steps"]) == a["steps_run"]
    for x, y in zip(a["steps"], b["steps"]):
        for key in ("loss", "grad_norm", "update_ratio_max"):
            assert _close(x[key], y[key]), (spec, x["step"], key, x[key], y[key])
        assert x["update_ratio_layer"] == y["update_ratio_layer"], (spec, x["step"])


def test_training_two_ranks_equal_one_process(runs):
    """--train-steps: the healthy MLP stays silent and learns, the diverging one is found at the same
    step (loss-divergence, and everything else it sets off: update ratios, dying ReLUs, NaN at step 15),
    on DDP and on FSDP2 as on one process."""
    one = runs["one"]["reports"]
    for strategy in ("ddp", "fsdp"):
        dist = runs[strategy]["reports"]
        for i in TRAINING:
            _same_training(one[i], dist[i])
            assert dist[i]["run"]["distributed"]["strategy"] == strategy
    healthy = one[HEALTHY_TRAIN]
    assert healthy["findings"] == []
    losses = [s["loss"] for s in healthy["training"]["steps"]]
    assert losses[-1] < 0.2 * losses[0]
    diverging = {f["rule"]: f for f in one[DIVERGING_TRAIN]["findings"]}
    assert {"loss-divergence", "update-ratio", "non-finite"} <= set(diverging)
    for strategy in ("ddp", "fsdp"):
        found = {f["rule"]: f for f in runs[strategy]["reports"][DIVERGING_TRAIN]["findings"]}
        for rule in ("loss-divergence", "non-finite", "dead-relus", "update-ratio"):
            assert found[rule]["evidence"].get("onset_step") == diverging[rule]["evidence"].get("onset_step"), rule
            assert found[rule]["layer"] == diverging[rule]["layer"], rule


def test_training_reductions(runs):
    """Unequal slices (7 examples: 4 and 3), parameters missing from the optimizer, and a NaN that only rank
    1's half of the batch produces, from the third training step: the same verdicts as one process, and
    rank 1 named as where it started."""
    one = runs["one"]["reports"]
    partial = one[PARTIAL_TRAIN]["training"]
    assert partial["params_not_in_optimizer"] == ["4.weight", "4.bias"]
    nan_one = one[NAN_TRAIN]["training"]
    assert nan_one["stopped"] == "NaN/Inf at step 2" and "first_nonfinite_rank" not in nan_one
    for strategy in ("ddp", "fsdp"):
        reports = runs[strategy]["reports"]
        assert reports[PARTIAL_TRAIN]["training"]["params_not_in_optimizer"] == ["4.weight", "4.bias"]
        assert [f["rule"] for f in reports[PARTIAL_TRAIN]["findings"]] == [f["rule"] for f in one[PARTIAL_TRAIN]["findings"]]
        nan = reports[NAN_TRAIN]
        assert nan["training"]["stopped"] == "NaN/Inf at step 2", strategy
        assert nan["training"]["first_nonfinite_rank"]["forward"] == 1, strategy
        assert any(f["rule"] == NAN_RULE and f["evidence"].get("onset_step") == 2 for f in nan["findings"])


def test_one_rank_raising_ends_both_with_exit_3(tmp_path):
    """With --fsdp: the flag's own path (distributed.start with fsdp, prepare_model shards) up to the forward."""
    proc = _torchrun(f"{DATA}:RaisesOnRank1", "--input-shape", "8,16", "--fsdp", "-o", "json:r.json", cwd=tmp_path,
                     timeout=240)
    assert proc.returncode != 0
    assert "error: rank 1: forward failed" in proc.stderr and "boom on rank 1" in proc.stderr
    assert proc.stderr.count("error: rank") == 1   # rank 0 only lost its peer: it prints nothing
    codes = [int(c) for c in re.findall(r"exitcode\s*:\s*(-?\d+)", proc.stderr)]
    assert codes and all(c == 3 for c in codes), proc.stderr[-3000:]
    assert proc.returncode == 1   # torchrun's own code for "a worker failed", whatever the workers' codes
    # What a CI gate reads instead: rank 0's report, written although rank 0 itself only lost its peer.
    doc = json.loads((tmp_path / "r.json").read_text())
    assert doc["summary"]["exit_code"] == 3 and doc["summary"]["verdict"] == "error"
    assert "rank 0: another rank ended" in doc["error"]["message"] or "rank 1:" in doc["error"]["message"]


def test_one_rank_raising_in_the_rehearsal_ends_both_with_exit_3(tmp_path):
    """--train-steps with --fsdp (the flag's own path: the sharded model trains): rank 1 raises in its second
    training step; both ranks end with exit 3, rank 0 writes the error report."""
    proc = _torchrun(f"{DATA}:RaisesInRehearsalOnRank1", "--input-shape", "8,16", "--fsdp", "--train-steps", "3",
                     "-o", "json:r.json", cwd=tmp_path, timeout=240)
    assert "error: rank 1: forward failed" in proc.stderr and "boom in the rehearsal on rank 1" in proc.stderr
    assert proc.stderr.count("error: rank") == 1
    codes = [int(c) for c in re.findall(r"exitcode\s*:\s*(-?\d+)", proc.stderr)]
    assert codes and all(c == 3 for c in codes), proc.stderr[-3000:]
    assert (tmp_path / "r.json").exists(), proc.stderr[-3000:]
    doc = json.loads((tmp_path / "r.json").read_text())
    assert doc["summary"]["exit_code"] == 3 and doc["summary"]["verdict"] == "error"
