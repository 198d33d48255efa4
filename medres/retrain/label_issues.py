"""Label issues (confident learning) and active learning: which scans to look at first.

- :func:`out_of_fold_probabilities` (:mod:`medres.retrain.out_of_fold`): K-fold
  cross-fitting over a cohort's labelled scans, each fold scored by a model that never
  saw it (trained with the bundle's own configuration), so a wrong label cannot have
  been memorised.
- :func:`rank_label_issues`: cleanlab's label quality on those probabilities; the
  scans whose given label the out-of-fold model disbelieves most come first.
- :func:`rank_uncertain`: active learning on an unlabelled cohort, ordered by the
  bundle's calibrated uncertainty (1 − max probability, ties by entropy).
- :func:`label_issues`: the job behind ``medres label-issues``; writes the CSV that
  ``medres review load --label-issues`` reads. Its columns are
  :data:`medres.review.issues.LABEL_ISSUE_COLUMNS` plus one ``prob_<class>`` per class.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pandas as pd

from medres import __version__
from medres.bundle import Bundle
from medres.cohort import Cohort, real_files
from medres.device import resolve_device
from medres.errors import ConfigError
from medres.files import FORMAT_KEY, write_json, write_text
from medres.retrain.out_of_fold import (
    SkippedScansWarning,
    load_classifier,
    out_of_fold_probabilities,
)
from medres.review.issues import (
    ACTIVE_LEARNING_REASON,
    FORMAT,
    LABEL_ERROR_REASON,
    LABEL_ISSUE_COLUMNS,
    format_sidecar,
)
from medres.tasks import label_key, predicted_class

__all__ = [
    "SkippedScansWarning",
    "label_issues",
    "out_of_fold_probabilities",
    "rank_label_issues",
    "rank_uncertain",
]


def rank_label_issues(
    rows: pd.DataFrame,
    labels: np.ndarray,
    probs: np.ndarray,
    *,
    classes: list | None = None,
) -> pd.DataFrame:
    """Rank scans by how little out-of-fold probabilities support their given label.

    Args:
        rows: manifest rows (N) with scan_id, path, patient_id, site.
        labels: (N,) int class codes of the given labels.
        probs: (N, K) out-of-fold probabilities (rows sum to 1).
        classes: the K class names (default ``0 .. K-1``).

    Returns one row per scan, most suspicious first: ``rank`` (1 first), scan_id, path,
    patient_id, site, ``given_label``, ``suggested_label`` (the most probable class),
    ``label_quality`` (0..1, low = suspicious; ties by ``p_given``, then scan id),
    ``p_given``, ``p_suggested``, ``flagged`` (cleanlab's ``find_label_issues``
    verdict), ``reason`` (``possible label error``), ``conformal_set`` (empty),
    ``prob_<class>``.

    ``label_quality`` is cleanlab's self-confidence on probabilities adjusted by each
    class's average self-confidence (``adjust_pred_probs``): a weak model leaning to one
    class would otherwise fill the top with every other class's scans (with a 4-epoch
    chest X-ray model and 10 % planted flips, the top 10 % held 5× the base rate).
    """
    from cleanlab.filter import find_label_issues
    from cleanlab.rank import get_label_quality_scores

    labels = np.asarray(labels, dtype=int)
    probs = np.asarray(probs, dtype=float)
    names = [label_key(c) for c in (classes if classes is not None else range(probs.shape[1]))]
    if probs.ndim != 2 or len(probs) != len(labels) or len(rows) != len(labels):
        raise ConfigError(
            f"rows ({len(rows)}), labels {labels.shape} and probs {probs.shape} must have "
            "one entry per scan, probs as (N, K)"
        )
    if len(names) != probs.shape[1]:
        raise ConfigError(f"{len(names)} class names for {probs.shape[1]} probability columns")
    if len(labels) and (labels.min() < 0 or labels.max() >= len(names)):
        raise ConfigError(f"label codes must lie in 0..{len(names) - 1}")
    probs = probs / probs.sum(axis=1, keepdims=True)
    quality = get_label_quality_scores(labels, probs, adjust_pred_probs=True)
    flagged = find_label_issues(labels, probs)
    suggested = probs.argmax(axis=1)
    table = _table(rows, probs, names, suggested)
    table.insert(4, "given_label", [names[i] for i in labels])
    table["label_quality"] = quality
    table["p_given"] = probs[np.arange(len(labels)), labels]
    table["flagged"] = flagged
    table["reason"] = LABEL_ERROR_REASON
    return _ranked(table, [table["label_quality"], table["p_given"]])


def rank_uncertain(
    bundle_path: str | Path | Bundle,
    cohort_or_rows: Cohort | pd.DataFrame | str | Path,
    *,
    device: str = "auto",
) -> pd.DataFrame:
    """Active learning: rank unlabelled scans by the bundle's uncertainty.

    Args:
        cohort_or_rows: manifest rows to rank, or a cohort (its readable unlabelled
            scans).

    Returns the :func:`rank_label_issues` columns, most uncertain first (1 − max
    calibrated probability, ties by entropy, then scan id): ``given_label``,
    ``label_quality`` and ``p_given`` empty, ``flagged`` False, ``reason`` ``uncertain
    (active learning)``, ``suggested_label`` the class predict would show,
    ``conformal_set`` the calibrated set. Probabilities are calibrated when the bundle
    has a trust layer (raw otherwise). Unreadable scans are left out with a
    :class:`SkippedScansWarning`.

    Raises:
        ConfigError: a regression bundle, or no unlabelled scans to rank.
    """
    from medres.inference import score_rows

    bundle = load_classifier(bundle_path)
    rows = cohort_or_rows
    if not isinstance(rows, pd.DataFrame):
        cohort = rows if isinstance(rows, Cohort) else Cohort.load(rows)
        rows = cohort.ok[cohort.ok["label"].isna()]
    if rows.empty:
        raise ConfigError("no unlabelled scans to rank; ingest the new scans without --labels")
    where = resolve_device(device)
    scored = score_rows(
        bundle.model, bundle.info, bundle.spec, rows, with_targets=False, device=where
    )
    if len(scored.failures):
        warnings.warn(
            f"{len(scored.failures)} scan(s) could not be read and are left out of the "
            f"ranking: {', '.join(scored.failures['scan_id'].astype(str).head(5))}",
            SkippedScansWarning,
            stacklevel=2,
        )
    names = [label_key(c) for c in bundle.info.classes]
    if bundle.trust is not None:
        assessment = bundle.trust.assess(scored.outputs, scored.features)
        probs = assessment.probs
        sets = [
            "|".join(n for n, inside in zip(names, s, strict=True) if inside)
            for s in assessment.sets
        ]
    else:
        probs, sets = scored.scores(bundle.info), ""
    table = _table(scored.rows, probs, names, predicted_class(bundle.info.task, probs))
    table.insert(4, "given_label", "")
    table["label_quality"] = np.nan
    table["p_given"] = np.nan
    table["flagged"] = False
    table["reason"] = ACTIVE_LEARNING_REASON
    table["conformal_set"] = sets
    clipped = np.clip(probs, 1e-12, 1.0)
    entropy = -(clipped * np.log(clipped)).sum(axis=1)
    return _ranked(table, [1.0 - probs.max(axis=1), entropy], descending=True)


def label_issues(
    bundle_path: str | Path,
    cohort_path: str | Path,
    out: str | Path,
    *,
    split: str = "train",
    folds: int = 4,
    epochs: int | None = None,
    seed: int = 0,
    show_progress: bool = True,
    progress=None,
    device: str = "auto",
) -> pd.DataFrame:
    """Rank a cohort's scans for review and write the CSV to ``out`` (atomically).

    A cohort with labelled ``split`` scans gets :func:`out_of_fold_probabilities` +
    :func:`rank_label_issues`; one without them but with unlabelled scans gets
    :func:`rank_uncertain` (active learning). Each row also gets ``input_hash``,
    ``bundle_id`` and ``bundle_checksum`` (the columns
    :data:`~medres.review.issues.LABEL_ISSUE_COLUMNS` then ``prob_<class>``).

    Beside the CSV, ``OUT.json`` (:func:`~medres.review.issues.format_sidecar`) holds the
    format version. Returns the table written.

    Raises:
        ConfigError: nothing to rank (no labelled ``split`` scans and no unlabelled
        ones), or as the functions above.
    """
    resolve_device(device)  # an absent GPU is refused before any scan is read
    cohort = Cohort.load(cohort_path)
    bundle = load_classifier(bundle_path)
    if not cohort.labelled(split).empty:
        rows, probs = out_of_fold_probabilities(
            bundle,
            cohort,
            split=split,
            folds=folds,
            epochs=epochs,
            seed=seed,
            show_progress=show_progress,
            progress=progress,
            device=device,
        )
        codes = bundle.info.encode(rows["label"])
        table = rank_label_issues(rows, codes, probs, classes=bundle.info.classes)
        files = rows.set_index("scan_id")["files"]
    elif cohort.ok["label"].isna().any():
        table = rank_uncertain(bundle, cohort, device=device)
        files = cohort.ok.set_index("scan_id")["files"]
    else:
        raise ConfigError(
            f"{cohort_path} has no labelled '{split}' scans and no unlabelled scans: nothing "
            f"to rank; choose --split among {sorted(cohort.ok['split'].dropna().unique())}, "
            "or split the cohort first (`medres split`)"
        )
    return _write_issues(out, table, files, bundle)


def _write_issues(out: str | Path, table: pd.DataFrame, files: pd.Series, bundle: Bundle):
    """``table`` with each scan's ``input_hash`` (of its ``files``, by scan id) and the
    bundle's id and checksum, in the CSV's column order, written to ``out`` with its
    format sidecar; returns the table written."""
    from medres.inference import input_hash

    table["input_hash"] = [input_hash(tuple(real_files(files[s]))) for s in table["scan_id"]]
    table["bundle_id"] = bundle.id
    table["bundle_checksum"] = bundle.checksum
    probs_columns = [c for c in table.columns if c.startswith("prob_")]
    table = table[[*LABEL_ISSUE_COLUMNS, *probs_columns]]
    write_text(out, table.to_csv(index=False), private=True)
    sidecar = {FORMAT_KEY: FORMAT, "medres_version": __version__, "bundle_id": bundle.id}
    write_json(format_sidecar(out), sidecar)
    return table


def _table(rows: pd.DataFrame, probs: np.ndarray, names: list[str], suggested) -> pd.DataFrame:
    """The per-scan columns shared by both rankings (given_label inserted by callers)."""
    table = pd.DataFrame(
        {
            "scan_id": rows["scan_id"].astype(str).to_numpy(),
            "path": rows["path"].astype(str).to_numpy(),
            "patient_id": rows["patient_id"].to_numpy(),
            "site": rows["site"].to_numpy(),
            "suggested_label": [names[i] for i in suggested],
            "p_suggested": probs[np.arange(len(probs)), suggested],
            "conformal_set": "",
        }
    )
    for k, name in enumerate(names):
        table[f"prob_{name}"] = probs[:, k]
    return table


def _ranked(table: pd.DataFrame, keys: list, descending: bool = False) -> pd.DataFrame:
    """``table`` sorted by ``keys`` (first key first; scan id last) with ``rank`` 1.."""
    sign = -1.0 if descending else 1.0
    order = np.lexsort(
        [table["scan_id"].to_numpy(str), *[sign * np.asarray(k, float) for k in reversed(keys)]]
    )
    table = table.iloc[order].reset_index(drop=True)
    table.insert(0, "rank", np.arange(1, len(table) + 1))
    return table
