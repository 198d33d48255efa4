"""``medres predict --engine ray`` on a two-node Ray cluster started on this machine.

Ray's GCS, raylets and workers listen on every interface whatever address they are
given, so the cluster runs inside a private network namespace that holds only ``lo``
(:func:`tests.pacs_servers.private_network`; needs root, else the module skips). The
cluster: a head and a worker node of 1 CPU each (``ray.cluster_utils.Cluster``), 100 MiB
object store each; the actor pool gets one CPU, the read tasks the other.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from medres.errors import ConfigError
from medres.predict import PredictOptions, predict_folder
from tests.conftest import EXAMPLE
from tests.pacs_servers import private_network

BROKEN = EXAMPLE.parent / "broken_scans"
RAY_REASON = (
    "Ray's processes listen on every interface whatever address they are given, so the "
    "test runs its cluster in a private network namespace, which needs root (CAP_SYS_ADMIN)"
)
NODE = {"num_cpus": 1, "object_store_memory": 100 * 2**20, "node_ip_address": "127.0.0.1"}


@pytest.fixture(scope="module")
def cluster():
    """The address of a two-node Ray cluster on loopback, for the module's tests."""
    with private_network(RAY_REASON):
        from ray.cluster_utils import Cluster

        os.environ["RAY_USAGE_STATS_ENABLED"] = "0"
        ray_cluster = Cluster(
            initialize_head=True, head_node_args={**NODE, "include_dashboard": False}
        )
        try:
            ray_cluster.add_node(**NODE)
            ray_cluster.wait_for_nodes()
            yield ray_cluster.address
        finally:
            ray_cluster.shutdown()


@pytest.fixture(scope="module")
def folder(tmp_path_factory) -> Path:
    """120 shipped chest X-rays, a truncated PNG, an empty DICOM and a text file."""
    root = tmp_path_factory.mktemp("mixed")
    for png in sorted((EXAMPLE / "test").glob("*.png"))[:120]:
        shutil.copy(png, root / png.name)
    for broken in BROKEN.iterdir():
        shutil.copy(broken, root / broken.name)
    return root


def on_ray(address: str, **options) -> PredictOptions:
    """Small batches and chunks, so a run writes several parts a test can interrupt."""
    return PredictOptions(
        **{"batch_size": 8, "chunk_size": 8, **options}, engine="ray", address=address
    )


def probabilities(rows: pd.DataFrame) -> np.ndarray:
    return rows.filter(regex=r"^prob_").to_numpy(float)


def test_ray_gives_the_local_engines_rows_and_resumes(cluster, chest_bundle, folder, tmp_path):
    local = predict_folder(chest_bundle, folder, tmp_path / "local", PredictOptions(workers=0))
    ray_run = predict_folder(chest_bundle, folder, tmp_path / "ray", on_ray(cluster))

    assert len(local.predictions) == 120
    assert list(ray_run.predictions["scan_id"]) == list(local.predictions["scan_id"])
    assert ray_run.failures == local.failures  # the same rows, in the same order
    assert [f["scan_id"] for f in ray_run.failures] == ["empty_export.dcm", "cut_off_transfer.png"]
    difference = probabilities(ray_run.predictions) - probabilities(local.predictions)
    assert np.abs(difference).max() < 1e-5
    for column in ("predicted_class", "conformal_set", "refer", "input_hash"):
        assert list(ray_run.predictions[column]) == list(local.predictions[column])
    summary = ray_run.summary
    assert summary["engine"] == "ray" and summary["ray"]["nodes"] == 2
    assert summary["ray"]["actors"] == 1  # one CPU left for the read tasks
    assert summary["counts"]["predicted_now"] == 120 and summary["counts"]["failed"] == 2

    again = predict_folder(chest_bundle, folder, tmp_path / "ray", on_ray(cluster))
    assert again.summary["counts"]["predicted_now"] == 0
    assert again.summary["counts"]["already_predicted"] == 120
    assert again.failures == local.failures


def actor_pids() -> list[int]:
    """The processes of medres's prediction actors (Ray titles them after the class)."""
    pids = []
    for entry in Path("/proc").iterdir():
        try:
            if entry.name.isdigit() and b"_PredictActor" in (entry / "cmdline").read_bytes():
                pids.append(int(entry.name))
        except OSError:  # gone meanwhile
            continue
    return pids


def when_parts_appear(out: Path, then, timeout: float = 120.0) -> threading.Thread:
    """Call ``then()`` from a thread once a first chunk of rows is on disk in ``out``."""

    def watch() -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if any((out / ".parts").glob("part-*.parquet")):
                then()
                return
            time.sleep(0.02)

    thread = threading.Thread(target=watch, daemon=True)
    thread.start()
    return thread


def test_an_actor_killed_mid_run_costs_no_row(cluster, chest_bundle, folder, tmp_path):
    out, killed = tmp_path / "out", []

    def kill_actor() -> None:
        for pid in actor_pids():
            os.kill(pid, signal.SIGKILL)
            killed.append(pid)

    watcher = when_parts_appear(out, kill_actor)
    run = predict_folder(chest_bundle, folder, out, on_ray(cluster, chunk_size=4, batch_size=4))
    watcher.join(5)
    assert killed, "the run ended before its actor could be killed"
    assert sorted(run.predictions["scan_id"]) == sorted(p.name for p in folder.glob("test_*.png"))
    assert run.predictions["scan_id"].is_unique
    assert [f["scan_id"] for f in run.failures] == ["empty_export.dcm", "cut_off_transfer.png"]


def test_a_killed_driver_is_resumed_without_duplicates(cluster, chest_bundle, folder, tmp_path):
    out = tmp_path / "out"
    command = [sys.executable, "-m", "medres", "predict", str(chest_bundle), str(folder)]
    command += ["-o", str(out), "--engine", "ray", "--address", cluster]
    command += ["--batch-size", "4", "--chunk-size", "4"]
    with subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE) as driver:
        watcher = when_parts_appear(out, lambda: driver.send_signal(signal.SIGKILL))
        _, stderr = driver.communicate(timeout=300)
        watcher.join(5)
    assert driver.returncode == -signal.SIGKILL, stderr.decode()[-2000:]
    written = len(pd.concat(pd.read_parquet(p) for p in (out / ".parts").glob("*.parquet")))
    assert 0 < written < 120

    run = predict_folder(chest_bundle, folder, out, on_ray(cluster))
    assert run.summary["counts"]["already_predicted"] == written
    assert run.summary["counts"]["predicted_now"] == 120 - written
    assert len(run.predictions) == 120 and run.predictions["scan_id"].is_unique
    final = pd.read_parquet(out / "predictions.parquet")
    assert len(final) == 120 and final["scan_id"].is_unique


def test_ray_engine_refusals_say_what_to_do(chest_bundle, folder, tmp_path, monkeypatch):
    with pytest.raises(ConfigError, match="apply to --engine ray"):
        predict_folder(chest_bundle, folder, tmp_path / "a", PredictOptions(address="x:1"))
    with pytest.raises(ConfigError, match="--engine must be one of local, ray"):
        predict_folder(chest_bundle, folder, tmp_path / "b", PredictOptions(engine="spark"))
    monkeypatch.setitem(sys.modules, "ray", None)  # as if Ray were not installed
    with pytest.raises(ConfigError, match=r'pip install "medres\[ray\]"'):
        predict_folder(chest_bundle, folder, tmp_path / "c", PredictOptions(engine="ray"))
