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
"$BIN/energy-rerank" train-policy --out "$WORK/policy" --size tiny --inputs lowdim \
  --episodes 300 --steps 800 --seed 0 --no-progress
"$BIN/energy-rerank" cache-features --policy "$WORK/policy" --out "$WORK/features" --episodes 300 --seed 1
"$BIN/energy-rerank" train --preset tiny-reference --cache "$WORK/features" --out "$WORK/energy" --seed 0
rm -rf "$WORK/policy/logs"
mkdir -p "$DEST"
rm -rf "$DEST/policy" "$DEST/energy"
cp -r "$WORK/policy" "$DEST/policy"
cp -r "$WORK/energy/energy_head" "$DEST/energy"
du -sh "$DEST"/*
