#!/usr/bin/env bash
# CI smoke of the cargo-fuzz targets (docs/fuzzing.md): builds them all, replays the committed
# seed corpus of each, then fuzzes each for a few seconds. Any crash, failed assertion, leak
# of the memory limits or timeout fails the script.
#
#   scripts/fuzz-smoke.sh                        # 10 s per target
#   FUZZ_SMOKE_SECONDS=0 scripts/fuzz-smoke.sh   # build and replay the corpus only
#
# CI time goes into building (the fuzz crate links the gateway, raft and store crates), so the
# smoke builds unoptimised and without AddressSanitizer (`--dev -s none`: our crates forbid
# unsafe code, and the assertions and overflow checks are what the smoke is for). The
# ten-minute runs of docs/fuzzing.md use the default optimised ASan build:
# FUZZ_SMOKE_BUILD="" selects it here too.
set -euo pipefail
cd "$(dirname "$0")/.."

seconds=${FUZZ_SMOKE_SECONDS:-10}
read -r -a build <<<"${FUZZ_SMOKE_BUILD---dev -s none}"
targets=(ws_codec client_json client_proto link_frame raft_wire wal_replay)

echo "== fuzz toolchain"
if ! rustup toolchain list | grep -q '^nightly'; then
  rustup toolchain install nightly --profile minimal
fi
if ! command -v cargo-fuzz >/dev/null 2>&1; then
  cargo install cargo-fuzz --locked
fi

echo "== fuzz build"
cd fuzz
cargo +nightly fuzz build "${build[@]}"

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
for t in "${targets[@]}"; do
  echo "== fuzz $t: replay corpus/$t, then ${seconds}s"
  # Replaying the seeds: every committed input must pass.
  cargo +nightly fuzz run "${build[@]}" "$t" corpus/"$t" -- -runs=0 -rss_limit_mb=2048 -malloc_limit_mb=128
  if [ "$seconds" -gt 0 ]; then
    mkdir -p "$work/$t"
    # New inputs go to the scratch directory, not into the committed corpus.
    cargo +nightly fuzz run "${build[@]}" "$t" "$work/$t" corpus/"$t" -- -max_total_time="$seconds" \
      -rss_limit_mb=2048 -malloc_limit_mb=128 -timeout=10 -print_final_stats=1
  fi
done
echo "== fuzz smoke: all targets passed"
