#!/usr/bin/env bash
# Regenerates every CSV and chart INFORME.md uses, from scratch:
#   scripts/measure.sh            # full sweeps: ~20 min on 2 cores (18 min measured)
#   scripts/measure.sh --quick    # the same sweeps, shorter: ~4 min
# It builds the release binaries, runs experiments/default.toml and
# experiments/faults.toml with servers started by loadgen (--spawn) against
# the RabbitMQ broker at AMQP_URL (default amqp://guest:guest@127.0.0.1:5672/%2f;
# restart-broker needs rabbitmqctl for a local one), then draws the charts
# and results/summary.md. Rows are appended to results/runs.csv; the charts
# use the latest run of each point. Pass --fresh to move the old
# results/runs.csv and results/hist/ aside (into results/old-<date>/) first.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

quick=()
fresh=false
for arg in "$@"; do
  case "$arg" in
    --quick) quick=(--quick) ;;
    --fresh) fresh=true ;;
    *) echo "measure.sh: unknown argument $arg (use --quick and/or --fresh)" >&2; exit 2 ;;
  esac
done

if $fresh && [ -e results/runs.csv ]; then
  old="results/old-$(date -u +%Y%m%dT%H%M%S)"
  mkdir -p "$old"
  mv results/runs.csv "$old/"
  [ -d results/hist ] && mv results/hist "$old/"
  echo "measure.sh: previous results moved to $old" >&2
fi

cargo build --release --bins
target/release/loadgen check-broker --clients 1000 \
  || echo "measure.sh: the 1000-client AMQP point will be skipped (see above)" >&2
target/release/loadgen run experiments/default.toml --spawn "${quick[@]}"
target/release/loadgen run experiments/faults.toml --spawn "${quick[@]}"
target/release/loadgen plot
