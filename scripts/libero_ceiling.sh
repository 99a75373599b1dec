#!/usr/bin/env bash
# The ceiling first: on LIBERO-Object's held-out init states (30-49 of every task, 200 episodes),
# the base policy alone (N = 1) against the oracle (the candidate nearest the scripted expert's
# label) and a random pick among the same N candidates the server built. The oracle is the most
# any energy head can reach with these candidates. Each stage is skipped when its output exists,
# so a cut-off run resumes where it stopped.
#
#   bash scripts/libero_ceiling.sh [RUN_DIR]          # weak policy: 2 demos per task (+1 for validation)
#   DEMOS=10 POLICY_STEPS=1500 bash scripts/libero_ceiling.sh runs/ceiling_strong
#
# The server scores with the embedded default head: no head choice is measured here, only the
# candidates (N=1, random and oracle are picked by the client from the server's candidates).
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=${BIN:-.venv/bin}
RUN=${1:-runs/libero_ceiling}
SUITE=${SUITE:-libero_object}  # LIBERO suite (libero_object, libero_spatial, ...)
DEMOS=${DEMOS:-2}               # training demos per task (weak 2, strong 10); one more is validation
POLICY_STEPS=${POLICY_STEPS:-300}  # behaviour-cloning steps (weak 300; strong 1500: 300 leaves it at 17%)
N=${N:-64}                      # candidates per request for random and oracle
HELD_OUT=${HELD_OUT:-30-49}     # init states of the reported episodes
SELECTORS=${SELECTORS-oracle random}  # client-side picks at N ('' = the policy alone only)
SIGMAS=${SIGMAS:-}              # the candidates' noise sigmas ('' = the sampler's 0.1,0.3,0.5: `serve --sigmas`)
LAYER_CANDIDATES=${LAYER_CANDIDATES:-}  # the policy's layer chunks among them ('' = all but the last; none)
WORKERS=${WORKERS:-2}
PORT=${PORT:-50071}
export MUJOCO_GL=${MUJOCO_GL:-egl}
mkdir -p "$RUN"
say() { echo "[$(date +%T)] $*"; }

if [ ! -f "$RUN/demos/demo_report.json" ]; then
  say "demos: $((DEMOS + 1)) per task from init states 0-29"
  "$BIN/energy-rerank" libero demos --suite "$SUITE" --tasks 0-9 --episodes $((DEMOS + 1)) \
    --init-states 0-29 --out "$RUN/demos"
fi
if [ ! -f "$RUN/policy/config.json" ]; then
  say "policy: behaviour cloning, $POLICY_STEPS steps"
  "$BIN/energy-rerank" train-policy --data "$RUN"/demos/*.hdf5 --val-episodes 1 --max-text-len 16 \
    --steps "$POLICY_STEPS" --no-progress --out "$RUN/policy" > "$RUN/policy.json"
fi
server=""
trap '[ -z "$server" ] || kill $server 2>/dev/null || true' EXIT
serve() {  # one server for both closed-loop stages, started when the first of them runs
  [ -z "$server" ] || return 0
  say "server on 127.0.0.1:$PORT"
  # shellcheck disable=SC2086
  "$BIN/energy-rerank" serve --policy "$RUN/policy" --address "127.0.0.1:$PORT" --metrics-port -1 \
    ${SIGMAS:+--sigmas "$SIGMAS"} ${LAYER_CANDIDATES:+--layer-candidates "$LAYER_CANDIDATES"} \
    --max-candidates "$N" > "$RUN/server.log" 2>&1 &
  server=$!
  # up to 10 min: a server started beside another pipeline on a loaded machine can take minutes to import
  for _ in $(seq 600); do
    grep -q "listening on" "$RUN/server.log" && return 0
    kill -0 "$server" 2>/dev/null || break
    sleep 1
  done
  cat "$RUN/server.log"; exit 1
}
# Two stages, two reports: the policy alone first (the base every other row is paired with), then
# the selectors (SELECTORS='' stops after the first; a later run with them adds the second).
if ! grep -qs '"complete": true' "$RUN/closed_loop/report.json"; then
  serve
  say "closed loop: N=1 on init states $HELD_OUT"
  "$BIN/energy-rerank" eval libero --server "127.0.0.1:$PORT" --suite "$SUITE" --tasks 0-9 \
    --init-states "$HELD_OUT" --trained-on "$RUN"/demos/*.hdf5 --n-candidates 1 \
    --workers "$WORKERS" --out "$RUN/closed_loop"
fi
if [ -n "$SELECTORS" ] && ! grep -qs '"complete": true' "$RUN/selectors/report.json"; then
  serve
  say "closed loop: $SELECTORS at N=$N on init states $HELD_OUT"
  # shellcheck disable=SC2086
  "$BIN/energy-rerank" eval libero --server "127.0.0.1:$PORT" --suite "$SUITE" --tasks 0-9 \
    --init-states "$HELD_OUT" --trained-on "$RUN"/demos/*.hdf5 --n-candidates "$N" \
    --selectors $SELECTORS --workers "$WORKERS" --out "$RUN/selectors"
fi
say "done: $RUN/closed_loop/report.json${SELECTORS:+ $RUN/selectors/report.json}"
