"""fit(): tasks, determinism, checkpoints, resume after a kill, the CPU fast path."""

from __future__ import annotations

import math
import os
import re
import signal
import subprocess
import sys
import time

import numpy as np
import pandas as pd
import pytest
import torch
from pydantic import ValidationError

from medres.cohort import Cohort
from medres.errors import ConfigError
from medres.tasks import infer_task, label_key
from medres.train import (
    CHECKPOINT,
    ScanDataset,
    StopReason,
    TrainConfig,
    auto_stem_stride,
    fit,
    infer,
    make_loader,
    weight_average,
    within_time_limit,
)
from tests.conftest import PROJECT, small_cohort

FAST = {"epochs": 2, "batch_size": 16, "num_workers": 0}


def test_task_is_inferred_from_labels():
    assert infer_task(pd.Series([0, 1, 1])).task == "binary"
    assert infer_task(pd.Series(["a", "b", "c"])).classes == ["a", "b", "c"]
    assert infer_task(pd.Series([0.5, 1.25])).task == "regression"
    assert infer_task(pd.Series([0, 4, 2]), "ordinal").classes == [0, 2, 4]
    with pytest.raises(ConfigError, match="one class"):
        infer_task(pd.Series([1, 1]))
    with pytest.raises(ConfigError, match="integers"):
        infer_task(pd.Series([0.5, 1.5]), "ordinal")
    with pytest.raises(ConfigError, match="task=regression"):
        infer_task(pd.Series(range(40)))  # e.g. age in years: not 40 classes by accident


def test_labels_match_whatever_type_the_manifest_stored():
    info = infer_task(pd.Series([0, 1]))
    for labels in ([0.0, 1.0], ["0", "1"], ["0.0", "1.0"], [False, True]):
        assert list(info.encode(pd.Series(labels))) == [0, 1]
    assert label_key(2.0) == "2" and label_key(" a ") == "a"


def test_binary_text_labels_need_the_positive_class_named():
    with pytest.raises(ConfigError, match="positive_class="):
        infer_task(pd.Series(["abnormal", "normal"]))
    info = infer_task(pd.Series(["normal", "abnormal"]), positive_class="abnormal")
    assert info.classes == ["normal", "abnormal"]  # the positive class is output 1
    with pytest.raises(ConfigError, match="not one of the labels"):
        infer_task(pd.Series(["a", "b"]), positive_class="c")


def test_referable_grade_is_checked_and_mapped_to_its_index():
    info = infer_task(pd.Series([1, 2, 3, 4, 5]), "ordinal")
    assert info.referable_index(3) == 2  # grades 1-5: grade 3 is output 2
    with pytest.raises(ConfigError, match="grades above the lowest"):
        info.referable_index(1)
    with pytest.raises(ConfigError, match="task=ordinal"):
        infer_task(pd.Series([0, 1, 2])).referable_index(2)


def test_stem_stride_keeps_first_stage_at_14_px_in_2d_and_7_voxels_in_3d():
    sizes = ((28, 28), (224, 224), (16, 16), (28, 28, 28), (64, 64, 64), (8, 8, 8))
    assert [auto_stem_stride(s) for s in sizes] == [2, 4, 1, 4, 8, 1]


def test_fit_writes_history_and_checkpoint_and_is_deterministic(example_cohort, tmp_path):
    cohort = Cohort.load(small_cohort(example_cohort, tmp_path / "c.parquet"))
    first = fit(cohort, TrainConfig(**FAST), tmp_path / "a", show_progress=False)
    history = pd.read_csv(tmp_path / "a" / "metrics.csv")
    assert list(history["epoch"]) == [1, 2]
    assert {"train_loss", "val_loss", "val_auroc", "lr"} <= set(history.columns)
    assert (tmp_path / "a" / CHECKPOINT).is_file()
    assert first.metric == "auroc" and 1 <= first.best_epoch <= 2
    assert first.stopped_by is StopReason.LAST_EPOCH
    again = fit(cohort, TrainConfig(**FAST), tmp_path / "b", show_progress=False)
    pd.testing.assert_frame_equal(
        first.history.drop(columns="seconds"), again.history.drop(columns="seconds")
    )
    other = fit(cohort, TrainConfig(**FAST, seed=1), tmp_path / "c", show_progress=False)
    assert not np.allclose(other.history["train_loss"], first.history["train_loss"])


