"""The training rehearsal (train_steps > 0): a short real training run on a deep copy of the model,
watched by the same Monitor (attach / step / detach) as the check, with verdicts on the trajectory.

Per step: forward and loss (under torch.autocast for bf16/fp16), backward (through a GradScaler for
fp16, as users train), Monitor.step (one host transfer: loss, global and per-layer gradient norms,
NaN/Inf cue), then the optimizer step (optim.py: built-in or a factory). Around the optimizer step the
parameters are copied once (foreach) to measure |update| / |weight| per layer (updates.py); those norms
stay on the device and come back in one transfer at the end. ReLU-family modules get a forward hook
keeping which units fired in each step (relu_masks.py).

A non-finite loss or gradient stops the run after that step is re-run once in the Monitor's diagnosis
mode (same batch, same seed, weights not yet updated), which names the first layer or op. Under fp16 a
non-finite gradient with a finite loss is what GradScaler skips: the step is counted as skipped instead.

The user's model is never touched: only the copy trains, and it is dropped at the end.

Under torchrun (`dist`: the distributed.Driver of the check) the optimizer steps are the data-parallel
steps: strategy ddp trains the deep copy wrapped in DistributedDataParallel, strategy fsdp the FSDP2-
sharded model itself (FSDP2 modules cannot be deep-copied: its local shards are saved and put back), each
rank on its slice of the global batch (distributed.RankBatches; the synthetic pairs are the global ones,
sliced). Each step's record goes through the cross-rank reduction of measure/distributed.py (DistMonitor);
at the end the per-parameter update and weight sums of squares go through the same reduce_record (keys
pupd/pweight: DDP's replicated parameters counted once, FSDP2 shards added), and the ReLU masks through
DistMonitor.reduce_vectors (a unit is dead only if dead on every rank).
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass
from typing import Any, Callable

import torch
import torch.nn as nn

from gradcheck_cli import stats as S
from gradcheck_cli.choices import PRECISIONS  # noqa: F401  (the one list)
from gradcheck_cli.deadline import set_phase
from gradcheck_cli.errors import InputError, UserCodeError, exc_line
from gradcheck_cli.measure import model_state
from gradcheck_cli.measure.optim import build_optimizer, change_optimizer
from gradcheck_cli.measure.passes import Monitor, measuring, user_error
from gradcheck_cli.measure.relu_masks import ReluWatch
from gradcheck_cli.measure.updates import UpdateNorms

SYNTHETIC_POOL = 4          # synthetic batches cycle through this many (input, target) pairs: learnable
FP16_TINY = 2.0 ** -24      # smallest fp16 subnormal


@dataclass
class TrainSettings:
    steps: int
    optimizer: str = "adam"
    lr: float | None = None
    precision: str = "fp32"
    # verified fixes: a changed rehearsal (the copy trains with the fix; the run as given is unchanged)
    lr_scale: float = 1.0                   # every group's learning rate times this
    clip_max_norm: float | None = None      # clip_grad_norm_ before every optimizer step
    add_params: tuple[str, ...] = ()        # parameters (names) added to the optimizer as a new group


def rehearse(model: nn.Module, batches: Any, loss_fn: Any, *, train: TrainSettings, seed: int,
             device: torch.device, progress: Callable[[int, int], None] | None = None,
             dist: Any = None, unused: bool = False) -> tuple[S.Trajectory, list[str]]:
    """Train a deep copy of `model` for train.steps steps; return its trajectory and notes. dist: the
    distributed.Driver under torchrun (unused: the check saw trainable parameters without a gradient)."""
    with measuring():   # GC paused, frames of an escaping exception released (as for the check's passes)
        return _rehearse(model, batches, loss_fn, train=train, seed=seed, device=device, progress=progress,
                         dist=dist, unused=unused)


def _rehearse(model: nn.Module, batches: Any, loss_fn: Any, *, train: TrainSettings, seed: int,
              device: torch.device, progress: Callable[[int, int], None] | None, dist: Any = None,
              unused: bool = False) -> tuple[S.Trajectory, list[str]]:
    from gradcheck_cli import losses
    from gradcheck_cli.batches import SyntheticBatches

    set_phase("train-copy")
    done: Callable[[], None] = lambda: None   # noqa: E731
    if dist is not None:   # DDP around a deep copy, or the FSDP2 model itself (saved, put back by done())
        net, runner, done = dist.training_model(model, unused)
    else:
        try:
            net = copy.deepcopy(model)
        except Exception as exc:
            raise InputError(f"the training rehearsal trains a deep copy of the model (the model is left untouched), "
                             f"and copy.deepcopy failed: {exc_line(exc, 160)}",
                             hint="make the model deep-copyable, or run without the training rehearsal") from None
        runner = net
    try:
        return _train(net, runner, batches, loss_fn, losses, SyntheticBatches, train=train, seed=seed,
                      device=device, progress=progress, dist=dist)
    finally:
        done()


def _train(net: nn.Module, runner: Any, batches: Any, loss_fn: Any, losses: Any, SyntheticBatches: Any, *,
           train: TrainSettings, seed: int, device: torch.device | None,
           progress: Callable[[int, int], None] | None, dist: Any) -> tuple[S.Trajectory, list[str]]:
    """The rehearsal's loop on `net` (forward through `runner`: net, or its DistributedDataParallel)."""
    if device is not None and dist is None:   # under torchrun the model is on the rank's device already
        try:
            net.to(device)
        except RuntimeError as exc:
            raise InputError(f"cannot move the model's copy to {device}: {exc_line(exc, 160)}",
                             reason="device-move") from None
    net.train()
    opt, sched, opt_desc, lr = build_optimizer(train.optimizer, train.lr, net)
    if train.lr_scale != 1.0 or train.add_params:
        opt_desc, lr = change_optimizer(opt, net, opt_desc, lr, lr_scale=train.lr_scale,
                                        add_params=train.add_params)
    cuda = model_state.seeded_devices(net, device)
    notes: list[str] = []
    mon = (Monitor(net) if dist is None else dist.training_monitor(net)).attach()
    # The trajectory rules read parameter gradients, not |dLoss/dOutput| per layer: skipping those output-
    # gradient hooks keeps a convolutional net's rehearsal near the plain loop's cost (the diagnosis of a
    # NaN/Inf step still takes them, in backward order).
    mon.hooks.output_grads = False
    relus = ReluWatch(mon)
    params = mon.params
    names = mon.inv.param_names
    in_opt = {id(p) for g in opt.param_groups for p in g["params"]}
    traj = S.Trajectory(steps_requested=train.steps, optimizer=opt_desc, lr=lr, precision=train.precision)
    traj.params_not_in_optimizer = [n for n, p in zip(names, params) if id(p) not in in_opt]
    traj.layer_params = {l.name: [names[i] for i in l.owned] for l in mon.inv.layers if l.owned}
    synthetic = isinstance(getattr(batches, "source", batches), SyntheticBatches)   # RankBatches wraps it
    dev_type = (device.type if device is not None else "cpu")
    half = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(train.precision)
    scaler = torch.amp.GradScaler(dev_type) if train.precision == "fp16" else None
    updates = UpdateNorms(params)
    nonfinite_params: set[int] = set()
    try:
        with model_state.forked_rng(cuda):
            for step in range(train.steps):
                key = step % SYNTHETIC_POOL if synthetic else step
                set_phase("train-batch")
                batch = batches.get(key, device)
                model_state.seed(seed * 1_000_003 + 7 + step, cuda)
                mon.begin_step()
                opt.zero_grad(set_to_none=True)
                weight = getattr(batches, "weight", 1.0)   # torchrun: n_r * N / B (the global batch's mean loss)
                loss = _forward_backward(runner, batch, loss_fn, losses, mon, dev_type, half, scaler, key, seed,
                                         weight=weight)
                scale = float(scaler.get_scale()) if scaler is not None else 1.0
                if scaler is not None:
                    scaler.unscale_(opt)
                summary = mon.step(loss, grad_scale=scale, grads_unscaled=True)
                loss_ok = math.isfinite(summary["loss"])
                relus.end_step(True)
                if summary["nonfinite"] and (scaler is None or not loss_ok):
                    traj.nonfinite_step = step
                    traj.nonfinite_first = "gradient" if loss_ok else "loss"
                    _diagnose(runner, batch, loss_fn, losses, mon, opt, dev_type, half, scaler, key, seed, step, cuda,
                              weight=weight)
                    rs = mon.acc
                    traj.nonfinite_forward = rs.first_nonfinite_forward
                    traj.nonfinite_backward = rs.first_nonfinite_backward
                    nonfinite_params |= {i for i, f in enumerate(rs.nonfinite_param) if f}
                    traj.stopped = f"NaN/Inf at step {step}"
                    break
                if scaler is not None:
                    traj.loss_scales.append(scale)
                if step == 0 and half is not None:
                    traj.flushed_to_zero = _flushed(net, batch, loss_fn, losses, mon, opt, dev_type, half,
                                                    scaler, key, seed, cuda, step)
                    relus.step_mask = {}
                set_phase("optimizer")
                if train.clip_max_norm is not None:
                    torch.nn.utils.clip_grad_norm_(params, train.clip_max_norm)
                updates.before_step()
                try:
                    if scaler is not None:
                        scaler.step(opt)
                        scaler.update()
                    else:
                        opt.step()
                    if sched is not None:
                        sched.step()
                except Exception as exc:
                    raise UserCodeError(exc_line(exc), phase="optimizer", where=train.optimizer,
                                        original=exc) from exc
                if scaler is not None and float(scaler.get_scale()) < scale:
                    traj.skipped_steps.append(step)
                updates.after_step()
                if progress is not None:
                    progress(step + 1, train.steps)
        run = mon.finish()
    finally:
        relus.remove()
        mon.detach()
    notes.extend(n for n in mon.notes if n not in notes)
    series = run.series or S.StepSeries()
    traj.losses = list(series.losses)
    traj.grad_norms = list(series.total_grad_norms)
    traj.layer_grad_norms = dict(series.layer_grad_norms)
    traj.nonfinite_ops = list(run.nonfinite_ops)
    traj.relu_alive_at_start, traj.relu_last_alive = relus.result(mon if dist is not None else None)
    if dist is not None:
        onset = {k: v for k, v in mon.onset_rank.items() if v is not None}
        traj.nonfinite_rank = onset or None
    # update ratios, one transfer (under torchrun: one reduction, reduce_record with keys pupd/pweight)
    ratios, bad_params, weight_bad_step = updates.ratios(mon.inv.layers, mon if dist is not None else None)
    traj.update_ratios.update(ratios)
    nonfinite_params |= bad_params
    # weights went non-finite in an update before the loss or a gradient did
    if weight_bad_step is not None and (traj.nonfinite_step is None or weight_bad_step < traj.nonfinite_step):
        traj.nonfinite_step, traj.nonfinite_first = weight_bad_step, "weight"
        traj.stopped = traj.stopped or f"NaN/Inf weights after step {weight_bad_step}"
    traj.nonfinite_layers = [l.name for l in mon.inv.layers if any(i in nonfinite_params for i in l.owned)]
    if traj.params_not_in_optimizer:
        notes.append(f"{len(traj.params_not_in_optimizer)} trainable parameters are in no parameter group of the "
                     "optimizer: they never change")
    del net, opt, mon, updates
    return traj, notes


