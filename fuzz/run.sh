#!/usr/bin/env bash
# Run every fuzz target for SECONDS (default 600) each, JOBS at a time
# (default 2), on its corpus in fuzz/corpus/<target>, then minimise the
# corpus. Logs land in fuzz/logs/<target>.log; the last lines carry
# libFuzzer's final stats (executions, coverage, corpus size).
#   fuzz/run.sh [SECONDS] [TARGET...]
set -euo pipefail
cd "$(dirname "$0")"
secs=${1:-600}; shift || true
targets=("$@")
[ ${#targets[@]} -gt 0 ] || targets=(ssh_username token signed_request mcp_arguments csr policy asciicast)
jobs=${JOBS:-2}
command -v cargo-fuzz >/dev/null || cargo install cargo-fuzz --locked
export RUSTC_BOOTSTRAP=1   # cargo-fuzz needs -Z flags; the stable toolchain allows them this way
cargo fuzz build -O
mkdir -p logs
run_one() {
  local t=$1
  mkdir -p "corpus/$t"
  cargo fuzz run -O "$t" "corpus/$t" -- -max_total_time="$secs" -print_final_stats=1 -rss_limit_mb=2048 >"logs/$t.log" 2>&1 \
    && echo "$t: no crash in ${secs}s" || { echo "$t: FAILED (see fuzz/logs/$t.log)"; return 1; }
}
pids=(); status=0
for t in "${targets[@]}"; do
  run_one "$t" & pids+=($!)
  if [ ${#pids[@]} -ge "$jobs" ]; then wait "${pids[0]}" || status=1; pids=("${pids[@]:1}"); fi
done
for p in "${pids[@]}"; do wait "$p" || status=1; done
for t in "${targets[@]}"; do
  cargo fuzz cmin -O "$t" "corpus/$t" >"logs/$t.cmin.log" 2>&1 || true
done
exit $status
