"""gradcheck as a Hugging Face `TrainerCallback`.

    from transformers import Trainer
    from gradcheck_cli.integrations.transformers import GradcheckCallback

    trainer = Trainer(model=model, args=args, train_dataset=ds,
                      callbacks=[GradcheckCallback(every=50, stop_on="error", output=["json:gradcheck.json"])])
    trainer.train()

Where it reads (transformers 4.40 to 5.x): the hooks of a measured step go on at `on_step_begin` (the
first micro-batch of the optimizer step) and come off in `on_pre_optimizer_step`, which the Trainer calls
after the last backward, after Accelerate unscaled the gradients (AMP), and before the optimizer step.
The Trainer clips the gradients before that event; on a measured step the callback moves the clipping
after its reading (it sets `args.max_grad_norm` to 0 for that step, reads the unclipped gradients, then
clips them with the same max norm as torch.nn.utils.clip_grad_norm_ does, with the global norm it has
just measured, and restores the setting), so the norms it reports are the ones the model produced. Under FSDP or DeepSpeed, whose clipping is their own,
it reads the clipped gradients instead (the report says so). The loss of a measured step is taken from
the model output's `.loss`, by a forward hook that exists during that step only.

Each measured step logs `gradcheck/grad_norm`, `gradcheck/grad_norm/<layer>` and
`gradcheck/findings/<severity>` through `Trainer.log` (so TensorBoard, W&B, ... get them). With
`stop_on`, a finding at that severity writes the report and sets `control.should_training_stop`. Under
torchrun (DDP) the statistics are all-reduced across ranks and rank 0 writes the report. The report is
written at `on_train_end` and kept in `callback.report`.

Importing this module does not import transformers; `GradcheckCallback` does.
"""

from __future__ import annotations

import sys
from typing import Any

from gradcheck_cli.integrations import lazy_callback, require


def _find_trainer(cls: type) -> Any:
    """The Trainer whose event is being handled: callbacks are not given it, so look a few frames up
    (Trainer._inner_training_loop -> CallbackHandler.call_event -> the callback)."""
    frame = sys._getframe(1)
    for _ in range(12):
        if frame is None:
            return None
        obj = frame.f_locals.get("self")
        if isinstance(obj, cls):
            return obj
        frame = frame.f_back
    return None


def clip_with_norm(parameters: Any, max_norm: float, total_norm: float | None) -> None:
    """torch.nn.utils.clip_grad_norm_(parameters, max_norm), given the gradients' global norm that the
    step's measurement already computed (one pass over the gradients fewer); without a finite norm, torch's
    own function (which computes it)."""
    import math

    import torch

    params = [p for p in parameters if p.grad is not None]
    if total_norm is None or not math.isfinite(total_norm):
        torch.nn.utils.clip_grad_norm_(params, max_norm)
        return
    coef = max_norm / (total_norm + 1e-6)   # as clip_grad_norm_: scale by min(1, coef)
    if coef < 1.0:
        groups: dict[tuple, list] = {}
        for p in params:
            groups.setdefault((p.grad.device, p.grad.dtype), []).append(p.grad)
        for grads in groups.values():
            torch._foreach_mul_(grads, coef)


