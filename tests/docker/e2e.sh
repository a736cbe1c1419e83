#!/usr/bin/env bash
# End-to-end test of the compose stack across containers, with offline images (FROM scratch,
# binaries built on this host: no registry needed). Run by .ci/run when a Docker engine is
# present; prints SKIPPED otherwise.
#
#  1. build the images, `up` three risk replicas, two notification replicas, the two audit
#     partitions and the gateway (no Jaeger: it cannot be pulled offline; the mesh logs once
#     that export fails), wait for readiness; the one-shot `token` and `mesh-token` services
#     write the admin token they all read and the mesh token that logging requires of the
#     gateway and `verify` (no default secret)
#  2. replicas under load: `docker kill` one of three risk replicas → no client error,
#     throughput steady; `docker network disconnect` another (silence, not a reset) → the
#     gateway ejects it within 2 s (HTTP/2 keepalive), no request hangs or fails
#  3. load; `kill` audit partition 1 mid-run, start it again: only its transactions fail
#     (partition 0's go on), no hung requests, no acknowledged record lost in either
#     partition, throughput recovers; the audit log refuses Read without the mesh token and
#     with a wrong one (UNAUTHENTICATED), while `verify` with the shared file reads it
#  3. stall audit partition 1 through the Control API (the old default token is refused; the
#     shared token file works): the load generator's sends block
#  4. `stop`: every container exits 0 within the grace period; `down -v` cleans up
# It ends with the figures: image size, memory per container idle and loaded, time to healthy.
set -euo pipefail
cd "$(dirname "$0")/../.."

if ! command -v docker >/dev/null 2>&1 || ! docker info >/dev/null 2>&1; then
  echo "docker e2e: SKIPPED (no Docker engine on this machine)"
  exit 0
fi
if docker compose version >/dev/null 2>&1; then C=(docker compose); else C=(docker-compose); fi
P="sluice-e2e-$$"
export SLUICE_BUILD_CONTEXT=target/docker-stage SLUICE_DOCKERFILE=Dockerfile SLUICE_TAG=e2e
export SLUICE_GATEWAY_PORT=127.0.0.1: SLUICE_GATEWAY_ADMIN_PORT=127.0.0.1:
export RUST_LOG=info
# `run --no-deps` below: the stack is up; without it compose would re-run the one-shot token
# service before every command (harmless, it keeps the token, but it delays the command).
compose() { "${C[@]}" -p "$P" "$@"; }
out=$(mktemp -d)
chmod 777 "$out"
cleanup() { compose down -v --remove-orphans >/dev/null 2>&1 || true; rm -rf "$out"; }
trap cleanup EXIT
fail() { echo "docker e2e: FAILED: $*"; compose logs --tail 30 >&2 || true; exit 1; }
now() { date +%s.%N; }
# Waits (polling) until the command succeeds, at most $1 seconds.
until_ok() { local limit=$1; shift; local end=$(( $(date +%s) + limit )); until "$@"; do [ "$(date +%s)" -lt "$end" ] || return 1; sleep 0.2; done; }
# awk reads to the end: quitting at the match would close the pipe under curl (exit 23, a
# write error), and with pipefail that failure ends the script.
metric() { curl -sf "http://$admin/metrics" | awk -v k="$1" '$1==k && !found {print $2; found=1}'; }
at_least() { local v; v=$(metric "$1"); [ -n "$v" ] && awk -v v="$v" -v m="$2" 'BEGIN{exit !(v>=m)}'; }
at_most() { local v; v=$(metric "$1"); [ -n "$v" ] && awk -v v="$v" -v m="$2" 'BEGIN{exit !(v<=m)}'; }
# Streams the gateway opens to each replica (its DEFAULT_STREAMS, gateway/src/downstream/mod.rs).
per_replica=1
healthy() { [ "$(docker inspect -f '{{.State.Health.Status}}' "$(compose ps -q "$1")" 2>/dev/null)" = healthy ]; }
json() { python3 -c "import json,sys; r=json.load(open(sys.argv[1])); print($2)" "$1"; }

echo "== build offline images"
docker/stage-local.sh >/dev/null
compose build -q gateway >/dev/null 2>&1 || compose build gateway
size=$(docker image inspect -f '{{.Size}}' "sluice:e2e" | awk '{printf "%.1f MB", $1/1e6}')

