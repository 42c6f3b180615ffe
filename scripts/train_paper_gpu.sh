#!/usr/bin/env bash
# Train the paper's Fashion-MNIST ResNet on one GPU (docs/calibration.md, "Networks as the paper"):
# 256 channels, 8 3x3 convs (receptive field 17), no normalisation, ReLU, additive time and class
# embeddings, class-conditional, all 60,000 training images resized bilinearly to 32 x 32,
# Adam lr 1e-4 x 0.999965 per step, batch 128, no EMA.
#
# Usage (on the GPU machine, from the repository root):
#   OUT=/some/dir bash scripts/train_paper_gpu.sh            # default: 9 minutes of training
#   MINUTES=20 OUT=/some/dir bash scripts/train_paper_gpu.sh # longer
# Rerunning with the same OUT resumes exactly where the last run stopped (OUT/fmnist32_resnet256_cc/last.pt).
# The Fashion-MNIST IDX files are read from $FMNIST (default /usr/share/datasets/fashion-mnist; the
# Debian package dataset-fashion-mnist). Where that does not exist on the GPU machine, copy the two
# train-*-ubyte.gz files into a folder of the working tree and point FMNIST at it.
# Writes: $OUT/fmnist32_resnet256_cc/{last.pt,model.pt,training_log.jsonl,loss.png}, $OUT/train_paper_gpu.log.
set -euo pipefail
: "${OUT:?set OUT to the output folder}"
MINUTES="${MINUTES:-9}"
FMNIST="${FMNIST:-/usr/share/datasets/fashion-mnist}"
STEPS="${STEPS:-140700}"   # the paper's 300 epochs of 60,000 images at batch 128 (469 steps each); stops at MINUTES
RUN="$OUT/fmnist32_resnet256_cc"
mkdir -p "$RUN"
python - <<'PY'
import torch
assert torch.cuda.is_available(), "no CUDA device visible to torch"
print("torch", torch.__version__, "on", torch.cuda.get_device_name(0), flush=True)
PY
test -f "$FMNIST/train-images-idx3-ubyte.gz" -o -f "$FMNIST/train-images-idx3-ubyte" \
  || { echo "no Fashion-MNIST training images under FMNIST=$FMNIST" >&2; exit 2; }
# --time-limit stops cleanly with a checkpoint; a checkpoint every 1,000 steps (well under a minute) besides.
python -m creativity_fast train --preset paper --arch resnet --width 256 --class-conditional \
  --data "$FMNIST" --resize 32 --steps "$STEPS" --checkpoint-every 1000 --log-every 100 \
  --device cuda --time-limit "$MINUTES" --no-progress --out "$RUN" 2>&1 | tee -a "$OUT/train_paper_gpu.log"
python - "$RUN" <<'PY'
import json, sys
from pathlib import Path
from creativity_fast.figures import plot_training_log
from creativity_fast.nets import load_checkpoint
run = Path(sys.argv[1])
ck = load_checkpoint(run / "last.pt")
meta = ck["meta"]
epochs = ck["step"] * 128 / meta["n_train"]
plot_training_log(run / "training_log.jsonl", run / "loss.png", batch_size=128, n_train=meta["n_train"],
                  title=f"paper ResNet 256, FMNIST 32x32 class-cond.: {ck['step']} steps, {epochs:.1f} epochs")
last = [json.loads(l) for l in (run / "training_log.jsonl").read_text().splitlines()][-1]
print(json.dumps(dict(step=ck["step"], epochs=round(epochs, 2), train_seconds=round(meta["train_seconds"], 1),
                      last_logged_loss=last["loss"], samples_per_s=last["samples_per_s"])), flush=True)
PY
