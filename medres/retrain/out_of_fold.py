"""Out-of-fold class probabilities for :mod:`medres.retrain.label_issues`.

K-fold cross-fitting over a cohort's labelled scans: each fold is scored by a model
that never saw it (trained with the bundle's own configuration and preprocessing), so a
wrong label cannot have been memorised. Unreadable scans are left out with a
:class:`SkippedScansWarning`.
"""

from __future__ import annotations

import tempfile
import warnings
from pathlib import Path

import numpy as np
import pandas as pd

from medres.bundle import Bundle, load_bundle
from medres.cohort import Cohort, read_row
from medres.errors import ConfigError, ScanError
from medres.tasks import label_key

HELDOUT, UNREADABLE = "heldout", "unreadable"  # fold copies' splits that fit() ignores


class SkippedScansWarning(UserWarning):
    """Scans that could not be read were left out of the ranking."""


def out_of_fold_probabilities(
    bundle_path: str | Path | Bundle,
    cohort: Cohort | str | Path,
    *,
    split: str = "train",
    folds: int = 4,
    epochs: int | None = None,
    seed: int = 0,
    show_progress: bool = True,
    progress=None,
    device: str = "auto",
) -> tuple[pd.DataFrame, np.ndarray]:
    """Out-of-fold class probabilities for the cohort's labelled ``split`` scans.

    The scans are cut into ``folds`` folds grouped by patient (``patient_id``, the
    ``scan_id`` where it is missing) and stratified by label (StratifiedGroupKFold,
    shuffled with ``seed``). For each fold a fresh model is trained with the bundle's
    ``config.json`` and preprocessing (``epochs`` overriding its epochs, seed
    ``seed + fold``) on the other folds (plus the cohort's ``train`` split when
    ``split`` is another one), selected on the cohort's ``val`` split, then scores the
    held-out fold: raw softmax probabilities, in the bundle's class order.

    Args:
        progress: optional ``rich.progress.Progress``; one task advanced per fold.
        show_progress: show each fold's training progress (epochs, batches).
        device: where the fold models train and score (``--device``).

    Returns the scored rows (manifest rows, cohort order) and their probabilities
    (N, K). Scans that cannot be read (each is read once first) are left out of the
    folds and the result, with a :class:`SkippedScansWarning`.

    Raises:
        ConfigError: a regression bundle, ``split="val"`` (it selects the models), no
        labelled ``split`` scans, fewer patients than folds, labels outside the bundle's.
        BundleError: the bundle's ``config.json`` is missing or invalid.
    """
    bundle = load_classifier(bundle_path)
    cohort = cohort if isinstance(cohort, Cohort) else Cohort.load(cohort)
    rows, skipped = _readable_rows(cohort, split, folds)
    config = _train_config(bundle, epochs).model_copy(update={"device": device})
    cuts = _folds(rows, bundle.info.encode(rows["label"]), split, folds, seed)
    probs = np.full((len(rows), bundle.info.num_outputs), np.nan)
    task = progress.add_task("folds", total=folds) if progress is not None else None
    for fold, (fit_index, held_index) in enumerate(cuts):
        fold_cohort = _fold_cohort(cohort, rows, fit_index, held_index, skipped)
        fold_config = config.model_copy(update={"seed": seed + fold})
        held = rows.iloc[held_index]
        result, scored = _fit_and_score(fold_cohort, fold_config, held, show_progress)
        order = _class_order(result.info.classes, bundle.info.classes)
        probs[held_index[scored.rows.index.to_numpy()]] = scored.scores(result.info)[:, order]
        skipped += scored.failures["scan_id"].astype(str).tolist()
        if task is not None:
            progress.update(task, advance=1, description=_fold_line(fold, folds, result))
    _warn_skipped(skipped, split)
    kept = ~np.isnan(probs).any(axis=1)
    return rows[kept], probs[kept]


def _readable_rows(cohort: Cohort, split: str, folds: int) -> tuple[pd.DataFrame, list[str]]:
    """The cohort's labelled ``split`` rows that can be read, and the scan ids of those
    that cannot (a fold model would fail training on them); ConfigError for
    ``split="val"``, fewer than 2 folds, or no labelled (readable) ``split`` scans."""
    if split == "val":
        raise ConfigError(
            "the 'val' split selects each fold's model, so it cannot be cross-fitted; "
            "choose --split train (or another labelled split)"
        )
    if folds < 2:
        raise ConfigError(f"--folds must be at least 2; got {folds}")
    rows = cohort.labelled(split)
    if rows.empty:
        raise ConfigError(
            f"the cohort has no labelled '{split}' scans to cross-fit; choose --split among "
            f"{sorted(cohort.ok['split'].dropna().unique())}"
        )
    skipped = _unreadable(rows)
    rows = rows[~rows["scan_id"].astype(str).isin(skipped)]
    if rows.empty:
        raise ConfigError(f"none of the '{split}' scans can be read; see `medres ingest`")
    return rows, skipped


