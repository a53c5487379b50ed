from __future__ import annotations

from collections import OrderedDict
from typing import Any

from gradcheck_cli.findings import Finding, Severity
from gradcheck_cli import stats as S
from gradcheck_cli.rules._common import common_prefix, list_names, name, signal_cut
from gradcheck_cli.rules.base import Rule, rule
from gradcheck_cli.stats import RunStats


def _by_module(names: list[str]) -> "OrderedDict[str, list[str]]":
    groups: OrderedDict[str, list[str]] = OrderedDict()
    for n in names:
        groups.setdefault(n.rsplit(".", 1)[0] if "." in n else "(model)", []).append(n)
    return groups


@rule(id="unused-parameters", code="GC106", severity=Severity.WARNING)
def unused_parameters(stats: RunStats, opts: dict[str, Any], r: Rule) -> list[Finding]:
    """Trainable parameters that never receive a gradient (or only an exactly-zero one).

    What it does:
        Lists parameters with requires_grad=True for which autograd returned no gradient in any pass
        (the loss does not depend on them: the layer is never called, its output is discarded or
        detached), and, separately, parameters whose gradient was exactly zero in every pass. It is for
        parameters that idle while the rest of the model learns; several cases are reported as info, not
        as a warning: parameters behind a scale that is exactly zero (ReZero's alpha, a zero-initialised
        last BatchNorm gamma as with zero_init_residual, adaLN-Zero, zero-init projections: zero at step
        0 only, never to be frozen), parameters of a module that trains its others but uses these only on
        some code paths (a mask token, a bias added equally to every attention logit), parameters behind
        a cut that vanishing-gradients / dead-relus report, and parameters feeding only an output the
        default loss could not use.

    Why it matters:
        They cost memory and optimizer state and never train. Often it is a bug: a layer defined in
        __init__ but skipped in forward, an output computed and dropped, a stray .detach(). Under
        DistributedDataParallel an unused parameter makes the backward pass fail unless
        find_unused_parameters=True (which costs time on every step).

    Example:
        examples/unused_parameters.py defines `aux_head` and never calls it.

    Fix:
        Use the layer in forward, or remove it from __init__; if it is intentionally idle (a head for
        another task), freeze it with requires_grad_(False); remove stray .detach()/torch.no_grad() on the
        path to the loss; for an exactly-zero gradient, look for dead ReLUs or a multiplication by zero
        upstream.

    References:
        PyTorch DistributedDataParallel documentation, find_unused_parameters.
    """
    out = []
    cut = signal_cut(stats)
    # Parameters upstream of a point where all learning signal dies are reported once, as that failure
    # (vanishing-gradients / dead-relus), not again as unused.
    covered: set[str] = set()
    if cut is not None:
        for layer in cut["upstream"]:
            prefix = f"{layer.name}." if layer.name else ""
            covered |= {p for p in stats.unused_parameters + stats.zero_grad_parameters
                        if p.startswith(prefix) and "." not in p[len(prefix):]}
    unused = [p for p in stats.unused_parameters if p not in covered]
    zero_grad = [p for p in stats.zero_grad_parameters if p not in covered]
    if unused:
        groups = _by_module(unused)
        # A module that ran and trains its other parameters uses these only on some code paths (a mask token
        # used only with a mask, a relative-position table for longer inputs): context, not a defect.
        partial = [m for m in groups if _learns(stats, m)]
        idle = [m for m in groups if m not in partial]
        for mods, sev in ((idle, None), (partial, Severity.INFO)):
            if not mods:
                continue
            params = [p for m in mods for p in groups[m]]
            n = len(params)
            if sev is None:
                msg = (f"{n} trainable parameter tensor{'s' if n > 1 else ''} in {len(mods)} module{'s' if len(mods) > 1 else ''} "
                       f"({list_names(mods)}) never receive a gradient: the loss does not depend on them.")
            else:
                msg = (f"{n} trainable parameter tensor{'s' if n > 1 else ''} ({list_names(params)}) of module"
                       f"{'s' if len(mods) > 1 else ''} that otherwise train get no gradient in these passes: they "
                       "are used only on some code paths (e.g. a mask token used only when a mask is given).")
            ignored = stats.loss_ignored_outputs
            if sev is None and ignored:
                sev = Severity.INFO
                msg = msg[:-1] + (f", possibly because the default loss could not use output{'s' if len(ignored) > 1 else ''} "
                                  f"{', '.join(ignored)}: pass a --loss that covers every output.")
            target = "model" if mods[0] == "(model)" else f"model.{mods[0]}"
            fixes = [f"Use {list_names(mods)} in forward, or remove {'them' if len(mods) > 1 else 'it'} from __init__.",
                     f"If {'they are' if len(mods) > 1 else 'it is'} intentionally unused, freeze with "
                     f"{target}.requires_grad_(False) so optimizers and DistributedDataParallel skip it.",
                     "Check for .detach(), torch.no_grad() or .item() on the path from these layers to the loss."]
            if sev is Severity.INFO and not ignored:
                fixes = ["Nothing to fix if the code path that uses them runs in training; under "
                         "DistributedDataParallel pass find_unused_parameters=True or make sure every step uses them.",
                         f"If they are never used for your task, freeze them: {target}.requires_grad_(False)."]
            out.append(r.finding(mods[0], msg, {"parameters": params, "modules": mods}, fixes, sev, covers=mods))
    # Exact zeros behind a scale that is exactly zero (ReZero's alpha, a zero-initialised last BatchNorm gamma
    # of a residual branch, adaLN-Zero, zero-init output projections): at step 0 only, not a defect.
    behind = _behind_zero_scale(stats, zero_grad)
    if behind:
        mods = list(_by_module(list(behind)))
        scales = sorted(set(behind.values()))
        n = len(behind)
        msg = (f"{n} trainable parameter{'s' if n > 1 else ''} in {list_names(mods)} get an exactly-zero gradient "
               f"because a scale after them is exactly zero ({list_names(scales)}: a zero-initialised residual "
               "branch, as in ReZero, adaLN-Zero or zero_init_residual). This holds at step 0 only: the first "
               "update makes that scale non-zero and these weights start learning.")
        fixes = ["Nothing to fix: keep these weights trainable (do not freeze them); the zero init is deliberate."]
        out.append(r.finding(mods[0], msg, {"parameters": list(behind), "modules": mods, "zero_scales": scales},
                             fixes, Severity.INFO))
        zero_grad = [p for p in zero_grad if p not in behind]
    # Exact zeros in a module whose other parameters learn: their contribution does not change the loss on
    # these inputs (a bias added equally to every attention logit, a segment embedding with one segment).
    zgroups = _by_module(zero_grad)
    any_dead = any(l.activation == S.RELU and l.off_fraction == 1.0 for l in stats.layers)
    some = [] if any_dead or cut is not None else [p for m, ps in zgroups.items() if _learns(stats, m) for p in ps]
    if some:
        mods = [m for m in zgroups if _learns(stats, m)]
        n = len(some)
        msg = (f"{n} trainable parameter tensor{'s' if n > 1 else ''} ({list_names(some)}) get an exactly-zero gradient "
               f"while the rest of {list_names(mods)} learns: on these inputs they do not change the loss (e.g. a "
               "bias added equally to every attention logit, which softmax ignores, or a segment embedding when "
               "every token has the same segment).")
        fixes = ["Nothing to fix if other inputs exercise them (longer sequences, several segments, larger "
                 "images); otherwise remove them or freeze them with requires_grad_(False)."]
        out.append(r.finding(mods[0], msg, {"parameters": some, "modules": mods}, fixes, Severity.INFO))
        zero_grad = [p for p in zero_grad if p not in some]
    if zero_grad:
        stats_zero = zero_grad
        groups = _by_module(stats_zero)
        mods = list(groups)
        n = len(stats_zero)
        msg = (f"{n} trainable parameter tensor{'s' if n > 1 else ''} in {list_names(mods)} receive{'' if n > 1 else 's'} "
               "an exactly-zero gradient in every pass.")
        dead = [l for l in stats.layers if l.activation == S.RELU and l.off_fraction == 1.0]
        severity = None
        if dead:   # the cause is reported by dead-relus; keep this as context, not a second failure
            msg = msg[:-1] + f", because every unit of {name(dead[-1].name)} before it is dead (see dead-relus)."
            severity = Severity.INFO
        elif cut is not None:   # their inputs are zero behind the same cut: one cause, reported once
            msg = msg[:-1] + ", because their inputs are zero behind the point where the learning signal dies (see " \
                  "vanishing-gradients)."
            severity = Severity.INFO
        fixes = ["Look upstream for dead ReLUs (see dead-relus) or a multiplication by zero that cuts the gradient."]
        if severity is None:
            fixes.append(f"If {list_names(mods)} should not train, freeze it with requires_grad_(False).")
        out.append(r.finding(mods[0], msg, {"parameters": stats_zero, "modules": mods}, fixes,
                             severity, covers=mods))
    return out


