"""gradcheck under torchrun: the process group and agreement between ranks (here), each rank's batch
slice (rank_batches.py), the model's strategy, data parallel or FSDP2 (strategy.py), and what the
measuring code asks of a run: a step's gradients, the training rehearsal's model (driver.py).

    torchrun --nproc-per-node N -m gradcheck_cli check MODEL [--batch SPEC] [--fsdp]

- The process group is initialised here when the model's code has not done it (gloo on the CPU, NCCL
  on CUDA with LOCAL_RANK as the device), with a timeout, and torn down at the end.
- Errors: at points every rank reaches (after building the model, at the end), the ranks agree on the
  outcome (`agree`); an error inside the passes, where the other ranks may be waiting in a collective,
  ends that rank at once with exit 3 (`fatal`), and the others follow with exit 3: the collective they
  wait in fails when the rank's connections close, or torchrun's SIGTERM arrives (handled: exit 3).
- The names the CLI and the pipeline use are all reachable from this package: `prepare_model`, `shard`
  (documented for a build() under torchrun), `RankBatches` and `Driver` are imported here from their
  modules.
"""

from __future__ import annotations

import functools
import inspect
import os
import signal
import sys
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

from gradcheck_cli.errors import GradcheckError, InputError, UserCodeError

DEFAULT_TIMEOUT_S = 1800.0    # process-group timeout without --timeout
TIMEOUT_GRACE_S = 30.0        # with --timeout: the process group waits this much longer


def requested(fsdp: bool = False) -> bool:
    """Launched by torchrun (or another launcher setting WORLD_SIZE) with more than one rank, or with
    one rank and --fsdp (which still exercises the sharded path)."""
    try:
        n = int(os.environ.get("WORLD_SIZE", "1"))
    except ValueError:
        return False
    return n > 1 or (fsdp and "RANK" in os.environ)


class PeerFailed(GradcheckError):
    """Another rank failed: this rank ends with the same code, printing nothing (that rank printed it)."""

    def __init__(self, rank: int, info: dict[str, Any]):
        super().__init__(f"rank {rank}: {info.get('message')}")
        self.exit_code = int(info.get("exit_code", 3))
        self.info = dict(info, message=f"rank {rank}: {info.get('message')}")


@dataclass
class Context:
    rank: int
    world_size: int
    local_rank: int
    backend: str
    fsdp: bool
    owns_group: bool
    strategy: str = "ddp"
    device: Any = None
    timeout_s: float = DEFAULT_TIMEOUT_S
    saved_grads: list = field(default_factory=list)

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def describe(self) -> dict[str, Any]:
        return {"world_size": self.world_size, "backend": self.backend, "strategy": self.strategy}


_current: Context | None = None


def current() -> Context | None:
    return _current


def start(fsdp: bool, device: str | None, timeout: float | None) -> Context:
    """Join (or create) the process group. gloo on the CPU, NCCL with LOCAL_RANK on CUDA."""
    global _current
    import torch
    import torch.distributed as dist

    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    timeout_s = (timeout + TIMEOUT_GRACE_S) if timeout else DEFAULT_TIMEOUT_S
    owns = False
    if dist.is_initialized():
        backend = str(dist.get_backend())
    else:
        use_cuda = device != "cpu" and torch.cuda.is_available()
        if device == "cuda" and not torch.cuda.is_available():
            raise InputError("--device cuda was asked for but CUDA is not available on this machine",
                             hint="use --device cpu or --device auto")
        backend = "nccl" if use_cuda else "gloo"
        if use_cuda:
            torch.cuda.set_device(local_rank)
        try:
            dist.init_process_group(backend, timeout=timedelta(seconds=timeout_s))
        except Exception as exc:   # noqa: BLE001 - a launcher environment that does not work
            raise InputError(f"cannot initialise the process group ({backend}): {str(exc).splitlines()[0][:200]}",
                             hint="launch with torchrun --nproc-per-node N -m gradcheck_cli check ...") from None
        owns = True
    ctx = Context(rank=dist.get_rank(), world_size=dist.get_world_size(), local_rank=local_rank,
                  backend=backend, fsdp=fsdp, owns_group=owns, timeout_s=timeout_s,
                  strategy="fsdp" if fsdp else "ddp")
    if backend == "nccl":
        ctx.device = torch.device("cuda", local_rank)
    _current = ctx
    # torchrun ends the other ranks with SIGTERM when one fails: they exit with the same code, 3 (rank 0
    # first writes the error report, `on_terminated`, so that a CI gate reading --output finds one).
    if threading_main():
        signal.signal(signal.SIGTERM, _terminated)
    return ctx


