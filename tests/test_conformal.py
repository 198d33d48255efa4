"""Conformal prediction sets (medres.uncertainty.conformal), cross-checked with MAPIE."""

from __future__ import annotations

import json
import math
import warnings

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp
from mapie.classification import SplitConformalClassifier
from sklearn.base import BaseEstimator, ClassifierMixin

from medres.errors import ConfigError
from medres.uncertainty import ConformalClassifier, set_report

K = 4


def calibrated(n: int, seed: int, k: int = K, scale: float = 1.5, priors=None):
    """Softmax of Gaussian logits (plus log class priors); each label is drawn from its
    row's probabilities, so the "model" is calibrated by construction."""
    rng = np.random.default_rng(seed)
    z = scale * rng.normal(size=(n, k))
    if priors is not None:
        z += np.log(priors)
    p = np.exp(z - z.max(axis=1, keepdims=True))
    p /= p.sum(axis=1, keepdims=True)
    y = (rng.random((n, 1)) > np.cumsum(p, axis=1)).sum(axis=1)
    return p, np.minimum(y, k - 1)


class PassThrough(ClassifierMixin, BaseEstimator):
    """A prefit classifier whose features are already its class probabilities. MAPIE's
    prefit check is sklearn's check_is_fitted: it needs an attribute ending in ``_``."""

    def __init__(self, n_classes: int = K):
        self.n_classes = n_classes

    def fit(self, X, y=None):
        self.classes_ = np.arange(self.n_classes)
        return self

    def predict_proba(self, X):
        return np.asarray(X, dtype=np.float64)

    def predict(self, X):
        return self.predict_proba(X).argmax(axis=1)


def mapie(score: str, p_cal, y_cal, coverage: float = 0.9) -> SplitConformalClassifier:
    est = PassThrough().fit(p_cal, y_cal)
    return SplitConformalClassifier(
        estimator=est,
        confidence_level=coverage,
        conformity_score=score,
        prefit=True,
        random_state=0,
    ).conformalize(p_cal, y_cal)


def mapie_quantile(m: SplitConformalClassifier, coverage: float = 0.9) -> float:
    """MAPIE's threshold from its public calibration scores: the ceil((n+1)c)-th smallest."""
    s = np.sort(m.conformity_scores.ravel())
    return float(s[math.ceil((len(s) + 1) * coverage) - 1])


@pytest.fixture(scope="module")
def cal_test():
    return calibrated(1000, seed=1), calibrated(2000, seed=2)


@pytest.mark.parametrize(("coverage", "n_empty"), [(0.9, 0), (0.7, 20)])
def test_lac_sets_equal_mapie(cal_test, coverage, n_empty):
    (pc, yc), (pt, _) = cal_test
    ours = ConformalClassifier(coverage, "lac").fit(pc, yc)
    m = mapie("lac", pc, yc, coverage)
    theirs = m.predict_set(pt)[1]
    assert theirs.shape == (2000, K, 1)
    theirs = theirs[:, :, 0]
    np.testing.assert_array_equal(ours.conformity_scores_, m.conformity_scores.ravel())
    assert ours.quantile_ == mapie_quantile(m, coverage)
    sets = ours.predict_sets(pt)
    filled = theirs.any(axis=1)
    assert (~filled).sum() == n_empty  # at 0.7 MAPIE leaves 20 of 2000 sets empty
    assert (sets[filled] == theirs[filled]).all()
    # where MAPIE's LAC set is empty, ours holds exactly the most probable class
    top = np.eye(K, dtype=bool)[pt.argmax(axis=1)]
    assert (sets[~filled] == top[~filled]).all()


