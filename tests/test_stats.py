"""properties.measure.stats: Wilson intervals, clustering, the no-data state, the gate."""

from __future__ import annotations

import math

import pytest
import torch

from properties.measure.stats import Rate, Tally, compare, t_quantile, wilson_interval

# Wilson score intervals worked out by hand (z = 1.959964 for 95%):
#   centre = (p + z^2/2n) / (1 + z^2/n), half = z / (1 + z^2/n) * sqrt(p(1-p)/n + z^2/4n^2)
WILSON_95 = [
    (0, 10, 0.0, 0.277533),
    (5, 10, 0.236593, 0.763407),
    (10, 10, 0.722467, 1.0),
    (81, 263, 0.255289, 0.366210),
]


@pytest.mark.parametrize("successes, trials, low, high", WILSON_95)
def test_wilson_matches_hand_computed_values(successes, trials, low, high):
    got = Rate(successes, trials, confidence=0.95).interval
    assert got == pytest.approx((low, high), abs=1e-6)


def test_wilson_direct_formula():
    z = 2.5758293035489  # 99%
    n, s = 200, 37
    p = s / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z / (1 + z * z / n) * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    assert wilson_interval(s, n, 0.99) == pytest.approx((centre - half, centre + half), rel=1e-12)


def test_no_data_is_explicit_not_nan():
    rate = Rate(0, 0)
    assert rate.rate is None and rate.interval == (None, None) and rate.method == "none"
    assert str(rate) == "no data"
    assert rate.to_dict()["rate"] is None
    assert Tally().rate("never added").trials == 0


def test_clustered_interval_uses_the_design_effect():
    # two clusters, one all-success, one all-failure: p = 0.5 with strong clustering
    rate = Rate.from_clusters([(10, 10), (0, 10)])
    # cluster-robust variance: 2/1 * (25 + 25) / 400 = 0.25; binomial: 0.25 / 20 -> deff = 20
    assert rate.method == "wilson-clustered"
    assert rate.design_effect == pytest.approx(20.0)
    assert rate.effective_trials == pytest.approx(1.0)
    # the variance comes from 2 cluster totals: Student's t with 1 degree of freedom, not the normal quantile
    assert rate.degrees_of_freedom == 1.0
    assert rate.interval == pytest.approx(wilson_interval(0.5, 1.0, 0.99, df=1.0))
    # homogeneous clusters: no inflation, the Wilson interval with t on 2 degrees of freedom, wider than the plain one
    even = Rate.from_clusters([(5, 10), (5, 10), (5, 10)])
    assert even.design_effect == 1.0
    assert even.interval == pytest.approx(wilson_interval(15, 30, 0.99, df=2.0))
    assert even.interval[0] < Rate(15, 30).interval[0] and even.interval[1] > Rate(15, 30).interval[1]
    # the clustered interval is never narrower than the independent one
    mixed = Rate.from_clusters([(9, 10), (2, 10), (6, 10), (4, 10)])
    low_c, high_c = mixed.interval
    low_i, high_i = Rate(mixed.successes, mixed.trials).interval
    assert low_c <= low_i and high_c >= high_i


def test_t_quantile_matches_scipy_and_the_table():
    from scipy.stats import t

    for df in (1, 2, 3, 5, 7, 10, 30, 1000):
        for probability in (0.9, 0.975, 0.995, 0.9995):
            assert t_quantile(probability, df) == pytest.approx(t.ppf(probability, df), rel=1e-9)
    # printed tables: t(0.995; 5) = 4.032, t(0.975; 1) = 12.706, t(0.995; 30) = 2.750
    assert t_quantile(0.995, 5) == pytest.approx(4.0321, abs=1e-4)
    assert t_quantile(0.975, 1) == pytest.approx(12.7062, abs=1e-4)
    assert t_quantile(0.995, 30) == pytest.approx(2.7500, abs=1e-4)
    # the interval with t equals the hand formula with the t quantile in place of z
    z = t.ppf(0.995, 5)
    n, s = 40.0, 30.0
    p = s / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z / (1 + z * z / n) * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    assert wilson_interval(s, n, 0.99, df=5) == pytest.approx((centre - half, centre + half), rel=1e-9)


