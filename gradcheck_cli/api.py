"""The Python API: `gradcheck_cli.check(model, batch)` returns the same Report the CLI renders.

    >>> import torch.nn as nn
    >>> from gradcheck_cli import check
    >>> report = check(nn.Sequential(nn.Linear(8, 8), nn.Sigmoid(), nn.Linear(8, 2)))
    >>> report.verdict, report.exit_code
    ('pass', 0)
"""

from __future__ import annotations

import time
from typing import Any, Callable

from gradcheck_cli.config import RuleSettings, Settings
from gradcheck_cli.findings import FailOn, Report, Severity


def check(model: Any, batch: Any = None, *, loss: str | Callable | None = None,
           input_shape: tuple[int, ...] | None = None, steps: int = 3, seed: int = 0, device: str = "auto",
           fail_on: str | FailOn = "warning", rules: dict[str, dict[str, Any]] | None = None,
           verify_fixes: bool | str = False) -> Report:
    """Check a model's gradients; the model is left exactly as it was given.

    model:  an nn.Module, or a spec string "path/to/file.py:NAME" / "package.module:NAME".
    batch:  None (synthetic batches from `input_shape`, or inferred from the first layer), a tensor,
            an (inputs, targets) pair, a dict of keyword arguments, a zero-argument callable or an
            iterator returning batches, or a file path / spec string as for `--batch`.
    loss:   None (the output's own .loss, else cross-entropy for class targets, else MSE),
            "cross-entropy" | "mse" | "bce-with-logits", a callable (output, target) -> scalar, or a spec.
    rules:  per-rule settings as in gradcheck.yaml, e.g. {"dead-relus": {"fraction": 0.3}}.
    verify_fixes: True (or "failing") / "all": apply each fix gradcheck can make to a deep copy and re-run
            the check (Finding.verification); the model itself is never changed.
    Raises gradcheck_cli.errors.InputError for bad input and UserCodeError when the model's code raises.
    """
    import torch.nn as nn

    from gradcheck_cli import batches, losses
    from gradcheck_cli.config import load_rules_mapping
    from gradcheck_cli.errors import InputError
    from gradcheck_cli.pipeline import check_loaded, resolve_device, run_check

    fail = FailOn(fail_on.value if isinstance(fail_on, FailOn) else fail_on)
    verify = {True: "failing", False: "off"}.get(verify_fixes, verify_fixes) if isinstance(verify_fixes, bool) \
        else verify_fixes
    if verify not in ("off", "failing", "all"):
        raise InputError(f"verify_fixes must be True, False, 'failing', 'all' or 'off' (got {verify_fixes!r})")
    rule_settings: dict[str, RuleSettings] = load_rules_mapping(rules or {}, source="check(rules=...)")
    loss_spec = loss if isinstance(loss, str) or loss is None else None
    if isinstance(model, str):
        batch_spec = batch if isinstance(batch, str) or batch is None else None
        if batch_spec is not None or batch is None:
            if callable(loss):
                raise InputError("with a model spec string, give `loss` as a name or spec string too")
            return run_check(Settings(model=model, batch=batch_spec, loss=loss_spec, input_shape=input_shape,
                                      steps=steps, seed=seed, device=device, fail_on=fail, rules=rule_settings,
                                      verify_fixes=verify))
        raise InputError("with a model spec string, give `batch` as a path or spec string (or None)")
    if not isinstance(model, nn.Module):
        raise InputError(f"check() needs an nn.Module or a 'file.py:NAME' spec, got {type(model).__name__}")
    t0 = time.perf_counter()
    dev = resolve_device(device)
    float_dtype = batches.model_float_dtype(model)
    if batch is None or isinstance(batch, str):
        source = batches.make_batch_source(batch, input_shape, model, seed)
    elif callable(batch) or (hasattr(batch, "__next__") and not hasattr(batch, "shape")):
        name = getattr(batch, "__name__", type(batch).__name__)
        source = batches.CallableBatches(batch, name, float_dtype)
    else:
        fixed = batches.to_batch(batch, "batch")
        source = batches.FixedBatches(fixed, f"given batch ({fixed.describe_shapes()})", float_dtype)
    if callable(loss):
        loss_fn = losses.LossFn("callable", fn=loss, spec=getattr(loss, "__name__", "loss callable"))
    else:
        loss_fn = losses.resolve(loss_spec)
    settings = Settings(model=f"<{type(model).__name__} instance>", steps=steps, seed=seed, device=device,
                        fail_on=fail, rules=rule_settings, verify_fixes=verify)
    if steps < 1:
        raise InputError(f"steps must be at least 1 (got {steps})")
    return check_loaded(model, source, loss_fn, settings, dev, t0)


def assert_healthy_gradients(model: Any, batch: Any = None, *, fail_on: str = "warning", **kwargs: Any) -> Report:
    """For test suites: fail with the rendered findings when the check finds anything at or above
    `fail_on`; return the report otherwise.

        def test_my_model_trains():
            assert_healthy_gradients(build_model(), torch.randn(16, 32))
    """
    import io

    from gradcheck_cli.report import render

    report = check(model, batch, fail_on=fail_on, **kwargs)
    if report.exit_code != 0:
        out = io.StringIO()
        render(report, "text", out, color=False, width=100, max_rows=20)
        raise AssertionError("gradcheck found gradient problems:\n" + out.getvalue())
    return report


__all__ = ["check", "assert_healthy_gradients", "Report", "Severity"]
