"""The product path: load model -> batches -> instrumented passes -> statistics -> rules -> Report.

cli.py parses flags into config.Settings and calls `run_check`; renderers take the Report it returns.
"""

from __future__ import annotations

import time
from typing import Any

from gradcheck_cli import __version__
from gradcheck_cli.config import RuleSettings, Settings
from gradcheck_cli.deadline import Deadline, RunTimeout, set_phase
from gradcheck_cli.errors import GradcheckError, InputError, UserCodeError, exc_line
from gradcheck_cli.findings import FailOn, Finding, Report, Severity
from gradcheck_cli.rules import RULES
from gradcheck_cli.stats import RunStats


def apply_rules(stats: RunStats, rule_settings: dict[str, RuleSettings]) -> list[Finding]:
    findings: list[Finding] = []
    for r in RULES:
        cfg = rule_settings.get(r.id, RuleSettings())
        if not cfg.enabled:
            continue
        for f in r.check(stats, cfg.options):
            # A configured severity replaces the rule's default (and its error escalation), but not a
            # deliberate downgrade to info (e.g. a gated RNN's decay through time, a zero-init branch).
            if cfg.severity is not None and not (f.severity == Severity.INFO and r.severity != Severity.INFO):
                f.severity = cfg.severity
            findings.append(f)
    return findings


def resolve_device(name: str):
    import torch

    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise InputError("--device cuda was asked for but CUDA is not available on this machine",
                         hint="use --device cpu or --device auto")
    return torch.device(name)


def run_check(s: Settings, on_hard_stop: Any = None, progress: Any = None, verify_progress: Any = None) -> Report:
    """Run the whole check (and the training rehearsal, with s.train_steps). With s.timeout, a phase that
    does not finish in time raises UserCodeError. progress(step, total): called after each training step.

    --timeout counts from after gradcheck's own imports (torch takes seconds to import on a cold disk):
    it bounds the user's code and the passes, not the installation."""
    set_phase("load")
    import torch  # noqa: F401

    from gradcheck_cli import batches, loading, losses, measure, sources, startup  # noqa: F401
    startup.resume()   # the command's imports are done: the collector runs again for the user's code
    try:
        with Deadline(s.timeout, on_hard_stop):
            return _run_check(s, progress, verify_progress)
    except RunTimeout as exc:   # expired outside the user's code (imports, batch synthesis, analysis)
        raise UserCodeError(str(exc), phase=exc.phase,
                            hint="the run is slower than --timeout allows; raise --timeout") from exc
    except SystemExit as exc:   # sys.exit() in the user's code, anywhere the passes did not catch it
        from gradcheck_cli.deadline import phase

        raise UserCodeError(exc_line(exc), phase=phase(), original=exc,
                            hint="the model's code ended the process; gradcheck reports it as a failure "
                                 "of that code") from exc


def _run_check(s: Settings, progress: Any = None, verify_progress: Any = None) -> Report:
    t0 = time.perf_counter()
    set_phase("load")
    from gradcheck_cli import batches, loading, losses

    device = resolve_device(s.device)
    loss_fn = losses.resolve(s.loss)
    import torch

    # Seed the model's construction too, so a run (and a CI gate) is reproducible; fork_rng leaves the
    # caller's global RNG state as it was.
    from gradcheck_cli import distributed
    from gradcheck_cli.seeding import host_rngs_preserved, seed_all

    ctx = distributed.current()
    try:
        if ctx is not None and s.train_steps and s.precision != "fp32":
            raise InputError(f"--precision {s.precision} with --train-steps is not supported under torchrun yet",
                             hint="rehearse mixed precision in one process (python -m gradcheck_cli check ...), "
                                  "or use --precision fp32 under torchrun")
        with torch.random.fork_rng(devices=[]), host_rngs_preserved():
            seed_all(s.seed)
            set_phase("import")
            obj = loading.load_object(s.model, what="model")
            set_phase("build")
            model = loading.build_model(obj, s.model)
        refuse_unsupported(model)
        set_phase("batch")
        source = batches.make_batch_source(s.batch, s.input_shape, model, s.seed)
        if ctx is not None:   # under torchrun: the ranks agree that every one has a model, then shard
            distributed.agree(ctx, None)
            model = distributed.prepare_model(model, ctx, device)
            if ctx.device is not None:
                device = ctx.device
            source = distributed.RankBatches(source, ctx)
    except Exception as exc:
        if ctx is not None and not isinstance(exc, distributed.PeerFailed):
            distributed.agree(ctx, exc)
        raise
    driver = distributed.Driver(ctx, source) if ctx is not None else None
    return check_loaded(model, source, loss_fn, s, device, t0, origin=obj, dist=driver, progress=progress,
                        verify_progress=verify_progress)


