"""Temperature scaling recovers a known temperature; ECE and the reliability curve against direct computation."""

import numpy as np
import pytest

from bundle.metrics import expected_calibration_error, fit_temperature, reliability_curve
from bundle.metrics.calibration import apply_temperature


@pytest.mark.parametrize("true_t", [0.5, 1.0, 3.0])
def test_temperature_scaling_recovers_a_known_temperature(true_t):
    rng = np.random.default_rng(0)
    z = rng.normal(0, 3, 20000)  # calibrated logits ...
    y = (rng.random(z.size) < 1 / (1 + np.exp(-z))).astype(float)
    t = fit_temperature(z * true_t, y)  # ... seen through an over- or under-confident network
    assert t == pytest.approx(true_t, rel=0.06)
    np.testing.assert_allclose(apply_temperature(z * true_t, t), 1 / (1 + np.exp(-z * true_t / t)))


def test_temperature_of_one_class_is_one_and_bad_input_raises():
    assert fit_temperature([1.0, 2.0], [1, 1]) == 1.0
    with pytest.raises(ValueError):
        fit_temperature([1.0], [1, 0])


def test_ece_by_hand():
    # bins of width 0.1: {0.05, 0.08} -> bin 0, mean p 0.065, 1 of 2 positive: |0.5 - 0.065| = 0.435, weight 2/5
    # {0.92, 0.97, 1.0} -> bin 9 (1.0 included), mean p 0.963..., 3 of 3 positive: 0.0367, weight 3/5
    p = np.array([0.05, 0.08, 0.92, 0.97, 1.0])
    y = np.array([0, 1, 1, 1, 1])
    expected = 2 / 5 * abs(0.5 - 0.065) + 3 / 5 * abs(1.0 - np.mean([0.92, 0.97, 1.0]))
    assert expected_calibration_error(p, y) == pytest.approx(expected)
    r = reliability_curve(p, y)
    assert r["count"].tolist() == [2, 3] and r["frac_pos"].tolist() == [0.5, 1.0]
    np.testing.assert_allclose(r["mean_prob"], [0.065, np.mean([0.92, 0.97, 1.0])])
    assert expected_calibration_error([0.3, 0.3, 0.7, 0.7], [0, 1, 0, 1]) == pytest.approx(0.2)
    with pytest.raises(ValueError):
        expected_calibration_error([], [])


def test_ece_matches_a_direct_loop():
    rng = np.random.default_rng(1)
    p, y = rng.random(500), rng.integers(0, 2, 500)
    direct = 0.0
    for k in range(10):
        m = (p >= k / 10) & ((p < (k + 1) / 10) if k < 9 else (p <= 1))
        if m.any():
            direct += m.sum() / len(p) * abs(y[m].mean() - p[m].mean())
    assert expected_calibration_error(p, y) == pytest.approx(direct)


def test_a_separated_validation_part_takes_the_lowest_temperature_of_the_range():
    from bundle.metrics.calibration import T_RANGE

    # every scan on the right side of logit 0: the likelihood keeps rising as T -> 0, so the fit is the lower bound
    z, y = [2.0, 0.5, -0.3, -1.0], [1, 1, 0, 0]
    assert fit_temperature(z, y) == pytest.approx(T_RANGE[0], rel=1e-4)
    assert fit_temperature(z, y, t_range=(0.5, 2.0)) == pytest.approx(0.5, rel=1e-4)
    assert fit_temperature(z, y, t_range=(1.0, 1.0)) == 1.0  # no calibration
    # one scan on the wrong side: a finite optimum inside the range, the same whatever the (wide) range
    z2 = [2.0, 0.5, 0.3, -1.0]
    t = fit_temperature(z2, y)
    assert T_RANGE[0] < t < T_RANGE[1] and fit_temperature(z2, y, t_range=(0.01, 100)) == pytest.approx(t, rel=1e-3)
    for bad in [(0.0, 2.0), (2.0, 4.0), (0.5, 0.9)]:
        with pytest.raises(ValueError, match="t_range"):
            fit_temperature(z, y, t_range=bad)
