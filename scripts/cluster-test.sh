#!/usr/bin/env bash
# The RabbitMQ chat on a 3-node cluster, end to end: bring up the compose
# profile `cluster` (rabbit1..3, amqp-server-cluster, two demo clients), and
# prove that
#   1. the three nodes form one cluster by themselves;
#   2. the demo chat flows on quorum queues;
#   3. a failover loses nothing and shows nothing twice: loadgen drives a
#      chat (its own amqp-server, quorum queues, the three nodes' URLs) and
#      stops rabbit1 -- the node every client and the server connected to
#      first -- mid-run, then starts it again; the run must end with lost = 0
#      and duplicates = 0, and with reconnects > 0 (the stop was felt);
#   4. the demo chat still flows after the failover (a message from a new
#      client reaches alice);
# then tear everything down (`down -v`), also on failure or Ctrl-C.
#
# Slow (a few minutes) and needs Docker: run by hand, not in CI.
#
# loadgen and amqp-server run on this host, against the nodes' published
# ports. By default they are the release binaries copied out of the
# chatbench image (the image runs Debian bookworm; the host needs glibc 2.36
# or later); LOADGEN_BIN_DIR=target/release uses a local build instead.
#
# Environment:
#   COMPOSE="docker compose"   use Compose v2 (default: docker-compose)
#   CLUSTER_PROJECT=name       compose project name (default: chatbench-cluster-test-<pid>)
#   CLUSTER_TIMEOUT=secs       how long to wait for each step (default 240)
#   CLUSTER_KEEP=1             leave the stack running (no `down -v`)
#   CLUSTER_NO_BUILD=1         use the chatbench:latest image as it is (no build)
#   CLUSTER_RESULTS=dir        keep loadgen's results there (default: a temp dir)
#   LOADGEN_BIN_DIR=dir        loadgen and amqp-server binaries to use
#   FAILOVER_RATE, FAILOVER_CLIENTS, FAILOVER_DOWNTIME
#                              the failover run (default 500 msg/s, 20 clients, 10s)
#   RABBIT1_PORT, RABBIT2_PORT, RABBIT3_PORT, RABBIT_UI_PORT
#                              host ports (default 0: Docker picks free ones)
set -uo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

read -r -a COMPOSE <<<"${COMPOSE:-docker-compose}"
export COMPOSE_PROJECT_NAME=${CLUSTER_PROJECT:-chatbench-cluster-test-$$}
export RABBIT1_PORT=${RABBIT1_PORT:-0} RABBIT2_PORT=${RABBIT2_PORT:-0} RABBIT3_PORT=${RABBIT3_PORT:-0}
export RABBIT_UI_PORT=${RABBIT_UI_PORT:-0}
TIMEOUT=${CLUSTER_TIMEOUT:-240}
RATE=${FAILOVER_RATE:-500}
CLIENTS=${FAILOVER_CLIENTS:-20}
DOWNTIME=${FAILOVER_DOWNTIME:-10s}
SERVICES=(rabbit1 rabbit2 rabbit3 amqp-server-cluster amqp-client-cluster-1 amqp-client-cluster-2)
WORK=$(mktemp -d)
RESULTS=${CLUSTER_RESULTS:-$WORK/results}
START=$SECONDS
STEP_START=$SECONDS
FAILED=""

c() { "${COMPOSE[@]}" --profile cluster "$@"; }

step() {
    STEP_START=$SECONDS
    printf '\n==> [%4ss] %s\n' "$((SECONDS - START))" "$*"
}
ok() { printf '    ok (%ss): %s\n' "$((SECONDS - STEP_START))" "$*"; }
fail() {
    printf '    FAILED: %s\n' "$*" >&2
    FAILED=${FAILED:-$*}
    exit 1
}

