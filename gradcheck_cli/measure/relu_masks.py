"""The training rehearsal's ReLU watch: per step and per unit, whether each ReLU-family module's unit
fired (a forward hook keeping a mask on the device), and at the end the mask of step 0 and the last step
each unit fired in (under torchrun reduced across ranks: a unit is dead only if dead on every rank)."""

from __future__ import annotations

from typing import Any, Callable

import torch
import torch.nn as nn

from gradcheck_cli import stats as S
from gradcheck_cli.measure.passes import Monitor


class ReluWatch:
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