def test_aps_matches_mapie_where_it_can(cal_test):
    """MAPIE always randomises APS calibration scores (ours - u * p_true, u ~ U[0, 1) from
    its random_state); ours are not randomised, so our threshold is higher. Given MAPIE's
    threshold, our sets are MAPIE's ``include_last_label=False`` sets on every scan (both
    are {k: mass of classes at or above k <= q}, top class forced in); with our own
    threshold they only add classes (identical on ~35 % of scans here). MAPIE's
    ``include_last_label=True`` also adds the class that crosses q: with our
    non-randomised scores that rule over-covers (~0.99 at 0.9 with K=4)."""
    (pc, yc), (pt, _) = cal_test
    ours = ConformalClassifier(0.9, "aps").fit(pc, yc)
    m = mapie("aps", pc, yc)
    u = np.random.RandomState(0).uniform(size=len(yc))  # MAPIE's draw for random_state=0
    randomised = ours.conformity_scores_ - u * pc[np.arange(len(yc)), yc]
    np.testing.assert_allclose(randomised, m.conformity_scores.ravel(), rtol=0, atol=1e-12)

    theirs = m.predict_set(pt, conformity_score_params={"include_last_label": False})[1][..., 0]
    same_q = ConformalClassifier.from_dict({**ours.to_dict(), "quantile": mapie_quantile(m)})
    assert (same_q.predict_sets(pt) == theirs).all()

    sets = ours.predict_sets(pt)
    assert ours.quantile_ >= mapie_quantile(m)
    assert (sets >= theirs).all()


@pytest.mark.parametrize(
    ("score", "class_conditional"), [("lac", False), ("aps", False), ("lac", True)]
)
def test_coverage_on_fresh_exchangeable_scans(score, class_conditional):
    pc, yc = calibrated(5000, seed=3, scale=1.2)
    pt, yt = calibrated(5000, seed=4, scale=1.2)
    cp = ConformalClassifier(0.9, score, class_conditional).fit(pc, yc)
    report = set_report(cp.predict_sets(pt), yt)
    assert 0.88 <= report["coverage"] <= 0.92, report
    assert report["mean_set_size"] < K - 0.5  # informative: not all classes


def test_class_conditional_covers_the_minority_class():
    priors = [0.7, 0.2, 0.1]
    pc, yc = calibrated(5000, seed=5, k=3, priors=priors)
    pt, yt = calibrated(5000, seed=6, k=3, priors=priors)
    names = ["normal", "benign", "malignant"]
    marginal = ConformalClassifier(0.9, "lac").fit(pc, yc)
    mondrian = ConformalClassifier(0.9, "lac", class_conditional=True).fit(pc, yc)
    rep_m = set_report(marginal.predict_sets(pt), yt, names)
    rep_c = set_report(mondrian.predict_sets(pt), yt, names)
    assert mondrian.quantiles_.shape == (3,) and not mondrian.warnings_
    cov_m = {c["class"]: c["coverage"] for c in rep_m["per_class"]}
    cov_c = {c["class"]: c["coverage"] for c in rep_c["per_class"]}
    assert 0.88 <= rep_m["coverage"] <= 0.92  # marginal coverage holds ...
    assert cov_m["malignant"] < 0.8, cov_m  # ... by under-covering the minority class
    assert min(cov_c.values()) >= 0.87, cov_c
    assert cov_c["malignant"] > cov_m["malignant"] + 0.1


@settings(max_examples=50, deadline=None)
@given(data=st.data())
def test_sets_never_empty_and_nested_in_coverage(data):
    k = data.draw(st.integers(2, 6), label="k")
    n = data.draw(st.integers(1, 60), label="n")
    raw = data.draw(hnp.arrays(np.float64, (n + 10, k), elements=st.floats(0, 1)))
    probs = (raw + 1e-6) / (raw + 1e-6).sum(axis=1, keepdims=True)
    targets = data.draw(hnp.arrays(np.int64, n, elements=st.integers(0, k - 1)))
    score = data.draw(st.sampled_from(["lac", "aps"]))
    class_conditional = data.draw(st.booleans())
    lo, hi = sorted(data.draw(st.floats(0.5, 0.99)) for _ in range(2))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # small calibration sets warn, by design
        small = ConformalClassifier(lo, score, class_conditional).fit(probs[:n], targets)
        large = ConformalClassifier(hi, score, class_conditional).fit(probs[:n], targets)
    s_small, s_large = small.predict_sets(probs[n:]), large.predict_sets(probs[n:])
    assert s_small.any(axis=1).all()
    assert (s_large >= s_small).all()


