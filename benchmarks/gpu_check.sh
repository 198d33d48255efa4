#!/usr/bin/env bash
# Step 10's GPU checks, as one script for a lent GPU machine (the `device` tool), tried on
# a CPU first with DEVICE=cpu. On the GPU machine: the Python packages it lacks travel as
# wheels in .whl/ and the MedMNIST files in .data/medmnist/ (both git-ignored, carried):
#   bash benchmarks/gpu_check.sh            # writes $OUT (or ./gpu-check-out) and prints
# 1. train the demo cohort on the device in mixed precision (bf16 where supported),
# 2. predict its test scans on the device and on the CPU and compare the predictions,
# 3. torchrun --nproc_per_node=1 on the device, then evaluate its bundle on the val split
#    and compare with the validation metric the run recorded,
# 4. the training-speed rows for the device (benchmarks/train_speed.py).
set -euo pipefail
DEVICE=${DEVICE:-cuda}
EPOCHS=${EPOCHS:-15}
OUT=${OUT:-$PWD/gpu-check-out}
WORK=${WORK:-/tmp/medres-gpu-check}
PY=${PYTHON:-python3}
export PYTHONUNBUFFERED=1
mkdir -p "$OUT" && rm -rf "$WORK" && mkdir -p "$WORK"
if compgen -G ".whl/*.whl" > /dev/null; then
  $PY -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target /tmp/site .whl/*.whl
  export PYTHONPATH=/tmp/site:$PWD
else
  export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH}
fi
log() { echo "== $(date -u +%H:%M:%S) $*"; }

log machine
(nvidia-smi -L || true) 2>&1
$PY - <<'EOF'
import platform, torch
print("python", platform.python_version(), "torch", torch.__version__, "cuda", torch.version.cuda)
if torch.cuda.is_available():
    print("gpu", torch.cuda.get_device_name(0), "bf16", torch.cuda.is_bf16_supported())
EOF

log ingest and split the demo cohort
$PY -m medres ingest examples/chest_xray_small --labels examples/chest_xray_small/labels.csv \
  -o "$WORK/c.parquet" > "$WORK/ingest.log" 2>&1
$PY -m medres split "$WORK/c.parquet" --keep-column split -o "$WORK/cs.parquet" \
  > "$WORK/split.log" 2>&1

log "1. train $EPOCHS epochs on $DEVICE (precision auto)"
/usr/bin/time -f "train wall %e s" $PY -m medres train --cohort "$WORK/cs.parquet" \
  --epochs "$EPOCHS" --seed 0 --device "$DEVICE" -o "$WORK/bundle" > "$WORK/train.log" 2>&1 \
  || { tail -40 "$WORK/train.log"; exit 1; }
tail -3 "$WORK/train.log"

log "2. predict on $DEVICE and on the CPU"
for where in "$DEVICE" cpu; do
  $PY -m medres predict "$WORK/bundle" examples/chest_xray_small/test \
    -o "$WORK/pred_$where" --device "$where" > "$WORK/predict_$where.log" 2>&1 \
    || { tail -40 "$WORK/predict_$where.log"; exit 1; }
done

log "3. torchrun --nproc_per_node=1 on $DEVICE, then evaluate --split val"
$PY -m torch.distributed.run --standalone --nproc_per_node=1 -m medres train \
  --cohort "$WORK/cs.parquet" --epochs 3 --seed 0 --device "$DEVICE" --set precision=fp32 \
  -o "$WORK/ddp1" > "$WORK/ddp1.log" 2>&1 || { tail -40 "$WORK/ddp1.log"; exit 1; }
$PY -m medres evaluate "$WORK/ddp1" "$WORK/cs.parquet" --split val --device "$DEVICE" \
  -o "$WORK/ddp1_val" > "$WORK/ddp1_val.log" 2>&1 || { tail -40 "$WORK/ddp1_val.log"; exit 1; }

WORK="$WORK" DEVICE="$DEVICE" $PY - <<'EOF' | tee "$OUT/gpu_check.md"
import json, os
from pathlib import Path
import numpy as np
import pandas as pd

work, device = Path(os.environ["WORK"]), os.environ["DEVICE"]
b = json.loads((work / "bundle" / "bundle.json").read_text())["training"]
h = pd.read_csv(work / "bundle" / "metrics.csv")
print(f"## 1. training on {device}")
print(f"device {b['device']}, precision {b['precision']}, {b['epochs_run']} epochs, "
      f"best epoch {b['best_epoch']} val {b['metric']} {b['best_score']:.4f}, "
      f"{h['seconds'].sum():.1f} s in epochs (mean {h['seconds'].mean():.2f} s)")
report = json.loads((work / "bundle" / "metrics.json").read_text())
for split in ("val", "test"):
    if split in report:
        m = report[split]["metrics"]
        print(f"{split}: auroc {m['auroc']['value']:.4f}, accuracy {m['accuracy']['value']:.4f}")
a = pd.read_parquet(work / f"pred_{device}" / "predictions.parquet").set_index("scan_id")
c = pd.read_parquet(work / "pred_cpu" / "predictions.parquet").set_index("scan_id").loc[a.index]
probs = [k for k in a.columns if k.startswith("prob_")]
diff = np.abs(a[probs].to_numpy(float) - c[probs].to_numpy(float))
runs = {w: json.loads((work / f"pred_{w}" / "run.json").read_text()) for w in (device, "cpu")}
print(f"\n## 2. predictions of the {device}-trained bundle, {device} vs cpu ({len(a)} scans)")
print(f"{device}: precision {runs[device]['precision']}, {runs[device]['scans_per_second']} scans/s; "
      f"cpu: precision {runs['cpu']['precision']}, {runs['cpu']['scans_per_second']} scans/s")
print(f"probability columns {probs}: max |diff| {diff.max():.2e}, mean {diff.mean():.2e}")
print(f"same predicted class: {(a['predicted_class'] == c['predicted_class']).mean():.4f}; "
      f"same referral: {(a['refer'] == c['refer']).mean():.4f}")
d = json.loads((work / "ddp1" / "bundle.json").read_text())["training"]
dh = pd.read_csv(work / "ddp1" / "metrics.csv")
recorded = dh.loc[dh["epoch"] == d["best_epoch"], "val_auroc"].item()
ev = json.loads((work / "ddp1_val" / "report.json").read_text())
print(f"\n## 3. torchrun --nproc_per_node=1 on {device} (fp32, 3 epochs)")
print(f"processes {d['processes']}, device {d['device']}; val scans scored per epoch "
      f"{sorted(set(dh['val_scans']))} of {ev['n_scans']}; recorded val auroc {recorded:.8f}, "
      f"evaluate --split val {ev['metrics']['auroc']['value']:.8f}, "
      f"|diff| {abs(recorded - ev['metrics']['auroc']['value']):.1e}")
EOF

if [ -f benchmarks/train_speed.py ] && [ "${SPEED:-1}" = 1 ]; then
  log "4. training speed on $DEVICE"
  $PY benchmarks/train_speed.py --device "$DEVICE" --nproc 1 --torchrun-one --wait-quiet 5 \
    --data "${DATA:-.data/medmnist}" \
    --scale "${SCALE:-4}" --out "$OUT/train_speed_$DEVICE.md" 2>&1 | tail -30
fi
tar czf "$OUT/logs.tgz" -C "$WORK" $(cd "$WORK" && ls *.log)
log done
