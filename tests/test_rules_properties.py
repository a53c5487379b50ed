"""Property tests of the depth rules (Hypothesis; skipped when it is not installed)."""

from __future__ import annotations

import math

import pytest

pytest.importorskip("hypothesis")

from hypothesis import assume, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from gradcheck_cli.findings import Severity  # noqa: E402
from gradcheck_cli.rules import get_rule  # noqa: E402

from test_rules import depth_stats  # noqa: E402

VANISHING = get_rule("vanishing-gradients")
EXPLODING = get_rule("exploding-gradients")


@given(early=st.floats(min_value=1e-12, max_value=1e3), n=st.integers(min_value=3, max_value=24))
@settings(max_examples=60, deadline=None)
def test_vanishing_fires_iff_ratio_below_threshold(early, n):
    assume(abs(math.log(early / 1e-3)) > 1e-9 and abs(math.log(early / 1e-6)) > 1e-9)
    found = VANISHING.check(depth_stats(early, n=n))
    if early < 1e-3:
        assert len(found) == 1
        assert found[0].severity is (Severity.ERROR if early < 1e-6 else Severity.WARNING)
        assert found[0].evidence["early_late_ratio"] == pytest.approx(early, rel=1e-6)
    else:
        assert found == []



@given(early=st.floats(min_value=1e-3, max_value=1e12), n=st.integers(min_value=3, max_value=24))
@settings(max_examples=60, deadline=None)
def test_exploding_fires_iff_ratio_above_threshold(early, n):
    assume(abs(math.log(early / 1e3)) > 1e-9 and abs(math.log(early / 1e6)) > 1e-9)
    found = EXPLODING.check(depth_stats(early, n=n))
    if early > 1e3:
        assert len(found) == 1
        assert found[0].severity is (Severity.ERROR if early > 1e6 else Severity.WARNING)
    else:
        assert found == []