def _forward_backward(net: nn.Module, batch: Any, loss_fn: Any, losses: Any, mon: Monitor, dev_type: str,
                      half: Any, scaler: Any, key: int, seed: int, watch: bool = False,
                      weight: float = 1.0) -> torch.Tensor:
    from contextlib import nullcontext

    set_phase("train-forward")
    try:
        with torch.autocast(dev_type, dtype=half, enabled=half is not None):
            with (mon.watch_functional() if watch else nullcontext()):
                output = net(*batch.args, **batch.kwargs)
            set_phase("train-loss")
            loss, _, _ = losses.compute(loss_fn, output, batch, key, seed)
            if weight != 1.0:   # a rank's unequal slice: the mean of the ranks' losses is the global mean
                loss = loss * weight
    except (InputError, UserCodeError):
        raise
    except Exception as exc:
        raise user_error("forward", exc, mon, batch) from exc
    set_phase("train-backward")
    try:
        (scaler.scale(loss) if scaler is not None else loss).backward()
    except Exception as exc:
        raise user_error("backward", exc, mon, batch) from exc
    return loss.detach().float()


def _diagnose(net: nn.Module, batch: Any, loss_fn: Any, losses: Any, mon: Monitor, opt: Any, dev_type: str,
              half: Any, scaler: Any, key: int, seed: int, step: int, cuda: list[int], weight: float = 1.0) -> None:
    """Re-run the step (same batch and seed, weights not yet updated) checking every layer and op."""
    model_state.seed(seed * 1_000_003 + 7 + step, cuda)
    mon.hooks.diagnose = True
    try:
        mon.begin_step()
        opt.zero_grad(set_to_none=True)
        loss = _forward_backward(net, batch, loss_fn, losses, mon, dev_type, half, None, key, seed, watch=True,
                                 weight=weight)
        mon.step(loss)
    finally:
        mon.hooks.diagnose = False


