#!/usr/bin/env bash
# The project's test command (README "Quickstart"): runs every test of the
# workspace. The AMQP tests need a RabbitMQ broker: the one at $AMQP_URL
# (default amqp://guest:guest@127.0.0.1:5672/%2f) is used when it answers;
# otherwise this script starts one, saying how: the compose file's rabbitmq
# service when a Docker engine runs, else a local rabbitmq-server (installing
# Debian's package when missing). The tests of per-client broker users also
# need RabbitMQ's management API at $CHAT_AMQP_MANAGEMENT_URL (default
# http://guest:guest@<broker host>:15672): on a local broker this script
# enables the plugin (online, no restart) when the API does not answer.
# Every amqp-server needs RabbitMQ's event exchange plugin (it learns from
# it when a client goes offline): on a local broker this script enables
# rabbitmq_event_exchange the same way when the broker lacks its exchange.
# Extra arguments go to `cargo test`; with `-p PACKAGE` only those packages
# are tested.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

export AMQP_URL="${AMQP_URL:-amqp://guest:guest@127.0.0.1:5672/%2f}"
hostport="${AMQP_URL#*://}"
hostport="${hostport#*@}"
hostport="${hostport%%/*}"
host="${hostport%%:*}"
port="${hostport##*:}"
[ "$port" = "$hostport" ] && port=5672

export CHAT_AMQP_MANAGEMENT_URL="${CHAT_AMQP_MANAGEMENT_URL:-http://guest:guest@$host:15672}"
mgmt_hostport="${CHAT_AMQP_MANAGEMENT_URL#*://}"
mgmt_hostport="${mgmt_hostport#*@}"
mgmt_hostport="${mgmt_hostport%%/*}"
mgmt_port="${mgmt_hostport##*:}"
[ "$mgmt_port" = "$mgmt_hostport" ] && mgmt_port=80

say() { echo "test.sh: $*" >&2; }

# True when an AMQP 0-9-1 broker answers the protocol header at host:port
# (a bare TCP check would accept a broker that is still starting up).
broker_answers() {
  timeout 5 bash -c "exec 3<>/dev/tcp/$host/$port && printf 'AMQP\x00\x00\x09\x01' >&3 && head -c 1 <&3" 2>/dev/null \
    | od -An -tx1 | grep -q 01
}

wait_for_broker() {
  for _ in $(seq 1 90); do
    broker_answers && return 0
    sleep 2
  done
  return 1
}

compose() {
  if command -v docker-compose >/dev/null 2>&1; then docker-compose "$@"; else docker compose "$@"; fi
}

if broker_answers; then
  say "using the RabbitMQ broker that answers at $host:$port"
else
  say "no RabbitMQ broker answers at $host:$port; starting one"
  case "$host" in
    127.0.0.1 | localhost) ;;
    *) say "cannot start a broker on $host: start it there, or point AMQP_URL at one"; exit 1 ;;
  esac
  if command -v docker >/dev/null 2>&1 && docker info >/dev/null 2>&1 \
     && { command -v docker-compose >/dev/null 2>&1 || docker compose version >/dev/null 2>&1; }; then
    say "starting the compose file's rabbitmq service on port $port (docker; stop it with: docker-compose -p chatbench-test down -v)"
    AMQP_PORT="$port" RABBITMQ_UI_PORT="$mgmt_port" CHAT_BIND_ADDR=127.0.0.1 compose -p chatbench-test up -d rabbitmq
  else
    if ! command -v rabbitmq-server >/dev/null 2>&1; then
      say "rabbitmq-server is not installed; installing Debian's package"
      sudo_cmd=""
      [ "$(id -u)" -eq 0 ] || sudo_cmd="sudo"
      $sudo_cmd apt-get update -qq
      DEBIAN_FRONTEND=noninteractive $sudo_cmd apt-get install -y -qq rabbitmq-server >/dev/null
    fi
    if ! broker_answers; then
      say "starting a local rabbitmq-server on port $port (stop it with: rabbitmqctl stop)"
      RABBITMQ_NODE_PORT="$port" rabbitmq-server -detached || true
    fi
  fi
  if ! wait_for_broker; then
    say "the broker did not answer at $host:$port within 3 minutes; see the RabbitMQ logs (/var/log/rabbitmq)"
    exit 1
  fi
  say "broker is up at $host:$port"