echo "== up (without jaeger): risk x3, notification x2, logging-0, logging-1, gateway"
t0=$(now)
compose up -d --scale risk=3 --scale notification=2 risk notification logging-0 logging-1 gateway >/dev/null 2>&1
until_ok 60 healthy gateway || fail "gateway never became healthy (ready)"
for init in token mesh-token; do
  [ "$(docker inspect -f '{{.State.ExitCode}}' "$(compose ps -a -q "$init")")" = 0 ] || fail "the $init init service failed"
done
t_healthy=$(echo "$(now) - $t0" | bc)
admin=$(compose port gateway 9101)
idle=$(docker stats --no-stream --format '{{.Name}}={{.MemUsage}}' $(compose ps -q) | sed 's/ \/.*//' | tr '\n' ' ')

echo "== replicas: kill one of three risk replicas under load"
until_ok 30 at_least 'sluice_gateway_downstream_live_streams{downstream="risk"}' $((3 * per_replica)) || fail "the gateway never found three risk replicas"
read -r -a risks <<<"$(compose ps -q risk | tr '\n' ' ')"
[ "${#risks[@]}" = 3 ] || fail "expected 3 risk containers, found ${#risks[@]}"
compose run --rm --no-deps -v "$out:/out" loadgen run --target http://gateway:50051 --mode unary --rate 300 \
  --duration 12s --timeout 5s -q --json /out/risk-kill.json >/dev/null 2>"$out/risk-kill.err" &
load=$!
until_ok 60 at_least 'sluice_gateway_transactions_total{api="unary",result="ok"}' 900 || fail "load never got going"
docker kill "${risks[0]}" >/dev/null
until_ok 10 at_most 'sluice_gateway_downstream_live_streams{downstream="risk"}' $((2 * per_replica)) || fail "the gateway never noticed the killed risk replica"
wait "$load" || fail "load generator failed: $(cat "$out/risk-kill.err")"
[ "$(json "$out/risk-kill.json" "not r['errors'] and r['completed'] == r['sent']")" = True ] \
  || fail "a killed risk replica cost the client: errors $(json "$out/risk-kill.json" "r['errors']"), sent/completed $(json "$out/risk-kill.json" "(r['sent'], r['completed'])")"
[ "$(json "$out/risk-kill.json" "min(p['ok'] for p in r['timeline'][1:-1]) >= 270")" = True ] \
  || fail "throughput dipped: $(json "$out/risk-kill.json" "[p['ok'] for p in r['timeline']]")"
risk_kill_ok=$(json "$out/risk-kill.json" "r['ok']")
docker start "${risks[0]}" >/dev/null
until_ok 30 at_least 'sluice_gateway_downstream_live_streams{downstream="risk"}' $((3 * per_replica)) || fail "the restarted risk replica never rejoined"

echo "== replicas: cut one risk replica off the network under load"
net=$(docker inspect -f '{{range $k, $v := .NetworkSettings.Networks}}{{$k}} {{end}}' "${risks[1]}" | awk '{print $1}')
compose run --rm --no-deps -v "$out:/out" loadgen run --target http://gateway:50051 --mode unary --rate 300 \
  --duration 10s --timeout 5s -q --json /out/risk-cut.json >/dev/null 2>"$out/risk-cut.err" &
load=$!
until_ok 60 at_least 'sluice_gateway_transactions_total{api="unary",result="ok"}' "$(( $(metric 'sluice_gateway_transactions_total{api="unary",result="ok"}' | cut -d. -f1) + 600 ))" || fail "load never got going"
t0=$(now)
docker network disconnect "$net" "${risks[1]}"
until_ok 10 at_most 'sluice_gateway_downstream_live_streams{downstream="risk"}' $((2 * per_replica)) || fail "the cut-off risk replica was never ejected"
t_eject=$(echo "$(now) - $t0" | bc)
awk -v t="$t_eject" 'BEGIN{exit !(t < 2.0)}' || fail "ejecting the cut-off replica took ${t_eject}s (keepalive 0.5 s + 0.75 s)"
wait "$load" || fail "load generator failed: $(cat "$out/risk-cut.err")"
[ "$(json "$out/risk-cut.json" "r['completed'] == r['sent']")" = True ] || fail "hung requests behind the partition: $(json "$out/risk-cut.json" "(r['sent'], r['completed'])")"
[ "$(json "$out/risk-cut.json" "not r['errors']")" = True ] || fail "the partition cost the client: $(json "$out/risk-cut.json" "r['errors']")"
docker network connect "$net" "${risks[1]}"

