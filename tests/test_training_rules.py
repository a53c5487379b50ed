"""The trajectory rules on hand-made trajectories (no torch): loss-divergence, update-ratio and the
trajectory parts of non-finite, exploding-gradients and dead-relus. Healthy shapes stay silent."""

from __future__ import annotations

import math

import pytest

from gradcheck_cli.rules import get_rule
from gradcheck_cli.rules.trajectory import grad_spikes, median, relus_died
from gradcheck_cli.stats import RunStats, Trajectory


def stats_with(t: Trajectory) -> RunStats:
    return RunStats(layers=[], steps=3, losses=[1.0, 1.0, 1.0], training=t)


def traj(losses, grads=None, ratios=None, lr=1e-3, **kw) -> Trajectory:
    n = len(losses)
    grads = grads if grads is not None else [1.0] * n
    ratios = ratios if ratios is not None else {"fc": [1e-3] * n}
    return Trajectory(steps_requested=n, optimizer=f"adam (lr {lr:g})", lr=lr, losses=list(losses),
                      grad_norms=list(grads), layer_grad_norms={k: list(grads) for k in ratios},
                      update_ratios=ratios, layer_params={k: [f"{k}.weight", f"{k}.bias"] for k in ratios}, **kw)


def rule_ids(t: Trajectory) -> list[str]:
    from gradcheck_cli.pipeline import apply_rules

    return sorted(f.rule for f in apply_rules(stats_with(t), {}))


def check(rule: str, t: Trajectory):
    return get_rule(rule).check(stats_with(t))


# -- healthy shapes -------------------------------------------------------------------------------------------

def test_healthy_loss_to_zero_with_shrinking_gradients_is_silent():
    n = 60
    losses = [2.3 * math.exp(-0.15 * i) for i in range(n)]          # -> ~3e-4
    grads = [5.0 * math.exp(-0.12 * i) for i in range(n)]           # shrinking with the loss
    ratios = {"fc": [0.02 * math.exp(-0.1 * i) for i in range(n)]}  # updates shrink to ~5e-5
    assert rule_ids(traj(losses, grads, ratios, lr=0.05)) == []


def test_noisy_healthy_loss_is_silent():
    losses = [2.3 - 0.01 * i + (0.15 if i % 2 else -0.15) for i in range(40)]
    grads = [1.0 + (0.4 if i % 3 == 0 else 0.0) for i in range(40)]
    assert rule_ids(traj(losses, grads)) == []


def test_adams_large_first_update_alone_is_not_too_large():
    ratios = {"fc": [0.5] + [2e-3] * 19}
    assert check("update-ratio", traj([2.0] * 20, ratios=ratios)) == []


def test_no_training_means_no_trajectory_findings():
    s = RunStats(layers=[], steps=3, losses=[1.0] * 3)
    for rid in ("loss-divergence", "update-ratio"):
        assert get_rule(rid).check(s) == []


# -- loss-divergence ------------------------------------------------------------------------------------------

def test_divergence_reports_onset_and_lr():
    losses = [2.3, 2.1, 1.9, 2.5, 9.0, 40.0, 300.0, 2e3]
    (f,) = check("loss-divergence", traj(losses, lr=0.5))
    assert f.evidence["onset_step"] == 3           # the loss was lowest at step 2, rose from step 3
    assert f.evidence["exceeded_at_step"] == 5
    assert "step 3" in f.message and "lr 0.5" in f.message
    assert any("0.05" in x for x in f.fixes)       # lr / 10, concrete


def test_divergence_then_nan_says_so():
    (f,) = check("loss-divergence", traj([2.0, 5.0, 30.0, math.inf, math.nan]))
    assert "NaN/Inf" in f.message


def test_oscillation_with_growing_amplitude_fires():
    losses, base = [], 2.0
    for i in range(16):
        losses.append(base + (0.05 * 1.3 ** i) * (1 if i % 2 else -1))
    (f,) = check("loss-divergence", traj(losses))
    assert "oscillates" in f.message and f.evidence["amplitude_growth"] >= 4


def test_divergence_threshold_is_an_option():
    t = traj([1.0, 2.0, 4.0, 8.0])
    assert check("loss-divergence", t) == []
    assert get_rule("loss-divergence").check(stats_with(t), {"rise": 5.0})


# -- update-ratio ---------------------------------------------------------------------------------------------

def test_update_ratio_too_large_names_the_layer_and_a_concrete_lr():
    ratios = {"a": [0.3] * 10, "b": [1e-3] * 10}
    (f,) = check("update-ratio", traj([2.0] * 10, ratios=ratios, lr=0.5))
    assert f.layer == "a" and "too large" in f.message
    assert "0.002" in f.fixes[0]   # 0.5 * 1e-3 / 0.3 ~= 1.7e-3 -> 0.002


