"""The rule registry: every rule, in code order. `gradcheck rules` and `gradcheck explain` read it."""

from __future__ import annotations

from gradcheck_cli.rules import (
    dead_relu, divergence, exploding, initial_loss, nonfinite, saturation, unused, update_ratio, vanishing,
)
from gradcheck_cli.rules.base import SECTIONS, Option, Rule

RULES: tuple[Rule, ...] = tuple(sorted(
    (vanishing.RULE, exploding.RULE, nonfinite.RULE, saturation.RULE, dead_relu.RULE, unused.RULE,
     initial_loss.RULE, divergence.RULE, update_ratio.RULE),
    key=lambda r: r.code,
))


def get_rule(key: str) -> Rule | None:
    """By id (vanishing-gradients) or code (GC101), case-insensitive."""
    k = key.strip().lower()
    for r in RULES:
        if k in (r.id, r.code.lower()):
            return r
    return None


__all__ = ["RULES", "SECTIONS", "Option", "Rule", "get_rule"]
