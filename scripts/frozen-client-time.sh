#!/usr/bin/env bash
# How long a frozen client keeps its ID online (INFORME 3.9): starts a
# server of the given stack, a listening client `frozen`, stops that client
# with SIGSTOP, and polls `list` every 0.25 s until it shows `frozen`
# offline. Prints the seconds from SIGSTOP to then.
#
#   scripts/frozen-client-time.sh grpc|amqp
#
# Uses the release binaries in target/release (or $BIN_DIR). AMQP needs the
# local broker (AMQP_URL, default guest@127.0.0.1) and its management API
# (http://127.0.0.1:15672): the run's namespace is deleted from the broker
# afterwards. Everything it starts is stopped on exit, also on failure.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
stack="${1:?usage: $0 grpc|amqp}"
bin="${BIN_DIR:-target/release}"
tmp=$(mktemp -d)
export HOME="$tmp" XDG_STATE_HOME="$tmp/state"
ns="frozen$$"
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill -CONT "$p" 2>/dev/null || true; kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  if [ "$stack" = amqp ]; then
    for kind in queues exchanges; do
      curl -fsS -u guest:guest "http://127.0.0.1:15672/api/$kind/%2f" 2>/dev/null \
        | python3 -c "import json,sys; [print(x['name']) for x in json.load(sys.stdin) if x['name'].startswith('$ns.')]" \
        | while read -r name; do
            curl -fsS -u guest:guest -X DELETE "http://127.0.0.1:15672/api/$kind/%2f/$name" >/dev/null || true
          done
    done
  fi
  rm -rf "$tmp"
}
trap cleanup EXIT

case "$stack" in
  grpc)
    export CHAT_SERVER=http://127.0.0.1:50077
    "$bin/grpc-server" --listen 127.0.0.1:50077 --data-dir "$tmp/data" >"$tmp/server.log" 2>&1 &
    cli="$bin/grpc-client" ;;
  amqp)
    export CHAT_AMQP_NAMESPACE="$ns"
    "$bin/amqp-server" --data-dir "$tmp/data" >"$tmp/server.log" 2>&1 &
    cli="$bin/amqp-client" ;;
  *) echo "usage: $0 grpc|amqp" >&2; exit 2 ;;
esac
pids+=($!)

"$cli" --id frozen listen >"$tmp/client.log" 2>&1 &
pids+=($!)
client=$!
online() { "$cli" --id watcher list 2>/dev/null | grep -Eq '^ *frozen +online'; }
for _ in $(seq 1 240); do online && break; sleep 0.25; done
online || { echo "frozen never came online; server log:" >&2; cat "$tmp/server.log" >&2; exit 1; }

kill -STOP "$client"
start=$(date +%s.%N)
while online; do
  if (($(echo "$(date +%s.%N) - $start > 180" | bc))); then
    echo "$stack: still online 180 s after SIGSTOP" >&2
    exit 1
  fi
  sleep 0.25
done
echo "$stack: frozen client offline $(echo "$(date +%s.%N) - $start" | bc | xargs printf '%.1f') s after SIGSTOP"
