"""medres.calibrate: calibrators fix over-confident models without changing their decisions.

The inputs are model logits, so they are simulated: a "true" model whose softmax is the real
class probability draws the labels, and the over-confident model reports its logits times 3
(a true temperature of 3 exists, so temperature scaling can recover it).
"""

from __future__ import annotations

import json

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays
from sklearn.metrics import brier_score_loss, roc_auc_score

from medres.calibrate import (
    METHODS,
    IsotonicCalibrator,
    PlattScaler,
    TemperatureScaler,
    brier_score,
    calibration_metrics,
    calibration_slope_intercept,
    calibrator_from_dict,
    expected_calibration_error,
    make_calibrator,
    max_calibration_error,
    negative_log_likelihood,
    reliability_diagram,
    softmax,
)
from medres.errors import ConfigError

FAST = settings(max_examples=50, deadline=None)


def overconfident(n: int, k: int, seed: int, scale: float = 3.0):
    """(N, K) logits of a model ``scale`` times too confident, and (N,) labels drawn from the
    true probabilities softmax(logits / scale)."""
    rng = np.random.default_rng(seed)
    true = rng.normal(size=(n, k)) * 1.5
    true[np.arange(n), rng.integers(0, k, n)] += 1.0  # a correct-ish classifier
    p = softmax(true)
    y = (rng.random((n, 1)) > p.cumsum(axis=1)).sum(axis=1)
    return scale * true, np.minimum(y, k - 1)


def assert_same_order(before: np.ndarray, after: np.ndarray, tol: float = 1e-9) -> None:
    """Scans strictly ordered before (beyond float noise) are not reversed after (ties ok)."""
    lo, hi = np.nonzero(before[:, None] < before[None, :] - tol)
    assert (after[lo] <= after[hi] + tol).all()


# ---------------------------------------------------------------- temperature scaling


@pytest.mark.parametrize("k", [2, 4])
def test_temperature_fixes_overconfidence_without_changing_decisions(k):
    z_val, y_val = overconfident(4000, k, seed=1)
    z_test, y_test = overconfident(4000, k, seed=2)
    raw = softmax(z_test)
    cal = TemperatureScaler().fit(z_val, y_val)
    p = cal.predict_proba(z_test)

    assert cal.temperature_ == pytest.approx(3.0, rel=0.15)
    assert expected_calibration_error(raw, y_test) > 0.08
    assert expected_calibration_error(p, y_test) < 0.03
    assert negative_log_likelihood(p, y_test) < negative_log_likelihood(raw, y_test) - 0.05
    assert (p.argmax(axis=1) == raw.argmax(axis=1)).all()
    slope, _ = calibration_slope_intercept(p, y_test)
    assert calibration_slope_intercept(raw, y_test)[0] < 0.6 and slope == pytest.approx(1, abs=0.15)
    if k == 2:
        assert roc_auc_score(y_test, p[:, 1]) == pytest.approx(
            roc_auc_score(y_test, raw[:, 1]), abs=1e-12
        )


def test_temperature_leaves_a_calibrated_model_alone():
    z, y = overconfident(4000, 3, seed=3, scale=1.0)
    assert TemperatureScaler().fit(z, y).temperature_ == pytest.approx(1.0, abs=0.1)


def test_softmax_is_stable_for_huge_logits():
    p = softmax(np.array([[1000.0, 0.0], [-1000.0, -1001.0]]))
    assert np.isfinite(p).all()
    np.testing.assert_allclose(p, [[1, 0], [1 / (1 + np.exp(-1)), 1 - 1 / (1 + np.exp(-1))]])


# ---------------------------------------------------------------- binary calibrators


@pytest.mark.parametrize("method", ["platt", "isotonic"])
def test_binary_calibrators_reduce_ece_and_keep_ranking(method):
    z_val, y_val = overconfident(3000, 2, seed=4)
    z_test, y_test = overconfident(3000, 2, seed=5)
    raw = softmax(z_test)
    p = make_calibrator(method).fit(z_val, y_val).predict_proba(z_test)
    np.testing.assert_allclose(p.sum(axis=1), 1)
    assert expected_calibration_error(p, y_test) < 0.04 < expected_calibration_error(raw, y_test)
    assert_same_order(raw[:, 1], p[:, 1])


def test_platt_refuses_to_reverse_the_ranking():
    z, y = overconfident(500, 2, seed=6)
    with pytest.warns(UserWarning, match="anti-correlate"):
        cal = PlattScaler().fit(z, 1 - y)  # swapped labels
    assert cal.a_ == 0
    np.testing.assert_allclose(cal.predict_proba(z)[:, 1], (1 - y).mean())


