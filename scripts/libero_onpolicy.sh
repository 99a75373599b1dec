#!/usr/bin/env bash
# On-policy heads on LIBERO-Object, round after round (DAgger-style): the served robot's own
# rollouts, labelled by the scripted expert, train an energy head where the robot actually goes;
# its switch margin is calibrated on other on-policy rollouts; it is measured closed loop on the
# held-out init states against the policy alone (paired: same init states, same request seeds).
#
#   bash scripts/libero_onpolicy.sh POLICY_DIR [RUN_DIR]     # e.g. runs/libero_ceiling/policy
#
# Stages, each skipped when its output exists (collection also resumes task by task):
#   round0/{rollouts,calibration}   the base policy alone (N = 1), labelled every LABEL_EVERY-th step
#   roundK/features, head           head K trained on the rollouts of rounds 0 .. K-1
#   roundK/head/selection.json      its margin, calibrated on round K-1's calibration rollouts:
#                                   offline (L1 to the label), then, with CL_SWITCH_RATES, in closed
#                                   loop on CALIB_STATES (roundK/margin_sweep): the margins at which the
#                                   offline sweep switched at those rates, the one with most successes
#   base/closed_loop                (BASE=1) the base policy alone (N = 1) on the held-out init states
#   roundK/closed_loop              head K at N on the held-out init states (paired with base/, or the caller's N = 1)
#   roundK/{rollouts,calibration}   (K < ROUNDS) the robot with head K at N: round K+1's new data
#                                   (links to round 0's when head K's margin is inf: the same robot)
#   roundK/steered                  (EXPERT_SHARE) more training rollouts of the same robot at N, the
#                                   expert steering that share of its chunks (DAgger's mixture; round
#                                   0 at margin inf: the policy's chunk unless the expert steers)
#   demo_head/...                   (DEMO_HEAD=1) the same head trained on the demonstrations only
#   finetuned/...                   (FINETUNE=1) the honest alternative: the policy itself cloned
#                                   again on the demos plus every relabelled rollout, alone (N = 1)
#                                   and with a head on its own features at N
# `eval table` (scripts/libero_table.sh) pairs every closed loop with base/ on the same episodes.
# Init states: rollouts for training TRAIN_STATES, for calibration CALIB_STATES, reported HELD_OUT.
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=${BIN:-.venv/bin}
POLICY=${1:?usage: libero_onpolicy.sh POLICY_DIR [RUN_DIR]}
RUN=${2:-runs/libero_onpolicy}
DEMOS_DIR=${DEMOS_DIR:-$(dirname "$POLICY")/demos}   # the policy's demonstrations (demo head, fine-tune)
ROUNDS=${ROUNDS:-2}             # heads trained; round K > 1 collects with head K-1
TRAIN_STATES=${TRAIN_STATES:-0-19}
CALIB_STATES=${CALIB_STATES:-20-29}
HELD_OUT=${HELD_OUT:-30-49}
SUITE=${SUITE:-libero_object}  # LIBERO suite (libero_object, libero_spatial, ...)
N=${N:-64}
# 4000, not 1200: on round 1's data it turned a head that never helped into +9 on the calibration
# states and +7 held out (docs/results.md)
STEPS=${STEPS:-4000}            # energy-head optimiser steps
LOSS=${LOSS:-listwise}          # energy-head loss preset (listwise, listwise-gain: `train --loss`)
SIGMAS=${SIGMAS:-}              # noise sigmas of the heads' candidates ('' = the preset's 0.1,0.3,0.5: `train --sigmas`)
LAYER_CANDIDATES=${LAYER_CANDIDATES:-}  # the policy's layer chunks among a served head's candidates ('' = the head's; none)
# 300 steps (the base's budget) on six times the base's windows underfits: 17/200 held out, where
# 1500 (train-policy's default) fits them (docs/results.md)
POLICY_STEPS=${POLICY_STEPS:-1500}  # behaviour-cloning steps of the fine-tuned policy
LABEL_EVERY=${LABEL_EVERY:-4}   # expert labels every k-th visited state (each costs H expert steps)
FAILED_STEPS=${FAILED_STEPS:-}  # learn only the first K steps of failed rollouts ('' = all: `--failed-steps`)
EXPERT_SHARE=${EXPERT_SHARE:-}  # also collect roundK/steered: the expert steers this share of chunks ('' = no)
WORKERS=${WORKERS:-2}
DEMO_HEAD=${DEMO_HEAD:-1}
BASE=${BASE:-1}                 # run base/closed_loop (0 when the caller has the policy's N = 1 already)
FINETUNE=${FINETUNE:-1}
COLLECT_MARGIN=${COLLECT_MARGIN:-}  # switch margin of the robot collecting round K > 0 ('' = the head's own)
CL_SWITCH_RATES=${CL_SWITCH_RATES:-0.75,0.5}  # closed-loop margin sweep ('' = offline margin only)
export MUJOCO_GL=${MUJOCO_GL:-egl}
mkdir -p "$RUN"
say() { echo "[$(date +%T)] $*"; }
servers=()
trap 'for s in "${servers[@]}"; do kill "$s" 2>/dev/null || true; done' EXIT
port=${PORT:-50080}  # servers listen on the ports after this one (one per stage)