on_terminated: Any = None   # set by the CLI around a model's check: writes rank 0's error report


_ending = False   # this rank is already ending by itself (fatal), writing its own report first


def _terminated(*_: Any) -> None:
    if _ending:
        return   # the rank ends with exit 3 as soon as its report is written (fatal)
    try:
        if on_terminated is not None:
            on_terminated()
    except BaseException as exc:   # noqa: BLE001 - say why there is no report, then end as planned
        try:
            sys.stderr.write(f"error: rank {_current.rank if _current else '?'}: the error report could not be "
                             f"written after SIGTERM: {type(exc).__name__}: {str(exc)[:200]}\n")
            sys.stderr.flush()
        except BaseException:   # noqa: BLE001
            pass
    finally:
        os._exit(3)


def ending() -> None:
    """This rank is about to end by itself (its report, then fatal): a SIGTERM from torchrun from here on
    changes nothing. (Python runs a signal's handler in the main thread whatever thread the signal reached,
    so masking the signal in this thread would not hold it back.)"""
    global _ending
    _ending = True


def threading_main() -> bool:
    import threading

    return threading.current_thread() is threading.main_thread()


def finish(ctx: Context | None) -> None:
    """Tear the process group down (only one gradcheck created)."""
    global _current
    _current = None
    if ctx is None or not ctx.owns_group:
        return
    import torch.distributed as dist

    if dist.is_initialized():
        try:
            dist.destroy_process_group()
        except Exception:   # noqa: BLE001 - best effort at exit
            pass


def fatal(exc: BaseException, ctx: Context, message: str, code: int = 3) -> None:
    """This rank failed where the others may be waiting in a collective: say why (on this rank only)
    and end the process now; the other ranks follow with exit 3."""
    if message:
        sys.stderr.write(message + "\n")
    sys.stderr.flush()
    sys.stdout.flush()
    os._exit(code)


_PEER_LOST = ("connection closed by peer", "connection reset by peer", "broken pipe", "socket timeout",
              "timed out", "nccl communicator was aborted", "process group", "connection refused")


def peer_lost(exc: BaseException | None) -> bool:
    """The error is a collective failing because another rank ended (or did not answer in time)."""
    seen: set[int] = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        if type(exc).__name__ in ("DistError", "DistBackendError", "DistNetworkError", "DistStoreError"):
            return True
        try:
            text = str(exc).lower()
        except Exception:   # noqa: BLE001 - a user exception whose __str__ raises
            text = ""
        if ("gloo" in text or "nccl" in text or "c10d" in text) and any(k in text for k in _PEER_LOST):
            return True
        exc = getattr(exc, "original", None) or exc.__cause__ or exc.__context__
    return False


def agree(ctx: Context, exc: BaseException | None) -> None:
    """A point every rank reaches: each says whether it failed (one all_gather_object). A rank that
    failed re-raises its own error; the others raise PeerFailed with the first failing rank's error."""
    import torch.distributed as dist

    if exc is None:
        mine = None
    elif isinstance(exc, GradcheckError):
        mine = {"message": exc.one_line(), "exit_code": exc.exit_code,
                "type": "user-code" if isinstance(exc, UserCodeError) else "input",
                "phase": getattr(exc, "phase", None)}
    else:
        mine = {"message": f"internal error in gradcheck: {type(exc).__name__}", "exit_code": 4,
                "type": "internal", "phase": None}
    everyone: list[Any] = [None] * ctx.world_size
    dist.all_gather_object(everyone, mine)
    if exc is not None:
        exc.agreed = True   # type: ignore[attr-defined]
        raise exc
    for r, info in enumerate(everyone):
        if info is not None:
            err = PeerFailed(r, info)
            err.agreed = True   # type: ignore[attr-defined]
            raise err


def agree_code(ctx: Context, code: int) -> int:
    """The exit code every rank ends with: the highest over ranks."""
    import torch
    import torch.distributed as dist

    t = torch.tensor([code], dtype=torch.int64, device=ctx.device or "cpu")
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return int(t.item())


# The rest of the package (its modules import the names above only when called).
from gradcheck_cli.distributed.driver import Driver  # noqa: E402,F401
from gradcheck_cli.distributed.rank_batches import RankBatches  # noqa: E402,F401
from gradcheck_cli.distributed.strategy import is_fsdp2, prepare_model, shard  # noqa: E402,F401
