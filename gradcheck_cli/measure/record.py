"""The per-step record: one flat vector of floats per step, each key declaring how it reduces.

Hooks and drivers emit into a `Recorder` (the sink): small float32 tensors on the device, keyed by
(slot, key, seq). `Recorder.flush` moves a step's values to the host in one transfer and returns a
`StepRecord`. Every key is declared in `KEYS` with the reduce op that combines two values of the same
key, across the steps of a run and across the ranks of a distributed run: SUM, MAX, MIN or ANY (0/1
flags). `reduce_records` applies them to records of equal layout (what an all-reduce per op does);
`StepRecord.positions_by_op` gives the positions to all-reduce together.

slot: a layer index, ("op", i) for a watched op call site, ("param", i) for a parameter, or None for
run-level values. seq: order of the event within the pass (forward or backward), used to find where
NaN/Inf start (meaningful within one rank and step only).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum
from typing import Any, Iterator

import torch


class Reduce(str, Enum):
    SUM = "sum"
    MAX = "max"
    MIN = "min"
    ANY = "any"   # 0/1 flags: 1 when any value is non-zero


@dataclass(frozen=True)
class Key:
    name: str
    reduce: Reduce
    doc: str
    grad_power: int = 0   # 2: a sum of squares of gradients; scaled by 1/scale**2 under AMP loss scaling


KEYS: dict[str, Key] = {k.name: k for k in (
    Key("g", Reduce.SUM, "sum of squares of dLoss/dOutput over a layer's calls in the step", grad_power=2),
    Key("sat", Reduce.SUM, "sigmoid/tanh outputs whose derivative is below 1% of its maximum"),
    Key("sat_n", Reduce.SUM, "sigmoid/tanh outputs seen (the denominator of sat), per layer (a vector)"),
    Key("calls", Reduce.SUM, "forward calls in the step, per layer (a vector by layer slot)"),
    Key("dead", Reduce.MIN, "ReLU units not yet seen above 0 in the run so far"),
    Key("out", Reduce.ANY, "diagnosis: a layer output held NaN/Inf"),
    Key("op", Reduce.ANY, "diagnosis: a watched op's output held NaN/Inf"),
    Key("opg", Reduce.ANY, "diagnosis: a gradient produced by a watched op's backward held NaN/Inf"),
    Key("loss", Reduce.SUM, "the step's loss (across ranks: divide the sum by the world size for the mean)"),
    Key("input_nf", Reduce.MAX, "NaN/Inf values in the step's batch"),
    Key("pgrad", Reduce.SUM, "sum of squares of the gradient of each parameter that received one (sharded "
        "gradients, FSDP: shards add up; DDP gradients are equal on every rank after its all-reduce: take "
        "one rank's)", grad_power=2),
    Key("pgrad_bad", Reduce.ANY, "diagnosis: a parameter's gradient held NaN/Inf"),
    Key("pupd", Reduce.SUM, "training rehearsal: sum of squares of each parameter's update in an optimizer "
        "step (FSDP shards add up; replicated DDP parameters: take one rank's, as for pgrad)"),
    Key("pweight", Reduce.SUM, "training rehearsal: sum of squares of each parameter before an optimizer step "
        "(FSDP shards add up; replicated DDP parameters: take one rank's)"),
)}


@dataclass
class StepRecord:
    """One step's values: entries (slot, key, offset, length, seq) into one flat list of floats."""

    entries: list[tuple[Any, str, int, int, int]] = field(default_factory=list)
    values: list[float] = field(default_factory=list)

    def items(self) -> Iterator[tuple[Any, str, list[float], int]]:
        vals = self.values
        for slot, key, off, n, seq in self.entries:
            yield slot, key, (vals[off:off + n] if n != 1 else [vals[off]]), seq

    def get(self, slot: Any, key: str) -> list[float] | None:
        for s, k, off, n, _ in self.entries:
            if s == slot and k == key:
                return self.values[off:off + n]
        return None

    def layout(self) -> list[tuple[Any, str, int]]:
        return [(slot, key, n) for slot, key, _, n, _ in self.entries]

    def positions_by_op(self) -> dict[Reduce, list[int]]:
        """Positions in `values` per reduce op: what a distributed driver all-reduces together."""
        out: dict[Reduce, list[int]] = {}
        for _, key, off, n, _ in self.entries:
            out.setdefault(KEYS[key].reduce, []).extend(range(off, off + n))
        return out


def reduce_values(op: Reduce, values: list[float]) -> float:
    if op is Reduce.SUM:
        return sum(values)
    if op is Reduce.MAX:
        return max(values)
    if op is Reduce.MIN:
        return min(values)
    return 1.0 if any(v != 0 for v in values) else 0.0


def reduce_records(records: list[StepRecord]) -> StepRecord:
    """Combine records of the same layout (the ranks of one step), each value by its key's op."""
    if not records:
        raise ValueError("no records to reduce")
    first = records[0]
    layout = first.layout()
    for r in records[1:]:
        if r.layout() != layout:
            raise ValueError("records of different layouts cannot be reduced position by position")
    values = list(first.values)
    for op, positions in first.positions_by_op().items():
        for i in positions:
            values[i] = reduce_values(op, [r.values[i] for r in records])
    return StepRecord(entries=list(first.entries), values=values)


class Recorder:
    """The sink hooks emit into: the statistics of one pass, as small tensors on the device; `flush`
    brings them to the host in one transfer (one stack or cat, one .cpu())."""

    def __init__(self) -> None:
        self.scalars: list[torch.Tensor] = []          # 0-d float32 tensors
        self.scalar_keys: list[tuple[Any, str, int]] = []
        self.vectors: list[torch.Tensor] = []
        self.vector_keys: list[tuple[Any, str, int]] = []
        self.host: list[tuple[Any, str, list]] = []    # values already on the host (counts)

    def add(self, slot: Any, name: str, value: torch.Tensor, seq: int = 0) -> None:
        """A 0-d float32 statistic (the caller computes it with dtype=torch.float32)."""
        self.scalars.append(value)
        self.scalar_keys.append((slot, name, seq))

    def add_vector(self, slot: Any, name: str, value: torch.Tensor) -> None:
        self.vectors.append(value.detach().reshape(-1).to(torch.float32))
        self.vector_keys.append((slot, name, 0))

    def add_host(self, slot: Any, name: str, value: float) -> None:
        self.host.append((slot, name, [float(value)]))

    def add_host_vector(self, slot: Any, name: str, values: list[float]) -> None:
        self.host.append((slot, name, values))

    def clear(self) -> None:
        self.scalars, self.scalar_keys, self.vectors, self.vector_keys, self.host = [], [], [], [], []

    def flush(self) -> StepRecord:
        parts = []
        if self.scalars:
            parts.append(torch.stack(self.scalars))
        parts += self.vectors
        flat: list[float] = []
        if parts:
            dev = parts[0].device
            flat = torch.cat([p if p.device == dev else p.to(dev) for p in parts]).cpu().tolist()  # one transfer
        entries = [(slot, name, i, 1, seq) for i, (slot, name, seq) in enumerate(self.scalar_keys)]
        pos = len(self.scalars)
        for v, (slot, name, seq) in zip(self.vectors, self.vector_keys):
            n = v.numel()
            entries.append((slot, name, pos, n, seq))
            pos += n
        for slot, name, values in self.host:
            entries.append((slot, name, pos, len(values), 0))
            flat.extend(values)
            pos += len(values)
        self.clear()
        return StepRecord(entries=entries, values=flat)