def _folds(
    rows: pd.DataFrame, labels: np.ndarray, split: str, folds: int, seed: int
) -> list[tuple[np.ndarray, np.ndarray]]:
    """``folds`` (fit, held-out) positions into ``rows``: grouped by patient (the scan id
    where it is missing), stratified by ``labels`` (N,) codes, shuffled with ``seed``;
    ConfigError when there are fewer patients than folds."""
    from sklearn.model_selection import StratifiedGroupKFold

    groups = rows["patient_id"].where(rows["patient_id"].notna(), rows["scan_id"]).astype(str)
    if groups.nunique() < folds:
        raise ConfigError(
            f"{groups.nunique()} patients in '{split}' cannot make {folds} folds; lower --folds"
        )
    splitter = StratifiedGroupKFold(n_splits=folds, shuffle=True, random_state=seed)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="The least populated class", module="sklearn")
        return list(splitter.split(np.zeros(len(rows)), labels, groups))


def _fold_cohort(
    cohort: Cohort,
    rows: pd.DataFrame,
    fit_index: np.ndarray,
    held_index: np.ndarray,
    skipped: list[str],
) -> Cohort:
    """A copy of ``cohort`` whose ``fit_index`` rows are ``train``, ``held_index`` rows
    :data:`HELDOUT` and ``skipped`` scans :data:`UNREADABLE` (both ignored by fit)."""
    table = cohort.table.copy()
    table.loc[table["scan_id"].isin(rows["scan_id"].iloc[fit_index]), "split"] = "train"
    table.loc[table["scan_id"].isin(rows["scan_id"].iloc[held_index]), "split"] = HELDOUT
    table.loc[table["scan_id"].astype(str).isin(skipped), "split"] = UNREADABLE
    return Cohort(table, dict(cohort.meta))


def _fit_and_score(cohort: Cohort, config, held: pd.DataFrame, show_progress: bool):
    """Train a fold model on ``cohort`` (in a temporary folder), then score the ``held``
    rows; returns the fit result and the scores (``scored.rows.index``: positions in
    ``held``)."""
    from medres.inference import score_rows
    from medres.train import fit

    with tempfile.TemporaryDirectory(prefix="medres-fold-") as tmp:
        result = fit(cohort, config, tmp, show_progress=show_progress)
    held = held.reset_index(drop=True)  # index = position in the fold
    scored = score_rows(result.model, result.info, result.spec, held, device=result.config.device)
    return result, scored


def _fold_line(fold: int, folds: int, result) -> str:
    """The progress line after ``fold`` (0-based): its validation metric."""
    return f"fold {fold + 1}/{folds} val {result.metric} {result.best_score:.3f}"


def _warn_skipped(skipped: list[str], split: str) -> None:
    """A :class:`SkippedScansWarning` naming (up to 5 of) the unreadable scans, pointing
    at the caller of :func:`out_of_fold_probabilities`."""
    if skipped:
        warnings.warn(
            f"{len(skipped)} '{split}' scan(s) could not be read and are left out of the "
            f"ranking: {', '.join(skipped[:5])}{' ...' if len(skipped) > 5 else ''}",
            SkippedScansWarning,
            stacklevel=3,
        )


def load_classifier(bundle: Bundle | str | Path) -> Bundle:
    """The bundle (loaded when given as a path); ConfigError for a regression bundle."""
    bundle = bundle if isinstance(bundle, Bundle) else load_bundle(bundle)
    if not bundle.info.kind.classifies:
        raise ConfigError(
            f"{bundle.path} is a regression bundle; label issues and uncertainty ranking "
            "need a classifier's class probabilities"
        )
    return bundle


def _train_config(bundle: Bundle, epochs: int | None):
    """The bundle's training configuration with its own preprocessing (and ``epochs``)."""
    config = bundle.config
    if epochs is not None and epochs < 1:
        raise ConfigError(f"--epochs must be at least 1; got {epochs}")
    return config.model_copy(update={"preprocess": bundle.spec, "epochs": epochs or config.epochs})


def _unreadable(rows: pd.DataFrame) -> list[str]:
    """Scan ids of rows whose files cannot be read any more (changed since ingest)."""
    bad = []
    for item in rows[["scan_id", "files"]].to_dict("records"):
        try:
            read_row(item)
        except ScanError:
            bad.append(str(item["scan_id"]))
    return bad


def _class_order(fold_classes: list, bundle_classes: list) -> list[int]:
    """Indices that put a fold model's outputs in the bundle's class order."""
    keys = [label_key(c) for c in fold_classes]
    missing = [c for c in bundle_classes if label_key(c) not in keys]
    if missing or len(keys) != len(bundle_classes):
        raise ConfigError(
            f"a fold model learned classes {fold_classes}, the bundle {bundle_classes}; "
            "the cohort must hold every class of the bundle in its train and val splits"
        )
    return [keys.index(label_key(c)) for c in bundle_classes]
