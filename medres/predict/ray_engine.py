"""``medres predict --engine ray``: the prediction of a folder on a Ray cluster.

Ray Data runs it (``pip install "medres[ray]"``; ray is imported only here):

- the scans (discovered on the driver, with the hashes already predicted into OUTDIR)
  become a Ray dataset, one row a scan;
- read **tasks** fingerprint, read, check and preprocess them, the same
  :class:`~medres.inference.ScanInputs` code as the local engine (a scan already
  predicted is skipped undecoded; a bad scan becomes a failure);
- a pool of **actors** (``map_batches`` with a callable class), each holding the loaded
  bundles as a :class:`~medres.predict.predictor.Predictor`, turns decoded batches into
  outcomes: prediction rows and failure rows alike;
- the driver streams the outcomes back and writes them through the same crash-safe
  chunks into the same OUTDIR files (:mod:`medres.predict.store`), so resume, ``--strict``
  and ``medres review load`` work unchanged.

Ray restarts an actor that dies and retries its batch on the new one; a killed driver is
resumed by rerunning the command. A read task whose process dies is retried (Ray's
default: 3 times); one that still fails costs its scans, never the run: they end as
failure rows that say to rerun.

Without ``--address`` a local cluster starts and stops with the command: every core,
its object store bounded (:data:`LOCAL_OBJECT_STORE`), its addresses on 127.0.0.1. The
actors never take every CPU: one is left to the read tasks (actors holding every CPU
starve the tasks that feed them, and Ray waits forever).
"""

from __future__ import annotations

import copy
import logging
import os
import pickle
import time
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from threadpoolctl import threadpool_limits

from medres.bundle import load_bundle
from medres.errors import ConfigError
from medres.inference import ScanInputs
from medres.io.names import path_text
from medres.predict.predictor import Outcome, Predictor, network_precision
from medres.predict.scans import failure_row

if TYPE_CHECKING:
    from medres.predict.job import PredictOptions

# the object store of a local cluster: decoded batches wait there between tasks and
# actors (32 × 224² × 3 float32 ≈ 19 MB a batch); Ray spills to disk beyond it
LOCAL_OBJECT_STORE = 512 * 2**20
# a read task's process: torch and MONAI loaded, a batch being decoded (measured: up to
# 340 MiB with 32 chest X-rays preprocessed to 224²)
READ_TASK_MEMORY = 512 * 2**20


def import_ray() -> Any:
    """The ``ray`` module (with Ray Data), or a ConfigError saying how to install it."""
    try:
        import ray
        import ray.data  # Ray Data is an extra of ray (ray[data])
    except ImportError as e:
        raise ConfigError(
            f'--engine ray needs Ray Data ({e}); install it with `pip install "medres[ray]"` '
            "(on every machine of the cluster), or use --engine local"
        ) from e
    return ray


