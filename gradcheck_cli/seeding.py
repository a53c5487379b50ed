"""Seeding every random number generator a model may draw from (torch, numpy, Python's `random`), and
leaving the caller's generators exactly as they were."""

from __future__ import annotations

import random
import sys
from contextlib import contextmanager
from typing import Iterator


def seed_all(seed: int) -> None:
    """torch (CPU and every CUDA device), Python's `random` and numpy's global generator."""
    import torch

    torch.manual_seed(seed)
    seed_host_rngs(seed)


def seed_host_rngs(seed: int) -> None:
    """Python's `random` and numpy's global generator (when numpy is installed)."""
    random.seed(seed)
    np = sys.modules.get("numpy")
    if np is None:
        try:
            import numpy as np   # noqa: F811
        except ImportError:   # pragma: no cover - numpy ships with most torch installs
            return
    np.random.seed(seed % (2 ** 32))


@contextmanager
def host_rngs_preserved() -> Iterator[None]:
    """Restore Python's `random` and numpy's global state on exit (torch's is restored by fork_rng)."""
    py_state = random.getstate()
    np = sys.modules.get("numpy")
    np_state = np.random.get_state() if np is not None else None
    try:
        yield
    finally:
        random.setstate(py_state)
        np = sys.modules.get("numpy")
        if np is not None:
            if np_state is not None:
                np.random.set_state(np_state)