echo "== load, kill audit partition 1 mid-run, start it again"
compose run --rm --no-deps -v "$out:/out" loadgen run --target http://gateway:50051 --mode unary --rate 300 \
  --duration 25s --timeout 5s -q --json /out/kill.json >/dev/null 2>"$out/kill.err" &
load=$!
until_ok 60 at_least 'sluice_gateway_transactions_total{api="unary",result="ok"}' "$(( $(metric 'sluice_gateway_transactions_total{api="unary",result="ok"}' | cut -d. -f1) + 1500 ))" || fail "load never got going"
loaded=$(docker stats --no-stream --format '{{.Name}}={{.MemUsage}}' $(compose ps -q) | sed 's/ \/.*//' | tr '\n' ' ')
compose kill logging-1 >/dev/null 2>&1
until_ok 30 at_most 'sluice_gateway_downstream_live_streams{downstream="logging"}' "$per_replica" || fail "gateway never noticed partition 1 was gone"
until_ok 30 at_least 'sluice_gateway_rejected_total{api="unary",reason="unavailable"}' 1 || fail "no request failed fast during the outage"
# Partition 0's transactions go on meanwhile.
ok_down=$(metric 'sluice_gateway_transactions_total{api="unary",result="ok"}' | cut -d. -f1)
until_ok 10 at_least 'sluice_gateway_transactions_total{api="unary",result="ok"}' $((ok_down + 300)) || fail "partition 0 stopped with partition 1"
compose start logging-1 >/dev/null 2>&1
until_ok 60 at_least 'sluice_gateway_downstream_live_streams{downstream="logging"}' $((2 * per_replica)) || fail "gateway never reconnected"
wait "$load" || fail "load generator failed: $(cat "$out/kill.err")"
[ "$(json "$out/kill.json" "r['completed'] == r['sent']")" = True ] || fail "hung requests: $(json "$out/kill.json" "(r['sent'], r['completed'])")"
[ "$(json "$out/kill.json" "set(r['errors']) <= {'UNAVAILABLE', 'DEADLINE_EXCEEDED'}")" = True ] || fail "unexpected errors $(json "$out/kill.json" "r['errors']")"
[ "$(json "$out/kill.json" "r['errors'].get('UNAVAILABLE', 0) > 0")" = True ] || fail "the outage was not seen"
[ "$(json "$out/kill.json" "any(a.get('partition', 0) == 1 for a in r['acked'][-200:])")" = True ] || fail "partition 1 acknowledged nothing after its restart"
[ "$(json "$out/kill.json" "min(p['ok'] for p in r['timeline'][-4:-1]) >= 270")" = True ] || fail "throughput did not recover: $(json "$out/kill.json" "[p['ok'] for p in r['timeline']]")"
compose run --rm --no-deps -v "$out:/out" loadgen verify --report /out/kill.json >"$out/verify.txt" 2>&1 \
  || fail "acknowledged records missing: $(cat "$out/verify.txt")"
acked=$(json "$out/kill.json" "len(r['acked'])")
outage=$(json "$out/kill.json" "r['errors']")

echo "== the audit log refuses callers without the mesh token"
# The verify above read both partitions with the shared token file (and the gateway appended
# with it all along). The same Read with a wrong token (the admin token's file) is refused...
unauthenticated() { grep -qiE 'unauthenticated|valid authentication credentials' "$1"; }
compose run --rm --no-deps -v "$out:/out" -e SLUICE_MESH_TOKEN_FILE=/secrets/admin-token loadgen verify \
  --report /out/kill.json >"$out/wrong-token.txt" 2>&1 && fail "logging served Read with a wrong mesh token"
