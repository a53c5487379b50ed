"""The measuring core (imports torch; imported only when a check runs).

    inventory     which modules and parameters are measured; kinds, owners, shared parameters
    kernels       the reductions a hook runs on a tensor (sum of squares, NaN/Inf flags, saturation)
    hooks         hook factories: forward, output-gradient and per-time-step hooks, emitting into a sink
    functional    the watch over functional activations and risky ops; the user-code site lookup
    record        the per-step flat record, each key declaring its reduce op (sum/max/min/any)
    accumulate    records folded into per-layer totals, per-step series, and RunStats
    weights       weight statistics, taken once
    model_state   snapshot/restore of what a run can change; the RNG fork and seeding
    passes        the drivers: Monitor (attach/step/detach) and run_passes (the check)
"""

from gradcheck_cli.measure.inventory import Inventory, activation_kind
from gradcheck_cli.measure.passes import Monitor, PassResult, run_passes
from gradcheck_cli.measure.record import KEYS, Reduce, StepRecord, reduce_records

__all__ = ["Inventory", "activation_kind", "Monitor", "PassResult", "run_passes", "KEYS", "Reduce",
           "StepRecord", "reduce_records"]