@pytest.mark.parametrize("cls", [PlattScaler, IsotonicCalibrator])
def test_binary_only_calibrators_refuse_three_classes(cls):
    z, y = overconfident(100, 3, seed=7)
    with pytest.raises(ConfigError, match=f"'{cls.method}'.*binary only"):
        cls().fit(z, y)
    with pytest.raises(ConfigError, match="both classes"):
        cls().fit(z[:, :2], np.zeros(100, dtype=int))


# ---------------------------------------------------------------- factory, bad input, round trip


def test_make_calibrator_lists_valid_names():
    with pytest.raises(ConfigError, match="bogus") as e:
        make_calibrator("bogus")
    assert all(name in str(e.value) for name in METHODS)


@pytest.mark.parametrize(
    ("logits", "targets", "match"),
    [
        (np.zeros((0, 2)), np.zeros(0, dtype=int), "N >= 1"),
        (np.array([[0.0, np.nan], [1.0, 2.0]]), [0, 1], "NaN or inf in 1 rows"),
        (np.array([[0.0, np.inf], [1.0, 2.0]]), [0, 1], "NaN or inf"),
        (np.zeros((3, 2)), [0, 1, 2], r"\[0, 2\)"),
        (np.zeros((3, 2)), [0, 1, -1], r"\[0, 2\)"),
        (np.zeros((3, 2)), [0, 1, 0.5], r"\[0, 2\)"),
        (np.zeros((3, 2)), [0, 1], r"\(3,\)"),
        (np.zeros(3), [0, 1, 0], r"shape \(N, K\)"),
    ],
)
@pytest.mark.parametrize("method", METHODS)
def test_fit_refuses_bad_input(method, logits, targets, match):
    with pytest.raises(ConfigError, match=match):
        make_calibrator(method).fit(logits, targets)


def test_unfitted_and_mismatched_use_is_refused():
    with pytest.raises(ConfigError, match="not fitted"):
        TemperatureScaler().predict_proba(np.zeros((2, 2)))
    cal = TemperatureScaler().fit(*overconfident(50, 3, seed=8))
    with pytest.raises(ConfigError, match="3 logit columns"):
        cal.predict_proba(np.zeros((2, 4)))
    with pytest.raises(ConfigError, match="invalid values"):
        calibrator_from_dict({"method": "temperature", "n_classes": 3, "temperature": -1.0})
    with pytest.raises(ConfigError, match="malformed"):
        calibrator_from_dict({"method": "platt", "n_classes": 2, "a": 1.0})


@st.composite
def problems(draw, k: int | None = None):
    """(N, K) arbitrary logits and (N,) targets holding classes 0 and 1."""
    k = k or draw(st.integers(2, 4))
    n = draw(st.integers(2, 25))
    z = draw(arrays(np.float64, (n, k), elements=st.floats(-30, 30, allow_subnormal=False)))
    y = np.array(draw(st.lists(st.integers(0, k - 1), min_size=n, max_size=n)))
    y[:2] = [0, 1]
    return z, y


@FAST
@given(st.sampled_from(METHODS), st.data())
@pytest.mark.filterwarnings("ignore::UserWarning", "ignore::sklearn.exceptions.ConvergenceWarning")
def test_property_calibrated_probabilities_and_round_trip(method, data):
    cal = make_calibrator(method)
    z, y = data.draw(problems(2 if cal.binary_only else None))
    p, raw = cal.fit(z, y).predict_proba(z), softmax(z)

    assert p.shape == z.shape and (p >= 0).all()
    np.testing.assert_allclose(p.sum(axis=1), 1, atol=1e-12)
    if method in ("temperature", "none"):  # Platt's intercept and isotonic may move the cut
        assert (p[np.arange(len(p)), raw.argmax(axis=1)] >= p.max(axis=1) - 1e-12).all()
        for row_raw, row_p in zip(raw, p, strict=True):  # order of classes within a scan
            assert_same_order(row_raw, row_p)
    if z.shape[1] == 2:  # K >= 3: a column's order across scans is not invariant (see module)
        assert_same_order(raw[:, 1], p[:, 1])
    same = calibrator_from_dict(json.loads(json.dumps(cal.to_dict())))
    assert np.array_equal(same.predict_proba(z), p)


# ---------------------------------------------------------------- metrics