def _flushed(net: nn.Module, batch: Any, loss_fn: Any, losses: Any, mon: Monitor, opt: Any, dev_type: str,
             half: Any, scaler: Any, key: int, seed: int, cuda: list[int], step: int) -> dict[str, float]:
    """Per layer, the share of gradient entries that are non-zero in fp32 but exactly zero in the
    half-precision step (the gradients of step 0 are in .grad, unscaled). One extra fp32 backward,
    whose statistics are dropped from the Monitor's sink."""
    params = mon.params
    half_zero = [p.grad.eq(0) if p.grad is not None else None for p in params]
    saved = [p.grad for p in params]
    for p in params:
        p.grad = None
    model_state.seed(seed * 1_000_003 + 7 + step, cuda)
    try:
        output = net(*batch.args, **batch.kwargs)
        loss, _, _ = losses.compute(loss_fn, output, batch, key, seed)
        grads = torch.autograd.grad(loss, params, allow_unused=True)
        del output, loss
    finally:
        mon.hooks.end_pass()
        mon.sink.clear()
        mon.hooks.begin_pass()
        for p, g in zip(params, saved):
            p.grad = g
    counts = []
    for hz, g in zip(half_zero, grads):
        if hz is None or g is None:
            counts.append(torch.zeros(2))
        else:
            counts.append(torch.stack([(hz & g.ne(0)).sum().float(), torch.tensor(float(g.numel()),
                                                                                  device=g.device)]).cpu())
    out: dict[str, float] = {}
    for layer in mon.inv.layers:
        if not layer.owned:
            continue
        lost = sum(float(counts[i][0]) for i in layer.owned)
        total = sum(float(counts[i][1]) for i in layer.owned)
        if total:
            out[layer.name] = lost / total
    return out
