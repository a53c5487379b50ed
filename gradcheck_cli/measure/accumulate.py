"""Folding the per-step records into a run: per-layer totals, the per-step series, and `RunStats`.

A normal step's record adds up (saturation counts, calls, output-gradient sums of squares) and extends
the per-step series (loss, global gradient norm, per-layer parameter- and output-gradient norms); a
diagnosis step's record only names where NaN/Inf start. `finish` brings back the device-side per-unit
masks and time profiles in one transfer and builds the RunStats the rules read.
"""

from __future__ import annotations

import math
from typing import Any

import torch

from gradcheck_cli import stats as S
from gradcheck_cli.measure.inventory import Inventory, Layer
from gradcheck_cli.measure.record import StepRecord

PROFILE_POINTS = 64


def mean(values: list[float]) -> float | None:
    if not values:
        return None
    return sum(values) / len(values)


class Accumulator:
    def __init__(self, inv: Inventory) -> None:
        self.inv = inv
        n = len(inv.params)
        self.steps = 0
        self.losses: list[float] = []
        self.total_norms: list[float] = []
        self.layer_grad_norms: dict[int, list[float]] = {}     # slot -> output-gradient norm per step
        self.layer_pgrad_norms: dict[int, list[float]] = {}    # slot -> parameter-gradient norm per step
        self.calls: dict[int, float] = {}
        self.sat: dict[int, float] = {}
        self.sat_n: dict[int, float] = {}
        self.ever_grad = [False] * n
        self.ever_nonzero = [False] * n
        self.nonfinite_param = [0] * n
        self.input_nonfinite = 0
        self.first_nonfinite_forward: str | None = None
        self.first_nonfinite_backward: str | None = None
        # Distributed runs: [(kind, vector)] -> vectors reduced across ranks ("alive" masks, "time" profiles)
        self.reduce_vectors: Any = None

    # -- one step ---------------------------------------------------------------------------------------------

    def fold(self, record: StepRecord, *, grad_scale: float = 1.0, param_grad_scale: float = 1.0) -> dict[str, Any]:
        """Add a normal step's record. `grad_scale`: the factor the loss was multiplied by before backward
        (AMP loss scaling); gradient sums of squares (keys with grad_power 2) are divided by its square;
        `param_grad_scale` the same for the parameters' gradients (1 once they were unscaled). Returns
        the step's summary: loss, global norm and whether a non-finite value was seen (the cue for a
        diagnosis)."""
        inv2 = 1.0 / (grad_scale * grad_scale) if grad_scale != 1.0 else 1.0
        pinv2 = 1.0 / (param_grad_scale * param_grad_scale) if param_grad_scale != 1.0 else 1.0
        layers = self.inv.layers
        grad_sq: dict[int, float] = {}
        extras: dict[Any, list[float]] = {}
        suspicious = False
        for slot, name, vals, _seq in record.items():
            if slot is None:
                extras[name] = vals
                continue
            if isinstance(slot, tuple):
                if name == "pgrad":   # slot ("params", indexes of the parameters that got a gradient)
                    extras["pgrad"] = vals
                    extras["present"] = list(slot[1])
                continue
            v = vals[0]
            if name == "g":
                if not math.isfinite(v):
                    suspicious = True
                grad_sq[slot] = grad_sq.get(slot, 0.0) + v * inv2   # sums of squares add up over calls
            elif name == "sat":
                self.sat[slot] = self.sat.get(slot, 0.0) + v
            elif name == "dead" and v == 0:
                layers[slot].all_alive = True   # a unit that fired once can never be "dead in every pass" again
        for key, totals in (("calls", self.calls), ("sat_n", self.sat_n)):   # vectors by layer slot
            for slot, v in enumerate(extras.get(key, ())):
                if v:
                    totals[slot] = totals.get(slot, 0.0) + v
        for slot, sq in grad_sq.items():
            self.layer_grad_norms.setdefault(slot, []).append(math.sqrt(sq))
        self.steps += 1
        has_loss = "loss" in extras
        loss = extras["loss"][0] if has_loss else math.nan
        self.losses.append(loss)
        input_nf = extras.get("input_nf", [0.0])[0]
        self.input_nonfinite = max(self.input_nonfinite, int(input_nf))
        present = extras.get("present", [])
        norms = {i: math.sqrt(v * pinv2) if v >= 0 else v for i, v in zip(present, extras.get("pgrad", []))}
        total_sq = 0.0
        for i, n in norms.items():
            self.ever_grad[i] = True
            if n != 0.0:
                self.ever_nonzero[i] = True
            total_sq += n * n
        total = math.sqrt(total_sq)
        self.total_norms.append(total)
        for layer in layers:
            if layer.owned and any(i in norms for i in layer.owned):
                self.layer_pgrad_norms.setdefault(layer.slot, []).append(
                    math.sqrt(sum(norms.get(i, 0.0) ** 2 for i in layer.owned)))
        bad = (not math.isfinite(total_sq) or (has_loss and not math.isfinite(loss)) or suspicious
               or input_nf > 0)
        return {"loss": loss, "total_grad_norm": total, "nonfinite": bad}

    def fold_diagnosis(self, record: StepRecord, op_list: list[dict[str, Any]]) -> None:
        """A diagnosis step: exact 0/1 flags in forward and backward order; names where NaN/Inf start."""
        fwd: list[tuple[int, str]] = []
        bwd: list[tuple[int, str]] = []
        layers = self.inv.layers
        for slot, name, vals, seq in record.items():
            if slot is None:
                continue
            if isinstance(slot, tuple):
                if slot[0] == "params":
                    if name == "pgrad_bad":
                        for i, flag in zip(slot[1], vals):
                            if flag > 0:
                                self.nonfinite_param[i] = 1
                    continue
                entry = op_list[slot[1]]   # a watched op call site
                if vals[0] > 0:
                    if name == "op":
                        entry["forward_nonfinite"] += 1
                        fwd.append((seq, entry["label"]))
                    else:
                        entry["backward_nonfinite"] += 1
                        bwd.append((seq, entry["label"]))
                continue
            if vals[0] <= 0:
                continue
            layer = layers[slot]
            if name == "out":
                layer.stats.nonfinite_outputs += 1
                fwd.append((seq, layer.name))
            elif name == "g":
                layer.stats.nonfinite_output_grads += 1
                bwd.append((seq, layer.name))
        if fwd:
            self.first_nonfinite_forward = min(fwd)[1]
        if bwd:
            self.first_nonfinite_backward = min(bwd)[1]

    # -- the run ----------------------------------------------------------------------------------------------

    def finish(self, op_list: list[dict[str, Any]]) -> S.RunStats:
        inv = self.inv
        steps = self.steps
        for layer in inv.layers:
            layer.stats.nonfinite_param_grads = sum(1 for i in layer.owned if self.nonfinite_param[i])
        layers = self._finish_layers(steps)
        names = {layer.slot: layer.name for layer in inv.layers}
        series = S.StepSeries(
            losses=list(self.losses), total_grad_norms=list(self.total_norms),
            layer_grad_norms={names[s]: v for s, v in self.layer_pgrad_norms.items()},
            layer_output_grad_norms={names[s]: v for s, v in self.layer_grad_norms.items()},
        )
        return S.RunStats(
            layers=layers,
            steps=steps,
            losses=list(self.losses),
            parameters=inv.all_param_count,
            trainable_parameters=sum(p.numel() for p in inv.params),
            total_grad_norm=mean(self.total_norms),
            total_grad_norm_max=max(self.total_norms) if self.total_norms else None,
            input_nonfinite=self.input_nonfinite,
            first_nonfinite_forward=self.first_nonfinite_forward,
            first_nonfinite_backward=self.first_nonfinite_backward,
            unused_parameters=[n for n, g in zip(inv.param_names, self.ever_grad) if not g],
            zero_grad_parameters=[n for n, g, nz in zip(inv.param_names, self.ever_grad, self.ever_nonzero)
                                  if g and not nz],
            nonfinite_ops=[{k: v for k, v in e.items() if k != "index"} for e in op_list
                           if e["forward_nonfinite"] or e["backward_nonfinite"]],
            series=series,
        )

    def _finish_layers(self, steps: int) -> list[S.LayerStats]:
        """Bring back per-unit maxima and moments and time profiles (one transfer) and finalise LayerStats."""
        vectors: list[torch.Tensor] = []
        owners: list[tuple[Layer, str, int]] = []
        for layer in self.inv.layers:
            if layer.alive is not None:   # NaN (not <= 0) counts as alive: +inf survives a max over ranks
                vectors.append(torch.nan_to_num(layer.alive.to(torch.float32), nan=math.inf))
                owners.append((layer, "alive", layer.alive.numel()))
                mom = moments_vector(layer)
                if mom is not None:
                    vectors.append(mom)
                    owners.append((layer, "moments", mom.numel()))
            if layer.time_sq is not None:
                vectors.append(layer.time_sq.to(torch.float32))
                owners.append((layer, "time", layer.time_sq.numel()))
        flat: list[float] = []
        if vectors and self.reduce_vectors is not None:
            vectors = self.reduce_vectors([(what, v) for (_, what, _), v in zip(owners, vectors)])
        if vectors:
            dev = vectors[0].device
            flat = torch.cat([v.to(dev, torch.float64) for v in vectors]).cpu().tolist()
        pos = 0
        maxima: dict[int, tuple[Layer, list[float]]] = {}
        moments: dict[int, list[float]] = {}
        for layer, what, n in owners:
            vals = flat[pos:pos + n]
            pos += n
            if what == "alive":
                maxima[layer.slot] = (layer, vals)
            elif what == "moments":
                moments[layer.slot] = vals
            else:
                set_time_profile(layer.stats, [math.sqrt(max(v, 0.0)) for v in vals])
        for slot, (layer, vals) in maxima.items():
            set_relu_units(layer.stats, vals, moments.get(slot))

        # Depth order: first forward call; modules never called are placed after the module registered
        # just before them (e.g. nn.MultiheadAttention.out_proj, whose weights are used by its parent).
        order: list[tuple[float, int]] = []
        last_key = -1.0
        for layer in self.inv.layers:
            if layer.first_call is not None:
                last_key = float(layer.first_call)
            else:
                last_key += 1e-3
            order.append((last_key, layer.slot))
        order.sort()
        out = []
        for i, (_, slot) in enumerate(order):
            layer = self.inv.layers[slot]
            st = layer.stats
            st.index = i
            st.calls = round(self.calls.get(slot, 0.0) / steps) if steps else 0
            gn = self.layer_grad_norms.get(slot, [])
            st.output_grad_norm = mean(gn)
            st.output_grad_norm_max = max(gn) if gn else None
            pn = self.layer_pgrad_norms.get(slot, [])
            st.grad_norm = mean(pn)
            st.grad_norm_max = max(pn) if pn else None
            if self.sat_n.get(slot):
                st.saturated_fraction = self.sat.get(slot, 0.0) / self.sat_n[slot]
            out.append(st)
        return out


