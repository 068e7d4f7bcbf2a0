#!/usr/bin/env bash
# Run the benchmarks by hand on a quiet machine:
#   bench/run.sh                 # everything
#   bench/run.sh connect mcp     # some sections: connect throughput mcp idle load
# Figures are printed as a Markdown report and saved to bench/out/results.json.
set -euo pipefail
cd "$(dirname "$0")/.."
mkdir -p /run/sshd 2>/dev/null || true
ulimit -n 65536 2>/dev/null || ulimit -n "$(ulimit -Hn)"
cargo build --release -q -p gatehouse -p gatehouse-bench
export GATEHOUSE_BIN="$PWD/target/release/gatehouse"
exec target/release/gatehouse-bench "$@"
