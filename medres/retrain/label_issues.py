"""Label issues (confident learning) and active learning: which scans to look at first.

- :func:`out_of_fold_probabilities`: K-fold cross-fitting over a cohort's labelled
  scans, each fold scored by a model that never saw it (trained with the bundle's own
  configuration), so a wrong label cannot have been memorised.
- :func:`rank_label_issues`: cleanlab's label quality on those probabilities; the
  scans whose given label the out-of-fold model disbelieves most come first.
- :func:`rank_uncertain`: active learning on an unlabelled cohort, ordered by the
  bundle's calibrated uncertainty (1 − max probability, ties by entropy).
- :func:`label_issues`: the job behind ``medres label-issues``; writes the CSV that
  ``medres review load --label-issues`` reads. Its columns are
  :data:`medres.review.issues.LABEL_ISSUE_COLUMNS` plus one ``prob_<class>`` per class.
"""

from __future__ import annotations

import tempfile
import warnings
from pathlib import Path

import numpy as np
import pandas as pd

from medres import __version__
from medres.bundle import Bundle, load_bundle
from medres.cohort import Cohort, read_row, real_files
from medres.errors import ConfigError, ScanError
from medres.files import FORMAT_KEY, write_json, write_text
from medres.review.issues import (
    ACTIVE_LEARNING_REASON,
    FORMAT,
    LABEL_ERROR_REASON,
    LABEL_ISSUE_COLUMNS,
    format_sidecar,
)
from medres.tasks import label_key, predicted_class

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

    Returns the scored rows (manifest rows, cohort order) and their probabilities
    (N, K). Scans that cannot be read (each is read once first) are left out of the
    folds and the result, with a :class:`SkippedScansWarning`.

    Raises:
        ConfigError: a regression bundle, ``split="val"`` (it selects the models), no
        labelled ``split`` scans, fewer patients than folds, labels outside the bundle's.
        BundleError: the bundle's ``config.json`` is missing or invalid.
    """
    bundle = _classifier(bundle_path)
    cohort = cohort if isinstance(cohort, Cohort) else Cohort.load(cohort)
    rows, skipped = _readable_rows(cohort, split, folds)
    config = _train_config(bundle, epochs)
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
    return result, score_rows(result.model, result.info, result.spec, held)


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
    bundle_path: str | Path | Bundle, cohort_or_rows: Cohort | pd.DataFrame | str | Path
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

    bundle = _classifier(bundle_path)
    rows = cohort_or_rows
    if not isinstance(rows, pd.DataFrame):
        cohort = rows if isinstance(rows, Cohort) else Cohort.load(rows)
        rows = cohort.ok[cohort.ok["label"].isna()]
    if rows.empty:
        raise ConfigError("no unlabelled scans to rank; ingest the new scans without --labels")
    scored = score_rows(bundle.model, bundle.info, bundle.spec, rows, with_targets=False)
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
    cohort = Cohort.load(cohort_path)
    bundle = _classifier(bundle_path)
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
        )
        codes = bundle.info.encode(rows["label"])
        table = rank_label_issues(rows, codes, probs, classes=bundle.info.classes)
        files = rows.set_index("scan_id")["files"]
    elif cohort.ok["label"].isna().any():
        table = rank_uncertain(bundle, cohort)
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


def _classifier(bundle: Bundle | str | Path) -> Bundle:
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