def test_ece_known_values():
    # 10 scans at confidence 0.8, 8 right: perfectly calibrated
    p = np.tile([0.2, 0.8], (10, 1))
    assert expected_calibration_error(p, [1] * 8 + [0] * 2) == pytest.approx(0, abs=1e-12)
    # certain and right half of the time
    assert expected_calibration_error(np.tile([0.0, 1.0], (4, 1)), [1, 0, 1, 0]) == 0.5
    # by hand, 5 bins (right-closed): 0.9 right, 0.9 wrong -> |0.5 - 0.9| * 2/4 = 0.2;
    # 0.6 right in (0.4, 0.6] -> 0.4 * 1/4 = 0.1; 0.7 wrong -> 0.7 * 1/4 = 0.175
    p = np.array([[0.1, 0.9], [0.1, 0.9], [0.4, 0.6], [0.3, 0.7]])
    y = [1, 0, 1, 0]
    assert expected_calibration_error(p, y, bins=5) == pytest.approx(0.475)
    assert max_calibration_error(p, y, bins=5) == pytest.approx(0.7)
    # equal mass, 2 bins: {0.6 right, 0.7 wrong} -> 0.15; {0.9, 0.9 one right} -> 0.4
    assert expected_calibration_error(p, y, bins=2, adaptive=True) == pytest.approx(0.275)


def test_brier_and_nll_known_values():
    eye = np.eye(3)
    assert brier_score(eye, [0, 1, 2]) == 0
    assert negative_log_likelihood(eye, [0, 1, 2]) == pytest.approx(0, abs=1e-12)
    assert negative_log_likelihood(np.full((2, 2), 0.5), [0, 1]) == pytest.approx(np.log(2))
    assert negative_log_likelihood(eye[:1], [1]) == pytest.approx(-np.log(1e-12))  # clipped
    p1 = np.array([0.1, 0.7, 0.4, 0.95])
    y = np.array([0, 1, 1, 0])
    probs = np.column_stack([1 - p1, p1])
    assert brier_score(probs, y) == pytest.approx(2 * brier_score_loss(y, p1))


def test_slope_intercept_of_a_calibrated_model_is_one_zero():
    rng = np.random.default_rng(9)
    p1 = rng.uniform(0.02, 0.98, 20000)
    y = (rng.random(20000) < p1).astype(int)
    slope, intercept = calibration_slope_intercept(np.column_stack([1 - p1, p1]), y)
    assert slope == pytest.approx(1, abs=0.08) and intercept == pytest.approx(0, abs=0.08)
    m = calibration_metrics(np.column_stack([1 - p1, p1]), y)
    assert set(m) == {"ece", "adaptive_ece", "mce", "brier", "nll", "slope", "intercept"}
    assert m["ece"] < 0.02 and all(isinstance(v, float) for v in m.values())
    assert np.isnan(calibration_slope_intercept(np.eye(3), [0, 1, 2])[0])  # all correct


def test_metrics_refuse_non_probabilities():
    with pytest.raises(ConfigError, match="summing to 1"):
        expected_calibration_error(np.array([[2.0, 3.0]]), [0])
    with pytest.raises(ConfigError, match="bins"):
        expected_calibration_error(np.eye(2), [0, 1], bins=0)


@FAST
@given(problems(), st.floats(0.01, 100), st.data())
def test_property_metric_ranges(problem, temperature, data):
    z, y = problem
    p = softmax(z, temperature)
    bins = data.draw(st.integers(1, 20))
    for value in (
        expected_calibration_error(p, y, bins),
        expected_calibration_error(p, y, bins, adaptive=True),
        max_calibration_error(p, y, bins),
    ):
        assert 0 <= value <= 1
    assert 0 <= brier_score(p, y) <= 2
    assert negative_log_likelihood(p, y) >= 0


# ---------------------------------------------------------------- reliability diagram


def test_reliability_diagram_writes_a_png(tmp_path):
    z, y = overconfident(500, 3, seed=10)
    cal = TemperatureScaler().fit(z, y)
    curves = {"uncalibrated": softmax(z), "temperature": cal.predict_proba(z)}
    out = reliability_diagram(curves, y, tmp_path / "plots" / "reliability.png", title="val")
    assert out == tmp_path / "plots" / "reliability.png"
    data = out.read_bytes()
    assert data.startswith(b"\x89PNG") and len(data) > 5000
    assert [f.name for f in out.parent.iterdir()] == ["reliability.png"]  # no temp files left
    with pytest.raises(ConfigError, match="curves is empty"):
        reliability_diagram({}, y, tmp_path / "x.png")