def refuse_unsupported(model: Any) -> None:
    """Models gradcheck cannot instrument or run as given: exit 2 with what to do instead."""
    import torch

    if isinstance(model, torch.jit.ScriptModule) or any(isinstance(m, torch.jit.ScriptModule)
                                                        for m in model.modules()):
        raise InputError(f"{type(model).__name__} is a TorchScript module (torch.jit.script/trace): it cannot "
                         "carry the hooks gradcheck measures with",
                         hint="point gradcheck at the nn.Module before scripting, e.g. a factory returning Net()")
    meta = [n for n, p in list(model.named_parameters()) + list(model.named_buffers()) if p.is_meta]
    if meta:
        raise InputError(f"the model's tensors are on the meta device (no data): {', '.join(meta[:3])}"
                         f"{', ...' if len(meta) > 3 else ''}",
                         hint="materialise it first: model.to_empty(device='cpu') and initialise the weights "
                              "(e.g. model.apply(model._init_weights) or reset_parameters()) in the factory")
    cplx = [(n, p) for n, p in model.named_parameters() if p.requires_grad and p.is_complex()]
    if cplx:
        n, p = cplx[0]
        raise InputError(f"the model has complex parameters ({n}: {str(p.dtype).replace('torch.', '')}"
                         f"{f' and {len(cplx) - 1} more' if len(cplx) > 1 else ''}); gradcheck measures "
                         "real floating-point parameters only",
                         hint="parametrise complex weights as two real tensors (real, imag), or check a "
                              "real-valued variant of the model")


