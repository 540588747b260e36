#!/usr/bin/env bash
# The data-layer benchmark in one command (README.md, "Benchmarks"):
#
#   benches/run.sh [--quick] [--patients N] [--seconds S] [--seed N] [--sqlite-patients N] [--mllp-patients N]
#
# Builds the release server and bench, creates a fresh PostgreSQL database, runs the server on
# loopback ports the kernel picks, drives it with hl7bridge-bench, does the same on a fresh
# SQLite file, and writes benches/RESULTS.md. A --quick run (a few seconds a figure) prints its
# table and leaves RESULTS.md alone.
#
# Environment: BENCH_PG_URL (default postgres://postgres@127.0.0.1:5432), the server to use;
# BENCH_PG_DATABASE (default hl7bridge_bench), dropped and created anew. CARGO_TARGET_DIR is
# honoured. HL7BRIDGE_* variables are cleared so that the servers run with their defaults.
# BENCH_PROFILE_DIR: when set, each server runs under `perf record` (cpu-clock samples with call
# graphs) and its profile is written there as NAME.perf, with NAME.folded (stacks folded by
# benches/fold_stacks.py) and NAME.top (the 40 hottest functions, self and total).
set -euo pipefail

root=$(cd "$(dirname "$0")/.." && pwd)
target_dir=${CARGO_TARGET_DIR:-$root/target}
pg_url=${BENCH_PG_URL:-postgres://postgres@127.0.0.1:5432}
pg_database=${BENCH_PG_DATABASE:-hl7bridge_bench}
quick=false
for arg in "$@"; do
    if [[ $arg == --quick ]]; then quick=true; fi
done
while read -r name; do unset "$name"; done < <(compgen -e | grep '^HL7BRIDGE_' || true)

cd "$root"
# Two builds, not one: building both packages together would unify their features and
# rebuild the server's dependencies differently from a plain `cargo build --release`.
build_started=$SECONDS
cargo build --release --quiet -p hl7bridge
cargo build --release --quiet -p hl7bridge-bench
build_s=$((SECONDS - build_started))
server_bin=$target_dir/release/hl7bridge
bench_bin=$target_dir/release/hl7bridge-bench

run_dir=$(mktemp -d "${TMPDIR:-/tmp}/hl7bridge-bench.XXXXXX")
server_pid=""
http_addr=""
mllp_addr=""

profile_dir=${BENCH_PROFILE_DIR:-}
perf_pid=""

stop_server() {
    if [[ -n $perf_pid ]]; then
        kill -INT "$perf_pid" 2>/dev/null || true
        wait "$perf_pid" 2>/dev/null || true
        perf_pid=""
    fi
    if [[ -n $server_pid ]]; then
        kill -TERM "$server_pid" 2>/dev/null || true
        wait "$server_pid" 2>/dev/null || true
        server_pid=""
    fi
}

on_exit() {
    local status=$?
    stop_server
    if [[ $status -eq 0 ]]; then
        rm -rf "$run_dir"
    else
        echo "benches/run.sh: failed; server logs and partial results are in $run_dir" >&2
    fi
}
trap on_exit EXIT

# start_server DATABASE_URL NAME: runs the server on ports the kernel picks and reads them
# from its "hl7bridge listening" log line.
start_server() {
    local log=$run_dir/$2.log
    HL7BRIDGE_HTTP_ADDR=127.0.0.1:0 HL7BRIDGE_MLLP_ADDR=127.0.0.1:0 \
        HL7BRIDGE_DATABASE_URL=$1 "$server_bin" serve >"$log" 2>&1 &
    server_pid=$!
    for _ in $(seq 600); do
        if grep -q '"hl7bridge listening"' "$log"; then
            local line
            line=$(grep '"hl7bridge listening"' "$log")
            http_addr=$(sed -E 's/.*"http":"([^"]+)".*/\1/' <<<"$line")
            mllp_addr=$(sed -E 's/.*"mllp":"([^"]+)".*/\1/' <<<"$line")
            if [[ -n $profile_dir ]]; then
                mkdir -p "$profile_dir"
                perf record -e cpu-clock -F 499 -g -p "$server_pid" -o "$profile_dir/$2.perf" \
                    >"$profile_dir/$2.perf.log" 2>&1 &
                perf_pid=$!
            fi
            return 0
        fi
        if ! kill -0 "$server_pid" 2>/dev/null; then
            cat "$log" >&2
            server_pid=""
            return 1
        fi
        sleep 0.1
    done
    echo "the $2 server did not start within 60 s" >&2
    return 1
}

echo "PostgreSQL: database $pg_database on $pg_url" >&2
"$bench_bin" create-db "$pg_url/postgres" "$pg_database"
start_server "$pg_url/$pg_database" postgres
"$bench_bin" postgres --http "http://$http_addr" --mllp "$mllp_addr" \
    --database-url "$pg_url/$pg_database" --server-pid "$server_pid" \
    --out "$run_dir/postgres.json" "$@"
stop_server
"$bench_bin" drop-db "$pg_url/postgres" "$pg_database"

echo "SQLite: a fresh file in $run_dir" >&2
start_server "sqlite://$run_dir/hl7bridge.db" sqlite
"$bench_bin" sqlite --http "http://$http_addr" --scratch-db "$run_dir/ceiling.db" \
    --server-pid "$server_pid" --out "$run_dir/sqlite.json" "$@"
stop_server

if [[ -n $profile_dir ]]; then
    for name in postgres sqlite; do
        perf script -i "$profile_dir/$name.perf" 2>/dev/null |
            python3 "$root/benches/fold_stacks.py" --top 40 "$profile_dir/$name.top" \
            >"$profile_dir/$name.folded"
    done
    echo "profiles in $profile_dir" >&2
fi
commit=$(git rev-parse --short HEAD)
if ! git diff --quiet HEAD -- . ':!benches/RESULTS.md'; then commit="$commit (uncommitted changes)"; fi
results=$root/benches/RESULTS.md
if $quick; then results=$run_dir/RESULTS.md; fi
"$bench_bin" report --dir "$run_dir" --out "$results" --commit "$commit" \
    --date "$(date -u '+%Y-%m-%d %H:%M UTC')" --command "benches/run.sh${*:+ $*}" \
    --elapsed-s "$SECONDS" --build-s "$build_s"
cat "$results"
if ! $quick; then echo "written to benches/RESULTS.md" >&2; fi
