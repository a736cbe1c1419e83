#!/usr/bin/env bash
# The load generator's own ceiling against a trivial sink (a gateway that answers at once),
# next to h2load (Debian's nghttp2-client) driving the same sink with the same unary call.
#   bench/generator-ceiling.sh            (release build; installs nothing)
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release --bins -q
B=target/release
addr=127.0.0.1:50061
body=$(mktemp)
$B/sluice-lab sink --listen $addr --body-file "$body" >/dev/null 2>&1 &
sink=$!
trap 'kill $sink 2>/dev/null; rm -f "$body"' EXIT
until $B/sluice-loadgen run --target http://$addr --rate 10 --duration 100ms --no-wait-ready -q >/dev/null 2>&1; do sleep 0.2; done
run() { $B/sluice-loadgen run --target http://$addr --no-wait-ready -q --connections 2 "$@" 2>&1 | awk '/^rate/ {print $0}'; }
echo "sluice-loadgen, unary, closed loop 256:   $(run --mode unary --concurrency 256 --duration 8s --warmup 2s)"
echo "sluice-loadgen, unary, open loop 20000/s: $(run --mode unary --rate 20000 --duration 8s)"
echo "sluice-loadgen, stream, closed loop 4000: $(run --mode stream --concurrency 4000 --duration 8s --warmup 2s)"
if command -v h2load >/dev/null 2>&1; then
  echo "h2load, unary, 2 connections x 128 streams: $(h2load -n 300000 -c 2 -m 128 -w16 -W16 -d "$body" \
    -H 'content-type: application/grpc' -H 'te: trailers' http://$addr/mesh.v1.Gateway/Submit 2>&1 | awk '/finished in/ {print $4, $5}')"
else
  echo "h2load: not installed (apt-get install nghttp2-client)"
fi
