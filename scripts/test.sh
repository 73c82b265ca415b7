#!/usr/bin/env bash
# The README test command: start the local brokers, then fmt, clippy and the whole test suite.
# Extra arguments are passed to `cargo test`, e.g. scripts/test.sh -p mailroom-core -- --nocapture
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."
export HOME="${HOME:-$(getent passwd "$(id -u)" | cut -d: -f6)}"
export PATH="$HOME/.cargo/bin:$PATH"
if [[ -n ${CI:-} ]]; then
    export CARGO_TERM_COLOR=never
fi

step() { printf '\n==> %s\n' "$*"; }

step "scripts/brokers.sh up"
scripts/brokers.sh up

step "scripts/e2e.sh (chromium + playwright-core for the browser tests)"
scripts/e2e.sh >/dev/null

step "cargo fmt --all -- --check"
cargo fmt --all -- --check

step "cargo clippy --workspace --all-targets --all-features -- -D warnings"
cargo clippy --workspace --all-targets --all-features -- -D warnings

# Each backend's conformance run writes its report here; they are shown after the tests so the
# skipped cases, and the capability that skipped each, are visible even though output is captured.
export MAILROOM_CONFORMANCE_REPORT_DIR="$PWD/target/conformance"
rm -rf "$MAILROOM_CONFORMANCE_REPORT_DIR"

# Facade tests bridge into Kafka too, so they also start from an empty tansu.
scripts/brokers.sh reset kafka

step "cargo test --workspace --all-features --exclude mailroom-kafka $*"
cargo test --workspace --all-features --exclude mailroom-kafka "$@"

# tansu 0.6 can wedge its storage under concurrent fetches and topic deletes (see
# backends/kafka docs), so the Kafka crate's tests start from a fresh broker process and run one
# test at a time.
step "Kafka tests on a freshly started tansu, one test at a time"
scripts/brokers.sh reset kafka
cargo test -p mailroom-kafka --all-features -- --test-threads=1

step "RabbitMQ fault test (stops and starts the shared broker, so it runs alone)"
cargo test -p mailroom-rabbitmq --all-features --test faults -- --ignored --nocapture

step "Kafka fault test (kills and restarts tansu twice, so it runs alone)"
cargo test -p mailroom-kafka --all-features --test faults -- --ignored --nocapture

step "conformance reports"
shopt -s nullglob
reports=("$MAILROOM_CONFORMANCE_REPORT_DIR"/*.txt)
if ((${#reports[@]} == 0)); then
    echo "no conformance report was written" >&2
    exit 1
fi
cat "${reports[@]}"