serve() {  # serve POLICY ENERGY LOG: stop the last server, start one on the next port, wait until it listens
  for s in "${servers[@]}"; do kill "$s" 2>/dev/null || true; done
  servers=()
  port=$((port + 1))
  # shellcheck disable=SC2086  # LAYER_CANDIDATES applies to servers with a head only
  "$BIN/energy-rerank" serve --policy "$1" ${2:+--energy "$2" ${LAYER_CANDIDATES:+--layer-candidates $LAYER_CANDIDATES}} \
    --address "127.0.0.1:$port" --metrics-port -1 \
    --max-candidates "$N" > "$3" 2>&1 &
  servers+=($!)
  # up to 10 min: a server started beside another pipeline on a loaded machine can take minutes to import
  for _ in $(seq 600); do
    grep -q "listening on" "$3" && return 0
    kill -0 "${servers[0]}" 2>/dev/null || break
    sleep 1
  done
  cat "$3"; return 1
}

collect() {  # collect OUT_DIR POLICY ENERGY N SEED [MARGIN]: training and calibration rollouts
  local out=$1
  if [ -f "$out/rollouts/collect_report.json" ] && [ -f "$out/calibration/collect_report.json" ] \
    && [ "$(ls "$out"/rollouts/*.hdf5 | wc -l)" -ge 10 ] && [ "$(ls "$out"/calibration/*.hdf5 | wc -l)" -ge 10 ]; then
    return 0
  fi
  serve "$2" "$3" "$out.server.log"
  say "$out: rollouts at N=$4 (training: init states $TRAIN_STATES, calibration: $CALIB_STATES), expert labels"
  # one after the other, each with WORKERS processes: side by side, the shorter one left a core idle
  "$BIN/energy-rerank" libero collect --server "127.0.0.1:$port" --suite "$SUITE" --tasks 0-9 --init-states "$TRAIN_STATES" \
    --n-candidates "$4" ${6:+--switch-margin "$6"} --seed "$5" --label-every "$LABEL_EVERY" --workers "$WORKERS" \
    --out "$out/rollouts" > "$out.train.log" 2>&1
  "$BIN/energy-rerank" libero collect --server "127.0.0.1:$port" --suite "$SUITE" --tasks 0-9 --init-states "$CALIB_STATES" \
    --n-candidates "$4" ${6:+--switch-margin "$6"} --seed "$5" --label-every "$LABEL_EVERY" --workers "$WORKERS" \
    --out "$out/calibration" > "$out.calib.log" 2>&1
}

steered() {  # steered OUT_DIR POLICY ENERGY SEED MARGIN: training rollouts with the expert steering EXPERT_SHARE
  local out=$1
  if [ -f "$out/steered/collect_report.json" ] && [ "$(ls "$out"/steered/*.hdf5 | wc -l)" -ge 10 ]; then
    return 0
  fi
  serve "$2" "$3" "$out.server.log"
  say "$out: rollouts at N=$N, the expert steering $EXPERT_SHARE of the chunks (init states $TRAIN_STATES)"
  "$BIN/energy-rerank" libero collect --server "127.0.0.1:$port" --suite "$SUITE" --tasks 0-9 --init-states "$TRAIN_STATES" \
    --n-candidates "$N" ${5:+--switch-margin "$5"} --expert-share "$EXPERT_SHARE" --seed "$4" \
    --label-every "$LABEL_EVERY" --workers "$WORKERS" --out "$out/steered" > "$out.steered.log" 2>&1
}

