"""--device and precision: what a user asks for, what they get, and the refusals."""

from __future__ import annotations

import subprocess
import sys
import time

import pytest
import torch

from medres.device import resolve_device, resolve_precision
from medres.errors import ConfigError
from tests.conftest import PROJECT

CUDA = torch.cuda.is_available()
MEDRES = [sys.executable, "-m", "medres"]


def cuda_out(tmp_path):
    """The arguments that ask for CUDA and name an output folder."""
    return ["--device", "cuda", "-o", str(tmp_path / "b")]


def test_auto_takes_a_gpu_only_where_there_is_one():
    assert resolve_device("auto").type == ("cuda" if CUDA else "cpu")
    assert resolve_device("cpu") == torch.device("cpu")


@pytest.mark.skipif(CUDA, reason="checks the refusal on a machine without CUDA")
@pytest.mark.parametrize("asked", ["cuda", "cuda:0", "CUDA:1"])
def test_cuda_without_a_gpu_is_refused_naming_what_to_use(asked):
    with pytest.raises(ConfigError, match="no CUDA GPU") as e:
        resolve_device(asked)
    assert "--device cpu" in str(e.value) and "--device auto" in str(e.value)


@pytest.mark.parametrize("asked", ["gpu", "cuda:x", "mps:0", "cuda:"])
def test_an_unknown_device_is_refused_listing_the_choices(asked):
    with pytest.raises(ConfigError, match="auto, cpu, cuda or cuda:N"):
        resolve_device(asked)


def test_a_gpu_index_beyond_the_machine_is_refused(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    assert resolve_device("cuda:1") == torch.device("cuda:1")
    with pytest.raises(ConfigError, match=r"has 2 CUDA GPU.*cuda:0 to cuda:1"):
        resolve_device("cuda:2")


def test_precision_follows_the_device(monkeypatch):
    cpu, gpu = torch.device("cpu"), torch.device("cuda:0")
    native = torch.ops.mkldnn._is_mkldnn_bf16_supported()
    assert resolve_precision("auto", cpu) == ("bf16" if native else "fp32")
    assert resolve_precision("auto", cpu, spatial_dims=3) == "fp32"  # bf16 3D: wild gradients
    assert resolve_precision("bf16", cpu, spatial_dims=3) == "bf16"  # asked for: given
    assert resolve_precision("fp32", cpu) == "fp32"
    with pytest.raises(ConfigError, match="fp16 needs a GPU"):
        resolve_precision("fp16", cpu)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda: False)  # e.g. a V100
    assert resolve_precision("auto", gpu) == "fp16"
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda: True)
    assert resolve_precision("auto", gpu) == "bf16"


@pytest.mark.skipif(CUDA, reason="checks the refusal on a machine without CUDA")
def test_train_with_device_cuda_fails_at_once_without_a_gpu(tmp_path):
    """The refusal comes before the cohort is read (here it does not even exist)."""
    start = time.monotonic()
    run = subprocess.run(
        [*MEDRES, "train", "--cohort", str(tmp_path / "c.parquet"), *cuda_out(tmp_path)],
        capture_output=True,
        text=True,
        cwd=PROJECT,
        timeout=120,
    )
    assert run.returncode == 2, run.stderr
    assert "no CUDA GPU" in run.stderr and "--device cpu" in run.stderr
    assert "c.parquet" not in run.stderr  # refused before the cohort was looked at
    assert not (tmp_path / "b").exists()
    assert time.monotonic() - start < 60


VERBS = {
    "train": ["train", "--cohort", "c.parquet", "-o", "b"],
    "evaluate": ["evaluate", "b", "c.parquet", "-o", "r"],
    "calibrate": ["calibrate", "b", "c.parquet"],
    "predict": ["predict", "b", ".", "-o", "p"],
    "retrain": ["retrain", "b", "--cohort", "c.parquet", "-o", "b2"],
    "label-issues": ["label-issues", "b", "c.parquet", "-o", "i.csv"],
    "run": ["run", "pipelines/chest_xray_pneumonia", "--data", "d.npz", "-o", "runs"],
}


@pytest.mark.skipif(CUDA, reason="checks the refusal on a machine without CUDA")
@pytest.mark.parametrize("verb", sorted(VERBS))
def test_every_verb_that_runs_a_network_takes_device_and_refuses_an_absent_gpu(
    verb, tmp_path, monkeypatch
):
    """Refused first: before the bundle, cohort or data (none of which exist here) are
    looked at, and nothing is written."""
    from typer.testing import CliRunner

    from medres.cli import app

    monkeypatch.chdir(tmp_path)
    (tmp_path / "pipelines").symlink_to(PROJECT / "pipelines")
    result = CliRunner().invoke(app, [*VERBS[verb], "--device", "cuda"])
    assert result.exit_code == 2, result.output
    assert "no CUDA GPU" in result.output and "--device cpu" in result.output
    assert sorted(p.name for p in tmp_path.iterdir()) == ["pipelines"]
