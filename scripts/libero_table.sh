#!/usr/bin/env bash
# The LIBERO-Object table from a fresh clone: for one base policy, the held-out closed loop (init
# states 30-49 of all 10 tasks, 200 episodes per row, every row paired with the policy alone on the
# same init states and request seeds): N = 1; random and oracle picks at N = 64; the
# demonstration-only head; the on-policy head of every round; the policy cloned again on the same
# relabelled data, alone and with a head. Every stage is resumable (see the two scripts it runs).
#
#   make setup && bash scripts/libero_table.sh                      # weak policy (2 demos per task)
#   DEMOS=10 POLICY_STEPS=1500 bash scripts/libero_table.sh runs/table_strong   # strong (10 demos per task)
#   SUITE=libero_spatial bash scripts/libero_table.sh runs/table_spatial   # the same on LIBERO-Spatial
#
# Writes RUN/table.md (and table.md.json). ROUNDS, STEPS, POLICY_STEPS, N, WORKERS pass through to the
# scripts (POLICY_STEPS: the base policy's and the retrained one's behaviour-cloning steps).
# Wall time on a 2-core Intel Xeon: 91 min with STEPS=1200 (four heads; at the default 4000 each
# head trains about 4 min longer).
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=${BIN:-.venv/bin}
RUN=${1:-runs/table_weak}
N=${N:-64}
ROUNDS=${ROUNDS:-2}
# The recipe of the first head that raised closed-loop success: small candidates without the
# policy's layer chunks (the random and oracle rows pick among the same), trained on the robot's own
# rollouts (failed ones up to step 100) and on rollouts the expert steered half of. Set any to ''
# for the plain pipeline.
SIGMAS=${SIGMAS-0.025,0.075,0.125}
LAYER_CANDIDATES=${LAYER_CANDIDATES-none}
EXPERT_SHARE=${EXPERT_SHARE-0.5}
FAILED_STEPS=${FAILED_STEPS-100}
export N ROUNDS SIGMAS LAYER_CANDIDATES EXPERT_SHARE FAILED_STEPS
start=$(date +%s)
# the policy alone first, the heads next, the random and oracle picks last
SELECTORS='' bash scripts/libero_ceiling.sh "$RUN/ceiling"
BASE=0 bash scripts/libero_onpolicy.sh "$RUN/ceiling/policy" "$RUN/onpolicy"
bash scripts/libero_ceiling.sh "$RUN/ceiling"
O=$RUN/onpolicy
rows=("N = 1 (policy alone)::$RUN/ceiling/closed_loop#N=1"
      "N = $N, random pick::$RUN/ceiling/selectors#N=$N random"
      "N = $N, oracle (nearest the expert's label)::$RUN/ceiling/selectors#N=$N oracle")
[ -d "$O/demo_head/closed_loop" ] && rows+=("N = $N, demonstration-only head::$O/demo_head/closed_loop#N=$N")
for k in $(seq 1 "$ROUNDS"); do rows+=("N = $N, on-policy head, round $k::$O/round$k/closed_loop#N=$N"); done
if [ -d "$O/finetuned/closed_loop" ]; then
  rows+=("policy retrained on the relabelled rollouts, N = 1::$O/finetuned/closed_loop#N=1"
         "retrained policy + its on-policy head, N = $N::$O/finetuned/closed_loop#N=$N")
fi
"$BIN/energy-rerank" eval table --base "${rows[0]}" --row "${rows[@]}" --out "$RUN/table.md"
echo "table: $RUN/table.md ($(( $(date +%s) - start )) s this run)"