@pytest.mark.parametrize("class_conditional", [False, True])
@pytest.mark.parametrize("score", ["lac", "aps"])
def test_round_trip_through_json(cal_test, score, class_conditional):
    (pc, yc), (pt, _) = cal_test
    cp = ConformalClassifier(0.8, score, class_conditional).fit(pc, yc)
    d = json.loads(json.dumps(cp.to_dict(), allow_nan=False))
    back = ConformalClassifier.from_dict(d)
    assert (back.predict_sets(pt) == cp.predict_sets(pt)).all()
    assert d["n_calibration"] == 1000 and d["coverage"] == 0.8 and d["score"] == score


def test_too_few_calibration_scans_give_all_classes_and_say_so():
    pc, yc = calibrated(400, seed=7)
    keep = (yc != 3) | (np.cumsum(yc == 3) <= 3)  # only 3 scans of class 3
    with pytest.warns(UserWarning, match="class 3 has 3 calibration scans"):
        cp = ConformalClassifier(0.9, "aps", class_conditional=True).fit(pc[keep], yc[keep])
    assert "at least 9" in cp.warnings_[0] and len(cp.warnings_) == 1
    assert cp.quantiles_[3] == 1.0 and cp.predict_sets(pc)[:, 3].all()
    with pytest.warns(UserWarning, match="every set holds every class"):
        tiny = ConformalClassifier(0.9).fit(pc[:5], yc[:5])
    assert tiny.predict_sets(pc).all()


def test_set_report_counts():
    sets = np.array([[1, 0, 0], [1, 1, 0], [0, 0, 1], [1, 1, 1]], dtype=bool)
    rep = set_report(sets, [0, 2, 2, 1], ["a", "b", "c"])
    assert rep["coverage"] == 0.75 and rep["mean_set_size"] == 1.75
    assert rep["singleton_rate"] == 0.5
    assert rep["per_class"][2] == {"class": "c", "n": 2, "coverage": 0.5, "mean_set_size": 1.5}


@pytest.fixture(scope="module")
def fitted(cal_test):
    (pc, yc), _ = cal_test
    return ConformalClassifier().fit(pc, yc)


def test_user_errors_say_what_to_do(cal_test, fitted):
    (pc, yc), (pt, _) = cal_test
    cases = [
        (lambda: ConformalClassifier().predict_sets(pt), "not fitted: call fit"),
        (lambda: ConformalClassifier(1.5).fit(pc, yc), r"coverage must be a number in \(0, 1\)"),
        (lambda: ConformalClassifier(0).fit(pc, yc), "coverage must be"),
        (lambda: ConformalClassifier(0.9, "LAC").fit(pc, yc), "score must be one of"),
        (lambda: ConformalClassifier().fit(np.log(pc), yc), "not logits"),
        (lambda: ConformalClassifier().fit(np.where(pc > 0.5, np.nan, pc), yc), "NaN"),
        (lambda: ConformalClassifier().fit(pc, yc + 1), "class indices 0..3"),
        (lambda: ConformalClassifier().fit(pc[:0], yc[:0]), "non-empty"),
        (lambda: ConformalClassifier().fit(pc, yc[:10]), r"shape \(1000,\)"),
        (lambda: fitted.predict_sets(pt[:, :3] / pt[:, :3].sum(1, keepdims=True)), "fitted on 4"),
        (lambda: ConformalClassifier.from_dict({"coverage": 0.9}), "to_dict"),
        (lambda: set_report(fitted.predict_sets(pt), np.zeros(2000, int), ["a"]), "1 names"),
    ]
    for call, message in cases:
        with pytest.raises(ConfigError, match=message):
            call()
