"""Snapshot and restore of the user's model, and the RNG fork, for a run gradcheck drives.

What a run can change, and what is saved for it:
- training flags (gradcheck runs the passes in training mode): one bool per module;
- buffers replaced by the model's code (`self.buf = new`): the original objects are put back;
- buffers updated in place (BatchNorm running statistics, counters, EMAs): those are the persistent
  buffers (state_dict entries), and only they are copied. Non-persistent buffers (masks, rotary or
  position caches: derived constants, often the largest) are not copied; their version counters are
  recorded, and one the model's code updated in place is named in a note;
- the device, when the run moves the model;
- the RNG: forked, and seeded, on the same set of devices (CPU and every CUDA device the model or the
  run uses), so the caller's random streams continue as if gradcheck had not run.
Parameters are never written by gradcheck (gradients come from autograd.grad); writes by the model's
own code are detected by their version counters and reported by the driver.
"""

from __future__ import annotations

import itertools
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Iterator

import torch
import torch.nn as nn

from gradcheck_cli.seeding import seed_host_rngs


@dataclass
class ModelState:
    training: list[tuple[nn.Module, bool]]
    buffers: list[tuple[nn.Module, str, torch.Tensor | None]]   # every buffer slot, original object
    saved: list[tuple[torch.Tensor, torch.Tensor]]              # (persistent buffer, copy of its values)
    versions: list[tuple[str, torch.Tensor, int]]               # non-persistent buffers: version counters
    device: torch.device | None
    notes: list[str] = field(default_factory=list)


def model_device(model: nn.Module) -> torch.device | None:
    """The model's one device, or None when it has no tensors or spans several devices (then gradcheck
    runs it where it is and never moves it)."""
    devices = {t.device for t in itertools.chain(model.parameters(), model.buffers())}
    return devices.pop() if len(devices) == 1 else None


def snapshot(model: nn.Module) -> ModelState:
    training = [(m, m.training) for m in model.modules()]
    buffers, saved, versions = [], [], []
    seen: set[int] = set()
    for mname, m in model.named_modules():
        non_persistent = getattr(m, "_non_persistent_buffers_set", set())
        for name, buf in m._buffers.items():
            buffers.append((m, name, buf))
            if buf is None or id(buf) in seen:
                continue
            seen.add(id(buf))
            if name in non_persistent:
                versions.append((f"{mname}.{name}" if mname else name, buf, buf._version))
            else:
                saved.append((buf, buf.detach().clone()))
    return ModelState(training=training, buffers=buffers, saved=saved, versions=versions,
                      device=model_device(model))


def restore(model: nn.Module, state: ModelState) -> None:
    if state.device is not None and model_device(model) != state.device:
        model.to(state.device)
    with torch.no_grad():
        for m, name, original in state.buffers:
            m._buffers[name] = original
        for original, copy in state.saved:
            original.copy_(copy.to(original.device))
    for m, flag in state.training:
        m.training = flag
    changed = [name for name, buf, version in state.versions if buf._version != version]
    if changed:
        state.notes.append(f"the model's code updated {len(changed)} non-persistent buffers in place "
                           f"({', '.join(changed[:4])}{', ...' if len(changed) > 4 else ''}); gradcheck "
                           "restores persistent buffers only (the ones in the state_dict)")


def seeded_devices(model: nn.Module, device: torch.device | None) -> list[int]:
    """CUDA device indexes that a run seeds and forks: those holding the model, and the run's device."""
    idx = {t.device.index for t in itertools.chain(model.parameters(), model.buffers()) if t.device.type == "cuda"}
    if device is not None and device.type == "cuda":
        idx.add(device.index if device.index is not None else torch.cuda.current_device())
    return sorted(i if i is not None else torch.cuda.current_device() for i in idx)


def seed(value: int, cuda_devices: list[int]) -> None:
    """Seed the CPU generator and those CUDA devices (only those: the same set fork_rng saved)."""
    torch.random.default_generator.manual_seed(value)
    seed_host_rngs(value)   # numpy and Python's random too: models that draw from them are reproducible
    for i in cuda_devices:
        with torch.cuda.device(i):
            torch.cuda.manual_seed(value)


@contextmanager
def forked_rng(cuda_devices: list[int]) -> Iterator[None]:
    with torch.random.fork_rng(devices=cuda_devices):
        yield