class RayRun:
    """A Ray cluster joined (``options.address``) or started for one prediction run;
    a context manager (leaving it disconnects, and stops a cluster it started).

    Args:
        options: the run's options (engine ``ray``, workers, gpus_per_worker ...).
        bundles: the bundle folders (first, then the ensemble's), loaded by each actor.
        out: OUTDIR (explanations are written there by the actors: on a cluster of
            several machines it must be on storage they all mount).
        checksum: the first bundle's checksum (a column of every row).
    """

    def __init__(
        self, options: PredictOptions, bundles: list[str | Path], out: Path, checksum: str
    ) -> None:
        self.options, self.out, self.checksum = options, out, checksum
        self.bundles = [str(Path(b).resolve()) for b in bundles]
        self.ray = import_ray()
        self.actors = self.cpus_per_actor = 0
        self.nodes: list[dict[str, Any]] = []
        self.start_s = 0.0  # seconds to join or start the cluster

    def __enter__(self) -> RayRun:
        ray, options, t0 = self.ray, self.options, time.perf_counter()
        os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")  # nothing leaves the machine
        # medres reports what became of every scan; Ray's own notices stay in its logs
        quiet = {"logging_level": logging.ERROR, "log_to_driver": False}
        if options.address:
            try:
                ray.init(address=options.address, **quiet)
            except (ConnectionError, RuntimeError, ValueError) as e:
                raise ConfigError(
                    f"cannot join the Ray cluster at --address {options.address} ({e}); "
                    "check that `ray start --head` runs there and the address is the one it "
                    "printed, or drop --address to run on a local cluster"
                ) from e
        else:
            ray.init(
                num_cpus=os.cpu_count() or 1,
                object_store_memory=LOCAL_OBJECT_STORE,
                include_dashboard=False,
                _node_ip_address="127.0.0.1",
                **quiet,
            )
        self.nodes = [n for n in ray.nodes() if n.get("Alive")]
        self._size_pool()
        self.start_s = time.perf_counter() - t0
        return self

    def __exit__(self, *exc) -> None:
        self.ray.shutdown()

    def _size_pool(self) -> None:
        """Actors: ``options.workers`` (default one per node), those of a node sharing
        its CPUs but one (the smallest node's), with at least one CPU of the cluster
        left over for the read tasks."""
        cpus = [int(n["Resources"].get("CPU", 0)) for n in self.nodes]
        total = sum(cpus)
        if total < 2:
            raise ConfigError(
                f"the Ray cluster has {total} CPU(s); --engine ray needs at least 2 (one for "
                "the model's actor, one for the tasks reading scans): add a node or use "
                "--engine local"
            )
        gpus = self.options.gpus_per_worker
        wanted = self.options.workers or len(self.nodes)
        per_node = -(-wanted // len(self.nodes))
        self.cpus_per_actor = 1 if gpus else max(1, (min(cpus) - 1) // per_node)
        room = max(1, (total - 1) // self.cpus_per_actor)  # one CPU left for read tasks
        self.actors = min(wanted, room)
        if gpus:
            have = sum(float(n["Resources"].get("GPU", 0)) for n in self.nodes)
            if have < gpus:
                raise ConfigError(
                    f"--gpus-per-worker {gpus:g} but the Ray cluster has {have:g} GPU(s); "
                    "lower it, add GPU nodes, or use --gpus-per-worker 0"
                )
            self.actors = min(self.actors, max(1, int(have // gpus)))

    def outcomes(self, inputs: ScanInputs) -> Iterator[list[Outcome]]:
        """The outcome of every scan of ``inputs``, in batches as the actors finish them
        (in no particular order). A scan whose batch Ray gave up on ends as a failure."""
        from ray.data import ActorPoolStrategy, DataContext

        context = DataContext.get_current()
        context.enable_progress_bars = False  # medres shows its own
        context.print_on_execution_start = False
        context.max_errored_blocks = -1  # a block Ray gave up on costs its scans, not the run
        logging.getLogger("ray.data").setLevel(logging.ERROR)
        done = _done_by_scan(inputs.done or ())
        rows = [
            {"index": i, "scan": pickle.dumps(scan), "done": "|".join(done.get(scan.scan_id, ()))}
            for i, scan in enumerate(inputs.scans)
        ]
        template = copy.copy(inputs)
        template.scans, template.done = [], None
        size = self.options.batch_size
        dataset = (
            self.ray.data.from_items(rows, override_num_blocks=_blocks(len(rows), size))
            .map_batches(
                _decode,
                fn_kwargs={"template": template},
                batch_size=size,
                batch_format="pandas",
                num_cpus=1,
                # declared so no node runs more read tasks than fit, and so they stay tasks:
                # Ray fuses map stages with equal requests, decoding inside the actors
                memory=READ_TASK_MEMORY,
            )
            .map_batches(
                _PredictActor,
                fn_constructor_kwargs={
                    "bundles": self.bundles,
                    "options": self.options,
                    "out": str(self.out),
                    "checksum": self.checksum,
                    "threads": self.cpus_per_actor,
                },
                compute=ActorPoolStrategy(size=self.actors),
                batch_size=size,
                batch_format="pandas",
                num_cpus=self.cpus_per_actor,
                num_gpus=self.options.gpus_per_worker or None,
            )
        )
        seen: set[int] = set()
        for batch in dataset.iter_batches(batch_format="pandas", batch_size=None):
            outcomes = [pickle.loads(b) for b in batch["outcome"]]
            seen.update(o.index for o in outcomes)
            yield outcomes
        lost = [i for i in range(len(inputs.scans)) if i not in seen]
        if lost:
            yield [_lost(i, inputs.scans[i]) for i in lost]

    def summary(self, trained_precision: str) -> dict[str, Any]:
        """What the run ran on, for run.json: actors, CPUs each, nodes and their CPUs, the
        precision of the network (from the bundle's ``trained_precision``, as an actor
        picks it) and the seconds taken to join or start the cluster."""
        device = torch.device("cuda" if self.options.gpus_per_worker else "cpu")
        return {
            "workers": self.actors,
            "device": device.type,
            "precision": network_precision(self.options.runtime, device, trained_precision),
            "threads": self.cpus_per_actor,
            "ray": {
                "start_seconds": round(self.start_s, 2),
                "address": self.options.address or "local",
                "nodes": len(self.nodes),
                "cpus": sum(int(n["Resources"].get("CPU", 0)) for n in self.nodes),
                "actors": self.actors,
                "cpus_per_actor": self.cpus_per_actor,
                "gpus_per_actor": self.options.gpus_per_worker,
            },
        }


def _done_by_scan(done) -> dict[str, list[str]]:
    """``(scan_id, input_hash)`` pairs as scan_id → its hashes already predicted."""
    by_scan: dict[str, list[str]] = {}
    for scan_id, digest in done:
        by_scan.setdefault(scan_id, []).append(digest)
    return by_scan


def _blocks(scans: int, batch_size: int) -> int:
    """Blocks of the scan list: a few batches each, so the read tasks stream ahead of
    the actors without holding the whole folder decoded (1 block for an empty folder)."""
    return max(1, -(-scans // (4 * batch_size)))


def _decode(batch, template: ScanInputs):
    """A read task: a pandas batch of scans (index, pickled ScanSource, hashes already
    predicted) → the same rows with the pickled :class:`~medres.inference.Item` and
    scan, decoded by ``template``'s read, check and prepare."""
    import pandas as pd

    scans = [pickle.loads(b) for b in batch["scan"]]
    inputs = copy.copy(template)
    inputs.scans = scans
    hashes = [d.split("|") if d else [] for d in batch["done"]]
    inputs.done = {(s.scan_id, h) for s, d in zip(scans, hashes, strict=True) for h in d}
    items = []
    with threadpool_limits(limits=1):
        for k, index in enumerate(batch["index"]):
            item = inputs[k]
            item.index = int(index)
            if item.image is not None:  # plain tensors pickle compactly
                item.image = item.image if template.keep_volume else _plain(item.image)
            items.append(pickle.dumps(item))
    return pd.DataFrame({"index": batch["index"], "scan": batch["scan"], "item": items})


def _plain(image: torch.Tensor) -> torch.Tensor:
    """A (MONAI Meta)tensor as a plain tensor."""
    return image.as_subclass(torch.Tensor)


class _PredictActor:
    """An actor of the pool: the bundles loaded once; a decoded batch → outcomes."""

    def __init__(
        self, bundles: list[str], options: PredictOptions, out: str, checksum: str, threads: int
    ) -> None:
        torch.set_num_threads(threads)  # the CPUs the actor holds
        members = [load_bundle(b) for b in bundles]
        self.predictor = Predictor(members, options, Path(out), checksum)

    def __call__(self, batch):
        import pandas as pd

        scans = [pickle.loads(b) for b in batch["scan"]]
        items = [pickle.loads(b) for b in batch["item"]]
        with threadpool_limits(limits=1, user_api="blas"):  # as the local engine (job.py)
            outcomes = self.predictor.outcomes(scans, items)
        index = np.array([o.index for o in outcomes])
        return pd.DataFrame({"index": index, "outcome": [pickle.dumps(o) for o in outcomes]})


def _lost(index: int, scan) -> Outcome:
    """The failure of a scan whose batch Ray gave up on after its retries."""
    message = (
        "the Ray task or actor handling this scan's batch failed after Ray's retries (a "
        "process killed for memory, or a node lost); rerun the same command to try it again"
    )
    row = failure_row(scan.scan_id, path_text(scan.path), "predict", "RayTaskError", message)
    return Outcome(index, None, failure=row)