head_stage() {  # head_stage DIR POLICY CALIB_DIR DATA...: features, head, margin, closed loop
  local dir=$1 policy=$2 calib=$3
  shift 3
  if [ ! -f "$dir/features/cache.json" ]; then
    say "$dir: features of the frozen policy on $# sources"
    rm -rf "$dir/features"
    "$BIN/energy-rerank" cache-features --policy "$policy" --data "$@" ${FAILED_STEPS:+--failed-steps "$FAILED_STEPS"} \
      --batch-size 128 --out "$dir/features"
  fi
  if [ ! -f "$dir/head/model.safetensors" ]; then
    say "$dir: energy head, $LOSS over the served candidates ranked by L1 to the expert's label"
    # the head learns to rank the candidates it will be served with (--layer-candidates is recorded)
    "$BIN/energy-rerank" train --preset tiny-reference --loss "$LOSS" ${SIGMAS:+--sigmas "$SIGMAS"} \
      ${LAYER_CANDIDATES:+--layer-candidates "$LAYER_CANDIDATES"} --cache "$dir/features" --steps "$STEPS" --out "$dir/head" > "$dir/train.log" 2>&1
  fi
  if [ ! -f "$dir/head/selection.json" ]; then
    say "$dir: switch margin calibrated on $calib"
    "$BIN/energy-rerank" eval offline --data "$calib" --policy "$policy" --energy "$dir/head" \
      ${LAYER_CANDIDATES:+--layer-candidates "$LAYER_CANDIDATES"} \
      --n-candidates "1,4,16,$N" --stride 2 --write-margin --out "$dir/eval_offline" > "$dir/eval_offline.json"
  fi
  if [ -n "$CL_SWITCH_RATES" ] && ! grep -q '"closed_loop"' "$dir/head/selection.json"; then
    margin_sweep "$dir" "$policy"
  fi
  # the base policy's N = 1 is run once (base/closed_loop, or by the caller with BASE=0); `eval table` pairs every head with it
  closed_loop "$dir" "$policy" "$dir/head" "$([ "$policy" = "$POLICY" ] && echo "$N" || echo "1,$N")"
}

