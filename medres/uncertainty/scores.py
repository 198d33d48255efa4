"""Per-scan uncertainty scores from sampled class probabilities.

Every sampling predictor (one model, MC dropout, test-time augmentation, an ensemble)
gives ``samples`` of shape (S, N, K): S probability vectors for each of N scans. The
scores below summarise them; a single deterministic model is simply S = 1 (its mutual
information and variance are then 0).
"""

from __future__ import annotations

import numpy as np

from medres.errors import ConfigError

SCORES = ("max_prob", "entropy", "mutual_information", "variance")
_EPS = 1e-12


def entropy(probs: np.ndarray) -> np.ndarray:
    """Shannon entropy in nats along the last axis: (..., K) -> (...)."""
    p = np.clip(probs, _EPS, 1.0)
    return -(probs * np.log(p)).sum(-1)


def uncertainty_scores(samples: np.ndarray) -> dict[str, np.ndarray]:
    """Scores of (S, N, K) probability samples, each (N,) float64:

    - ``max_prob``: the largest mean class probability (high = confident);
    - ``entropy``: predictive entropy of the mean probabilities, nats (total uncertainty);
    - ``mutual_information``: entropy of the mean minus the mean entropy of the samples
      (the epistemic part, where the samples disagree), nats, >= 0;
    - ``variance``: variance across samples of the probabilities, averaged over classes.
    """
    samples = np.asarray(samples, dtype=np.float64)
    if samples.ndim != 3:
        raise ConfigError(f"samples must be (S, N, K); got shape {samples.shape}")
    mean = samples.mean(0)
    total = entropy(mean)
    return {
        "max_prob": mean.max(-1),
        "entropy": total,
        "mutual_information": np.maximum(total - entropy(samples).mean(0), 0.0),
        "variance": samples.var(0).mean(-1),
    }


def as_uncertainty(name: str, scores: dict[str, np.ndarray]) -> np.ndarray:
    """The score ``name`` oriented so that higher means less certain (N,)."""
    if name not in SCORES:
        raise ConfigError(f"unknown uncertainty score {name!r}; choose one of {SCORES}")
    return 1.0 - scores[name] if name == "max_prob" else scores[name]
