"""``medres retrain``: a challenger from a champion bundle, new cohorts and reviewed labels.

Training data: the new cohorts' ``train`` splits plus, unless ``new_only``, the
champion's own training cohort (rehearsal: fine-tuning on a new site alone forgets the
old one, measured in ``benchmarks/results/retrain.md``); their ``val`` splits select the
epoch and fit the trust layer; reviewed labels override the cohorts' (:mod:`.reviews`). The
challenger keeps the champion's preprocessing, model and task, starts from its weights
(fine-tuning: learning rate × :data:`FINE_TUNE_LR`, half the epochs, no warm-up) or from
scratch (the champion's own training settings), and records its parent, its lineage and
a frozen test set that grows with every cohort's test split (:mod:`medres.frozen`).
A training or validation scan of a frozen test patient, or a copy of a test scan's
pixels, is refused naming the cohort that holds it; in the rehearsed champion's cohort,
``drop_leaking_rehearsal`` leaves such scans out instead. A patient with scans in train
and in val (a follow-up patient validated on in the champion's cohort and filed under
train in the new one, say) is refused too, naming the cohort of each: the challenger
selects its epoch and fits its calibration on val, as ``medres train`` does.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from medres.bundle import TRAINING_COHORT, is_bundle, load_bundle, training_cohort
from medres.cohort import Cohort
from medres.config import apply_overrides, validate
from medres.errors import ALLOW_LEAKAGE, ConfigError, LeakageError, quote_some
from medres.evaluate import Evaluation
from medres.frozen import check_no_leak, freeze, leaking, read_frozen
from medres.retrain.reviews import ReviewsApplied, apply_reviews
from medres.split import patient_ids
from medres.tasks import infer_task
from medres.train import CHECKPOINT, TrainConfig
from medres.train_job import train_bundle

FINE_TUNE_LR = 0.1
FIXED = ("model", "model_args", "preprocess", "task", "dropout", "positive_class")


@dataclass
class RetrainResult:
    """The challenger's ``bundle.json``, its evaluations (val, test), what the reviews
    changed (None without reviews) and the scan_ids left out of the rehearsal."""

    bundle_json: Path
    evaluations: dict[str, Evaluation]
    reviews: ReviewsApplied | None
    rehearsal_dropped: list[str] = field(default_factory=list)


def retrain_bundle(
    champion: str | Path,
    cohorts: Sequence[str | Path],
    out: str | Path,
    *,
    reviews: str | Path | None = None,
    from_scratch: bool = False,
    new_only: bool = False,
    overrides: Sequence[str] = (),
    resume: bool = False,
    show_progress: bool = True,
    allow_leakage: bool = False,
    drop_leaking_rehearsal: bool = False,
) -> RetrainResult:
    """Train a challenger and write it as a bundle to ``out``.

    Args:
        champion: the bundle to improve on.
        cohorts: split manifests of the new data (their union is trained on).
        reviews: ``medres review export`` CSV; its labels override the cohorts'.
        new_only: train on ``cohorts`` alone, without the champion's training cohort.
        allow_leakage: train although the cohorts' own splits leak (a patient in two
            splits, a test scan's copy in train / val) or a patient sits in train in one
            cohort and in val in another: a deliberate experiment, recorded in the
            challenger's bundle and model card. The champion's frozen test set is never
            overridden.
        drop_leaking_rehearsal: leave out of the rehearsal the champion's own training
            scans that would leak (a frozen test patient's scans, a test scan's copies,
            e.g. in a champion trained before copies were refused); bundle.json counts
            them in ``training.rehearsal_dropped`` (their scan_ids salted and hashed).
        overrides: ``key=value`` training settings over the defaults above (``--set``,
            ``epochs=N``); the model, its arguments, the preprocessing and the task are
            the champion's and cannot be overridden.

    Raises:
        LeakageError: a train / val scan belongs to a patient of the champion's test
            split (or of a new cohort's test split), or repeats a test scan's pixels;
            or a patient has scans in train and in val (across cohorts too, except
            within one cohort split scan by scan on purpose); the message names the
            cohort holding each such scan and what to do for a retraining.
        ConfigError: no cohorts, classes that differ from the champion's, ``out`` taken,
            the champion's training cohort gone or changed (without ``new_only``),
            ``drop_leaking_rehearsal`` with ``new_only``.
        BundleError: the champion is damaged or keeps no frozen test set.
    """
    out = Path(out)
    _check_request(out, cohorts, resume=resume, new_only=new_only, drop=drop_leaking_rehearsal)
    parent = load_bundle(champion)
    frozen = read_frozen(champion)
    inputs = _inputs(parent, cohorts, new_only)
    table, meta, sources = _union(inputs.loaded, inputs.paths, inputs.names)
    applied = None
    if reviews is not None:
        table, applied = apply_reviews(table, reviews, parent.info.classes or [])
        meta["reviews"] = applied.to_dict()
    tests = _test_sets(frozen, table)
    dropped: list[str] = []
    if drop_leaking_rehearsal:
        table, dropped = _drop_leaking_rehearsal(table, sources == inputs.rehearsed, tests)
        sources = sources.loc[table.index]
    cohort = Cohort(table, meta)
    _check_leaks(cohort, sources, tests, inputs, allow_leakage)
    config = _challenger_config(parent, from_scratch, overrides)
    _check_classes(parent, cohort, config)
    out.mkdir(parents=True, exist_ok=True)
    cohort.save(out / TRAINING_COHORT)
    bundle_json, evaluations = train_bundle(
        out / TRAINING_COHORT,
        config,
        out,
        resume=resume,
        show_progress=show_progress,
        parent=parent,
        from_scratch=from_scratch,
        frozen_before=frozen,
        allow_leakage=allow_leakage,
        rehearsal_dropped=dropped,
    )
    return RetrainResult(bundle_json, evaluations, applied, dropped)


_MOVE_OUT = (
    "Remove these scans from its train and val splits (e.g. put them in its test split) "
    "and retrain."
)


@dataclass
class _Inputs:
    """The cohorts a retraining reads, in order: ``paths`` (the rehearsed champion's
    training cohort first, unless ``new_only``), ``names`` (how messages name each),
    ``loaded`` (each one's :class:`Cohort`) and ``rehearsed`` (the champion's cohort's
    name; None with ``new_only``)."""

    paths: list[Path]
    names: list[str]
    loaded: list[Cohort]
    rehearsed: str | None


def _check_request(
    out: Path, cohorts: Sequence[str | Path], *, resume: bool, new_only: bool, drop: bool
) -> None:
    """Refuse, before reading anything, a retraining asked for wrongly: no cohorts,
    ``out`` taken (or interrupted without ``resume``), ``drop`` with ``new_only``."""
    if not cohorts:
        raise ConfigError("give at least one new cohort: --cohort NEW_COHORT.parquet")
    if is_bundle(out):
        raise ConfigError(f"{out} already holds a bundle; choose a new -o folder")
    if (out / CHECKPOINT).exists() and not resume:
        raise ConfigError(f"{out} holds an interrupted retraining; add --resume to continue it")
    if new_only and drop:
        raise ConfigError(
            "--drop-leaking-rehearsal leaves leaking scans out of the rehearsal of the "
            "champion's training cohort, and --new-only rehearses nothing: pass one of them"
        )


def _inputs(parent, cohorts: Sequence[str | Path], new_only: bool) -> _Inputs:
    """The new ``cohorts`` and, unless ``new_only``, the champion's training cohort
    before them (given again among ``cohorts``, it is read once); a ConfigError when
    that cohort is gone or changed since the champion was trained."""
    paths = [Path(c) for c in cohorts]
    old = None
    if not new_only:
        old = training_cohort(parent)
        if old is None:
            raise ConfigError(
                f"the champion's training cohort {parent.trained_on.path} is "
                "gone or changed since it was trained, so it cannot be rehearsed; give it "
                "again with --cohort OLD.parquet --new-only, or train on the new cohorts "
                "alone with --new-only"
            )
        paths = [old, *[p for p in paths if p.resolve() != old.resolve()]]
    rehearsed = _rehearsed_name(old) if old is not None else None
    names = [f"the new cohort {p.resolve()}" for p in paths]
    if old is not None:
        names[0] = rehearsed
    loaded = [Cohort.load(p) for p in paths]
    return _Inputs(paths, names, loaded, rehearsed)


def _test_sets(frozen: dict, table: pd.DataFrame) -> list[tuple[dict, str]]:
    """The frozen-test records no train / val scan may leak from, each with how messages
    name it: the champion's frozen test set, then the union's own ``test`` split."""
    tests = [(frozen, "the champion's test split")]
    ok = table[table["status"] == "ok"]
    tests.append((freeze(ok[ok["split"] == "test"]), "a new cohort's test split"))
    return tests


def _check_leaks(
    cohort: Cohort,
    sources: pd.Series,
    tests: list[tuple[dict, str]],
    inputs: _Inputs,
    allow_leakage: bool,
) -> None:
    """Refuse train / val scans of ``cohort`` that leak from ``tests`` (the champion's
    frozen set always; the new test splits unless ``allow_leakage``) or whose patients
    sit in train and in val (unless ``allow_leakage``); ``sources``: each row's cohort
    name."""
    training = cohort.ok[cohort.ok["split"].isin(["train", "val"])]
    advice = dict.fromkeys(inputs.names, _MOVE_OUT)
    if inputs.rehearsed is not None:
        advice[inputs.rehearsed] = (
            "Retrain with --new-only (the new cohorts alone), or with "
            "--drop-leaking-rehearsal to leave these scans out of the rehearsal of the "
            "champion's cohort (the challenger's bundle.json counts them)."
        )
    for record, where in tests[: 1 if allow_leakage else 2]:  # the frozen set: always
        check_no_leak(
            record,
            training,
            where,
            sources=sources.loc[training.index],
            claim="retraining would leak test data into the training/validation scans",
            advice=advice,
        )
    if not allow_leakage:
        scan_level = {
            n
            for n, c in zip(inputs.names, inputs.loaded, strict=True)
            if c.meta.get("split_unit") == "scan"
        }
        _check_train_val_patients(
            training,
            sources.loc[training.index],
            scan_level,
            dict(zip(inputs.names, inputs.paths, strict=True)),
            inputs.rehearsed,
        )


def _rehearsed_name(path: Path) -> str:
    """How messages name the champion's training cohort."""
    return f"the champion's own training cohort {path.resolve()} (rehearsed)"


def _check_train_val_patients(
    training: pd.DataFrame,
    sources: pd.Series,
    scan_level: set[str],
    paths: dict[str, Path],
    rehearsed: str | None,
) -> None:
    """Refuse patients with scans in both train and val of the retraining (``training``:
    the union's train / val rows; ``sources``: each row's cohort name), naming the
    cohort of each split, unless both sit in one cohort split scan by scan on purpose.

    What ``medres train`` refuses in one cohort (validation, and the epoch and
    calibration chosen on it, would be optimistic) is refused across cohorts too, with
    advice that works for a retraining: the champion's cohort cannot be re-split.
    Patients of a test split are :func:`~medres.frozen.check_no_leak`'s.
    """
    found = _train_val_patients(training, sources, scan_level, paths)
    if not found:
        return
    shown = [
        f"{p} ({'; '.join(' and '.join(s) + ' in ' + c for c, s in where)})"
        for p, where in found.items()
    ]
    todo = _train_val_advice(found, paths, rehearsed)
    raise LeakageError(
        f"retraining would select and calibrate on patients it trains on: {len(found)} "
        f"patient(s) have scans in both train and val: {quote_some(shown)}; the validation "
        "figures, and the epoch and calibration chosen on them, would be optimistic. "
        f"What to do: {'; or '.join(todo)}.",
        sorted(found),
    )


def _train_val_patients(
    training: pd.DataFrame, sources: pd.Series, scan_level: set[str], paths: dict[str, Path]
) -> dict[str, list[tuple[str, list[str]]]]:
    """Each patient with scans in train and in val (sorted), as the cohorts holding
    them (in the order of ``paths``) with the splits each gives them; a patient in one
    cohort of ``scan_level`` (split scan by scan on purpose) is left out."""
    ids = patient_ids(training)
    known = ids.notna().to_numpy()
    places = pd.DataFrame(
        {
            "patient": ids[known],
            "split": training["split"][known].astype(str),
            "cohort": pd.Categorical(sources[known], categories=list(paths)),
        }
    )
    found: dict[str, list[tuple[str, list[str]]]] = {}
    for patient, group in places.groupby("patient", sort=True):
        cohorts = list(group["cohort"].drop_duplicates().sort_values())
        if group["split"].nunique() < 2 or (len(cohorts) == 1 and cohorts[0] in scan_level):
            continue
        found[patient] = [(c, sorted(set(group["split"][group["cohort"] == c]))) for c in cohorts]
    return found


def _train_val_advice(
    found: dict[str, list[tuple[str, list[str]]]], paths: dict[str, Path], rehearsed: str | None
) -> list[str]:
    """What to do about the patients of ``found``, for a retraining: re-file or re-split
    the new cohorts (the champion's cannot be re-split), --new-only, or the override."""
    across = {c for where in found.values() if len(where) > 1 for c, _ in where}
    within = {where[0][0] for where in found.values() if len(where) == 1}
    todo = []
    refile = [paths[c] for c in paths if c in across and c != rehearsed]
    if refile:
        todo.append(
            "for a patient in two cohorts, file their scans in the new cohort under the "
            "split the other cohort gives them (set its split column, then "
            + ", ".join(f"`medres split {p.resolve()} --keep-column split`" for p in refile)
            + ")"
        )
    for c in paths:
        if c in within and c != rehearsed:
            todo.append(
                f"for a patient in train and val of one new cohort, re-split it: "
                f"`medres split {paths[c].resolve()}`"
            )
    if rehearsed in across | within:
        todo.append("retrain on the new cohorts alone with --new-only")
    todo.append(ALLOW_LEAKAGE)
    return todo


def _drop_leaking_rehearsal(
    table: pd.DataFrame, rehearsed: pd.Series, tests: list[tuple[dict, str]]
) -> tuple[pd.DataFrame, list[str]]:
    """``table`` without the rehearsed train / val rows that belong to a test patient of
    ``tests`` (frozen-test records) or repeat a test scan's pixels, and their scan_ids."""
    rows = table[(table["status"] == "ok") & table["split"].isin(["train", "val"]) & rehearsed]
    leaks = pd.Series(False, index=rows.index)
    for record, _ in tests:
        by_patient, by_pixels = leaking(record, rows)
        leaks |= by_patient | by_pixels
    drop = rows.index[leaks]
    return table.drop(index=drop), sorted(table.loc[drop, "scan_id"].astype(str))


def _challenger_config(parent, from_scratch: bool, overrides: Sequence[str]) -> TrainConfig:
    """The champion's resolved training settings (same preprocessing, model, task; its
    class names), adjusted for fine-tuning unless ``from_scratch``, then ``overrides``
    (``class_names`` may be renamed)."""
    fixed = [o for o in overrides if o.partition("=")[0].split(".")[0].strip() in FIXED]
    if fixed:
        raise ConfigError(
            f"a challenger keeps the champion's {', '.join(FIXED)}; cannot override {fixed}. "
            "To change them, train a new model with `medres train`"
        )
    base = parent.config.model_dump(mode="json")
    if not from_scratch:
        base.update(lr=base["lr"] * FINE_TUNE_LR, epochs=max(1, base["epochs"] // 2))
        base["warmup_epochs"] = 0
    args = dict(parent.manifest.model.args)
    if not from_scratch:
        args.pop("pretrained", None)  # the champion's weights replace them
    base.update(preprocess=parent.spec.model_dump(mode="json"), model_args=args)
    base["dropout"] = args.get("dropout", base.get("dropout"))
    base["class_names"] = parent.class_names or None  # the champion's names, unless --set
    return validate(TrainConfig, apply_overrides(base, list(overrides)), "retraining settings")


def _check_classes(parent, cohort: Cohort, config: TrainConfig) -> None:
    labels = cohort.ok[cohort.ok["label"].notna()]["label"]
    info = infer_task(labels, config.task, config.positive_class)
    if info.kind != parent.info.kind or [str(c) for c in info.classes or []] != [
        str(c) for c in parent.info.classes or []
    ]:
        raise ConfigError(
            f"the new cohort's labels make a {info.task} task with classes {info.classes}, "
            f"the champion's is {parent.info.task} with {parent.info.classes}; a challenger "
            "must predict the same classes (relabel the cohort, or train a new model)"
        )


def _union(
    cohorts: list[Cohort], paths: Sequence[str | Path], names: Sequence[str]
) -> tuple[pd.DataFrame, dict, pd.Series]:
    """One manifest of all new cohorts; scan ids that repeat across cohorts are prefixed
    with their cohort file's name. Also returns each row's cohort ``names`` entry (how
    messages name it); ``split_unit`` is "scan" when any cohort was split scan by scan
    on purpose (its patients in train and val are deliberate)."""
    tables = [c.table for c in cohorts]
    ids = pd.concat([t["scan_id"] for t in tables])
    if ids.duplicated().any():
        tables = [
            t.assign(scan_id=Path(p).stem + ":" + t["scan_id"].astype(str))
            for t, p in zip(tables, paths, strict=True)
        ]
    meta = {
        "sources": [
            {"path": str(Path(p).resolve()), "fingerprint": c.fingerprint()}
            for c, p in zip(cohorts, paths, strict=True)
        ],
        "split_by": cohorts[0].meta.get("split_by"),
    }
    if any(c.meta.get("split_unit") == "scan" for c in cohorts):
        meta["split_unit"] = "scan"
    table = pd.concat(tables, ignore_index=True)
    sources = pd.Series(
        [name for name, t in zip(names, tables, strict=True) for _ in range(len(t))],
        index=table.index,
        dtype=object,
    )
    return table, meta, sources