unauthenticated "$out/wrong-token.txt" || fail "a wrong mesh token was not refused as UNAUTHENTICATED: $(cat "$out/wrong-token.txt")"
# ...and so is one with none: a bare container on the stack's network, without the compose
# service's environment (no SLUICE_MESH_TOKEN_FILE) or the secrets volume.
lnet=$(docker inspect -f '{{range $k, $v := .NetworkSettings.Networks}}{{$k}} {{end}}' "$(compose ps -q logging-0)" | awk '{print $1}')
docker run --rm --network "$lnet" -v "$out:/out" "sluice:$SLUICE_TAG" /usr/local/bin/sluice-loadgen verify \
  --logging http://logging-0:50054,http://logging-1:50054 --report /out/kill.json >"$out/no-token.txt" 2>&1 \
  && fail "logging served Read without a mesh token"
unauthenticated "$out/no-token.txt" || fail "a Read without the mesh token was not refused as UNAUTHENTICATED: $(cat "$out/no-token.txt")"

echo "== stall logging through the Control API"
# One partition stalled is enough to stop a stream: its reader waits to admit the next
# transaction in order, and every other partition's transactions behind it wait too.
compose run --rm --no-deps loadgen fault --target http://logging-1:50054 --stall --token sluice-admin >/dev/null 2>&1 && fail "Control accepted the old default token"
compose run --rm --no-deps loadgen fault --target http://logging-1:50054 --stall >/dev/null 2>&1 || fail "cannot stall logging-1 with the shared token file"
compose run --rm --no-deps -v "$out:/out" loadgen run --target http://gateway:50051 --mode stream --rate 4000 \
  --duration 6s --timeout 60s -q --json /out/stall.json >/dev/null 2>"$out/stall.err" &
load=$!
# Partition 1's transactions stop finishing and hold their places under the concurrency
# limit (partition 0's come and go); once they fill the streams' share the readers wait at
# the limit, and the clients' windows fill.
until_ok 30 at_least 'sluice_gateway_inflight{api="stream"}' 100 || fail "pressure never built up at the gateway (stalled transactions never held the limit)"
# Hold the stall (the scenario, not a synchronisation) — under the gateway's 5 s deadline
# per SubmitStream message, which the first queued transaction has been waiting against.
sleep 2
compose run --rm --no-deps loadgen fault --target http://logging-1:50054 --unstall >/dev/null 2>&1 || fail "cannot unstall logging-1"
wait "$load" || fail "stream load failed: $(cat "$out/stall.err")"
blocked=$(json "$out/stall.json" "round(r['blocked_send_seconds'], 2)")
[ "$(json "$out/stall.json" "r['blocked_send_seconds'] >= 2.0 and not r['errors'] and r['completed'] == r['sent']")" = True ] \
  || fail "pressure did not reach the load generator: blocked ${blocked}s, errors $(json "$out/stall.json" "r['errors']")"

echo "== stop"
t0=$(now)
compose stop -t 15 >/dev/null 2>&1
t_stop=$(echo "$(now) - $t0" | bc)
for s in gateway risk notification logging-0 logging-1; do
  for c in $(compose ps -q "$s"); do
    code=$(docker inspect -f '{{.State.ExitCode}}' "$c")
    [ "$code" = 0 ] || fail "$s exited $code on stop"
  done
done
awk -v t="$t_stop" 'BEGIN{exit !(t < 15)}' || fail "stop took ${t_stop}s, beyond the grace period"
compose down -v >/dev/null 2>&1

cat <<REPORT
docker e2e figures
  image (all five binaries, FROM scratch): $size
  up to healthy: ${t_healthy}s
  memory idle:   ${idle//${P}_/}
  memory loaded: ${loaded//${P}_/}(unary 300/s)
  one of three risk replicas killed under 300/s: $risk_kill_ok ok, no error
  one risk replica cut off the network: ejected in ${t_eject}s, no error, no hung request
  audit partition 1 killed and restarted under load: $acked acknowledged, none missing; outage errors $outage
  audit log Read without the mesh token or with a wrong one: UNAUTHENTICATED
  audit partition 1 stalled: load generator blocked ${blocked}s of a 6 s run
  stop: ${t_stop}s, every container exit 0
docker e2e: PASSED
REPORT
