#!/usr/bin/env bash
# End-to-end check of the Dockerfile and docker-compose.yml: build the image,
# bring both stacks up, and prove from the logs and the servers' data that
#   1. alice's and bob's demo conversations went through, over each stack;
#   2. both log.txt files hold them;
#   3. a third client, registered with `compose run --rm`, exchanges a message
#      with alice in each direction (carol -> alice with `send`; alice -> carol
#      typed into alice's container through `docker attach`, received by
#      carol with `listen`);
# then tear everything down (`down -v`), also on failure or Ctrl-C.
#
# Too slow for every CI run; run it whenever the Dockerfile, the compose file
# or the workspace layout changes.
#
# Environment:
#   COMPOSE="docker compose"   use Compose v2 (default: docker-compose)
#   SMOKE_PROJECT=name         compose project name (default: chatbench-smoke-<pid>)
#   SMOKE_TIMEOUT=secs         how long to wait for each expected line (default 180)
#   SMOKE_KEEP=1               leave the stack running (no `down -v`) for a look
#   GRPC_PORT, AMQP_PORT, RABBITMQ_UI_PORT
#                              host ports (default 0: Docker picks free ones, so
#                              the smoke never clashes with a running stack)
set -uo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

read -r -a COMPOSE <<<"${COMPOSE:-docker-compose}"
export COMPOSE_PROJECT_NAME=${SMOKE_PROJECT:-chatbench-smoke-$$}
export GRPC_PORT=${GRPC_PORT:-0} AMQP_PORT=${AMQP_PORT:-0} RABBITMQ_UI_PORT=${RABBITMQ_UI_PORT:-0}
TIMEOUT=${SMOKE_TIMEOUT:-180}
WORK=$(mktemp -d)
START=$SECONDS
STEP_START=$SECONDS
FAILED=""
BUILD_SECS=0
UP_SECS=0

c() { "${COMPOSE[@]}" "$@"; }

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
        printf '\n==> logs of the failed run (last 40 lines per service)\n' >&2
        c logs --no-color --tail=40 >&2 2>&1 || true
    fi
    if [ "${SMOKE_KEEP:-0}" = 1 ]; then
        printf '\n==> SMOKE_KEEP=1: left running; remove with\n    COMPOSE_PROJECT_NAME=%s %s down -v --remove-orphans\n' \
            "$COMPOSE_PROJECT_NAME" "${COMPOSE[*]}"
    else
        printf '\n==> [%4ss] tearing down (down -v)\n' "$((SECONDS - START))"
        c down -v --remove-orphans >"$WORK/down.log" 2>&1 || cat "$WORK/down.log" >&2
    fi
    rm -rf "$WORK"
    if [ -n "$FAILED" ]; then
        printf '\ncompose-smoke: FAIL (%s) after %ss\n' "$FAILED" "$((SECONDS - START))" >&2
        exit 1
    fi
    printf '\ncompose-smoke: PASS after %ss (build %ss, up %ss)\n' \
        "$((SECONDS - START))" "$BUILD_SECS" "$UP_SECS"
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

# Waits until /data/log.txt of server $1 has a line containing $2.
wait_logtxt() {
    local svc=$1 want=$2 deadline=$((SECONDS + 30)) out
    while :; do
        out=$(c exec -T "$svc" cat /data/log.txt 2>&1)
        if grep -qF -- "$want" <<<"$out"; then return 0; fi
        [ "$SECONDS" -lt "$deadline" ] || break
        sleep 2
    done
    printf '    %s:/data/log.txt has no line with %q; it holds:\n' "$svc" "$want" >&2
    sed 's/^/      /' <<<"$out" >&2
    return 1
}

# Types $2 into the running client service $1 through `docker attach`, then
# detaches with Ctrl-P Ctrl-Q, as a person would (README.md, "Attaching to a client"). `script`
# gives `docker attach` the terminal it insists on (sized like a real one);
# `docker attach` says "read escape sequence" when it detaches.
type_into() {
    local svc=$1 line=$2 cid
    cid=$(c ps -q "$svc") && [ -n "$cid" ] || return 1
    { sleep 3; printf '%s\r' "$line"; sleep 2; printf '\020\021'; sleep 2; } |
        timeout 30 script -qec "stty cols 120 rows 40; docker attach $cid" /dev/null \
            >"$WORK/attach-$svc.log" 2>&1
    grep -q "read escape sequence" "$WORK/attach-$svc.log"
}