def _build() -> type:
    tf = require(("transformers",), "transformers", "transformers")

    class GradcheckCallback(tf.TrainerCallback):
        """gradcheck's rules over a Trainer run; the arguments are those of gradcheck_cli.watch."""

        def __init__(self, every: int = 50, fail_on: str = "warning", stop_on: str | None = None,
                     output: Any = None, rules: dict[str, dict[str, Any]] | None = None, name: str | None = None,
                     log: bool = True) -> None:
            import torch.nn as nn

            from gradcheck_cli.watching import Watch

            self._kwargs = dict(every=every, fail_on=fail_on, stop_on=stop_on, output=output, rules=rules,
                                name=name)
            Watch(nn.Linear(1, 1), **self._kwargs).monitor.close()   # validate now, not inside train()
            self.log_metrics = log
            self.watch = None
            self.report = None
            self.trainer = None
            self._losses: list[Any] = []
            self._loss_handle = None
            self._saved_clip: float | None = None
            self._clipped_reads = 0

        def on_train_begin(self, args: Any, state: Any, control: Any, model: Any = None, **kw: Any) -> None:
            from gradcheck_cli.watching import Watch

            if self.watch is None:
                self.watch = Watch(model, raise_on_stop=False, framework="transformers", lazy=True,
                                   **self._kwargs)
                self.trainer = _find_trainer(tf.Trainer)

        def on_step_begin(self, args: Any, state: Any, control: Any, model: Any = None, **kw: Any) -> None:
            w = self.watch
            if w is None or self.report is not None or not w.monitor.will_measure:
                return
            w.monitor.begin_step()
            self._losses = []
            if self._loss_handle is None:
                self._loss_handle = w.model.register_forward_hook(self._grab_loss, with_kwargs=True)
            self._args = args
            if args.max_grad_norm and args.max_grad_norm > 0:
                if _own_clipping(args):
                    self._clipped_reads += 1
                else:
                    self._saved_clip = args.max_grad_norm
                    args.max_grad_norm = 0.0   # the Trainer skips clipping; we clip after reading

        def _grab_loss(self, module: Any, inputs: Any, kwargs: Any, output: Any) -> None:
            loss = getattr(output, "loss", None)
            if loss is None and isinstance(output, dict):
                loss = output.get("loss")
            if loss is not None and hasattr(loss, "detach") and module.training:
                # Given num_items_in_batch, the model divides by the token count of the whole step (every
                # micro-batch, and every rank with average_tokens_across_devices): the step's loss is then
                # the sum of the micro-batches' (times the ranks); otherwise each is a mean.
                self._loss_is_share = kwargs.get("num_items_in_batch") is not None
                self._losses.append(loss.detach().float().mean())

        def on_pre_optimizer_step(self, args: Any, state: Any, control: Any, model: Any = None,
                                  optimizer: Any = None, **kw: Any) -> Any:
            w = self.watch
            if w is None or self.report is not None:
                return control
            if self._loss_handle is not None:
                self._loss_handle.remove()
                self._loss_handle = None
            loss = None
            if w.monitor.hooked and self._losses:
                if getattr(self, "_loss_is_share", False):
                    ranks = w.monitor.ranks
                    world = ranks.world if ranks is not None and getattr(args, "average_tokens_across_devices", False) else 1
                    loss = sum(self._losses) * world
                else:
                    loss = sum(self._losses) / len(self._losses)
            self._losses = []
            info = None
            try:
                info = w.step(loss, grads_unscaled=True, grad_scale=_loss_scale(optimizer))
            finally:
                if self._saved_clip is not None:
                    clip_with_norm(w.model.parameters(), self._saved_clip, info and info.get("grad_norm"))
                    args.max_grad_norm = self._saved_clip
                    self._saved_clip = None
            if info["measured"] and self.log_metrics and self.trainer is not None:
                self._pending = w.metrics()
            if w.stopped:
                self._close()
                control.should_training_stop = True
            return control

        def on_step_end(self, args: Any, state: Any, control: Any, **kw: Any) -> None:
            pending = getattr(self, "_pending", None)
            if pending and self.trainer is not None:
                self._pending = None
                self.trainer.log(dict(pending))

        def on_train_end(self, args: Any, state: Any, control: Any, **kw: Any) -> None:
            self._close()

        def _close(self) -> None:
            if self._loss_handle is not None:
                self._loss_handle.remove()
                self._loss_handle = None
            if self.watch is not None and self.report is None:
                if self._clipped_reads:
                    self.watch.monitor.notes.append(
                        "the parameter-gradient norms were read after the Trainer's gradient clipping "
                        "(FSDP/DeepSpeed clip on their own); output-gradient norms are unclipped")
                self.report = self.watch.close()

    return GradcheckCallback


def _own_clipping(args: Any) -> bool:
    """FSDP and DeepSpeed clip with their own sharded implementations: leave their clipping alone."""
    return bool(getattr(args, "fsdp", None) or getattr(args, "deepspeed", None))


def _loss_scale(optimizer: Any) -> float:
    """The fp16 loss scale (Accelerate's GradScaler on the AcceleratedOptimizer), else 1."""
    scaler = getattr(optimizer, "scaler", None)
    if scaler is not None and hasattr(scaler, "get_scale") and scaler.is_enabled():
        return float(scaler.get_scale())
    return 1.0


__getattr__ = lazy_callback(__name__, _build)

__all__ = ["GradcheckCallback"]
