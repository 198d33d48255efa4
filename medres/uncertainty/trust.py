"""Trust: everything fitted after training that turns network outputs into what a
clinician sees — calibrated probabilities, a conformal set, uncertainty, an OOD flag and
a referral decision with its reasons.

:func:`fit_trust` fits it on the validation split (the training features for the OOD
model); :meth:`Trust.assess` applies it; :meth:`Trust.save` / :meth:`Trust.load` keep it
in a bundle as ``calibration.json`` + ``ood.safetensors``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field
from safetensors.torch import load_file, save_file

from medres.calibrate import calibrator_from_dict, make_calibrator, softmax
from medres.files import atomic_write, write_json
from medres.tasks import Task, task_named
from medres.uncertainty.conformal import ConformalClassifier
from medres.uncertainty.ood import MahalanobisOOD
from medres.uncertainty.referral import choose_uncertainty_threshold, referral_reasons
from medres.uncertainty.scores import as_uncertainty, uncertainty_scores

CALIBRATION = "calibration.json"
OOD = "ood.safetensors"


class TrustConfig(BaseModel):
    """How the trust layer is fitted (``[trust]`` in a config, ``--set trust.x=...``).

    Attributes:
        calibration: temperature (any task), platt or isotonic (binary only), none.
        coverage: target coverage of the conformal sets (0.9 = the true class is in the
            set for 90 % of scans).
        conformal_score: lac (smallest sets) or aps (sets adapt to hard scans).
        class_conditional: one conformal quantile per class (coverage holds per class;
            use for imbalanced classes).
        referral_score: the uncertainty that triggers referral: max_prob or entropy.
        target_accuracy: accuracy the decisions left to the model must reach on
            validation; sets the uncertainty threshold.
        ood_quantile: share of validation scans the OOD threshold lets through.
    """

    model_config = ConfigDict(extra="forbid")
    calibration: Literal["temperature", "platt", "isotonic", "none"] = "temperature"
    coverage: float = Field(0.9, gt=0, lt=1)
    conformal_score: Literal["lac", "aps"] = "lac"
    class_conditional: bool = False
    referral_score: Literal["max_prob", "entropy"] = "max_prob"
    target_accuracy: float = Field(0.95, gt=0, le=1)
    ood_quantile: float = Field(0.95, gt=0, lt=1)


@dataclass
class Assessment:
    """What the trust layer says about N scans (every array has N rows).

    ``raw_probs`` / ``probs`` (N, K): before / after calibration (mean over samples);
    ``predicted`` (N,) class index; ``sets`` (N, K) bool conformal sets; ``scores``:
    max_prob, entropy, mutual_information, variance (N,) each; ``ood_score`` (N,) and
    ``ood`` (N,) bool; ``refer`` (N,) bool with ``reasons`` (N,) strings.
    """

    raw_probs: np.ndarray
    probs: np.ndarray
    predicted: np.ndarray
    sets: np.ndarray
    scores: dict[str, np.ndarray]
    ood_score: np.ndarray
    ood: np.ndarray
    refer: np.ndarray
    reasons: list[str]


@dataclass
class Trust:
    """The fitted trust layer of one bundle."""

    task: str
    calibrator: Any
    conformal: ConformalClassifier
    ood: MahalanobisOOD | None
    referral: dict[str, Any]
    config: TrustConfig

    @property
    def kind(self) -> Task:
        """The :class:`~medres.tasks.Task` of the bundle (``task`` is its stored name)."""
        return task_named(self.task)

    def calibrate(self, logits: np.ndarray) -> np.ndarray:
        """(…, K) logits → calibrated probabilities of the same shape."""
        flat = logits.reshape(-1, logits.shape[-1])
        return self.calibrator.predict_proba(flat).reshape(logits.shape)

    def assess(self, logit_samples: np.ndarray, features: np.ndarray | None) -> Assessment:
        """Apply the layer to (S, N, K) logit samples (S = 1 for one plain pass) and the
        (N, F) features of the unaugmented scans (None: no OOD score)."""
        logit_samples = np.asarray(logit_samples, dtype=np.float64)
        return self.assess_samples(
            self.calibrate(logit_samples), softmax(logit_samples).mean(0), features
        )

    def assess_samples(
        self, samples: np.ndarray, raw_probs: np.ndarray, features: np.ndarray | None
    ) -> Assessment:
        """:meth:`assess` on (S, N, K) calibrated probability samples (e.g. several
        bundles' calibrated samples side by side: an ensemble), with the (N, K)
        uncalibrated mean ``raw_probs`` kept beside them."""
        probs = samples.mean(0)
        scores = uncertainty_scores(samples)
        sets = self.conformal.predict_sets(probs)
        n = len(probs)
        predicted = self.kind.shown_class(probs)
        sets[np.arange(n), predicted] = True  # the class shown (ordinal: median grade) is in it
        if self.ood is not None and features is not None:
            ood_score = self.ood.score(features)
            ood = ood_score > self.ood.threshold_
        else:
            ood_score, ood = np.full(n, np.nan), np.zeros(n, bool)
        uncertainty = as_uncertainty(self.referral["score"], scores)
        reasons = referral_reasons(
            ood=ood,
            set_size=sets.sum(1),
            uncertainty=uncertainty,
            threshold=self.referral["threshold"],
        )
        return Assessment(
            raw_probs,
            probs,
            predicted,
            sets,
            scores,
            ood_score,
            ood,
            np.array([bool(r) for r in reasons]),
            reasons,
        )

    def save(self, folder: str | Path) -> list[str]:
        """Write ``calibration.json`` (and ``ood.safetensors``); returns the file names."""
        folder = Path(folder)
        names = [CALIBRATION]
        write_json(
            folder / CALIBRATION,
            {
                "task": self.task,
                "config": self.config.model_dump(mode="json"),
                "calibrator": self.calibrator.to_dict(),
                "conformal": self.conformal.to_dict(),
                "referral": self.referral,
                "ood": None
                if self.ood is None
                else {"file": OOD, "quantile": self.ood.quantile, "threshold": self.ood.threshold_},
            },
        )
        if self.ood is not None:
            tensors = {k: v.contiguous() for k, v in self.ood.to_tensors().items()}
            atomic_write(folder / OOD, lambda tmp: save_file(tensors, tmp))
            names.append(OOD)
        return names

    @classmethod
    def load(cls, folder: str | Path) -> Trust:
        folder = Path(folder)
        data = json.loads((folder / CALIBRATION).read_text())
        ood = MahalanobisOOD.from_tensors(load_file(folder / OOD)) if data["ood"] else None
        referral = data["referral"]
        if referral["threshold"] is None:  # JSON has no -inf: the target was unreachable
            referral["threshold"] = float("-inf")
        return cls(
            data["task"],
            calibrator_from_dict(data["calibrator"]),
            ConformalClassifier.from_dict(data["conformal"]),
            ood,
            referral,
            TrustConfig.model_validate(data["config"]),
        )


def fit_trust(
    task: str,
    config: TrustConfig,
    *,
    val_logits: np.ndarray,
    val_targets: np.ndarray,
    val_features: np.ndarray | None = None,
    train_features: np.ndarray | None = None,
    train_targets: np.ndarray | None = None,
) -> Trust:
    """Fit calibration, conformal sets, the referral threshold (on validation: logits
    (N, K), targets (N,)) and the OOD model (training features (M, F) and targets; its
    threshold on the validation features)."""
    val_targets = np.asarray(val_targets)
    calibrator = make_calibrator(config.calibration).fit(val_logits, val_targets)
    probs = calibrator.predict_proba(val_logits)
    conformal = ConformalClassifier(
        config.coverage, config.conformal_score, config.class_conditional
    ).fit(probs, val_targets)
    scores = uncertainty_scores(probs[None])
    uncertainty = as_uncertainty(config.referral_score, scores)
    correct = task_named(task).shown_class(probs) == val_targets
    threshold = choose_uncertainty_threshold(uncertainty, correct, config.target_accuracy)
    kept = uncertainty <= threshold
    referral = {
        "score": config.referral_score,
        "threshold": threshold,
        "target_accuracy": config.target_accuracy,
        "reachable": bool(np.isfinite(threshold)),
        "val_referral_rate": float(1 - kept.mean()),
        "val_accuracy_kept": float(correct[kept].mean()) if kept.any() else float("nan"),
    }
    ood = None
    if train_features is not None and val_features is not None:
        ood = MahalanobisOOD(config.ood_quantile).fit(train_features, train_targets)
        ood.set_threshold(val_features)
    return Trust(task, calibrator, conformal, ood, referral, config)
