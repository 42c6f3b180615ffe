#!/usr/bin/env bash
# Train the twin-glyph networks of docs/attention.md: the CNN, CNN + soft attention and CNN + top-1
# attention (straight-through), same width and receptive field, several seeds each, one run at a time.
# Rerunning resumes unfinished runs and skips finished ones (creativity-fast train resumes from last.pt).
#   SEEDS="0 1" STEPS=1500 scripts/train_twin_glyph_nets.sh                      # <kind>_seed<k>
#   SEEDS=0 STEPS=4000 SUFFIX=_4k KINDS="cnn top1 soft" scripts/train_twin_glyph_nets.sh   # <kind>_seed0_4k
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-results/twin_glyph_nets}
DATA=${DATA:-results/twin_glyphs_1024/twin_glyphs_12x12.npz}   # 64 twin-glyph images, 12x12, 4 glyphs (seed 0)
SEEDS=${SEEDS:-0 1}
STEPS=${STEPS:-1500}
SUFFIX=${SUFFIX:-}
KINDS=${KINDS:-cnn soft top1}
# CNN: 4 3x3 convs (receptive field 9 = the ELS patch of the twin-glyph experiment), width 32, no
# normalisation (strictly local). Attention keys closer than 5 px (the glyph size) are excluded, as in PELS.
NET="--arch resnet --width 32 --depth 4 --norm none"
for seed in $SEEDS; do
  for kind in $KINDS; do
    extra=""
    [ "$kind" != cnn ] && extra="--attention $kind --attention-exclude 5"
    dir=$OUT/${kind}_seed$seed$SUFFIX
    echo "== $dir"
    if [ -f "$dir/model.pt" ] && [ ! -f "$dir/last.pt" ]; then echo "   finished: skipped"; continue; fi
    python -m creativity_fast train --data "$DATA" $NET $extra --steps "$STEPS" --seed "$seed" \
      --threads 1 --no-progress --checkpoint-every 250 --log-every 50 --out "$dir"
    rm -f "$dir/last.pt"  # finished: the optimizer state is not shipped; model.pt holds the EMA weights
  done
done