def set_time_profile(st: S.LayerStats, per_t: list[float]) -> None:
    n = len(per_t)
    st.time_steps = n
    if n == 0:
        return
    if n > PROFILE_POINTS:   # down-sample to at most 64 points (RMS over equal chunks)
        edges = [round(i * n / PROFILE_POINTS) for i in range(PROFILE_POINTS + 1)]
        st.time_grad_profile = [
            math.sqrt(sum(v * v for v in per_t[a:b]) / max(b - a, 1)) for a, b in zip(edges, edges[1:])
        ]
    else:
        st.time_grad_profile = list(per_t)
    k = max(1, n // 10)
    early = sum(per_t[:k]) / k
    late = sum(per_t[-k:]) / k
    st.time_grad_first_last = early / late if late > 0 else (math.inf if early > 0 else None)
    hi, lo = max(per_t), min(per_t)
    st.time_grad_min_max = lo / hi if hi > 0 else None


# Dead ReLU units versus units that are merely off on these inputs (see docs/calibration.md, "Dead ReLUs
# versus correlation collapse"). A unit is off when its pre-activation was <= 0 for every value seen. The
# layer's coherence is the share of its firing units' pre-activation variance that lies between units
# (the same for every example and position: 1 = every example gives the same vector, ~0 = varied
# inputs); all units when fewer than MIN_FIRED fired. An off unit is dead when it is also
#   off on varied inputs: coherence below VARIED_COHERENCE and at least MIN_SAMPLES values per unit, or
#   far below zero: its largest pre-activation is below -DEAD_MARGIN times the layer's spread (the std of
#     the firing units' pre-activations, between and within units), or
#   off whatever the input: coherence above INPUT_INDEPENDENT (the pre-activation is the same for every
#     example: zero weights, or a signal that vanished before it so that only the biases are left), or the
#     unit's own pre-activation varies by less than that share of the layer's variance.
# In a deep plain ReLU net the examples' representations become nearly parallel (coherence near 1): a
# healthy unit can then be off on a whole small batch a fraction of a std below zero; it is not dead.
DEAD_MARGIN = S.DEAD_MARGIN
VARIED_COHERENCE = S.VARIED_COHERENCE   # healthy collapsed layers of width >= 32: >= 0.42
MIN_SAMPLES = 16
MIN_FIRED = 4   # fewer firing units than this: their spread is measured over every unit
INPUT_INDEPENDENT = 0.99999   # pooled squeeze-excite features of healthy nets reach 0.9991


def moments_vector(layer: Layer) -> torch.Tensor | None:
    """[per-unit sums..., per-unit sums of squares..., count] of a ReLU layer's pre-activation (float64, on
    the device; summed over ranks), or None when its pre-activation was not seen in every call."""
    mom = layer.pre_moments
    if mom is None or layer.pre_blind or layer.alive is None or mom[0].shape[-1] != layer.alive.numel():
        return None
    acc, n = mom
    return torch.cat((acc.reshape(-1), torch.tensor([float(n)], dtype=torch.float64, device=acc.device)))


def set_relu_units(st: S.LayerStats, maxima: list[float], moments: list[float] | None) -> None:
    """Units, off and dead units, margins and coherence of a ReLU layer from its per-unit maxima of the
    pre-activation and (when seen) its moments [per-unit sums..., per-unit sums of squares..., count of
    values]. Without the moments every off unit counts as dead (all the output can tell)."""
    c = len(maxima)
    off = [m for m in maxima if m <= 0]
    st.units = c
    st.off_units = len(off)
    st.dead_units = len(off)
    st.unit_margin_min = st.off_margin_median = st.coherence = st.unit_samples = None
    if moments is None or c == 0 or len(moments) != 2 * c + 1 or not moments[-1] > 0:
        return
    per_unit = moments[-1] / c
    means = [v / per_unit for v in moments[:c]]
    within = [max(q / per_unit - m * m, 0.0) for q, m in zip(moments[c:2 * c], means)]
    st.unit_samples = int(round(per_unit))
    # (Lists, not generators, and min/sorted before the division by the positive scale, which keeps the
    # order: the same numbers as the plain per-unit loops, ~2x faster; it runs once per ReLU layer.)
    isfinite = math.isfinite
    fired = [j for j, m in enumerate(maxima) if m > 0 and isfinite(m)]
    if len(fired) >= MIN_FIRED:
        pool_means = [means[j] for j in fired]
        pool_within = [within[j] for j in fired]
    else:
        pool_means, pool_within = means, within
    n_pool = len(pool_means)
    mu = sum(pool_means) / n_pool
    between = sum([(m - mu) ** 2 for m in pool_means]) / n_pool
    inside = sum(pool_within) / n_pool
    total = between + inside
    if not isfinite(total):
        return
    st.coherence = between / total if total > 0 else None
    scale = math.sqrt(total)
    if scale > 0:
        finite = [m for m in maxima if isfinite(m)]
        st.unit_margin_min = min(finite) / scale if finite else None
        if off:
            st.off_margin_median = sorted(off)[len(off) // 2] / scale
    varied = st.coherence is not None and st.coherence < VARIED_COHERENCE and per_unit >= MIN_SAMPLES
    fixed = st.coherence is not None and st.coherence > INPUT_INDEPENDENT
    if varied or fixed or scale == 0:
        return   # every off unit is dead: off on varied inputs, or a pre-activation <= 0 whatever the input
    # An off unit whose own pre-activation is the same for every example (its inputs never move it) is dead
    # too, as is one far below zero.
    flat = (1.0 - INPUT_INDEPENDENT) * total
    st.dead_units = sum(1 for j, m in enumerate(maxima) if m <= 0 and (m < -DEAD_MARGIN * scale or within[j] <= flat))