def test_training_killed_mid_epoch_resumes_to_the_same_result(example_cohort, tmp_path):
    """kill -9 during epoch 2 of 3, then --resume: the metrics of every epoch, hence the
    selected epoch and its validation AUROC, equal an uninterrupted run's (tolerance
    1e-6: the same arithmetic in the same order, so only float formatting may differ)."""
    cohort = small_cohort(example_cohort, tmp_path / "c.parquet", sizes=(96, 24, 0))

    def train(out, *extra):
        args = ["--cohort", cohort, "--epochs", "3", "--set", "batch_size=8", "-o", out]
        return [sys.executable, "-m", "medres", "train", *map(str, args), *extra]

    env = {**os.environ, "PYTHONPATH": str(PROJECT)}
    subprocess.run(train(tmp_path / "whole"), check=True, env=env, capture_output=True)

    killed = tmp_path / "killed"
    proc = subprocess.Popen(
        train(killed), env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    metrics = killed / "metrics.csv"
    deadline = time.monotonic() + 120
    while not (metrics.exists() and len(pd.read_csv(metrics)) >= 1):
        assert time.monotonic() < deadline and proc.poll() is None, "epoch 1 never finished"
        time.sleep(0.05)
    time.sleep(1.0)  # into epoch 2 (an epoch takes several seconds)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert len(pd.read_csv(metrics)) == 1, "the kill came too late to test a resume"
    subprocess.run(train(killed, "--resume"), check=True, env=env, capture_output=True)

    whole = pd.read_csv(tmp_path / "whole" / "metrics.csv").drop(columns="seconds")
    resumed = pd.read_csv(metrics).drop(columns="seconds")
    pd.testing.assert_frame_equal(whole, resumed, atol=1e-6, rtol=0)
    assert (killed / "bundle.json").is_file() and not (killed / CHECKPOINT).exists()


def test_time_limit_stops_before_an_epoch_that_would_end_past_it(example_cohort, tmp_path):
    limit = TrainConfig(time_limit_minutes=25)
    assert within_time_limit(limit, 24 * 60, 60.0)  # ends at exactly 25 min
    assert not within_time_limit(limit, 24 * 60, 61.0)
    assert within_time_limit(limit, 99 * 60, None)  # nothing timed yet: the epoch runs
    assert within_time_limit(TrainConfig(time_limit_minutes=0), 99 * 60, 61.0)  # 0 = none

    cohort = Cohort.load(small_cohort(example_cohort, tmp_path / "c.parquet"))
    config = TrainConfig(**{**FAST, "epochs": 3}, time_limit_minutes=1e-4)  # 6 ms
    result = fit(cohort, config, tmp_path / "a", show_progress=False)
    assert list(result.history["epoch"]) == [1] and result.stopped_by is StopReason.TIME_LIMIT
    assert result.best_epoch == 1


def test_weight_average_follows_the_weights_with_the_stated_time_constant():
    """Weights that jump from 0 to 1 and stay: after ``ema_epochs`` epochs of steps the
    average has covered 1 - 1/e of the jump (within 0.01); ema_epochs=0 is the latest."""
    model = torch.nn.Linear(1, 1, bias=False)
    torch.nn.init.zeros_(model.weight)
    steps_per_epoch = 50
    averaged = weight_average(model, 2.0, steps_per_epoch)
    latest = weight_average(model, 0.0, steps_per_epoch)
    for average in (averaged, latest):
        average.update_parameters(model)  # the first update copies the weights (0)
    torch.nn.init.ones_(model.weight)
    for _ in range(2 * steps_per_epoch):
        averaged.update_parameters(model)
        latest.update_parameters(model)
    assert averaged.module.weight.item() == pytest.approx(1 - 1 / math.e, abs=0.01)
    assert latest.module.weight.item() == 1.0


def test_resume_refuses_a_checkpoint_of_another_configuration(example_cohort, tmp_path):
    cohort = Cohort.load(small_cohort(example_cohort, tmp_path / "c.parquet", sizes=(16, 8, 0)))
    fit(cohort, TrainConfig(**{**FAST, "epochs": 1}), tmp_path / "a", show_progress=False)
    with pytest.raises(ConfigError, match="another configuration"):
        fit(cohort, TrainConfig(**FAST, lr=0.1), tmp_path / "a", resume=True, show_progress=False)
    with pytest.raises(ConfigError, match="nothing to resume"):
        fit(cohort, TrainConfig(**FAST), tmp_path / "new", resume=True, show_progress=False)


def test_regression_and_ordinal_tasks_select_on_their_metric(example_cohort, tmp_path):
    base = example_cohort.table
    # a continuous target a model can learn from the pixels: the image's mean brightness
    brightness = [
        float(np.mean(__import__("PIL.Image").Image.open(f[0]))) / 255 for f in base["files"]
    ]
    table = base.assign(label=brightness)
    cohort = Cohort.load(small_cohort(Cohort(table, {}), tmp_path / "r.parquet", sizes=(32, 16, 0)))
    result = fit(cohort, TrainConfig(**FAST), tmp_path / "reg", show_progress=False)
    assert result.info.task == "regression" and result.metric == "mae"
    assert 0 < result.best_score < 0.5
    assert "val_mae" in result.history

    ordinal = fit(
        Cohort.load(small_cohort(example_cohort, tmp_path / "o.parquet", sizes=(16, 8, 0))),
        TrainConfig(**FAST, task="ordinal"),
        tmp_path / "ord",
        show_progress=False,
    )
    assert ordinal.metric == "kappa_quadratic" and "val_kappa_quadratic" in ordinal.history


# logit(positive) - logit(negative) per validation scan, positives then negatives (4 each)
NEAR_BEST_LOW_LOSS = ([6, 6, 6, -0.1], [-6, -6, -6, 0.1])  # AUROC 15/16, loss ~0.19
BEST_HIGH_LOSS = ([0.05] * 4, [-0.05] * 4)  # AUROC 1, loss ~0.67
DIVERGED = ([math.nan] * 4, [math.nan] * 4)


def _fit_on_scripted_validation(cohort, out, script, monkeypatch, **config):
    """fit, with the validation outputs of epoch i replaced by ``script[i]`` (the network
    cannot be steered to a near-tie); the loss and score are fit's own. Returns the
    result and the weights fit validated at each epoch."""
    validated = []

    def scripted_infer(model, loader, *args, **kwargs):
        positives, negatives = map(iter, script[len(validated)])
        validated.append({k: v.clone() for k, v in model.state_dict().items()})
        targets = loader.dataset.targets.tolist()
        margin = [next(positives) if t == 1 else next(negatives) for t in targets]
        return np.stack([np.zeros(len(margin)), margin], axis=1).astype(np.float32)

    monkeypatch.setattr("medres.train.loop.infer", scripted_infer)  # what fit calls
    config = TrainConfig(**{**FAST, "epochs": len(script), **config})
    return fit(cohort, config, out, show_progress=False), validated


def _same_weights(model, state):
    return all(torch.equal(v, state[k]) for k, v in model.state_dict().items())


def test_near_ties_in_validation_score_go_to_the_lower_loss(example_cohort, tmp_path, monkeypatch):
    """An epoch within selection_tolerance of the best validation score, with a lower
    loss, stays selected over the best; fit returns its weights, not the last epoch's.
    (PneumoniaMNIST seed 0: AUROC saturated near 0.995 from epoch 1, and strict "higher is
    better" picked epoch 5, AUROC 0.9970 at loss 0.287, over epoch 14, 0.9965 at 0.069.)
    A diverged epoch is never selected; with tolerance 0 the best score wins."""
    cohort = Cohort.load(small_cohort(example_cohort, tmp_path / "c.parquet", sizes=(8, 8, 0)))
    script = [NEAR_BEST_LOW_LOSS, BEST_HIGH_LOSS, DIVERGED]
    result, validated = _fit_on_scripted_validation(
        cohort, tmp_path / "a", script, monkeypatch, selection_tolerance=0.1
    )
    history = result.history
    assert history["val_auroc"].tolist() == [15 / 16, 1.0, -math.inf]
    assert history["val_loss"][0] < history["val_loss"][1]  # as scripted
    assert history["best"].tolist() == [True, False, False]
    assert result.best_epoch == 1 and result.best_score == 15 / 16
    assert result.stopped_by is StopReason.LAST_EPOCH
    assert _same_weights(result.model, validated[0])
    assert not _same_weights(result.model, validated[-1])  # the weights moved on
    saved = pd.read_csv(tmp_path / "a" / "metrics.csv")
    assert saved["best"].tolist() == [True, False, False]

    strict, _ = _fit_on_scripted_validation(
        cohort, tmp_path / "b", script[:2], monkeypatch, selection_tolerance=0
    )
    assert strict.history["best"].tolist() == [True, True] and strict.best_epoch == 2


def test_settings_that_do_not_fit_the_task_are_refused_before_training(example_cohort, tmp_path):
    """A task named in the config is checked when the config is read; an inferred one
    ("auto") by fit, before any epoch runs."""
    with pytest.raises(ValidationError, match="binary tasks only"):
        TrainConfig(**FAST, task="ordinal", trust={"calibration": "platt"})
    with pytest.raises(ValidationError, match="apply to regression; task is binary"):
        TrainConfig(**FAST, task="binary", flag_below=0.9)
    assert TrainConfig(task="regression", flag_below=0.9, value_range=(0, 1)).flag_below == 0.9
    config = TrainConfig(**FAST, value_range=(0, 1))  # task "auto": binary labels
    with pytest.raises(ConfigError, match="apply to regression; task is binary"):
        fit(example_cohort, config, tmp_path / "x", show_progress=False)
    assert not (tmp_path / "x" / "metrics.csv").exists()  # no epoch ran


def test_no_validation_split_is_a_clear_error(example_cohort, tmp_path):
    table = example_cohort.table.assign(split="train")
    with pytest.raises(ConfigError, match="no labelled 'val' scans"):
        fit(Cohort(table, {}), TrainConfig(**FAST), tmp_path, show_progress=False)


def test_validation_split_missing_a_class_is_refused_before_training(example_cohort, tmp_path):
    table = example_cohort.table
    table = table[(table["split"] != "val") | (table["label"] == 0)]
    with pytest.raises(ConfigError, match=r"no scans of class\(es\) \[1\]"):
        fit(Cohort(table, {}), TrainConfig(**FAST), tmp_path, show_progress=False)


def test_an_interrupted_run_is_not_overwritten_without_resume(example_cohort, tmp_path):
    (tmp_path / CHECKPOINT).parent.mkdir(parents=True)
    (tmp_path / CHECKPOINT).write_bytes(b"")
    with pytest.raises(ConfigError, match="add --resume"):
        fit(example_cohort, TrainConfig(**FAST), tmp_path, show_progress=False)


def test_channels_last_fast_path_changes_no_prediction(example_cohort, tmp_path):
    """channels_last is used for every CPU run: same outputs as the default layout."""
    cohort = Cohort.load(small_cohort(example_cohort, tmp_path / "c.parquet", sizes=(16, 8, 48)))
    result = fit(cohort, TrainConfig(**{**FAST, "epochs": 1}), tmp_path / "a", show_progress=False)
    rows = cohort.ok[cohort.ok["split"] == "test"]
    data = ScanDataset(rows, result.info.encode(rows["label"]), result.spec, train=False)
    plain = infer(result.model, make_loader(data, 16, 0, shuffle=False, seed=0))
    fast = infer(
        result.model.to(memory_format=torch.channels_last),
        make_loader(data, 16, 0, shuffle=False, seed=0),
        memory_format=torch.channels_last,
    )
    np.testing.assert_allclose(plain, fast, atol=1e-4)
    bf16 = infer(result.model, make_loader(data, 16, 0, shuffle=False, seed=0), "bf16")
    # bf16 is used only on CPUs with native bf16; where used, the class must not change
    assert np.mean(bf16.argmax(1) == plain.argmax(1)) >= 0.95


def test_training_has_no_time_limit_unless_one_is_set():
    """A default budget would end runs sooner on a busy machine (different models on
    different days); only an explicit one stops training."""
    assert within_time_limit(TrainConfig(), 10 * 3600, 3600.0)  # 10 h in: the epoch runs
    assert not within_time_limit(TrainConfig(time_limit_minutes=25), 10 * 3600, 3600.0)


def test_training_progress_reaches_a_log_as_one_line_per_epoch(example_cohort, tmp_path):
    """Run as a scheduler runs it (no terminal): bars would print nothing into the log."""
    from typer.testing import CliRunner

    from medres.cli import app
    from tests.conftest import small_cohort

    cohort = small_cohort(example_cohort, tmp_path / "c.parquet", sizes=(16, 8, 8))
    quick = ["--epochs", "2", "--set", "batch_size=8", "--set", "num_workers=0"]
    result = CliRunner().invoke(
        app, ["train", "--cohort", str(cohort), *quick, "-o", str(tmp_path / "b")]
    )
    assert result.exit_code == 0, result.output
    epochs = re.findall(r"^\d\d:\d\d:\d\d epoch (\d)/2 loss [\d.]+ val auroc", result.output, re.M)
    assert epochs == ["1", "2"]


def test_a_diverging_run_says_so_and_what_to_change(example_cohort, tmp_path):
    cohort = Cohort.load(small_cohort(example_cohort, tmp_path / "c.parquet"))
    config = TrainConfig(**{**FAST, "epochs": 1, "lr": 1e12})  # the weights blow up
    with pytest.raises(ConfigError, match="training diverged") as caught:
        fit(cohort, config, tmp_path / "a", show_progress=False)
    assert "--set lr=" in str(caught.value) and "--set precision=fp32" in str(caught.value)


def test_a_step_with_non_finite_gradients_is_skipped_and_counted():
    from medres.train.steps import train_one_epoch, weight_average

    torch.manual_seed(0)
    model = torch.nn.Linear(4, 2)
    batches = [(torch.randn(8, 4), torch.randint(0, 2, (8,))) for _ in range(3)]
    calls = []

    def loss_fn(outputs, targets):  # the second step's loss (and gradients) is NaN
        calls.append(1)
        loss = torch.nn.functional.cross_entropy(outputs, targets)
        return loss * math.nan if len(calls) == 2 else loss

    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    averaged = weight_average(model, 0, len(batches))
    loss, skipped = train_one_epoch(
        model, batches, loss_fn, optimizer, averaged, "fp32", torch.contiguous_format
    )
    assert skipped == 1 and math.isfinite(loss)
    assert all(torch.isfinite(p).all() for p in model.parameters())
    assert all(torch.isfinite(p).all() for p in averaged.module.parameters())
