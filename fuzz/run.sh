#!/usr/bin/env bash
# Builds every fuzz target and runs each for a bounded time; exits 1 if any target crashed
# (a panic, a failed check, a timeout or running out of memory), after copying what it found
# to a directory outside the clone and printing each input in base64.
#
#   FUZZ_SECONDS_PER_TARGET  seconds per target (default 30)
#   FUZZ_TARGETS             space-separated targets (default: every one in Cargo.toml)
#   FUZZ_PROFILE             dev (default) or release; see below
#   FUZZ_TARGET_DIR          build directory (default ~/.cache/hl7bridge-fuzz-target); the
#                            working corpora live there too, so later runs start from them
#   FUZZ_CRASH_DIR           where crashing inputs are copied (default ~/hl7bridge-fuzz-crashes)
#
# Toolchain: stable Rust is enough. libFuzzer's sanitizers need nightly, so targets are built
# with `--sanitizer none` (cargo-fuzz then passes no -Z flag and RUSTC_BOOTSTRAP is not
# needed); the coverage instrumentation is stable. Rust code is memory-safe without ASan; what
# is lost is detection of memory errors in C code (none of it is reached from these targets).
# Debug assertions and overflow checks are on in both profiles.
#
# Build cost decides the default profile. cargo-fuzz's release build forces one codegen unit,
# and fhirbolt's deserialisers, instantiated in the FHIR codec, then take most of an hour to
# optimise on two busy cores; the dev build is far cheaper and runs a few times slower, which
# a 30-second run per target can afford. Use release for long runs.
set -euo pipefail
# cargo-fuzz finds its project in ./fuzz from the repository root.
cd "$(dirname "$0")/.."

SECONDS_PER_TARGET="${FUZZ_SECONDS_PER_TARGET:-30}"
TARGET_DIR="${FUZZ_TARGET_DIR:-$HOME/.cache/hl7bridge-fuzz-target}"
CRASH_DIR="${FUZZ_CRASH_DIR:-$HOME/hl7bridge-fuzz-crashes}/$(date -u +%Y%m%dT%H%M%SZ)"
TARGETS="${FUZZ_TARGETS:-$(cargo fuzz list)}"
case "${FUZZ_PROFILE:-dev}" in
  dev) PROFILE_FLAGS=(--dev) ;;
  release) PROFILE_FLAGS=(--release --debug-assertions) ;;
  *) echo "FUZZ_PROFILE must be dev or release"; exit 2 ;;
esac
BUILD_FLAGS=(--sanitizer none "${PROFILE_FLAGS[@]}" --target-dir "$TARGET_DIR")

# The server's own target directory is shared with other builds; ours has other RUSTFLAGS.
unset CARGO_TARGET_DIR
export CARGO_TERM_COLOR=never

echo "building fuzz targets into $TARGET_DIR"
cargo fuzz build "${BUILD_FLAGS[@]}"

failed=()
printf '%-18s %10s %8s %8s %8s  %s\n' target execs cov ft corpus result >"$TARGET_DIR/summary.txt"
for target in $TARGETS; do
  corpus="$TARGET_DIR/corpus/$target"
  artifacts="$TARGET_DIR/artifacts/$target"
  log="$TARGET_DIR/logs/$target.log"
  mkdir -p "$corpus" "$artifacts" "$(dirname "$log")"
  echo "== $target: ${SECONDS_PER_TARGET}s"
  status=0
  # The first directory is the working corpus (written to); the seeds are only read.
  cargo fuzz run "${BUILD_FLAGS[@]}" "$target" "$corpus" "fuzz/seeds/$target" -- \
    -max_total_time="$SECONDS_PER_TARGET" -timeout=10 -rss_limit_mb=2048 \
    -print_final_stats=1 -artifact_prefix="$artifacts/" >"$log" 2>&1 || status=$?
  execs=$(sed -nE 's/^stat::number_of_executed_units: *([0-9]+).*/\1/p' "$log")
  last=$(grep -E '^#[0-9]+' "$log" | tail -n 1)
  cov=$(sed -nE 's/.* cov: ([0-9]+).*/\1/p' <<<"$last")
  ft=$(sed -nE 's/.* ft: ([0-9]+).*/\1/p' <<<"$last")
  size=$(find "$corpus" -type f | wc -l)
  result=ok
  if [ "$status" -ne 0 ]; then
    result="CRASHED (exit $status)"
    failed+=("$target")
    tail -n 40 "$log"
  fi
  printf '%-18s %10s %8s %8s %8s  %s\n' "$target" "${execs:--}" "${cov:--}" "${ft:--}" \
    "$size" "$result" | tee -a "$TARGET_DIR/summary.txt"
done

found=$(find "$TARGET_DIR/artifacts" -type f 2>/dev/null | wc -l)
if [ "$found" -gt 0 ]; then
  mkdir -p "$CRASH_DIR"
  cp -r "$TARGET_DIR/artifacts/." "$CRASH_DIR/"
  rm -rf "$TARGET_DIR/artifacts"
  echo "== $found input(s) that failed, copied to $CRASH_DIR (replay: cargo fuzz run <target> <file>)"
  find "$CRASH_DIR" -type f | while read -r file; do
    echo "-- $file"
    head -c 4096 "$file" | base64 -w 0 && echo
  done
fi

echo "== summary (also in $TARGET_DIR/summary.txt)"
cat "$TARGET_DIR/summary.txt"
if [ "${#failed[@]}" -gt 0 ]; then
  echo "fuzzing found failures in: ${failed[*]}"
  exit 1
fi
