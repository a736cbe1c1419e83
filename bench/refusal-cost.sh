#!/usr/bin/env bash
# What a refusal costs the gateway: its CPU per call (utime + stime from /proc) while it
# accepts every call, and while it refuses nearly every one (a static concurrency limit
# of 1) — the cost that decides whether a gateway can refuse a 3x overload at line rate.
# The generator runs on GEN_CPUS, the mesh on MESH_CPUS (default: 0 and 1).
#   bench/refusal-cost.sh                      (release build)
#   RATE=20000 BIN_DIR=.devbin GEN_CPUS=0-3 MESH_CPUS=4-15 bench/refusal-cost.sh
set -euo pipefail
cd "$(dirname "$0")/.."
if [ -z "${BIN_DIR:-}" ]; then cargo build --release --bins -q; BIN_DIR=target/release; fi
B=$BIN_DIR; GEN=${GEN_CPUS:-0}; MESH=${MESH_CPUS:-1}; RATE=${RATE:-10000}; FOR=${FOR:-5s}
dir=$(mktemp -d); pids=()
trap 'kill "${pids[@]}" 2>/dev/null; rm -rf "$dir"' EXIT
tck=$(getconf CLK_TCK)
cpu() { awk -v t="$tck" '{ sub(/.*\) /, ""); split($0, f, " "); print (f[12] + f[13]) / t }' "/proc/$1/stat"; }
serve() { # name, args...
  local name=$1; shift
  taskset -c "$MESH" "$B/$name" "$@" >"$dir/$name.out" 2>"$dir/$name.log" & pids+=($!)
  until grep -q serving "$dir/$name.out" "$dir/$name.log" 2>/dev/null; do sleep 0.1; done
}
serve sluice-risk --listen 127.0.0.1:50252 --admin-listen 127.0.0.1:9292
serve sluice-notification --listen 127.0.0.1:50253 --admin-listen 127.0.0.1:9293
serve sluice-logging --listen 127.0.0.1:50254 --admin-listen 127.0.0.1:9294 --data-dir "$dir/audit"
measure() { # label, gateway flags...
  local label=$1; shift
  serve sluice-gateway --listen 127.0.0.1:50251 --admin-listen 127.0.0.1:9291 \
    --risk http://127.0.0.1:50252 --notification http://127.0.0.1:50253 --logging http://127.0.0.1:50254 "$@"
  local gw=${pids[-1]}
  taskset -c "$GEN" "$B/sluice-loadgen" run --target http://127.0.0.1:50251 --mode unary --rate 1000 --duration 1s -q >/dev/null 2>&1 || true
  local before; before=$(cpu "$gw")
  taskset -c "$GEN" "$B/sluice-loadgen" run --target http://127.0.0.1:50251 --mode unary --rate "$RATE" --duration "$FOR" -q >/dev/null 2>&1 || true
  local after; after=$(cpu "$gw")
  local calls; calls=$(curl -s http://127.0.0.1:9291/metrics | awk '/^sluice_gateway_transactions_total\{api="unary"/ { s += $2 } END { print s + 0 }')
  awk -v l="$label" -v c="$calls" -v b="$before" -v a="$after" -v r="$RATE" \
    'BEGIN { printf "%-44s %8d calls at %d/s offered, gateway %.2f CPU-s: %.1f us per call\n", l, c, r, a - b, 1e6 * (a - b) / (c > 0 ? c : 1) }'
  kill "$gw"; wait "$gw" 2>/dev/null || true; unset 'pids[-1]'
}
echo "refusal cost: generator on CPUs $GEN, mesh on CPUs $MESH, $RATE unary calls/s for $FOR"
measure "accepting (defaults)"
measure "refusing (--concurrency-limit static, max 1)" --concurrency-limit static --concurrency-max 1 --degradation off
