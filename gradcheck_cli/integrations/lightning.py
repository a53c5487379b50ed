"""gradcheck as a PyTorch Lightning callback.

    import lightning.pytorch as pl
    from gradcheck_cli.integrations.lightning import GradcheckCallback

    trainer = pl.Trainer(max_steps=1000, callbacks=[GradcheckCallback(every=50, stop_on="error",
                                                                      output=["json:gradcheck.json"])])
    trainer.fit(module, loader)

Where it reads: the hooks of a measured step go on at `on_train_batch_start` (the first micro-batch of
the optimizer step) and come off in `on_before_optimizer_step`, which Lightning calls after the last
backward of the step, after AMP's `scaler.unscale_` and before gradient clipping and the optimizer step:
the gradients there are final and unscaled. The step's loss is the sum of what `on_before_backward`
received (Lightning divides each micro-batch's loss by `accumulate_grad_batches`).
Each measured step logs `gradcheck/grad_norm`, `gradcheck/grad_norm/<layer>` and
`gradcheck/findings/<severity>` to the trainer's loggers (TensorBoard, W&B, CSV ...). With `stop_on`,
a finding at that severity writes the report and sets `trainer.should_stop`. Under the `ddp` strategy the
statistics are all-reduced across ranks and rank 0 writes the report. The report is written when
training ends (or stops, or raises) and is kept in `callback.report`.

Importing this module does not import Lightning; `GradcheckCallback` does (lightning.pytorch, or the
older pytorch_lightning package).
"""

from __future__ import annotations

from typing import Any

from gradcheck_cli.integrations import lazy_callback, require


def _build() -> type:
    pl = require(("lightning.pytorch", "pytorch_lightning"), "lightning", "lightning")

    class GradcheckCallback(pl.Callback):
        """gradcheck's rules over a Lightning run; the arguments are those of gradcheck_cli.watch."""

        def __init__(self, every: int = 50, fail_on: str = "warning", stop_on: str | None = None,
                     output: Any = None, rules: dict[str, dict[str, Any]] | None = None, name: str | None = None,
                     log: bool = True) -> None:
            from gradcheck_cli.watching import Watch

            super().__init__()
            # Validate now, in the user's script, not in the middle of fit().
            self._kwargs = dict(every=every, fail_on=fail_on, stop_on=stop_on, output=output, rules=rules,
                                name=name)
            import torch.nn as nn

            Watch(nn.Linear(1, 1), **self._kwargs).monitor.close()
            self.log_metrics = log
            self.watch = None
            self.report = None
            self._loss = None

        # -- lifecycle ---------------------------------------------------------------------------------------

        def on_train_start(self, trainer: Any, pl_module: Any) -> None:
            from gradcheck_cli.watching import Watch

            if self.watch is None:   # after setup(): under DDP the process group exists now
                self.watch = Watch(pl_module, raise_on_stop=False, framework="lightning", lazy=True, **self._kwargs)

        def on_train_batch_start(self, trainer: Any, pl_module: Any, batch: Any, batch_idx: int) -> None:
            if self.watch is not None and self.report is None:
                self.watch.monitor.begin_step()

        def on_before_backward(self, trainer: Any, pl_module: Any, loss: Any) -> None:
            if self.watch is not None and self.report is None:
                loss = loss.detach()
                self._loss = loss if self._loss is None else self._loss + loss

        def on_before_optimizer_step(self, trainer: Any, pl_module: Any, optimizer: Any) -> None:
            w = self.watch
            if w is None or self.report is not None:
                return
            loss, self._loss = self._loss, None
            info = w.step(loss, grads_unscaled=True, grad_scale=_loss_scale(trainer))
            if info["measured"] and self.log_metrics:
                self._log(trainer, w.metrics())
            if w.stopped:
                self.report = w.close()
                trainer.should_stop = True

        def on_train_end(self, trainer: Any, pl_module: Any) -> None:
            self._close()

        def on_exception(self, trainer: Any, pl_module: Any, exception: BaseException) -> None:
            self._close()

        def _close(self) -> None:
            if self.watch is not None and self.report is None:
                self.report = self.watch.close()

        @staticmethod
        def _log(trainer: Any, metrics: dict[str, float]) -> None:
            if not metrics or not getattr(trainer, "is_global_zero", True):
                return
            for logger in getattr(trainer, "loggers", []) or []:
                logger.log_metrics(metrics, step=trainer.global_step)

    return GradcheckCallback


def _loss_scale(trainer: Any) -> float:
    """The AMP loss scale of the backward just run (1 without a GradScaler); the output gradients seen in
    backward are divided by it. Parameter gradients are already unscaled at on_before_optimizer_step."""
    scaler = getattr(getattr(getattr(trainer, "strategy", None), "precision_plugin", None), "scaler", None)
    if scaler is not None and hasattr(scaler, "get_scale") and scaler.is_enabled():
        return float(scaler.get_scale())
    return 1.0


__getattr__ = lazy_callback(__name__, _build)

__all__ = ["GradcheckCallback"]