fi

# True when the management API answers GET <path> with the URL's account.
# Python's standard library speaks HTTP with basic auth whether or not curl
# is installed.
management_get() {
  timeout 10 python3 - "$CHAT_AMQP_MANAGEMENT_URL" "$1" <<'PY' >/dev/null 2>&1
import base64, sys, urllib.parse, urllib.request
u = urllib.parse.urlsplit(sys.argv[1])
req = urllib.request.Request(f"http://{u.hostname}:{u.port or 80}{u.path.rstrip('/')}{sys.argv[2]}")
auth = f"{urllib.parse.unquote(u.username or '')}:{urllib.parse.unquote(u.password or '')}"
req.add_header("Authorization", "Basic " + base64.b64encode(auth.encode()).decode())
urllib.request.urlopen(req, timeout=5).read()
PY
}

redacted_mgmt="$(echo "$CHAT_AMQP_MANAGEMENT_URL" | sed -E 's#://([^:@/]*):[^@/]*@#://\1:***@#')"

# Makes sure the broker has a plugin the tests need: `require_plugin NAME
# PATH OK WHY` checks that the management API answers GET PATH; if not, and
# the broker is local, enables NAME and waits; says OK when it works, or
# warns with WHY (which tests will fail) when it does not.
require_plugin() {
  local name=$1 path=$2 ok=$3 why=$4
  if ! management_get "$path"; then
    case "$host" in
      127.0.0.1 | localhost)
        if command -v rabbitmq-plugins >/dev/null 2>&1; then
          say "the broker lacks $name (GET $path fails at $redacted_mgmt); enabling it: rabbitmq-plugins enable $name"
          rabbitmq-plugins enable "$name" >/dev/null || true
          for _ in $(seq 1 30); do
            management_get "$path" && break
            sleep 2
          done
        fi
        ;;
    esac
  fi
  if management_get "$path"; then
    say "$ok"
  else
    say "WARNING: $name does not answer through $redacted_mgmt (GET $path):"
    say "  $why"
    say "  Enable it on the broker (rabbitmq-plugins enable $name) or set CHAT_AMQP_MANAGEMENT_URL."
  fi
}

require_plugin rabbitmq_management /api/whoami \
  "the RabbitMQ management API answers at $redacted_mgmt" \
  "the tests of per-client broker users (amqp/tests/broker_users.rs, the per_client e2e scenarios) will FAIL."
# The exchange of the event exchange plugin, amq.rabbitmq.event, in the
# default vhost.
require_plugin rabbitmq_event_exchange /api/exchanges/%2F/amq.rabbitmq.event \
  "the broker publishes consumer events (rabbitmq_event_exchange is enabled)" \
  "every amqp-server refuses to start without it, so the AMQP tests will FAIL."

# cargo prints one "test result" line per test binary; the last of them is
# often a doc-test run with 0 tests, so finish with the totals.
log=$(mktemp)
trap 'rm -f "$log"' EXIT
# `-p PACKAGE` picks packages; cargo would ignore it beside --workspace.
scope=(--workspace)
for arg in "$@"; do
  case "$arg" in -p | --package | -p* | --package=*) scope=() ;; esac
done
set +e
cargo test "${scope[@]}" "$@" 2>&1 | tee "$log"
status=${PIPESTATUS[0]}
set -e
grep -E '^test result:' "$log" \
  | sed -E 's/.* ([0-9]+) passed; ([0-9]+) failed.*/\1 \2/' \
  | awk '{ p += $1; f += $2 } END { printf "%d passed, %d failed\n", p, f }'
exit "$status"
