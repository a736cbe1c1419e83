#!/usr/bin/env bash
# bench and the overload benchmark with the load generator pinned apart from the mesh, the
# only way the mesh's own scaling and overload behaviour show (a generator sharing the
# mesh's cores takes half of a small machine). Every figure is printed under the split.
#
#   bench/multicore.sh                      # cores split 1:3 (2 cores: generator 0, mesh 1)
#   GEN_CPUS=0-3 MESH_CPUS=4-15 bench/multicore.sh
#   BIN_DIR=.devbin OUT=/tmp/figures bench/multicore.sh   # prebuilt binaries, no cargo
#   QUICK=1 bench/multicore.sh              # a rehearsal: short runs, same commands
#
# Writes bench.txt and pressure-overload.txt under $OUT (default: a new temporary directory).
# Extra arguments go to `bench` (e.g. --base-bin-dir ../base/target/release).
set -euo pipefail
cd "$(dirname "$0")/.."
cores=$(nproc)
if [ -z "${GEN_CPUS:-}" ] || [ -z "${MESH_CPUS:-}" ]; then
  if [ "$cores" -lt 2 ]; then
    echo "multicore.sh: needs at least 2 CPUs (this machine has $cores)" >&2
    exit 64
  fi
  gen=$(( cores / 4 )); [ "$gen" -ge 1 ] || gen=1
  GEN_CPUS=${GEN_CPUS:-$([ "$gen" -eq 1 ] && echo 0 || echo "0-$((gen - 1))")}
  MESH_CPUS=${MESH_CPUS:-$([ "$gen" -eq $((cores - 1)) ] && echo "$gen" || echo "$gen-$((cores - 1))")}
fi
if [ -z "${BIN_DIR:-}" ]; then
  cargo build --release --bins -q
  BIN_DIR=target/release
fi
OUT=${OUT:-$(mktemp -d)}
mkdir -p "$OUT"
command -v taskset >/dev/null || { echo "multicore.sh: taskset not found (apt-get install util-linux)" >&2; exit 69; }
export SLUICE_LAB_MESH_CPUS=$MESH_CPUS
if [ -n "${QUICK:-}" ]; then
  bench=(--runs 1 --duration 1s --warmup 500ms --sections cost,saturation)
  pressure=(--step-for 1s)
else
  bench=(--runs 5 --duration 5s --warmup 2s)
  pressure=(--step-for 5s)
fi
lab() { taskset -c "$GEN_CPUS" "$BIN_DIR/sluice-lab" "$@"; }
echo "multicore: $cores CPUs; generator on $GEN_CPUS, mesh on $MESH_CPUS; binaries in $BIN_DIR; figures in $OUT"
lab bench --bin-dir "$BIN_DIR" "${bench[@]}" "$@" 2>&1 | tee "$OUT/bench.txt"
lab pressure --bin-dir "$BIN_DIR" --sections overload "${pressure[@]}" 2>&1 | tee "$OUT/pressure-overload.txt"
echo "multicore: figures in $OUT"