# The checks for one stack: $1 = grpc or amqp.
check_stack() {
    local stack=$1 server=$1-server alice=$1-client-1 bob=$1-client-2 tool=$1-client

    step "$stack: alice's demo reaches bob, and bob's reaches alice"
    wait_log "$bob" "alice: Hi bob, this is alice. Can you read me?" || fail "$stack: bob did not get alice's demo"
    wait_log "$alice" "bob: Hi alice, this is bob. Can you read me?" || fail "$stack: alice did not get bob's demo"
    wait_log "$bob" "alice: Demo over: attach to this container" || fail "$stack: bob did not get alice's last demo line"
    ok "both demo conversations arrived"

    step "$stack: $server's log.txt holds them"
    wait_logtxt "$server" "alice -> bob: Hi bob, this is alice. Can you read me?" || fail "$stack: alice's demo line missing from log.txt"
    wait_logtxt "$server" "bob -> alice: Hi alice, this is bob. Can you read me?" || fail "$stack: bob's demo line missing from log.txt"
    ok "$(c exec -T "$server" cat /data/log.txt | wc -l) line(s) in $server:/data/log.txt"

    local to_alice="Hello alice, carol here over $stack" to_carol="Welcome carol, alice answering over $stack"

    step "$stack: new client carol (compose run --rm $tool --id carol send alice ...)"
    c run --rm -T "$tool" --id carol send alice "$to_alice" </dev/null >"$WORK/carol-send.log" 2>&1 ||
        { sed 's/^/      /' "$WORK/carol-send.log" >&2; fail "$stack: carol's send failed"; }
    wait_log "$alice" "carol: $to_alice" || fail "$stack: alice did not get carol's message"
    wait_logtxt "$server" "carol -> alice: $to_alice" || fail "$stack: carol's message missing from log.txt"
    ok "alice got carol's message; it is in log.txt"

    step "$stack: alice answers through docker attach; carol receives it (listen --count 1)"
    c run --rm -T "$tool" --id carol listen --count 1 --timeout "$TIMEOUT" </dev/null >"$WORK/carol-listen.log" 2>&1 &
    local listener=$!
    type_into "$alice" "/msg carol $to_carol" || {
        kill "$listener" 2>/dev/null
        sed 's/^/      /' "$WORK/attach-$alice.log" >&2
        fail "$stack: could not type into $alice with docker attach"
    }
    if ! wait "$listener"; then
        sed 's/^/      /' "$WORK/carol-listen.log" >&2
        fail "$stack: carol's listen did not get alice's answer"
    fi
    grep -qF -- "alice: $to_carol" "$WORK/carol-listen.log" ||
        { sed 's/^/      /' "$WORK/carol-listen.log" >&2; fail "$stack: carol got something else"; }
    wait_logtxt "$server" "alice -> carol: $to_carol" || fail "$stack: alice's answer missing from log.txt"
    [ -n "$(c ps -q "$alice")" ] && [ "$(docker inspect -f '{{.State.Running}}' "$(c ps -q "$alice")")" = true ] ||
        fail "$stack: alice's container stopped after the detach"
    ok "carol printed: $(grep -F "alice: " "$WORK/carol-listen.log" | head -1)"
}

command -v script >/dev/null || { FAILED="util-linux 'script' is missing (needed for docker attach)"; exit 1; }
echo "compose-smoke: project $COMPOSE_PROJECT_NAME, compose: ${COMPOSE[*]}"

step "build (${COMPOSE[*]} build)"

c build >"$WORK/build.log" 2>&1 || { tail -n 40 "$WORK/build.log" >&2; fail "build failed"; }
BUILD_SECS=$((SECONDS - STEP_START))
ok "image $(docker image inspect -f '{{.Id}}' chatbench:latest | cut -c1-19), $(docker image inspect -f '{{.Size}}' chatbench:latest | awk '{printf "%.0f MB", $1/1e6}')"

step "up -d (waits for the healthchecks of rabbitmq, grpc-server and amqp-server)"
c up -d >"$WORK/up.log" 2>&1 || { cat "$WORK/up.log" >&2; fail "up failed"; }
UP_SECS=$((SECONDS - STEP_START))
ok "$(c ps -q | wc -l) containers up"
c ps

step "published host ports answer"
for sp in grpc-server:50051 rabbitmq:5672 rabbitmq:15672; do
    hp=$(c port "${sp%%:*}" "${sp#*:}" 2>/dev/null | tail -1)
    [ -n "$hp" ] || fail "${sp} is not published"
    (exec 3<>"/dev/tcp/${hp%:*}/${hp##*:}") 2>/dev/null || fail "${sp} published at $hp does not accept connections"
    echo "    $sp -> $hp"
done
ok "all published ports accept connections"

check_stack grpc
check_stack amqp

step "amqp: per-client broker users (alice, bob, carol have their own; only their own queue)"
c exec -T rabbitmq rabbitmqctl -q list_users >"$WORK/users.log" 2>&1 || { cat "$WORK/users.log" >&2; fail "rabbitmqctl list_users failed"; }
for u in chat.register chat.client.alice chat.client.bob chat.client.carol; do
    grep -q "^$u[[:space:]]" "$WORK/users.log" || { sed 's/^/      /' "$WORK/users.log" >&2; fail "broker user $u missing"; }
done
c exec -T rabbitmq rabbitmqctl -q list_user_permissions chat.client.alice >"$WORK/perms.log" 2>&1 ||
    { cat "$WORK/perms.log" >&2; fail "rabbitmqctl list_user_permissions failed"; }
grep -qF 'chat\.client\.alice' "$WORK/perms.log" || { sed 's/^/      /' "$WORK/perms.log" >&2; fail "alice's permissions do not name her queue"; }
ok "$(grep -c '^chat\.' "$WORK/users.log") chat broker user(s); alice's: $(tr -s '[:space:]' ' ' <"$WORK/perms.log")"

step "no panics in any log"
if c logs --no-color 2>&1 | grep -n "panicked at" >&2; then fail "a container panicked"; fi
ok "none"
