#!/usr/bin/env bash
# The data-layer benchmark in one command (README.md, "Benchmarks"):
#
#   benches/run.sh [--quick] [--patients N] [--seconds S] [--seed N] [--sqlite-patients N]
#                  [--mllp-patients N] [--kafka-patients N]
#
# Builds the release server and bench, creates a fresh PostgreSQL database, runs the server on
# loopback ports the kernel picks, drives it with hl7bridge-bench, does the same on a fresh
# SQLite file, then measures Kafka ingest against a broker (tansu) on loopback on a fresh
# PostgreSQL database again, and writes benches/RESULTS.md. A --quick run (a few seconds a
# figure) prints its table and leaves RESULTS.md alone. Without tansu or Python's
# confluent-kafka the Kafka row says which is missing and the run goes on; a Kafka phase that
# fails still gets its row (saying so) and the report, and then run.sh exits 1.
#
# Environment: BENCH_PG_URL (default postgres://postgres@127.0.0.1:5432), the server to use;
# BENCH_PG_DATABASE (default hl7bridge_bench), dropped and created anew. BENCH_TANSU: the
# tansu binary (default: tansu on PATH, else $CARGO_HOME/bin/tansu). CARGO_TARGET_DIR is
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
tansu_pid=""
kafka_failed=false

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

stop_tansu() {
    if [[ -n $tansu_pid ]]; then
        kill -TERM "$tansu_pid" 2>/dev/null || true
        wait "$tansu_pid" 2>/dev/null || true
        tansu_pid=""
    fi
}

on_exit() {
    local status=$?
    stop_server
    stop_tansu
    if [[ $status -eq 0 ]]; then
        rm -rf "$run_dir"
    else
        echo "benches/run.sh: failed; server logs and partial results are in $run_dir" >&2
    fi
}
trap on_exit EXIT

# start_server DATABASE_URL NAME [VAR=VALUE…]: runs the server (with any further settings) on
# ports the kernel picks and reads them from its "hl7bridge listening" log line.
start_server() {
    local log=$run_dir/$2.log
    env HL7BRIDGE_HTTP_ADDR=127.0.0.1:0 HL7BRIDGE_MLLP_ADDR=127.0.0.1:0 \
        HL7BRIDGE_DATABASE_URL="$1" "${@:3}" "$server_bin" serve >"$log" 2>&1 &
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

# Figure 8. Prints why it cannot run, or nothing.
if [[ -n ${BENCH_TANSU:-} ]]; then
    tansu=$BENCH_TANSU
else
    tansu=$(command -v tansu || echo "${CARGO_HOME:-$HOME/.cargo}/bin/tansu")
fi
kafka_missing() {
    if [[ ! -x $tansu ]]; then
        echo "no Kafka broker: tansu was not found (BENCH_TANSU, PATH, \$CARGO_HOME/bin; the tests' broker: \`cargo install tansu --version 0.6.0 --locked --features dynostore\`, about 15 min on two cores)"
    elif ! "$tansu" --help >/dev/null 2>&1; then
        echo "no Kafka broker: $tansu --help failed"
    elif ! command -v python3 >/dev/null; then
        echo "no producer: python3 was not found"
    elif ! python3 -c 'import confluent_kafka' 2>/dev/null; then
        echo "no producer: Python's confluent-kafka is not installed (python3 -c 'import confluent_kafka' failed)"
    fi
}

# Runs figure 8 into $run_dir/kafka.json; on failure, says at which step in $kafka_step.
# Every step is checked by hand: a function called in a condition runs without `set -e`.
kafka_phase() {
    local dir=$run_dir/kafka port brokers version
    kafka_step="starting tansu"
    mkdir -p "$dir/tansu" || return 1
    port=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])') || return 1
    brokers=127.0.0.1:$port
    version=$("$tansu" --version 2>/dev/null | head -n 1)
    # Nothing inherited: no OTEL_* endpoint or other setting may point it elsewhere.
    (cd "$dir/tansu" && exec env -i PATH="$PATH" "$tansu" broker \
        --listener-url "tcp://$brokers" --advertised-listener-url "tcp://$brokers" \
        --storage-engine memory://tansu/ >"$run_dir/tansu.log" 2>&1) &
    tansu_pid=$!
    local listening=false
    for _ in $(seq 300); do
        if (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then listening=true; break; fi
        kill -0 "$tansu_pid" 2>/dev/null || break
        sleep 0.1
    done
    $listening || return 1
    kafka_step="loading the supporting resources"
    "$bench_bin" create-db "$pg_url/postgres" "$pg_database" || return 1
    start_server "$pg_url/$pg_database" kafka-setup || return 1
    "$bench_bin" kafka-prepare --http "http://$http_addr" --server-pid "$server_pid" \
        --kafka-dir "$dir" "$@" || return 1
    stop_server
    kafka_step="producing the records"
    python3 "$root/benches/kafka_bench.py" produce "$brokers" "$dir" || return 1
    kafka_step="measuring"
    start_server "$pg_url/$pg_database" kafka HL7BRIDGE_KAFKA_BROKERS="$brokers" || return 1
    "$bench_bin" kafka --http "http://$http_addr" --database-url "$pg_url/$pg_database" \
        --server-pid "$server_pid" --server-log "$run_dir/kafka.log" --brokers "$brokers" \
        --broker-pid "$tansu_pid" --broker "${version:-tansu}" \
        --kafka-script "$root/benches/kafka_bench.py" --kafka-dir "$dir" \
        --out "$run_dir/kafka.json" "$@" || return 1
    stop_server
    stop_tansu
    "$bench_bin" drop-db "$pg_url/postgres" "$pg_database" || return 1
}

kafka_started=$SECONDS
kafka_reason=$(kafka_missing)
if [[ -n $kafka_reason ]]; then
    echo "Kafka: not measured: $kafka_reason" >&2
    "$bench_bin" kafka-skipped --reason "$kafka_reason" --out "$run_dir/kafka.json"
else
    echo "Kafka: $tansu on loopback, database $pg_database on $pg_url" >&2
    kafka_step=""
    if ! kafka_phase "$@"; then
        kafka_failed=true
        stop_server
        stop_tansu
        "$bench_bin" drop-db "$pg_url/postgres" "$pg_database" || true
        rm -f "$run_dir/kafka.json"
        "$bench_bin" kafka-skipped --out "$run_dir/kafka.json" \
            --reason "the Kafka phase failed while $kafka_step; its logs are in $run_dir"
    fi
fi
echo "Kafka: $((SECONDS - kafka_started)) s" >&2

if [[ -n $profile_dir ]]; then
    for name in postgres sqlite kafka; do
        [[ -f $profile_dir/$name.perf ]] || continue
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
if $kafka_failed; then
    echo "benches/run.sh: the Kafka phase failed; see its row" >&2
    exit 1
fi