cleanup() {
    local rc=$?
    [ -n "$FAILED" ] || [ "$rc" = 0 ] || FAILED="exit status $rc"
    if [ -n "$FAILED" ]; then
        printf '\n==> logs of the failed run (last 30 lines per service)\n' >&2
        c logs --no-color --tail=30 "${SERVICES[@]}" >&2 2>&1 || true
        [ -f "$WORK/loadgen.log" ] && tail -n 30 "$WORK/loadgen.log" >&2
    fi
    if [ "${CLUSTER_KEEP:-0}" = 1 ]; then
        printf '\n==> CLUSTER_KEEP=1: left running; remove with\n    COMPOSE_PROJECT_NAME=%s %s --profile cluster down -v --remove-orphans\n' \
            "$COMPOSE_PROJECT_NAME" "${COMPOSE[*]}"
    else
        printf '\n==> [%4ss] tearing down (down -v)\n' "$((SECONDS - START))"
        c down -v --remove-orphans >"$WORK/down.log" 2>&1 || cat "$WORK/down.log" >&2
    fi
    rm -rf "$WORK"
    if [ -n "$FAILED" ]; then
        printf '\ncluster-test: FAIL (%s) after %ss\n' "$FAILED" "$((SECONDS - START))" >&2
        exit 1
    fi
    printf '\ncluster-test: PASS after %ss\n' "$((SECONDS - START))"
    exit 0
}
trap cleanup EXIT
trap 'FAILED="interrupted"; exit 130' INT TERM

# Waits until the logs of service $1 contain the fixed string $2.
wait_log() {
    local svc=$1 want=$2 deadline=$((SECONDS + TIMEOUT)) out
    while :; do
        out=$(c logs --no-color "$svc" 2>&1)
        if grep -qF -- "$want" <<<"$out"; then return 0; fi
        [ "$SECONDS" -lt "$deadline" ] || break
        sleep 3
    done
    printf '    %s: no line with %q after %ss; its log ends with:\n' "$svc" "$want" "$TIMEOUT" >&2
    tail -n 15 <<<"$out" | sed 's/^/      /' >&2
    return 1
}

# The running nodes of the cluster, as rabbit1 sees them.
running_nodes() {
    c exec -T rabbit1 rabbitmqctl -q cluster_status --formatter json 2>/dev/null |
        python3 -c 'import json,sys; print(len(json.load(sys.stdin)["running_nodes"]))' 2>/dev/null || echo 0
}

echo "cluster-test: project $COMPOSE_PROJECT_NAME, compose: ${COMPOSE[*]}"

if [ "${CLUSTER_NO_BUILD:-0}" = 1 ]; then
    step "CLUSTER_NO_BUILD=1: using chatbench:latest as it is"
    docker image inspect chatbench:latest >/dev/null 2>&1 || fail "no chatbench:latest image"
else
    step "build the chatbench image (${COMPOSE[*]} build amqp-server-cluster)"
    c build amqp-server-cluster >"$WORK/build.log" 2>&1 || { tail -n 40 "$WORK/build.log" >&2; fail "build failed"; }
fi
ok "image $(docker image inspect -f '{{.Id}}' chatbench:latest | cut -c1-19)"

step "up -d ${SERVICES[*]}"
c up -d --no-build "${SERVICES[@]}" >"$WORK/up.log" 2>&1 || { cat "$WORK/up.log" >&2; fail "up failed"; }
ok "$(c ps -q | wc -l) containers up"

step "the three nodes form one cluster"
deadline=$((SECONDS + TIMEOUT))
until [ "$(running_nodes)" = 3 ]; do
    [ "$SECONDS" -lt "$deadline" ] || fail "rabbit1 does not see 3 running nodes"
    sleep 3
done
ok "rabbit1 sees 3 running nodes"

step "the demo chat flows on quorum queues"
wait_log amqp-client-cluster-2 "alice: Hi bob, this is alice. Can you read me?" || fail "bob did not get alice's demo"
wait_log amqp-client-cluster-1 "bob: Hi alice, this is bob. Can you read me?" || fail "alice did not get bob's demo"
qtype=$(c exec -T rabbit1 rabbitmqctl -q list_queues name type 2>/dev/null | awk '$1 == "chat.server" {print $2}')
[ "$qtype" = quorum ] || fail "chat.server is a ${qtype:-missing} queue, not quorum"
ok "alice and bob talk; chat.server is a quorum queue"

