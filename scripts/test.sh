#!/usr/bin/env bash
# The project's test command (README "Quickstart"): runs every test of the
# workspace. The AMQP tests need a RabbitMQ broker: the one at $AMQP_URL
# (default amqp://guest:guest@127.0.0.1:5672/%2f) is used when it answers;
# otherwise this script starts one, saying how: the compose file's rabbitmq
# service when a Docker engine runs, else a local rabbitmq-server (installing
# Debian's package when missing). Extra arguments go to `cargo test`.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

export AMQP_URL="${AMQP_URL:-amqp://guest:guest@127.0.0.1:5672/%2f}"
hostport="${AMQP_URL#*://}"
hostport="${hostport#*@}"
hostport="${hostport%%/*}"
host="${hostport%%:*}"
port="${hostport##*:}"
[ "$port" = "$hostport" ] && port=5672

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
    AMQP_PORT="$port" CHAT_BIND_ADDR=127.0.0.1 compose -p chatbench-test up -d rabbitmq
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

# cargo prints one "test result" line per test binary; the last of them is
# often a doc-test run with 0 tests, so finish with the totals.
log=$(mktemp)
trap 'rm -f "$log"' EXIT
set +e
cargo test --workspace "$@" 2>&1 | tee "$log"
status=${PIPESTATUS[0]}
set -e
grep -E '^test result:' "$log" \
  | sed -E 's/.* ([0-9]+) passed; ([0-9]+) failed.*/\1 \2/' \
  | awk '{ p += $1; f += $2 } END { printf "%d passed, %d failed\n", p, f }'
exit "$status"
