#!/usr/bin/env bash
# Closed-loop episodes per hour, before and after the simulator speed-ups: the same 60
# LIBERO-Object episodes (10 tasks x init states 0-2 x N = 1, 16) against one server, run by
#   before     the episode client of revision BEFORE (robosuite as shipped: the model rebuilt from
#              XML at every reset, observables computed at every substep, three forward passes per
#              substep, one process), from a git worktree of that revision;
#   after, 1   this checkout's client, one process (--workers 1);
#   after, 2   this checkout's client, two episode processes (--workers 2).
# Every run plays the same episodes: the script checks that their successes agree.
# Run it on an otherwise idle machine; it prints a Markdown table and writes OUT/throughput.json.
#
#   bash scripts/libero_throughput.sh runs/table_weak/ceiling/policy
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=${BIN:-.venv/bin}
POLICY=${1:?usage: libero_throughput.sh POLICY_DIR [OUT_DIR]}
OUT=${2:-runs/libero_throughput}
BEFORE=${BEFORE:-ebaea2e}  # the last revision before the episode client was sped up
PORT=${PORT:-50098}
export MUJOCO_GL=${MUJOCO_GL:-egl}
mkdir -p "$OUT"
say() { echo "[$(date +%T)] $*"; }

"$BIN/energy-rerank" serve --policy "$POLICY" --address "127.0.0.1:$PORT" --metrics-port -1 \
  > "$OUT/server.log" 2>&1 &
server=$!
trap 'kill $server 2>/dev/null || true' EXIT
for _ in $(seq 120); do grep -q "listening on" "$OUT/server.log" && break; kill -0 $server 2>/dev/null || break; sleep 1; done
grep -q "listening on" "$OUT/server.log" || { cat "$OUT/server.log"; exit 1; }

if [ ! -d "$OUT/before_src" ]; then
  git worktree add --detach "$OUT/before_src" "$BEFORE" > /dev/null
  # its subpackages where an installed copy would have them (this checkout's install maps its own)
  for sub in kernels training server; do ln -s "../$sub" "$OUT/before_src/energy_rerank/$sub"; done
fi
timed() {  # timed NAME CMD...: run, append "NAME milliseconds" to OUT/times
  local name=$1 t0
  shift
  say "$name"
  t0=$(date +%s%N)
  "$@" > "$OUT/$name.log" 2>&1
  echo "$name $(( ($(date +%s%N) - t0) / 1000000 ))" >> "$OUT/times"
}
rm -f "$OUT/times"
# the revision before (-P: its checkout, not this one, on the path) takes tasks and candidate counts as separate arguments
timed before env PYTHONPATH="$OUT/before_src" "$BIN/python" -P -m energy_rerank.cli eval libero \
  --server "127.0.0.1:$PORT" --suite libero_object --tasks 0 1 2 3 4 5 6 7 8 9 --episodes 3 \
  --n-candidates 1 16 --out "$OUT/before"
for w in 1 2; do
  timed "after_workers$w" "$BIN/energy-rerank" eval libero --server "127.0.0.1:$PORT" --suite libero_object \
    --tasks 0-9 --episodes 3 --n-candidates 1,16 --workers "$w" --out "$OUT/after_workers$w"
done

"$BIN/python" - "$OUT" <<'EOF'
import json, sys
from pathlib import Path

out = Path(sys.argv[1])
times = dict(line.split() for line in (out / "times").read_text().splitlines())
rows, wins = [], {}
for name, label in (("before", "before (robosuite as shipped, one process)"),
                    ("after_workers1", "after, one process (`--workers 1`)"),
                    ("after_workers2", "after, two episode processes (`--workers 2`)")):
    settings = json.loads((out / name / "report.json").read_text())["settings"]
    wins[name] = {k: v["overall"]["successes"] for k, v in settings.items()}
    episodes = sum(v["overall"]["episodes"] for v in settings.values())
    seconds = int(times[name]) / 1000
    rows.append({"code": label, "episodes": episodes, "seconds": round(seconds, 1),
                 "episodes_per_hour": round(episodes * 3600 / seconds)})
if len({json.dumps(w, sort_keys=True) for w in wins.values()}) != 1:
    sys.exit(f"the runs did not play the same episodes: successes {wins}")
base = rows[0]["episodes_per_hour"]
print("| code | episodes per hour | wall time for the 60 | speed-up |\n|---|---|---|---|")
for r in rows:
    print(f"| {r['code']} | {r['episodes_per_hour']} | {r['seconds']} s | {r['episodes_per_hour'] / base:.2f}x |")
print(f"successes per setting, every run: {wins['before']}")
(out / "throughput.json").write_text(json.dumps({"rows": rows, "successes": wins["before"]}, indent=1))
EOF