def test_update_ratio_too_small_while_the_loss_stalls():
    ratios = {"a": [1e-9] * 10}
    (f,) = check("update-ratio", traj([2.0] * 10, ratios=ratios, lr=1e-9))
    assert "too small" in f.message


def test_tiny_updates_are_fine_once_the_loss_went_to_zero():
    ratios = {"a": [1e-7] * 10}
    assert check("update-ratio", traj([2.0 * 0.3 ** i for i in range(10)], ratios=ratios)) == []


def test_layer_with_gradient_but_no_update_names_the_missing_parameters():
    t = traj([2.0] * 5, ratios={"enc": [1e-3] * 5, "head": [0.0] * 5},
             params_not_in_optimizer=["head.weight", "head.bias"])
    (f,) = check("update-ratio", t)
    assert f.layer == "head" and "head.weight" in f.message and "add_param_group" in f.fixes[0]


def test_layer_without_gradient_is_left_to_unused_parameters():
    t = traj([2.0] * 5, ratios={"head": [0.0] * 5})
    t.layer_grad_norms["head"] = [0.0] * 5
    assert check("update-ratio", t) == []


def test_zero_weight_layers_have_no_ratio_and_are_skipped():
    t = traj([2.0] * 5, ratios={"zero_init": [None, 0.5, 0.4, 0.3, 0.2]})
    assert check("update-ratio", t)   # from step 1 the ratio exists and is large
    t = traj([2.0] * 5, ratios={"zero_init": [None] * 5})
    assert check("update-ratio", t) == []


# -- exploding-gradients over the trajectory -------------------------------------------------------------------

def test_gradient_spike_gives_onset_jump_and_max_norm():
    grads = [1.0, 1.2, 0.9, 1.1, 1.0, 30.0, 200.0, 50.0]
    t = traj([2.0] * 8, grads=grads)
    s = grad_spikes(t, 10.0, 5)
    assert s["onset"] == 5 and s["largest_jump"] == pytest.approx(30.0)
    assert s["max_norm"] == pytest.approx(2.0)     # 2 x median(1.0, 1.2, 0.9, 1.1, 1.0)
    fs = [f for f in check("exploding-gradients", t) if "spikes" in f.message]
    assert fs and "max_norm=2" in fs[0].fixes[1] and "step 5" in fs[0].message   # after the lower lr (verified)


def test_steadily_shrinking_gradients_do_not_spike():
    assert grad_spikes(traj([1.0] * 30, grads=[0.8 ** i for i in range(30)]), 10.0, 5) is None


# -- non-finite over the trajectory ---------------------------------------------------------------------------

@pytest.mark.parametrize("first, phrase", [("loss", "the loss went non-finite first"),
                                           ("gradient", "a gradient went non-finite first"),
                                           ("weight", "the weights went non-finite first")])
def test_nonfinite_onset_says_what_went_first(first, phrase):
    t = traj([2.0, 3.0, 5.0, math.nan], nonfinite_step=3, nonfinite_first=first, nonfinite_layers=["fc"])
    (f,) = check("non-finite", t)
    assert "step 3" in f.message and phrase in f.message and f.evidence["onset_step"] == 3


def test_nonfinite_at_step_zero_keeps_the_check_finding():
    s = RunStats(layers=[], steps=3, losses=[math.nan] * 3,
                 training=traj([math.nan], nonfinite_step=0, nonfinite_first="loss"))
    fs = get_rule("non-finite").check(s)
    assert len(fs) == 1 and "training step" not in fs[0].message


# -- dead-relus over the trajectory ---------------------------------------------------------------------------

def test_units_alive_at_start_that_die_are_reported_with_the_step():
    n = 20
    start = [True] * 16
    last = [2] * 10 + [n - 1] * 6          # 10 of 16 stop firing after step 2
    t = traj([2.0] * n, relu_alive_at_start={"relu1": start}, relu_last_alive={"relu1": last})
    assert relus_died(t, 3)["relu1"]["died"] == 10
    fs = [f for f in check("dead-relus", t)]
    assert len(fs) == 1 and "step 3" in fs[0].message and fs[0].layer == "relu1"


def test_units_off_for_a_batch_or_two_are_not_dead():
    n = 20
    last = [n - 2] * 8 + [n - 1] * 8      # quiet for the last step only
    t = traj([2.0] * n, relu_alive_at_start={"r": [True] * 16}, relu_last_alive={"r": last})
    assert check("dead-relus", t) == []


def test_units_dead_from_the_start_are_the_step0_rules_business():
    n = 20
    t = traj([2.0] * n, relu_alive_at_start={"r": [False] * 16}, relu_last_alive={"r": [-1] * 16})
    assert relus_died(t, 3) == {}


def test_median_helper():
    assert median([3.0, 1.0, 2.0]) == 2.0 and median([]) is None