margin_sweep() {  # margin_sweep DIR POLICY: the head's margin chosen in closed loop on CALIB_STATES
  local dir=$1 margins
  margins=$("$BIN/python" -c '
import json, sys
sweep = json.load(open(sys.argv[1]))["switch_margin"]["sweep"]
for rate in map(float, sys.argv[2].split(",")):  # the offline margin whose switch rate is nearest
    print(round(min(sweep, key=lambda s: abs(s["switched"] - rate))["margin"], 4))
' "$dir/eval_offline/report.json" "$CL_SWITCH_RATES" | sort -u | tr '\n' ' ')
  serve "$2" "$dir/head" "$dir/server.log"
  say "$dir: closed-loop margin sweep on init states $CALIB_STATES: $margins"
  # shellcheck disable=SC2086  # one argument per margin
  "$BIN/energy-rerank" eval libero --server "127.0.0.1:$port" --suite "$SUITE" --tasks 0-9 \
    --init-states "$CALIB_STATES" --n-candidates "1,$N" --switch-margins $margins --workers "$WORKERS" \
    --write-margin "$dir/head" --out "$dir/margin_sweep" > "$dir/margin_sweep.log" 2>&1
}

closed_loop() {  # closed_loop DIR POLICY ENERGY NS: the head at each of NS on the held-out init states
  local dir=$1
  if [ -f "$dir/closed_loop/report.json" ] && grep -q '"complete": true' "$dir/closed_loop/report.json"; then
    return 0
  fi
  mkdir -p "$dir"
  serve "$2" "$3" "$dir/server.log"
  say "$dir: closed loop on init states $HELD_OUT at N=$4"
  local trained
  trained=$(shopt -s nullglob; echo "$RUN"/round*/{rollouts,calibration,steered}/*.hdf5)
  # shellcheck disable=SC2086  # one argument per file
  "$BIN/energy-rerank" eval libero --server "127.0.0.1:$port" --suite "$SUITE" --tasks 0-9 \
    --init-states "$HELD_OUT" --trained-on $trained \
    --n-candidates "$4" --workers "$WORKERS" --out "$dir/closed_loop" > "$dir/closed_loop.log" 2>&1
}

replays_round0() {  # replays_round0 HEAD: would a robot with this head at COLLECT_MARGIN act as round 0's did?
  # A head calibrated to margin inf never leaves the policy's chunk, and the policy is deterministic
  # on the same init states: collecting with it would write round 0's rollouts again (and train the
  # next head on each of them twice)
  [ -z "$COLLECT_MARGIN" ] && "$BIN/python" -c '
import json, sys
sys.exit(0 if json.load(open(sys.argv[1])).get("switch_margin") == "inf" else 1)
' "$1/selection.json"
}

own_rollouts() {  # own_rollouts K: round K's training rollouts unless they are round 0's replayed (a link)
  [ -L "$RUN/round$1/rollouts" ] || echo "$RUN/round$1/rollouts"
}

collect "$RUN/round0" "$POLICY" "" 1 0
if [ "$BASE" = 1 ]; then closed_loop "$RUN/base" "$POLICY" "" 1; fi
if [ -n "$EXPERT_SHARE" ]; then steered "$RUN/round0" "$POLICY" "" 0 inf; fi
for k in $(seq 1 "$ROUNDS"); do
  data=()
  for j in $(seq 0 $((k - 1))); do
    data+=($(own_rollouts "$j"))
    if [ -n "$EXPERT_SHARE" ]; then data+=("$RUN/round$j/steered"); fi
  done
  head_stage "$RUN/round$k" "$POLICY" "$RUN/round$((k - 1))/calibration" "${data[@]}"
  if [ "$k" -lt "$ROUNDS" ]; then
    if replays_round0 "$RUN/round$k/head"; then
      say "round$k: its head never switches (margin inf), so its rollouts are round 0's: linked, not collected again"
      for part in rollouts calibration; do
        [ -e "$RUN/round$k/$part" ] || ln -s "../round0/$part" "$RUN/round$k/$part"
      done
    else
      collect "$RUN/round$k" "$POLICY" "$RUN/round$k/head" "$N" "$k" "$COLLECT_MARGIN"
    fi
    if [ -n "$EXPERT_SHARE" ]; then steered "$RUN/round$k" "$POLICY" "$RUN/round$k/head" "$k" "$COLLECT_MARGIN"; fi
  fi
done
if [ "$DEMO_HEAD" = 1 ]; then
  head_stage "$RUN/demo_head" "$POLICY" "$RUN/round0/calibration" "$DEMOS_DIR"
fi
if [ "$FINETUNE" = 1 ]; then
  data=("$DEMOS_DIR")
  for j in $(seq 0 $((ROUNDS - 1))); do
    data+=($(own_rollouts "$j"))
    if [ -n "$EXPERT_SHARE" ]; then data+=("$RUN/round$j/steered"); fi
  done
  if [ ! -f "$RUN/finetuned/policy/config.json" ]; then
    say "finetuned: the policy cloned on the demos plus every relabelled rollout ($POLICY_STEPS steps)"
    mkdir -p "$RUN/finetuned"
    "$BIN/energy-rerank" train-policy --data "${data[@]}" ${FAILED_STEPS:+--failed-steps "$FAILED_STEPS"} \
      --val-data "$RUN/round0/calibration" --max-text-len 16 \
      --steps "$POLICY_STEPS" --no-progress --out "$RUN/finetuned/policy" > "$RUN/finetuned/policy.json"
  fi
  head_stage "$RUN/finetuned" "$RUN/finetuned/policy" "$RUN/round$((ROUNDS - 1))/calibration" "${data[@]:1}"
fi
say "done: $RUN/round*/closed_loop/report.json"
