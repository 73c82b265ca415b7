#!/usr/bin/env bash
# The soak run (not CI: it takes minutes per broker): `mailroom soak` on each local broker with
# several producers and consumers at a steady rate. Prints per broker lost (must be 0),
# duplicates, end-to-end latency percentiles and the client's resident-memory curve, and keeps
# each report in target/soak/<broker>.txt. Exits non-zero if any broker lost a confirmed message
# or its memory kept growing.
#
#   scripts/soak.sh [SECONDS] [BROKER...]      default: 600 s each on rabbitmq kafka sqs
#   SOAK_RATE=1000 SOAK_PRODUCERS=4 SOAK_CONSUMERS=4 SOAK_SIZE=1024 scripts/soak.sh 600 kafka
#   SOAK_PARALLEL=1 scripts/soak.sh     every broker at the same time (10 minutes in all)
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."
export HOME="${HOME:-$(getent passwd "$(id -u)" | cut -d: -f6)}"
export PATH="$HOME/.cargo/bin:$PATH"

seconds=${1:-600}
shift || true
brokers=("$@")
((${#brokers[@]})) || brokers=(rabbitmq kafka sqs)

url_of() {
    case $1 in
    memory) echo "memory://" ;;
    rabbitmq) echo "${MAILROOM_RABBITMQ_URL:-amqp://guest:guest@127.0.0.1:5672/%2f}" ;;
    kafka) echo "${MAILROOM_KAFKA_URL:-kafka://127.0.0.1:9092}" ;;
    sqs) echo "${MAILROOM_SQS_URL:-sqs://127.0.0.1:4566?region=us-east-1}" ;;
    *)
        echo "scripts/soak.sh: unknown broker '$1' (memory, rabbitmq, kafka, sqs)" >&2
        exit 2
        ;;
    esac
}
for broker in "${brokers[@]}"; do url_of "$broker" >/dev/null; done

scripts/brokers.sh up
# The same features as README's compare command, so the release build is shared with it.
cargo build --release --features rabbitmq,kafka,sqs --bin mailroom
bin=${CARGO_TARGET_DIR:-target}/release/mailroom

out=target/soak
mkdir -p "$out"
soak() {
    "$bin" soak --url "$(url_of "$1")" --seconds "$seconds" \
        --rate "${SOAK_RATE:-1000}" --producers "${SOAK_PRODUCERS:-4}" \
        --consumers "${SOAK_CONSUMERS:-4}" --size "${SOAK_SIZE:-1024}" \
        --sample-every "${SOAK_SAMPLE_EVERY:-10}"
}
failed=()
if [[ -n ${SOAK_PARALLEL:-} ]]; then
    # Every broker at once, each in its own process (its memory curve is its own): the time of
    # one run in all, at the price of the brokers sharing the machine's cores.
    declare -A pids
    for broker in "${brokers[@]}"; do
        soak "$broker" >"$out/$broker.txt" 2>&1 &
        pids[$broker]=$!
    done
    for broker in "${brokers[@]}"; do
        wait "${pids[$broker]}" || failed+=("$broker")
        printf '\n==> soak on %s for %s s (in parallel)\n' "$broker" "$seconds"
        cat "$out/$broker.txt"
    done
else
    for broker in "${brokers[@]}"; do
        printf '\n==> soak on %s for %s s\n' "$broker" "$seconds"
        soak "$broker" 2>&1 | tee "$out/$broker.txt" || failed+=("$broker")
    done
fi
if ((${#failed[@]})); then
    echo "soak FAILED on: ${failed[*]}" >&2
    exit 1
fi
echo "soak passed on: ${brokers[*]} (reports in $out/)"