step "binaries for loadgen and its amqp-server"
if [ -n "${LOADGEN_BIN_DIR:-}" ]; then
    BIN=$LOADGEN_BIN_DIR
else
    BIN=$WORK/bin
    mkdir -p "$BIN"
    cid=$(docker create chatbench:latest) || fail "cannot create a container from chatbench:latest"
    for b in loadgen amqp-server; do docker cp "$cid:/usr/local/bin/$b" "$BIN/$b" >/dev/null || fail "no $b in the image"; done
    docker rm "$cid" >/dev/null
fi
"$BIN/loadgen" --version >/dev/null 2>&1 || fail "$BIN/loadgen does not run on this host"
ok "$BIN"

URLS=""
for n in rabbit1 rabbit2 rabbit3; do
    hp=$(c port "$n" 5672 | tail -1)
    [ -n "$hp" ] || fail "$n:5672 is not published"
    URLS="${URLS:+$URLS,}amqp://guest:guest@127.0.0.1:${hp##*:}/%2f"
done
NODE1=$(c ps -q rabbit1)

step "failover: $CLIENTS clients, $RATE msg/s, rabbit1 stopped for $DOWNTIME mid-run"
mkdir -p "$RESULTS"
"$BIN/loadgen" run --spawn --bin-dir "$BIN" --quiet --results "$RESULTS" \
    --amqp-url "$URLS" --queue-type quorum \
    --node-stop-cmd "docker stop $NODE1" \
    --node-start-cmd "docker start $NODE1 && for i in \$(seq $TIMEOUT); do docker exec $NODE1 rabbitmq-diagnostics -q check_port_connectivity && break; sleep 1; done" \
    --stack amqp --clients "$CLIENTS" --rate "$RATE" --duration 30s --warmup 3s --drain 60s \
    --fault stop-node --fault-at 8s --fault-downtime "$DOWNTIME" \
    >"$WORK/loadgen.log" 2>&1 || fail "loadgen failed"
row=$(python3 - "$RESULTS/runs.csv" <<'EOF'
import csv, sys
r = list(csv.DictReader(open(sys.argv[1])))[-1]
print(" ".join(f"{k}={r[k]}" for k in ("run_id", "accepted", "delivered", "lost", "duplicates", "reconnects", "recovery_s", "fault_max_e2e_us")))
EOF
)
echo "    $row"
grep -q " lost=0 " <<<"$row" || fail "messages were lost"
grep -q " duplicates=0 " <<<"$row" || fail "messages were shown twice"
grep -Eq " accepted=[1-9]" <<<"$row" || fail "nothing was accepted"
grep -Eq " reconnects=[1-9]" <<<"$row" || fail "no client reconnected: the stop was not felt"
ok "zero lost, zero duplicates across the failover"

step "rabbit1 is back in the cluster; the demo chat still flows"
deadline=$((SECONDS + TIMEOUT))
until [ "$(running_nodes)" = 3 ]; do
    [ "$SECONDS" -lt "$deadline" ] || fail "rabbit1 did not rejoin"
    sleep 3
done
c run --rm -T amqp-client-cluster-1 --id carol send alice "after the failover" </dev/null >"$WORK/carol.log" 2>&1 ||
    { sed 's/^/      /' "$WORK/carol.log" >&2; fail "carol's send failed"; }
wait_log amqp-client-cluster-1 "carol: after the failover" || fail "alice did not get carol's message"
ok "alice got carol's message"

step "no panics in any log"
if c logs --no-color "${SERVICES[@]}" 2>&1 | grep -n "panicked at" >&2; then fail "a container panicked"; fi
ok "none"
