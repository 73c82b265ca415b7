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

# bounded SECONDS COMMAND...: run a test step under an overall limit, so that no hang can hold CI
# (90 min) for long; a step that overruns fails naming itself. The tests' own timeouts, which
# say where they were waiting, are shorter: this is the backstop.
bounded() {
    local limit=$1 rc=0
    shift
    timeout --kill-after=30 "$limit" "$@" || rc=$?
    if ((rc == 124 || rc == 137)); then
        printf '\n[test.sh] TIMEOUT: "%s" ran longer than %ss and was stopped\n' "$*" >&2
    fi
    return "$rc"
}

# rdkafka's `ssl` feature links the system's OpenSSL (TLS and SCRAM for Kafka): its headers and
# pkg-config must be there before anything compiles. Installed once, when missing.
if ! pkg-config --exists openssl 2>/dev/null; then
    step "installing libssl-dev and pkg-config (librdkafka links OpenSSL)"
    [[ $(id -u) -eq 0 ]] || { echo "OpenSSL headers missing: apt-get install -y libssl-dev pkg-config" >&2; exit 1; }
    apt-get update && apt-get install -y libssl-dev pkg-config
fi

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

step "cargo test --workspace --all-features $*"
bounded 2400 cargo test --workspace --all-features "$@"

# The raw-client benchmarks are measured with `cargo bench`; here they run small, in the test
# profile, so that CI shows they still run against the real brokers (their figures here mean
# nothing: debug build, a few hundred messages).
step "benchmarks run (small, debug build: that they work, not what they measure)"
# `--workspace --all-features`, as above, so the dependencies are built with the same features and
# reused: `-p` per crate unified features differently and rebuilt everything (twice the disk).
MAILROOM_BENCH_N=200 MAILROOM_BENCH_ROUNDS=1 bounded 600 cargo test --workspace --all-features \
    --bench vs_lapin --bench vs_rdkafka --bench vs_sdk

# Every `faults` test binary, one after another: the testkit's restart scenario on each backend.
# RabbitMQ's stops and starts the shared broker, Kafka's kills and restarts it twice, so they run
# alone; SQS's restarts a fauxqs of its own. Same selection flags as above so that nothing is
# rebuilt.
step "fault tests (RabbitMQ and Kafka brokers restarted, SQS on its own fauxqs; run alone)"
bounded 1200 cargo test --workspace --all-features --test faults -- --ignored --nocapture

step "conformance reports"
shopt -s nullglob
reports=("$MAILROOM_CONFORMANCE_REPORT_DIR"/*.txt)
if ((${#reports[@]} == 0)); then
    echo "no conformance report was written" >&2
    exit 1
fi
cat "${reports[@]}"
