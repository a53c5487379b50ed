"""gradcheck inside the user's own training loop: `gradcheck_cli.watch(model)` returns a `Watch`.

(The module is named watching so that it never shadows the function `gradcheck_cli.watch`.)

    monitor = gradcheck_cli.watch(model, every=50, fail_on="warning", stop_on="error",
                                  output=["json:gradcheck.json", "html:gradcheck.html"])
    for batch in loader:
        loss = compute_loss(model, batch)
        loss.backward()
        monitor.step(loss)          # after backward, before optimizer.step(): reads p.grad
        optimizer.step(); optimizer.zero_grad()
    report = monitor.close()        # writes the outputs, returns the same Report the CLI renders

The hooks are on the model only during the measured steps (step 0, every `every`-th step, and the step
after a loss turns non-finite); the rules of the registry run over the statistics and per-step series
accumulated so far. With `stop_on`, `step` writes the report and raises `GradcheckStop` as soon as a
finding at that severity (or above) appears: before the optimizer step, so a NaN gradient never reaches
the weights. The Lightning and Hugging Face callbacks (gradcheck_cli.integrations) drive the same class.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Iterable

from gradcheck_cli.choices import FAIL_ON
from gradcheck_cli.config import RuleSettings
from gradcheck_cli.errors import InputError
from gradcheck_cli.findings import FailOn, Finding, Report, Severity

STOP_CHOICES = tuple(x for x in FAIL_ON if x != "never")   # severities (choices.FAIL_ON less "never")


class GradcheckStop(RuntimeError):
    """Raised by `Watch.step` when a finding at `stop_on` severity or above appears. The report has
    been written (every `output`) before it is raised; it is also in `.report`."""

    def __init__(self, report: Report, step: int, stop_on: str, written: list[str]) -> None:
        self.report = report
        self.step = step
        self.findings = [f for f in report.active_findings() if f.severity.rank >= Severity(stop_on).rank]
        first = self.findings[0]
        where = f" at {first.layer}" if first.layer else ""
        more = f" (+{len(self.findings) - 1} more)" if len(self.findings) > 1 else ""
        out = f"; report written to {', '.join(written)}" if written else ""
        super().__init__(f"gradcheck stopped training at step {step}: {first.severity.value} {first.code} "
                         f"{first.rule}{where}: {first.message}{more}{out}")


def _choice(value: Any, allowed: Iterable[str], what: str) -> str:
    v = value.value if hasattr(value, "value") else value
    allowed = tuple(allowed)
    if v not in allowed:
        raise InputError(f"{what}={value!r} is not one of {', '.join(allowed)}")
    return v


class Watch:
    """The monitor of one model in a training loop (see the module docstring). Construct with `watch`."""

    def __init__(self, model: Any, *, every: int = 50, fail_on: str | FailOn = "warning",
                 stop_on: str | None = None, output: str | Iterable[str] | None = None,
                 rules: dict[str, dict[str, Any]] | None = None, name: str | None = None,
                 distributed: bool | None = None, raise_on_stop: bool = True, framework: str = "loop",
                 lazy: bool = False) -> None:
        import torch.nn as nn

        from gradcheck_cli.config import load_rules_mapping
        from gradcheck_cli.report import parse_output

        if not isinstance(model, nn.Module):
            raise InputError(f"watch() needs an nn.Module, got {type(model).__name__}")
        if isinstance(every, bool) or not isinstance(every, int) or every < 1:
            raise InputError(f"every={every!r}: give a whole number of steps, at least 1")
        self.fail_on = FailOn(_choice(fail_on, [f.value for f in FailOn], "fail_on"))
        self.stop_on = None if stop_on in (None, "never") else _choice(stop_on, STOP_CHOICES, "stop_on")
        outputs = [output] if isinstance(output, (str, Path)) else list(output or [])
        self.outputs = [parse_output(str(o), None) for o in outputs]
        self.rule_settings: dict[str, RuleSettings] = load_rules_mapping(rules or {}, source="watch(rules=...)")
        self.model = model
        self.every = every
        self.name = name
        self.framework = framework
        self.raise_on_stop = raise_on_stop
        self.t0 = time.perf_counter()
        self.analysis_s = 0.0
        from gradcheck_cli.measure.monitor import TrainingMonitor

        self.monitor = TrainingMonitor(model, every=every, distributed=distributed, lazy=lazy)
        self.findings: list[Finding] = []
        self.stopped = False
        self.stop_step: int | None = None
        self.written: list[str] = []
        self._report: Report | None = None

    # -- the loop ---------------------------------------------------------------------------------------------

    @property
    def step_index(self) -> int:
        """The step the next call to `step` closes (0-based)."""
        return self.monitor.step_index

    @property
    def is_rank_zero(self) -> bool:
        return self.monitor.ranks is None or self.monitor.ranks.rank == 0

    def step(self, loss: Any = None, *, grad_scale: Any = 1.0, grads_unscaled: bool = False) -> dict[str, Any]:
        """Close a step: after the backward (all of its micro-batches), before the optimizer step.
        `loss`: the step's loss (a tensor or a float); `grad_scale`: the loss scale of an AMP backward (a
        float or the GradScaler), `grads_unscaled=True` when `scaler.unscale_(optimizer)` already ran.
        Returns {step, measured, diagnosis, loss, nonfinite, grad_norm (the global gradient norm of a
        measured step, else None), findings}. With `stop_on`, raises
        GradcheckStop after writing the report when a finding at that severity appears."""
        if self._report is not None:
            raise RuntimeError("this gradcheck monitor is closed")
        info = self.monitor.step(loss, grad_scale=grad_scale, grads_unscaled=grads_unscaled)
        summary = info.pop("summary", None)
        info["grad_norm"] = summary["total_grad_norm"] if summary else None   # the global norm, measured steps
        if info["measured"] or info["nonfinite"]:
            self.evaluate()
        info["findings"] = self.findings
        if self.stop_on is not None and self.should_stop():
            self.stopped = True
            self.stop_step = info["step"]
            report = self.close()
            if self.raise_on_stop:
                raise GradcheckStop(report, info["step"], self.stop_on, self.written)
        return info

    def evaluate(self) -> list[Finding]:
        """Run the rules over everything measured so far (the findings a report would have now)."""
        from gradcheck_cli.pipeline import apply_rules

        t = time.perf_counter()
        self.findings = apply_rules(self.monitor.stats(), self.rule_settings)
        self.analysis_s += time.perf_counter() - t
        return self.findings

    def should_stop(self) -> bool:
        if self.stop_on is None:
            return False
        rank = Severity(self.stop_on).rank
        return any(f.severity.rank >= rank for f in self.findings)

    def counts(self) -> dict[str, int]:
        out = {s.value: 0 for s in Severity}
        for f in self.findings:
            out[f.severity.value] += 1
        return out

    def metrics(self, prefix: str = "gradcheck/") -> dict[str, float]:
        """For a framework's logger: the last measured step's gradient norms (global and per layer) and
        the number of findings by severity so far."""
        out = self.monitor.metrics(prefix)
        for sev, n in self.counts().items():
            out[f"{prefix}findings/{sev}"] = float(n)
        return out

    # -- the report -------------------------------------------------------------------------------------------

    def report(self) -> Report:
        """The report of the run so far (the monitor keeps running)."""
        from gradcheck_cli import sources
        from gradcheck_cli.pipeline import apply_rules, make_report

        t = time.perf_counter()
        stats = self.monitor.stats()
        findings = apply_rules(stats, self.rule_settings)
        model = self.model
        where = sources.object_location(model)
        if findings:
            locate = sources.layer_locator(model, where)
            for f in findings:
                f.location = locate(f.layer)
        self.findings = findings
        t1 = time.perf_counter()
        self.analysis_s += t1 - t
        param = next(iter(model.parameters()), None)
        mon = self.monitor
        settings: dict[str, Any] = {
            "steps": stats.steps, "seed": None, "device": str(param.device) if param is not None else "cpu",
            "batch": f"the training loop's batches ({self.framework})", "loss": "the training loop's loss",
            "fail_on": self.fail_on.value, "stop_on": self.stop_on, "every": self.every,
            "measured_steps": len(mon.measured_steps), "stopped_at_step": self.stop_step,
            "ranks": mon.ranks.world if mon.ranks is not None else 1,
            "config": None, "timeout_s": None, "ignore": [],
            "rules": {rid: {"enabled": rs.enabled, "severity": rs.severity.value if rs.severity else None,
                            **rs.options} for rid, rs in self.rule_settings.items()},
        }
        total = t1 - self.t0
        timings = {"load_s": 0.0, "passes_s": round(total - self.analysis_s, 4),
                   "analysis_s": round(self.analysis_s, 4), "total_s": round(total, 4)}
        notes = list(mon.notes)
        if mon.extra_loss_steps:
            steps = ", ".join(str(i) for i in mon.extra_loss_steps[:5]) + (", ..." if len(mon.extra_loss_steps) > 5 else "")
            notes.append(f"the loss was NaN/Inf at step {steps}, between measured steps: no layer was measured "
                         "there, so the rule cannot say where it started (the step after it is measured)")
        if mon.diagnosed:
            notes.append("NaN/Inf origins come from the step after the first non-finite value, measured exactly "
                         "(after the optimizer step of the bad step, if the loop ran it)")
        report = make_report(stats, findings, spec=self.name or f"<{type(model).__name__} in training>",
                             model_class=type(model).__name__, settings=settings, fail_on=self.fail_on,
                             timings=timings, notes=notes)
        report.model["source"] = where
        report.run["distributed"] = self.distribution()
        return report

    def distribution(self) -> dict[str, Any] | None:
        """run.distributed, as in the torchrun check: world_size, backend, strategy ("fsdp" when the
        gradients are FSDP2 shards, else "ddp"), and the rank that saw NaN/Inf first; None for one process."""
        ranks = self.monitor.ranks
        if ranks is None:
            return None
        mon = self.monitor.mon
        d: dict[str, Any] = {"world_size": ranks.world, "backend": ranks.backend,
                             "strategy": "fsdp" if getattr(mon, "grads", None) == "sharded" else "ddp"}
        onset = getattr(mon, "onset_rank", None) or {}
        if any(v is not None for v in onset.values()):
            d["first_nonfinite_rank"] = dict(onset)
        return d

    def close(self) -> Report:
        """Remove the hooks, build the report, write every `output` (rank 0 only under DDP) and return it.
        Calling it again returns the same report."""
        if self._report is not None:
            return self._report
        from gradcheck_cli.report import write_file

        report = self.report()
        self.monitor.close()
        self._report = report
        if self.is_rank_zero:
            for fmt, path in self.outputs:
                write_file(report, fmt, path)
                self.written.append(str(path))
        return report

    def __enter__(self) -> "Watch":
        return self

    def __exit__(self, *exc: Any) -> None:
        if self._report is None:
            self.close()


def watch(model: Any, *, every: int = 50, fail_on: str | FailOn = "warning", stop_on: str | None = None,
          output: str | Iterable[str] | None = None, rules: dict[str, dict[str, Any]] | None = None,
          name: str | None = None, distributed: bool | None = None) -> Watch:
    """Watch `model`'s gradients in your own training loop; call `.step(loss)` after each backward and
    `.close()` at the end. See gradcheck_cli.watching for the contract.

    every:    measure every `every`-th step (plus step 0 and the step after a non-finite loss).
    fail_on:  the lowest severity that makes the report's verdict "fail" (exit_code 1), as the CLI.
    stop_on:  None, or "error"/"warning"/"info": raise GradcheckStop (after writing the report) when a
              finding at that severity or above appears.
    output:   "FORMAT:PATH" or a path (format from the suffix), or a list of them; written by close().
    rules:    per-rule settings as in gradcheck.yaml.
    distributed: None (auto: reduce across ranks when torch.distributed is initialised), or False.
    """
    return Watch(model, every=every, fail_on=fail_on, stop_on=stop_on, output=output, rules=rules, name=name,
                 distributed=distributed)


__all__ = ["watch", "Watch", "GradcheckStop"]
