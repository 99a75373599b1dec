#!/usr/bin/env bash
# Rebuilds the embedded default that `energy-rerank serve` loads with no arguments:
# a tiny low-dim reference policy behaviour-cloned on the synthetic task, and an energy head
# trained on its cached features (tiny-reference preset). About 10 minutes on a 2-core CPU.
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=${BIN:-.venv/bin}
WORK=${WORK:-runs/default-assets}
DEST=energy_rerank/assets/default
rm -rf "$WORK"
mkdir -p "$WORK"
"$BIN/energy-rerank" train-policy --data synthetic:episodes=300,seed=0 --val-data synthetic:episodes=30,seed=1000003 \
  --out "$WORK/policy" --size tiny --inputs lowdim --steps 800 --seed 0 --no-progress
"$BIN/energy-rerank" cache-features --policy "$WORK/policy" --data synthetic:episodes=300,seed=1 --out "$WORK/features"
"$BIN/energy-rerank" train --preset tiny-reference --cache "$WORK/features" --out "$WORK/energy" --seed 0
rm -rf "$WORK/policy/logs"
mkdir -p "$DEST"
rm -rf "$DEST/policy" "$DEST/energy"
cp -r "$WORK/policy" "$DEST/policy"
cp -r "$WORK/energy" "$DEST/energy"
rm -rf "$DEST/energy/checkpoints" "$DEST/energy/tb" "$DEST/energy/summary.json" "$DEST/energy/train_config.json"
du -sh "$DEST"/*
