#!/usr/bin/env bash
# One on-policy round on LIBERO-Object: the served policy's own rollouts, labelled at every step
# by the scripted expert, train an energy head where the policy actually goes; its switch margin
# is calibrated on other on-policy rollouts; it is then measured closed loop on the held-out init
# states against the policy alone (paired: same init states, same request seeds).
#
#   bash scripts/libero_onpolicy.sh POLICY_DIR [RUN_DIR]     # e.g. runs/libero_ceiling/policy
#
# Init states: rollouts for training 0-19, for calibration 20-29, reported 30-49. Each stage is
# skipped when its output exists (collection resumes task by task), so a cut-off run resumes.
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=${BIN:-.venv/bin}
POLICY=${1:?usage: libero_onpolicy.sh POLICY_DIR [RUN_DIR]}
RUN=${2:-runs/libero_onpolicy_r1}
TRAIN_STATES=${TRAIN_STATES:-0-19}
CALIB_STATES=${CALIB_STATES:-20-29}
HELD_OUT=${HELD_OUT:-30-49}
N=${N:-64}
STEPS=${STEPS:-1200}            # energy-head optimiser steps
LABEL_EVERY=${LABEL_EVERY:-4}   # expert labels every k-th visited state (each costs H expert steps)
WORKERS=${WORKERS:-2}
export MUJOCO_GL=${MUJOCO_GL:-egl}
mkdir -p "$RUN"
say() { echo "[$(date +%T)] $*"; }
servers=()
trap 'for s in "${servers[@]}"; do kill "$s" 2>/dev/null || true; done' EXIT

serve() {  # serve POLICY ENERGY PORT LOG: start a server, wait until it listens
  "$BIN/energy-rerank" serve --policy "$1" ${2:+--energy "$2"} --address "127.0.0.1:$3" --metrics-port -1 \
    --max-candidates "$N" > "$4" 2>&1 &
  servers+=($!)
  for _ in $(seq 120); do grep -q "listening on" "$4" && return 0; sleep 1; done
  cat "$4"; return 1
}

if [ ! -f "$RUN/rollouts/collect_report.json" ] || [ ! -f "$RUN/calibration/collect_report.json" ]; then
  serve "$POLICY" "" 50072 "$RUN/server_base.log"
  say "on-policy rollouts for training (init states $TRAIN_STATES), labelled by the expert"
  "$BIN/energy-rerank" libero collect --server 127.0.0.1:50072 --tasks 0-9 --init-states "$TRAIN_STATES" \
    --n-candidates 1 --label-every "$LABEL_EVERY" --out "$RUN/rollouts"
  say "on-policy rollouts for calibration (init states $CALIB_STATES)"
  "$BIN/energy-rerank" libero collect --server 127.0.0.1:50072 --tasks 0-9 --init-states "$CALIB_STATES" \
    --n-candidates 1 --label-every "$LABEL_EVERY" --out "$RUN/calibration"
fi
if [ ! -f "$RUN/features/cache.json" ]; then
  say "features of the frozen policy on its own rollouts"
  "$BIN/energy-rerank" cache-features --policy "$POLICY" --data "$RUN/rollouts" --batch-size 128 --out "$RUN/features"
fi
if [ ! -f "$RUN/head/model.safetensors" ]; then
  say "energy head: listwise over the served candidates, ranked by L1 to the expert's label"
  "$BIN/energy-rerank" train --preset tiny-reference --loss listwise --cache "$RUN/features" --steps "$STEPS" \
    --out "$RUN/head" > "$RUN/train.log" 2>&1
fi
if [ ! -f "$RUN/head/selection.json" ]; then
  say "switch margin calibrated on the calibration rollouts (labels as targets)"
  "$BIN/energy-rerank" eval offline --data "$RUN/calibration" --policy "$POLICY" --energy "$RUN/head" \
    --n-candidates "1,4,16,$N" --stride 2 --write-margin --out "$RUN/eval_offline" > "$RUN/eval_offline.json"
fi
if [ ! -f "$RUN/closed_loop/report.json" ] || ! grep -q '"complete": true' "$RUN/closed_loop/report.json"; then
  serve "$POLICY" "$RUN/head" 50073 "$RUN/server_head.log"
  say "closed loop on init states $HELD_OUT: N=1 and the head at N=$N (calibrated margin)"
  "$BIN/energy-rerank" eval libero --server 127.0.0.1:50073 --suite libero_object --tasks 0-9 \
    --init-states "$HELD_OUT" --trained-on "$RUN"/rollouts/*.hdf5 "$RUN"/calibration/*.hdf5 \
    --n-candidates "1,$N" --selectors head --workers "$WORKERS" --out "$RUN/closed_loop"
fi
say "done: $RUN/closed_loop/report.json"