def check_loaded(model: Any, source: Any, loss_fn: Any, s: Settings, device: Any, t0: float,
                 origin: Any = None, dist: Any = None, progress: Any = None, verify_progress: Any = None) -> Report:
    """The passes, the rules and the report for a model, batch source and loss already in hand.
    `origin` is what the spec named (class, factory or instance), for source locations."""
    from gradcheck_cli import sources
    from gradcheck_cli.measure import run_passes
    from gradcheck_cli.seeding import host_rngs_preserved
    from gradcheck_cli.wrappers import unwrap

    refuse_unsupported(model)
    # torch.compile / DDP / DataParallel add `_orig_mod.` / `module.` to every name: check the model inside.
    model, wrappers = unwrap(model)
    verify = getattr(s, "verify_fixes", "off")
    if verify != "off" and hasattr(source, "record"):
        source.record()   # a batch callable: the re-runs of --verify-fixes replay the same batches
    t1 = time.perf_counter()
    try:
        with host_rngs_preserved():   # the passes seed numpy and random too (models that draw from them)
            result = run_passes(model, source, loss_fn, steps=s.steps, seed=s.seed, device=device, dist=dist)
    except GradcheckError as exc:
        add_hint(exc)
        raise
    if result.stats.layers and not any(layer.calls for layer in result.stats.layers):
        raise UserCodeError("no layer was measured: the model's code removed the forward hooks gradcheck "
                            "registers (module._forward_hooks cleared, or hooks removed in forward)",
                            phase="forward", where=f"`(model)` ({type(model).__name__})",
                            hint="leave hooks in place while gradcheck runs; a check that measured nothing "
                                 "cannot pass")
    annotate_stats(result.stats, model, loss_fn)
    if result.stats.loss_ignored_outputs:
        result.notes.append(f"the default loss could not use {', '.join(result.stats.loss_ignored_outputs)} "
                            "(no target fits it, or it does not require grad); pass --loss file.py:NAME to cover it")
    if wrappers:
        result.notes.append(f"checked the model inside {' > '.join(wrappers)}: layer names are the wrapped "
                            "model's own (no `_orig_mod.` / `module.` prefix)")
    t_train = time.perf_counter()
    if getattr(s, "train_steps", 0):
        from gradcheck_cli.measure.training import TrainSettings, rehearse

        try:
            with host_rngs_preserved():
                if dist is not None and not dist.ctx.is_main:   # under torchrun rank 0 alone shows the bar
                    progress = None
                traj, train_notes = rehearse(model, source, loss_fn, seed=s.seed, device=device, progress=progress,
                                             train=TrainSettings(steps=s.train_steps, optimizer=s.optimizer,
                                                                 lr=s.lr, precision=s.precision),
                                             dist=dist, unused=bool(result.stats.unused_parameters))
        except GradcheckError as exc:
            add_hint(exc)
            raise
        result.stats.training = traj
        result.notes.extend(n for n in train_notes if n not in result.notes)
    set_phase("analysis")
    t2 = time.perf_counter()
    findings = apply_rules(result.stats, s.rules)
    where = sources.object_location(origin if origin is not None else model)
    if findings:
        locate = sources.layer_locator(model, where)
        for f in findings:
            f.location = locate(f.layer)
    t3 = time.perf_counter()
    timings = {"load_s": round(t1 - t0, 4), "passes_s": round(t_train - t1, 4),
               **({"training_s": round(t2 - t_train, 4)} if result.stats.training is not None else {}),
               "analysis_s": round(t3 - t2, 4), "total_s": round(t3 - t0, 4)}
    settings: dict[str, Any] = {
        "steps": s.steps, "seed": s.seed, "device": str(device), "batch": source.description,
        "input_shape": list(getattr(source, "shape", ()) or []) or None,
        "loss": result.loss_description, "fail_on": s.fail_on.value, "config": s.config_path,
        "timeout_s": s.timeout,
        **({"train_steps": s.train_steps, "optimizer": s.optimizer, "lr": s.lr, "precision": s.precision}
           if getattr(s, "train_steps", 0) else {}),
        **({"verify_fixes": verify} if verify != "off" else {}),
        "ignore": [{"rule": i.rule, "layer": i.layer, "model": i.model, "reason": i.reason} for i in s.ignore],
        "rules": {rid: {"enabled": rs.enabled, "severity": rs.severity.value if rs.severity else None,
                        **rs.options} for rid, rs in s.rules.items()},
    }
    report = make_report(result.stats, findings, spec=s.model, model_class=type(model).__name__,
                         settings=settings, fail_on=s.fail_on, timings=timings, notes=result.notes)
    report.model["source"] = where
    report.run["distributed"] = dist.describe() if dist is not None else None
    if result.stats.training is not None:
        report.training = training_summary(result.stats.training, findings)
    if s.ignore:
        from gradcheck_cli.baseline import apply_ignores

        apply_ignores(report, s.ignore)
    if verify != "off":
        if dist is not None:
            report.notes.append("--verify-fixes is not supported under torchrun yet: the fixes were not verified")
        else:
            _verify(report, model, source, loss_fn, s, device, verify, verify_progress)
    return report


def annotate_stats(stats: RunStats, model: Any, loss_fn: Any) -> None:
    """What the rules read besides the measurements: the parameters' dtype and the loss used."""
    dtypes = {str(p.dtype).replace("torch.", "") for p in model.parameters() if p.requires_grad}
    stats.param_dtype = dtypes.pop() if len(dtypes) == 1 else None
    stats.loss_kind = getattr(loss_fn, "kind", None)
    stats.loss_classes = getattr(loss_fn, "classes", None)
    stats.loss_outputs = getattr(loss_fn, "outputs", None)
    stats.loss_ignored_outputs = getattr(loss_fn, "ignored", None)


