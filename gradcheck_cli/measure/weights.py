"""Weight statistics, taken once before the passes: norms, `.weight` RMS and fan-in, `.bias` means and
nn.RNN's largest singular value of weight_hh_l0, reduced on the device (parameter norms in one
batched call), one transfer back."""

from __future__ import annotations

import math

import torch
import torch.nn as nn

from gradcheck_cli import stats as S
from gradcheck_cli.measure import kernels as K
from gradcheck_cli.measure.inventory import Inventory


def weight_stats(inv: Inventory) -> None:
    index_of = {id(p): i for i, p in enumerate(inv.params)}
    scalars: list[torch.Tensor] = []                    # 0-d float32 tensors, stacked once
    wanted: list[tuple[S.LayerStats, str, float]] = []  # (stats, field, divisor applied on the host)
    rms_from_norm: list[tuple[S.LayerStats, int, int]] = []
    with torch.no_grad():
        norms = [v.sqrt() for v in K.sumsq_many([p.detach() for p in inv.params])] if inv.params else []
        for layer in inv.layers:
            mod = layer.module
            if mod is None or layer.stats.role != S.PARAM:
                continue
            w = getattr(mod, "weight", None)
            if isinstance(w, torch.Tensor) and w.dim() >= 2 and w.is_floating_point() and w.numel():
                fan_in, fan_out = nn.init._calculate_fan_in_and_fan_out(w)
                layer.stats.fan_in, layer.stats.fan_out = int(fan_in), int(fan_out)
                i = index_of.get(id(w))
                if i is not None:   # the std (RMS) follows from the norm already being computed
                    rms_from_norm.append((layer.stats, i, w.numel()))
                else:               # a frozen weight
                    scalars.append(K.sumsq(w.detach()).sqrt())
                    wanted.append((layer.stats, "weight_rms", math.sqrt(w.numel())))
            elif (isinstance(w, torch.Tensor) and w.dim() == 1 and w.is_floating_point() and w.numel()
                  and isinstance(getattr(mod, "eps", None), (int, float))):
                # A normalisation layer's scale (gamma) and eps: a gamma initialised near 0 shrinks every
                # activation after it, an eps of 0 divides by zero on a constant input.
                scalars.append(K.sumsq(w.detach()).sqrt())
                wanted.append((layer.stats, "norm_weight_rms", math.sqrt(w.numel())))
                layer.stats.norm_eps = float(mod.eps)
            b = getattr(mod, "bias", None)
            if isinstance(b, torch.Tensor) and b.numel() and b.is_floating_point():
                scalars.append(b.detach().mean(dtype=torch.float32))
                wanted.append((layer.stats, "bias_mean", 1.0))
            if isinstance(mod, nn.RNN):
                whh = getattr(mod, "weight_hh_l0", None)
                if isinstance(whh, torch.Tensor):
                    scalars.append(torch.linalg.matrix_norm(whh.detach().float(), ord=2))
                    wanted.append((layer.stats, "recurrent_sigma_max", 1.0))
        parts = [*norms, *scalars]
        if not parts:
            return
        dev = parts[0].device
        flat = torch.stack([t if t.device == dev else t.to(dev) for t in parts]).cpu().tolist()
    n = len(inv.params)
    wnorms, rest = flat[:n], flat[n:]
    for layer in inv.layers:
        if layer.owned:
            layer.stats.weight_norm = math.sqrt(sum(wnorms[i] ** 2 for i in layer.owned))
    for st, i, numel in rms_from_norm:
        st.weight_rms = wnorms[i] / math.sqrt(numel)
    for (st, key, divisor), v in zip(wanted, rest):
        setattr(st, key, v / divisor)
