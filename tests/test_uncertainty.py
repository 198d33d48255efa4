"""Uncertainty scores, referral, the OOD model and the sampling predictors."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from medres.errors import ConfigError
from medres.models import create_model
from medres.transforms import AugmentSpec, PreprocessSpec
from medres.uncertainty.ood import MahalanobisOOD
from medres.uncertainty.referral import (
    accuracy_after_referral,
    choose_uncertainty_threshold,
    referral_reasons,
    risk_coverage,
)
from medres.uncertainty.sampling import apply_view, forward_samples, tta_views
from medres.uncertainty.scores import as_uncertainty, uncertainty_scores


def test_mutual_information_is_zero_when_samples_agree_and_positive_when_they_differ():
    agree = np.tile([[[0.5, 0.5]]], (4, 1, 1))
    disagree = np.array([[[0.99, 0.01]], [[0.01, 0.99]]])
    a, d = uncertainty_scores(agree), uncertainty_scores(disagree)
    # both have the same mean (0.5, 0.5) and so the same total entropy ln 2 ...
    assert a["entropy"][0] == pytest.approx(np.log(2)) == d["entropy"][0]
    # ... but only the disagreeing samples carry epistemic uncertainty
    assert a["mutual_information"][0] == pytest.approx(0, abs=1e-12)
    assert d["mutual_information"][0] > 0.5 and d["variance"][0] > 0.2
    assert as_uncertainty("max_prob", a)[0] == pytest.approx(0.5)
    with pytest.raises(ConfigError, match="choose one of"):
        as_uncertainty("confidence", a)


def test_risk_coverage_and_aurc_by_hand():
    # uncertainties ranked: scan 0 (right), 1 (right), 2 (wrong), 3 (wrong)
    coverage, risk, aurc = risk_coverage([0.1, 0.2, 0.3, 0.4], [True, True, False, False])
    np.testing.assert_allclose(coverage, [0.25, 0.5, 0.75, 1.0])
    np.testing.assert_allclose(risk, [0, 0, 1 / 3, 1 / 2])
    assert aurc == pytest.approx((0 + 0 + 1 / 3 + 1 / 2) / 4)
    # a perfect ranking beats a reversed one
    assert aurc < risk_coverage([0.4, 0.3, 0.2, 0.1], [True, True, False, False])[2]
    # referring the most uncertain half leaves only right answers
    assert accuracy_after_referral([0.1, 0.2, 0.3, 0.4], [1, 1, 0, 0], 0.5) == 1.0


def test_threshold_reaches_the_target_accuracy_or_refers_everything():
    rng = np.random.default_rng(0)
    u = rng.random(2000)
    correct = rng.random(2000) > u * 0.6  # errors grow with uncertainty
    t = choose_uncertainty_threshold(u, correct, 0.9)
    kept = u <= t
    assert correct[kept].mean() >= 0.9 and 0.3 < kept.mean() < 0.9
    assert choose_uncertainty_threshold(u, np.zeros(2000, bool), 0.9) == -np.inf


def test_referral_reasons_name_every_cause():
    reasons = referral_reasons(
        ood=np.array([True, False, False, False]),
        set_size=np.array([1, 2, 1, 1]),
        uncertainty=np.array([0.0, 0.0, 0.9, 0.1]),
        threshold=0.5,
    )
    assert reasons == [
        "out of distribution",
        "conformal set holds 2 classes",
        "uncertainty above the validation threshold",
        "",
    ]


def test_mahalanobis_flags_features_far_from_the_training_classes():
    rng = np.random.default_rng(1)
    train = np.r_[rng.normal(0, 1, (300, 16)), rng.normal(3, 1, (300, 16))]
    labels = np.r_[np.zeros(300), np.ones(300)]
    ood = MahalanobisOOD(0.95).fit(train, labels)
    val = np.r_[rng.normal(0, 1, (200, 16)), rng.normal(3, 1, (200, 16))]
    ood.set_threshold(val)
    assert 0.03 < ood.flags(np.r_[rng.normal(0, 1, (500, 16))]).mean() < 0.08
    assert ood.flags(rng.normal(10, 1, (100, 16))).all()
    again = MahalanobisOOD.from_tensors(ood.to_tensors())
    np.testing.assert_allclose(again.score(val), ood.score(val))
    with pytest.raises(ConfigError, match="features"):
        ood.score(np.zeros((3, 5)))


@pytest.mark.parametrize("dims", [2, 3])
def test_mc_dropout_samples_vary_are_reproducible_and_zero_samples_is_the_plain_model(dims):
    torch.manual_seed(0)
    model = create_model("resnet18", in_channels=1, num_classes=3, spatial_dims=dims).eval()
    x = torch.randn(2, 1, *([16] * dims))
    logits, feats = forward_samples(model, x, mc_samples=5, seed=7)
    assert logits.shape == (5, 2, 3) and feats.shape == (2, model.num_features)
    assert logits.std(0).max() > 0  # dropout is on
    again, _ = forward_samples(model, x, mc_samples=5, seed=7)
    torch.testing.assert_close(logits, again)
    plain, _ = forward_samples(model, x)
    torch.testing.assert_close(plain[0], model(x))
    # the mean of many dropout samples approaches the deterministic output (inverted dropout)
    many, _ = forward_samples(model, x, mc_samples=400, seed=1)
    torch.testing.assert_close(many.mean(0), plain[0], atol=0.05, rtol=0.05)


def test_tta_views_follow_the_preset_and_keep_the_shape():
    spec = PreprocessSpec(
        preset="fundus_2d", spatial_size=(28, 28), augment=AugmentSpec(flip_axes=(0, 1))
    )
    views = tta_views(spec)
    assert [v[0] for v in views] == ["identity", "flip", "flip", "rotate", "rotate"]
    x = torch.randn(2, 3, 28, 28)
    for view in views:
        assert apply_view(x, view).shape == x.shape
    torch.testing.assert_close(apply_view(x, ("rotate", 0.0)), x, atol=1e-5, rtol=0)
    # a 90° rotation of a 3D volume turns its first two spatial axes
    v = torch.zeros(1, 1, 9, 9, 9)
    v[0, 0, 1, 4, 4] = 1
    turned = apply_view(v, ("rotate", 90.0))
    assert turned[0, 0, 4, :, 4].argmax() in (1, 7) and turned[0, 0, 1, 4, 4] < 0.5


def test_trust_layer_round_trips_and_refers_for_the_stated_reasons(tmp_path):
    from medres.uncertainty.trust import Trust, TrustConfig, fit_trust

    rng = np.random.default_rng(2)
    y = rng.integers(0, 3, 600)
    logits = 3 * np.eye(3)[y] + rng.normal(0, 1.5, (600, 3))  # right ~85 % of the time
    feats = np.eye(3)[y] @ rng.normal(0, 1, (3, 8)) + rng.normal(0, 0.3, (600, 8))
    trust = fit_trust(
        "multiclass",
        TrustConfig(target_accuracy=0.9),
        val_logits=logits[:300],
        val_targets=y[:300],
        val_features=feats[:300],
        train_features=feats[300:],
        train_targets=y[300:],
    )
    assert trust.referral["reachable"] and trust.referral["val_accuracy_kept"] >= 0.9
    test_feats = np.r_[feats[:5], np.full((1, 8), 50.0)]  # the last scan is far away
    a = trust.assess(logits[None, :6], test_feats)
    np.testing.assert_allclose(a.probs.sum(1), 1)
    assert a.ood[-1] and "out of distribution" in a.reasons[-1] and a.refer[-1]
    assert all(bool(r) == f for r, f in zip(a.reasons, a.refer, strict=True))
    names = trust.save(tmp_path)
    assert names == ["calibration.json", "ood.safetensors"]
    again = Trust.load(tmp_path).assess(logits[None, :6], test_feats)
    np.testing.assert_allclose(again.probs, a.probs)
    assert again.reasons == a.reasons and (again.sets == a.sets).all()


def test_ensemble_members_must_cover_the_same_scans_and_classes():
    from medres.uncertainty.sampling import ensemble_samples

    a, b = np.full((2, 5, 3), 1 / 3), np.full((1, 5, 3), 1 / 3)
    assert ensemble_samples([a, b]).shape == (3, 5, 3)
    with pytest.raises(ConfigError, match="disagree"):
        ensemble_samples([a, np.full((1, 4, 3), 1 / 3)])


def test_the_grade_shown_is_always_in_its_conformal_set():
    from medres.calibrate import make_calibrator
    from medres.uncertainty.conformal import ConformalClassifier
    from medres.uncertainty.trust import Trust, TrustConfig

    probs = np.array([[0.30, 0.25, 0.45]])  # median grade 1, most probable grade 2
    conformal = ConformalClassifier(0.9).fit(np.array([[0.6, 0.2, 0.2]] * 20), np.zeros(20, int))
    identity = make_calibrator("none").fit(np.log(probs), np.array([2]))
    trust = Trust(
        "ordinal", identity, conformal, None, {"score": "max_prob", "threshold": 1.0}, TrustConfig()
    )
    a = trust.assess(np.log(probs)[None], None)
    assert a.predicted[0] == 1 and a.sets[0, 1] and a.sets[0, 2]
    assert "conformal set holds 2 classes" in a.reasons[0]
