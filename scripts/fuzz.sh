#!/usr/bin/env bash
# Fuzz every decoder of what other programs write (cargo-fuzz / libFuzzer; targets in fuzz/,
# described in docs/fuzzing.md), each for SECONDS_PER_TARGET (default 60), then print per target
# the executions, exec/s, coverage (libFuzzer's cov: and ft:), corpus size, and every crash,
# timeout, leak or out-of-memory input with its path. Exits 1 if any target found one.
#
#   scripts/fuzz.sh [SECONDS_PER_TARGET] [TARGET...]
#
# NOT part of CI or scripts/test.sh: it needs the nightly toolchain and runs for minutes. It
# installs what it needs (nightly, cargo-fuzz) if missing. The committed seeds (fuzz/seeds/T) are
# read, never written: the growing corpus and any crash input go under $MAILROOM_FUZZ_WORK
# (default: the cargo target dir's fuzz-work/). A crash input found becomes a regression test:
# copy it into fuzz/regressions/T/, where the stable test suite replays it (see docs/fuzzing.md).
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."
export HOME="${HOME:-$(getent passwd "$(id -u)" | cut -d: -f6)}"
export PATH="$HOME/.cargo/bin:$PATH"

seconds=${1:-60}
shift || true
if ! [[ $seconds =~ ^[0-9]+$ ]] || ((seconds < 1)); then
    echo "usage: scripts/fuzz.sh [SECONDS_PER_TARGET] [TARGET...]" >&2
    exit 2
fi

if ! rustup toolchain list | grep -q '^nightly'; then
    rustup toolchain install nightly --profile minimal
fi
if ! cargo +nightly fuzz --version >/dev/null 2>&1; then
    cargo install cargo-fuzz --locked
fi

target_root=${CARGO_TARGET_DIR:-$PWD/target}
work=${MAILROOM_FUZZ_WORK:-$target_root/fuzz-work}
fuzz=(cargo +nightly fuzz)
# One target dir for the fuzz build (its own flags would otherwise rebuild the main one).
dirs=(--fuzz-dir fuzz --target-dir "$target_root/fuzz")

if (($# > 0)); then
    targets=("$@")
else
    mapfile -t targets < <("${fuzz[@]}" list --fuzz-dir fuzz)
fi

echo "==> building every fuzz target (nightly, libFuzzer, AddressSanitizer, debug assertions)"
"${fuzz[@]}" build "${dirs[@]}"

found=0
summary=()
for t in "${targets[@]}"; do
    corpus="$work/corpus/$t"
    artifacts="$work/artifacts/$t"
    log="$work/$t.log"
    mkdir -p "$corpus" "$artifacts"
    echo "==> $t for ${seconds}s (log: $log)"
    rc=0
    # -timeout: an input taking 10 s is a hang; -rss_limit_mb: 2 GB is an out-of-memory bug.
    "${fuzz[@]}" run "${dirs[@]}" "$t" "$corpus" "fuzz/seeds/$t" -- \
        -max_total_time="$seconds" -timeout=10 -rss_limit_mb=2048 \
        -artifact_prefix="$artifacts/" -print_final_stats=1 >"$log" 2>&1 || rc=$?
    stat() { sed -n "s/^stat::$1: *//p" "$log" | tail -1; }
    runs=$(stat number_of_executed_units)
    rate=$(stat average_exec_per_sec)
    # The last status line: "#N  REDUCE/NEW/pulse/DONE  cov: C ft: F corp: U/Sb ...".
    status=$(grep -E '^#[0-9]+' "$log" | tail -1 || true)
    cov=$(sed -n 's/.* cov: \([0-9]*\).*/\1/p' <<<"$status")
    ft=$(sed -n 's/.* ft: \([0-9]*\).*/\1/p' <<<"$status")
    corp=$(sed -n 's/.* corp: \([^ ]*\).*/\1/p' <<<"$status")
    line=$(printf '%-14s runs %-10s exec/s %-7s cov %-6s ft %-6s corpus %s' \
        "$t" "${runs:-?}" "${rate:-?}" "${cov:-?}" "${ft:-?}" "${corp:-?}")
    shopt -s nullglob
    crashes=("$artifacts"/crash-* "$artifacts"/timeout-* "$artifacts"/leak-* "$artifacts"/oom-*)
    shopt -u nullglob
    if ((${#crashes[@]} > 0)) || ((rc != 0)); then
        found=1
        line+="  FOUND (exit $rc):"
        for c in "${crashes[@]}"; do
            line+=" $c"
        done
    fi
    echo "$line"
    summary+=("$line")
done

echo
echo "==> summary (${seconds}s per target; cov = coverage points, ft = features, corpus = inputs/bytes)"
printf '%s\n' "${summary[@]}"
if ((found)); then
    echo "a target found a crash, hang or leak: see the paths above and the logs under $work" >&2
    exit 1
fi