def _behind_zero_scale(stats: RunStats, params: list[str]) -> dict[str, str]:
    """{parameter: zero layer} for parameters whose module is followed, in the same block, by a layer whose
    trainable weights are exactly zero."""
    zeros = [l for l in stats.layers if l.role == S.PARAM and l.trainable_params and l.weight_norm == 0]
    if not zeros:
        return {}
    out = {}
    for p in params:
        mod = p.rsplit(".", 1)[0] if "." in p else ""
        layer = stats.layer(mod)
        if layer is None:
            continue
        for z in zeros:
            if z is layer or z.index <= layer.index:
                continue
            # ReZero: alpha owned by the block (or the model); otherwise the same block (a common name prefix:
            # `blocks.0.bn2` for `blocks.0.conv1`, `blocks.0.adaLN_modulation.1` for `blocks.0.attn.qkv`)
            inside = z.name == "" or mod.startswith(z.name + ".")
            if inside or common_prefix([z.name, mod]):
                out[p] = z.name or "(model)"
                break
    return out


def _learns(stats: RunStats, module: str) -> bool:
    """The module was called and some of its own parameters got a non-zero gradient."""
    layer = stats.layer("" if module == "(model)" else module)
    return bool(layer is not None and layer.calls and layer.grad_norm)


RULE = unused_parameters