def _verify(report: Report, model: Any, source: Any, loss_fn: Any, s: Settings, device: Any, mode: str,
            progress: Any) -> None:
    """--verify-fixes: each mechanical fix re-run on a changed copy (gradcheck_cli/verify.py). The exit code
    stays the model's as given: only `verification` entries and timings are added."""
    from gradcheck_cli import verify
    from gradcheck_cli.errors import GradcheckError

    def rules(stats: RunStats) -> list[Finding]:
        found = apply_rules(stats, s.rules)
        if s.ignore:   # accepted findings are not "new" after a change either
            for f in found:
                for ig in s.ignore:
                    if ig.matches(f, s.model or ""):
                        f.suppressed = {"by": "ignore", "reason": ig.reason}
                        break
        return found

    traj = getattr(report, "training", None) or {}
    ctx = verify.Context(model=model, source=source, loss_fn=loss_fn, settings=s, device=device, rules=rules,
                         annotate=annotate_stats, lr=traj.get("lr"))
    try:
        verify.verify_report(report, ctx, mode, progress)
    except GradcheckError as exc:
        add_hint(exc)
        raise
    finally:
        if hasattr(source, "forget"):
            source.forget()   # drop the batches kept for the re-runs

def add_hint(exc: GradcheckError) -> None:
    """The measuring code says what went wrong (exc.reason, exc.detail); which option fixes it is said
    here, next to the options."""
    if exc.hint is not None or exc.reason is None:
        return
    phase = getattr(exc, "phase", "")
    hints = {
        "timeout": f"the {phase} pass is still running after {exc.detail} s: look for a loop that never ends "
                   "in that code, or raise --timeout",
        "out-of-memory": "use a smaller batch (--input-shape with a smaller first dimension, or a smaller --batch)",
        "shape": f"the batch has {exc.detail}; check --input-shape / --batch against the model",
        "device-move": "use --device cpu, or a smaller model",
    }
    exc.hint = hints.get(exc.reason)


def make_report(stats: RunStats, findings: list[Finding], *, spec: str, model_class: str,
                settings: dict[str, Any], fail_on: FailOn, timings: dict[str, float],
                notes: list[str] | None = None) -> Report:
    """The finished report: everything a renderer needs, as plain data."""
    run = stats.to_dict(layers=False)
    return Report(
        tool_version=__version__,
        model={"spec": spec, "class": model_class, "parameters": stats.parameters,
               "trainable_parameters": stats.trainable_parameters, "layers_measured": len(stats.layers)},
        settings=settings,
        layers=[layer.to_dict() for layer in stats.layers],
        run=run,
        findings=findings,
        fail_on=fail_on,
        timings=timings,
        notes=list(notes or []),
    )


def training_summary(t: Any, findings: list[Finding]) -> dict[str, Any]:
    """The report's `training` section (docs/json-schema.md): the rehearsal's settings, the per-step
    series (loss, global gradient norm, worst update ratio and its layer, loss scale, skipped) and the
    onset step of each trajectory finding."""
    worst = t.worst_update_ratios()
    skipped = set(t.skipped_steps)
    steps = []
    for i in range(t.steps):
        ratio, layer = worst[i] if i < len(worst) else (None, None)
        steps.append({"step": i, "loss": t.losses[i],
                      "grad_norm": t.grad_norms[i] if i < len(t.grad_norms) else None,
                      "update_ratio_max": ratio, "update_ratio_layer": layer,
                      "loss_scale": t.loss_scales[i] if i < len(t.loss_scales) else None,
                      "skipped": i in skipped})
    onsets = [{"rule": f.rule, "layer": f.layer, "step": f.evidence["onset_step"]} for f in findings
              if isinstance(f.evidence.get("onset_step"), int)]
    return {"steps_requested": t.steps_requested, "steps_run": t.steps, "optimizer": t.optimizer, "lr": t.lr,
            "precision": t.precision, "stopped": t.stopped, "skipped_steps": list(t.skipped_steps),
            "flushed_to_zero": dict(t.flushed_to_zero), "params_not_in_optimizer": list(t.params_not_in_optimizer),
            "onsets": onsets, "steps": steps,
            **({"first_nonfinite_rank": dict(t.nonfinite_rank)} if t.nonfinite_rank else {})}
