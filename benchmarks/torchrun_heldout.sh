#!/usr/bin/env bash
# Step 10's held-out check: the torchrun path, unchanged, on a cohort no test uses —
# AdrenalMNIST3D at 64³ (3D volumes; the tests train on 2D chest X-rays). Two processes
# (gloo, CPU) train 2 epochs in fp32; the validation AUROC the run recorded for its best
# epoch must equal `medres evaluate --split val` of the bundle, with every val scan
# scored once per epoch. Writes benchmarks/results/torchrun_heldout.md.
#   bash benchmarks/torchrun_heldout.sh [DATA_DIR]   (default ../shared/data/medmnist)
set -euo pipefail
DATA=${1:-../shared/data/medmnist}
BIN=${BIN:-.venv/bin}
W=${WORK:-/tmp/medres-torchrun-heldout}
OUT=benchmarks/results/torchrun_heldout.md
rm -rf "$W" && mkdir -p "$W"
$BIN/medres datasets medmnist "$DATA/adrenalmnist3d_64.npz" -o "$W/adrenal" --per-class 48 \
  --splits train,val > "$W/export.log" 2>&1
$BIN/medres ingest "$W/adrenal" --labels "$W/adrenal/labels.csv" -o "$W/c.parquet" > "$W/ingest.log" 2>&1
$BIN/medres split "$W/c.parquet" --keep-column split -o "$W/cs.parquet" > "$W/split.log" 2>&1
start=$(date +%s)
$BIN/medres train --cohort "$W/cs.parquet" --epochs 2 --set batch_size=16 --set num_workers=0 \
  --set precision=fp32 --nproc 2 -o "$W/b" > "$W/train.log" 2>&1
seconds=$(( $(date +%s) - start ))
$BIN/medres evaluate "$W/b" "$W/cs.parquet" --split val -o "$W/val" > "$W/eval.log" 2>&1
W="$W" SECONDS_TRAIN="$seconds" $BIN/python - <<'PY' | tee "$OUT"
import json, os, platform
import pandas as pd
import torch
w = os.environ["W"]
t = json.load(open(f"{w}/b/bundle.json"))["training"]
h = pd.read_csv(f"{w}/b/metrics.csv")
r = json.load(open(f"{w}/val/report.json"))
recorded = h.loc[h.epoch == t["best_epoch"], "val_auroc"].item()
evaluated = r["metrics"]["auroc"]["value"]
print("# torchrun on a held-out cohort (AdrenalMNIST3D 64³)\n")
print(f"Machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
      f"torch {torch.__version__}. Command: `bash benchmarks/torchrun_heldout.sh`.\n")
print(f"`medres train --nproc 2 --epochs 2` (gloo, CPU, fp32): processes {t['processes']}, "
      f"device {t['device']}, {os.environ['SECONDS_TRAIN']} s of wall time.\n")
table = h.drop(columns="seconds")
print("| " + " | ".join(table.columns) + " |\n|" + "---|" * len(table.columns))
for row in table.itertuples(index=False):
    print("| " + " | ".join(f"{v:.6g}" if isinstance(v, float) else str(v) for v in row) + " |")
print(f"\nBest epoch {t['best_epoch']}: recorded val AUROC {recorded:.10f}; `medres evaluate "
      f"--split val` {evaluated:.10f} on {r['n_scans']} scans; |diff| {abs(recorded - evaluated):.1e}.")
assert abs(recorded - evaluated) < 1e-6 and (h["val_scans"] == r["n_scans"]).all()
PY