def test_all_pass_and_all_fail_clusters_count_as_whole_clusters():
    """At p = 0 or 1 the spread inside clusters is unknown: the interval is that of clusters passing or failing
    as a whole, T^2 / sum t_c^2 effective trials (the number of clusters when they are equally large)."""
    three = Rate.from_clusters([(400, 400), (350, 350), (250, 250)])
    assert three.design_effect == pytest.approx((400**2 + 350**2 + 250**2) / 1000)
    assert three.effective_trials == pytest.approx(1000**2 / (400**2 + 350**2 + 250**2))
    assert three.interval == pytest.approx(wilson_interval(three.effective_trials, three.effective_trials, 0.99))
    equal = Rate.from_clusters([(0, 8)] * 5)
    assert equal.effective_trials == pytest.approx(5.0)
    assert equal.interval == pytest.approx(Rate(0, 5).interval)
    # by hand at 99 % (z = 2.5758293, n = 3): centre 2.105816 / 3.211632 = 0.655682, half 0.802031 * 0.429303
    # = 0.344316 (the hand digits round at 1e-6)
    assert Rate.from_clusters([(10, 10)] * 3).interval == pytest.approx((0.311366, 1.0), abs=1e-5)
    # single-trial clusters are independent trials: no inflation
    assert Rate.from_clusters([(1, 1)] * 50).interval == Rate(50, 50).interval
    # the seed-robustness this buys: one failing network of three is not a regression against an all-pass baseline
    failing = Rate.from_clusters([(400, 400), (350, 350), (0, 250)])

    def row(r):
        return {"rate": r.rate, "ci_low": r.interval[0], "ci_high": r.interval[1]}

    assert compare(row(failing), row(three)) == "ok"
    # while a real drop against many clusters still is one
    many = Rate.from_clusters([(20, 20)] * 40)
    dropped = Rate.from_clusters([(20, 20)] * 20 + [(0, 20)] * 20)
    assert compare(row(dropped), row(many)) == "regression"


def test_from_mask_and_tally_agree():
    holds = torch.tensor([[True, False, True], [True, True, True], [False, False, True]])
    counted = torch.tensor([[True, True, False], [True, True, True], [True, False, True]])
    by_point = Rate.from_mask(holds, counted, cluster_dim=0)
    assert (by_point.successes, by_point.trials) == (5, 7)
    assert by_point.clusters == ((1, 2), (3, 3), (1, 2))
    tally = Tally()
    for n in range(3):
        tally.new_cluster()
        tally.add("r", holds[n], counted[n])
    assert tally.rate("r") == by_point
    assert tally.n_clusters == 3


@pytest.mark.parametrize(
    "args, exception, message",
    [
        ((3, 2), ValueError, "exceed trials"),
        ((-1, 2), ValueError, "successes must be >= 0"),
        ((1, 2.0), TypeError, "trials must be an int"),
        ((1, True), TypeError, "trials must be an int"),
        ((1, 2, 1.5), ValueError, "confidence"),
        ((1, 2, "0.9"), TypeError, "confidence must be a number"),
        ((1, 2, 0.99, ((1, 1), (1, 2))), ValueError, "add up"),
        ((1, 2, 0.99, ((2, 1), (-1, 1))), ValueError, "every cluster"),
    ],
)
def test_rate_refuses_bad_arguments(args, exception, message):
    with pytest.raises(exception, match=message):
        Rate(*args)


def test_compare_statuses():
    row = {"rate": 0.5, "ci_low": 0.4, "ci_high": 0.6}
    assert compare(row, None) == "new"
    assert compare(row, {"rate": 0.55, "ci_low": 0.45, "ci_high": 0.65}) == "ok"
    assert compare(row, {"rate": 0.8, "ci_low": 0.7, "ci_high": 0.9}) == "regression"
    assert compare(row, {"rate": 0.2, "ci_low": 0.1, "ci_high": 0.3}) == "regression"
    none = {"rate": None, "ci_low": None, "ci_high": None}
    assert compare(none, none) == "ok"
    # no data on one side: nothing contradicts the other side's interval (another seed may judge no point)
    assert compare(none, row) == "ok" and compare(row, none) == "ok"
