"""The training rehearsal (train_steps > 0): a short real training run on a deep copy of the model,
watched by the same Monitor (attach / step / detach) as the check, with verdicts on the trajectory.

Per step: forward and loss (under torch.autocast for bf16/fp16), backward (through a GradScaler for
fp16, as users train), Monitor.step (one host transfer: loss, global and per-layer gradient norms,
NaN/Inf cue), then the optimizer step. Around the optimizer step the parameters are copied once
(foreach) to measure |update| / |weight| per layer; those norms stay on the device and come back in one
transfer at the end. ReLU-family modules get a forward hook keeping which units fired in each step.

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
import inspect
import math
from dataclasses import dataclass
from typing import Any, Callable

import torch
import torch.nn as nn

from gradcheck_cli import stats as S
from gradcheck_cli.deadline import set_phase
from gradcheck_cli.errors import InputError, UserCodeError, exc_line
from gradcheck_cli.measure import model_state
from gradcheck_cli.measure.distributed import local
from gradcheck_cli.measure.passes import Monitor, measuring, user_error

OPTIMIZERS = ("sgd", "adam", "adamw")
DEFAULT_LR = {"sgd": 1e-2, "adam": 1e-3, "adamw": 1e-3}
from gradcheck_cli.choices import PRECISIONS  # noqa: E402,F401  (the one list)
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


def build_optimizer(spec: str, lr: float | None, model: nn.Module) -> tuple[Any, Any, str, float | None]:
    """(optimizer, scheduler or None, description, lr of the first group)."""
    if spec in OPTIMIZERS:
        rate = DEFAULT_LR[spec] if lr is None else lr
        params = [p for p in model.parameters() if p.requires_grad]
        if spec == "sgd":
            opt = torch.optim.SGD(params, lr=rate, momentum=0.9)
            desc = f"sgd (lr {rate:g}, momentum 0.9)"
        elif spec == "adam":
            opt = torch.optim.Adam(params, lr=rate)
            desc = f"adam (lr {rate:g})"
        else:
            opt = torch.optim.AdamW(params, lr=rate)
            desc = f"adamw (lr {rate:g}, weight decay 0.01)"
        return opt, None, desc, rate
    from gradcheck_cli import loading

    if ":" not in spec:
        raise InputError(f"unknown optimizer {spec!r}: expected one of {', '.join(OPTIMIZERS)}, FILE.py:NAME "
                         "or pkg.mod:NAME")
    factory = loading.load_object(spec, what="optimizer")
    if not callable(factory):
        raise InputError(f"optimizer {spec}: {type(factory).__name__} is not callable",
                         hint="point to a function (model) or (params) returning a torch.optim.Optimizer")
    try:
        first = next(iter(inspect.signature(factory).parameters), None)
    except (TypeError, ValueError):
        first = None
    set_phase("optimizer")
    try:
        made = factory(model) if first == "model" else factory(model.parameters())
    except (InputError, UserCodeError):
        raise
    except Exception as exc:
        raise UserCodeError(exc_line(exc), phase="optimizer", where=spec, original=exc) from exc
    sched = None
    if isinstance(made, tuple) and len(made) == 2:
        made, sched = made
    if not isinstance(made, torch.optim.Optimizer):
        raise InputError(f"optimizer factory {spec} returned {type(made).__name__}, not a torch.optim.Optimizer",
                         hint="return an optimizer, or (optimizer, scheduler)")
    if lr is not None:
        for g in made.param_groups:
            g["lr"] = lr
    rate = made.param_groups[0].get("lr") if made.param_groups else None
    rate = float(rate) if isinstance(rate, (int, float)) else None
    return made, sched, spec + (f" (lr {rate:g})" if rate is not None else ""), rate


class _ReluWatch:
    """Per-step, per-unit 'fired' masks of the ReLU-family modules (kept on the device)."""

    def __init__(self, mon: Monitor) -> None:
        self.layers = [l for l in mon.inv.layers if l.kind == S.RELU and l.module is not None]
        self.step_mask: dict[int, torch.Tensor] = {}
        self.masks: dict[int, list[torch.Tensor]] = {l.slot: [] for l in self.layers}
        self.bad: set[int] = set()
        self.handles = [l.module.register_forward_hook(self._hook(l)) for l in self.layers]

    def _hook(self, layer: Any) -> Callable:
        def hook(module: nn.Module, args: Any, out: Any) -> None:
            if not isinstance(out, torch.Tensor) or out.dim() < 1 or layer.slot in self.bad:
                return
            d = out.detach()
            dims = layer.alive_dims if layer.alive_ndim == d.dim() and layer.alive_dims is not None else (
                tuple(i for i in range(d.dim()) if i != (1 if d.dim() >= 4 else d.dim() - 1)))
            if d.dim() >= 3 and dims == (0,) + tuple(range(2, d.dim())) and d.is_contiguous():
                fired = d.flatten(2).amax(2).amax(0).gt(0)   # channels: reduce the contiguous dims first
            else:
                fired = torch.amax(d, dims).gt(0) if dims else d.gt(0)
            prev = self.step_mask.get(layer.slot)
            if prev is None:
                self.step_mask[layer.slot] = fired
            elif prev.shape == fired.shape:
                self.step_mask[layer.slot] = prev | fired
            else:
                self.bad.add(layer.slot)
        return hook

    def end_step(self, ran: bool) -> None:
        for slot, m in self.step_mask.items():
            if ran:
                self.masks[slot].append(m)
        self.step_mask = {}

    def remove(self) -> None:
        for h in self.handles:
            h.remove()
        self.handles = []

    def result(self, mon: Any = None) -> tuple[dict[str, list[bool]], dict[str, list[int]]]:
        """mon: a DistMonitor under torchrun: the (steps, units) masks reduced by its reduce_vectors ("alive"
        by max: a unit fired in a step if it fired on any rank)."""
        start: dict[str, list[bool]] = {}
        last: dict[str, list[int]] = {}
        kept = []
        for layer in self.layers:
            ms = self.masks[layer.slot]
            if layer.slot in self.bad or not ms or any(m.shape != ms[0].shape for m in ms):
                continue
            kept.append((layer, torch.stack(ms)))                      # (steps, units)
        if mon is not None and kept:
            reduced = mon.reduce_vectors([("alive", m.to(torch.float32)) for _, m in kept])
            kept = [(layer, r.gt(0)) for (layer, _), r in zip(kept, reduced)]
        for layer, stacked in kept:
            steps = torch.arange(stacked.shape[0], device=stacked.device).unsqueeze(1)
            last_alive = torch.where(stacked, steps, torch.full_like(steps, -1)).amax(0)
            start[layer.name] = stacked[0].cpu().tolist()
            last[layer.name] = last_alive.cpu().tolist()
        return start, last


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
        opt_desc, lr = _changed_optimizer(opt, net, train, opt_desc, lr)
    cuda = model_state.seeded_devices(net, device)
    notes: list[str] = []
    mon = (Monitor(net) if dist is None else dist.training_monitor(net)).attach()
    # The trajectory rules read parameter gradients, not |dLoss/dOutput| per layer: skipping those output-
    # gradient hooks keeps a convolutional net's rehearsal near the plain loop's cost (the diagnosis of a
    # NaN/Inf step still takes them, in backward order).
    mon.hooks.output_grads = False
    relus = _ReluWatch(mon)
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
    upd_sq: list[torch.Tensor] = []      # per step: (2, n_params) squared norms of update and weight
    before: list[torch.Tensor] | None = None   # the weights before a step, then the step's update
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
                # The weights before the step, into one buffer kept for the whole run (a fresh copy per step
                # made the allocator map and fault in the model's size every step).
                current = [local(p.detach()) for p in params]
                if before is None:
                    before = [torch.empty_like(c) for c in current]
                torch._foreach_copy_(before, current)
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
                w_sq = torch.stack([n * n for n in torch._foreach_norm(before)]).to(torch.float32)
                torch._foreach_sub_(before, [local(p.detach()) for p in params])
                u_sq = torch.stack([n * n for n in torch._foreach_norm(before)]).to(torch.float32)
                upd_sq.append(torch.stack([u_sq, w_sq]))
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
    if upd_sq:
        flat = torch.stack(upd_sq).cpu().tolist()      # (steps, 2, n_params)
        if dist is not None:
            flat = _reduce_updates(flat, mon)
        weight_bad_step = None
        for layer in mon.inv.layers:
            if not layer.owned:
                continue
            rs: list[float | None] = []
            for t, (u, w) in enumerate(flat):
                uu = sum(u[i] for i in layer.owned)
                ww = sum(w[i] for i in layer.owned)
                if not math.isfinite(uu):
                    nonfinite_params |= {i for i in layer.owned if not math.isfinite(u[i])}
                    weight_bad_step = t if weight_bad_step is None else min(weight_bad_step, t)
                rs.append(math.sqrt(uu / ww) if ww > 0 else None)
            traj.update_ratios[layer.name] = rs
        # weights went non-finite in an update before the loss or a gradient did
        if weight_bad_step is not None and (traj.nonfinite_step is None or weight_bad_step < traj.nonfinite_step):
            traj.nonfinite_step, traj.nonfinite_first = weight_bad_step, "weight"
            traj.stopped = traj.stopped or f"NaN/Inf weights after step {weight_bad_step}"
    traj.nonfinite_layers = [l.name for l in mon.inv.layers if any(i in nonfinite_params for i in l.owned)]
    if traj.params_not_in_optimizer:
        notes.append(f"{len(traj.params_not_in_optimizer)} trainable parameters are in no parameter group of the "
                     "optimizer: they never change")
    del net, opt, mon
    return traj, notes


def _changed_optimizer(opt: Any, net: nn.Module, train: TrainSettings, desc: str,
                       lr: float | None) -> tuple[str, float | None]:
    """A verified fix: scale every group's learning rate, add the missing parameters as a group."""
    if train.lr_scale != 1.0:
        for g in opt.param_groups:
            g["lr"] = g["lr"] * train.lr_scale
            if "initial_lr" in g:
                g["initial_lr"] = g["initial_lr"] * train.lr_scale
        lr = lr * train.lr_scale if lr is not None else None
        desc = f"{desc} x{train.lr_scale:g}"
    if train.add_params:
        named = dict(net.named_parameters())
        have = {id(p) for g in opt.param_groups for p in g["params"]}
        extra = [named[n] for n in train.add_params if n in named and id(named[n]) not in have]
        if extra:
            opt.add_param_group({"params": extra})
    return desc, lr


def _reduce_updates(flat: list, mon: Any) -> list:
    """Under torchrun: the per-parameter sums of squares of every step's update and weight, reduced
    across ranks by measure.distributed.reduce_record (sharded FSDP2 parameters: the shards' sums added;
    DDP's replicated parameters: rank 0's), in one record for the whole run."""
    from gradcheck_cli.measure.distributed import reduce_record
    from gradcheck_cli.measure.record import StepRecord

    entries, values = [], []
    for t, (u, w) in enumerate(flat):
        for key, vals in (("pupd", u), ("pweight", w)):
            entries.append((("update", t), key, len(values), len(vals), 0))
            values.extend(vals)
    rec = reduce_record(StepRecord(entries=entries, values=values), mon.group, grads=mon.grads)
    out = []
    for t, (u, _) in enumerate(flat):
        n = len(u)
        uu = rec.get(("update", t), "pupd") or []
        ww = rec.get(("update", t), "pweight") or []
        assert len(uu) == len(ww) == n
        out.append((uu, ww))
    return out


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
