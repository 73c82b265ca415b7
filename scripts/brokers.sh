#!/usr/bin/env bash
# Install and run the local brokers that mailroom's tests and benchmarks use.
# Everything listens on 127.0.0.1 only. See usage() below, or run with --help.
set -euo pipefail

export HOME="${HOME:-$(getent passwd "$(id -u)" | cut -d: -f6)}"
export PATH="$HOME/.cargo/bin:$PATH:/usr/local/sbin:/usr/sbin:/sbin"

BROKERS_HOME="${MAILROOM_BROKERS_HOME:-$HOME/.local/share/mailroom-brokers}"
ALL_BROKERS=(rabbitmq kafka sqs)

RABBITMQ_PORT=5672
RABBITMQ_START_TIMEOUT="${MAILROOM_RABBITMQ_START_TIMEOUT:-90}"

TANSU_VERSION=0.6.0
TANSU_FEATURES=dynostore,libsql
KAFKA_PORT=9092
KAFKA_DIR="$BROKERS_HOME/kafka"
KAFKA_START_TIMEOUT="${MAILROOM_KAFKA_START_TIMEOUT:-60}"
# A fresh `cargo install tansu` takes ~12 min on 2 cores; allow for a slow machine.
TANSU_INSTALL_TIMEOUT="${MAILROOM_TANSU_INSTALL_TIMEOUT:-3600}"

FAUXQS_VERSION=1.9.2 # later versions need Node >= 22
SQS_PORT=4566
SQS_DIR="$BROKERS_HOME/sqs"
SQS_START_TIMEOUT="${MAILROOM_SQS_START_TIMEOUT:-30}"

STOP_TIMEOUT=15

usage() {
    cat <<EOF
usage: scripts/brokers.sh COMMAND [NAME...]

NAME is one or more of: ${ALL_BROKERS[*]} (default: all).

commands:
  up [NAME...]       install what is missing, start what is not running, wait until it answers.
                     Idempotent: a second 'up' is a quick no-op.
  down [NAME...]     stop cleanly (SIGTERM, then SIGKILL after ${STOP_TIMEOUT}s).
                     RabbitMQ is the machine's own service and is left running unless
                     MAILROOM_STOP_SYSTEM_BROKERS=1 (then: rabbitmqctl stop).
  restart [NAME...]  down, then up.
  reset kafka        stop tansu, drop its storage, start it empty (test runs use this).
  kill NAME...       SIGKILL at once, for fault tests (kafka, sqs). Bring back with 'up'.
                     For RabbitMQ use 'rabbitmqctl stop_app'; 'up rabbitmq' runs start_app.
  status [NAME...]   one line per broker: up/down, address, version. Always exits 0.

brokers (all on loopback):
  rabbitmq  amqp://guest:guest@127.0.0.1:${RABBITMQ_PORT}  Debian package rabbitmq-server
  kafka     127.0.0.1:${KAFKA_PORT}   tansu ${TANSU_VERSION} (cargo install), sqlite storage in ${KAFKA_DIR}
  sqs       http://127.0.0.1:${SQS_PORT}  fauxqs ${FAUXQS_VERSION} (npm), in-memory, in ${SQS_DIR}

environment:
  MAILROOM_BROKERS_HOME          data dir (default: \$HOME/.local/share/mailroom-brokers)
  MAILROOM_STOP_SYSTEM_BROKERS=1 let 'down rabbitmq' stop the machine's RabbitMQ
  MAILROOM_SQS_LOG=1             fauxqs logs every request (off by default: it skews benchmarks)
EOF
}

log() { printf '[brokers] %s\n' "$*" >&2; }
die() {
    printf '[brokers] ERROR: %s\n' "$*" >&2
    exit 1
}

# tcp_open PORT: does something accept TCP connections on 127.0.0.1:PORT?
tcp_open() {
    # shellcheck disable=SC2016 # $1 expands in the inner shell
    timeout 2 bash -c 'exec 3<>"/dev/tcp/127.0.0.1/$1"' _ "$1" 2>/dev/null
}

# http_ok URL: a 2xx answer within 2 s.
http_ok() {
    command -v curl >/dev/null 2>&1 || die "curl not found (needed for the fauxqs health check): apt-get install -y curl"
    curl -fsS --max-time 2 -o /dev/null "$1" 2>/dev/null
}

# proc_alive PID: the process exists and is not a zombie waiting to be reaped.
proc_alive() {
    local state
    kill -0 "$1" 2>/dev/null || return 1
    state=$(awk '{print $3}' "/proc/$1/stat" 2>/dev/null) || return 1
    [[ -n $state && $state != Z ]]
}

# pid_alive PIDFILE NEEDLE: the pid in PIDFILE is alive and its command line contains NEEDLE.
pid_alive() {
    local pidfile=$1 needle=$2 pid
    [[ -s $pidfile ]] || return 1
    pid=$(<"$pidfile")
    [[ $pid =~ ^[0-9]+$ ]] || return 1
    proc_alive "$pid" || return 1
    tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null | grep -q -- "$needle"
}

# stop_pidfile NAME PIDFILE NEEDLE SIGNAL: stop the process; SIGTERM waits then escalates.
stop_pidfile() {
    local name=$1 pidfile=$2 needle=$3 sig=$4 pid i
    if ! pid_alive "$pidfile" "$needle"; then
        rm -f "$pidfile"
        log "$name: not running (no live pid in $pidfile)"
        return 0
    fi
    pid=$(<"$pidfile")
    if [[ $sig == KILL ]]; then
        kill -KILL "$pid" 2>/dev/null || true
        log "$name: sent SIGKILL to pid $pid"
    else
        kill -TERM "$pid" 2>/dev/null || true
        for ((i = 0; i < STOP_TIMEOUT * 10; i++)); do
            proc_alive "$pid" || break
            sleep 0.1
        done
        if proc_alive "$pid"; then
            log "$name: pid $pid ignored SIGTERM for ${STOP_TIMEOUT}s, sending SIGKILL"
            kill -KILL "$pid" 2>/dev/null || true
        fi
    fi
    for ((i = 0; i < 50; i++)); do
        proc_alive "$pid" || break
        sleep 0.1
    done
    proc_alive "$pid" && die "$name: pid $pid is still alive after SIGKILL"
    rm -f "$pidfile"
    log "$name: stopped (pid $pid)"
}

log_tail() {
    local file=$1
    if [[ -f $file ]]; then
        printf -- '----- last lines of %s -----\n' "$file" >&2
        tail -n 40 "$file" >&2
        printf -- '-----\n' >&2
    fi
}

# ---------------------------------------------------------------- rabbitmq

rabbit_node_up() { timeout 20 rabbitmq-diagnostics -q ping >/dev/null 2>&1; }
rabbit_app_up() { timeout 20 rabbitmq-diagnostics -q check_running >/dev/null 2>&1; }
rabbit_version() { timeout 20 rabbitmq-diagnostics -q server_version 2>/dev/null | tail -n 1; }

# On a machine where this script installed RabbitMQ, keep it on loopback.
rabbit_configure_loopback() {
    local conf=/etc/rabbitmq/rabbitmq.conf env=/etc/rabbitmq/rabbitmq-env.conf
    mkdir -p /etc/rabbitmq
    if ! grep -qs '^listeners\.tcp' "$conf"; then
        log "rabbitmq: binding AMQP to 127.0.0.1:$RABBITMQ_PORT in $conf"
        printf 'listeners.tcp.local = 127.0.0.1:%s\n' "$RABBITMQ_PORT" >>"$conf"
    fi
    if ! grep -qs '^NODENAME=' "$env"; then
        log "rabbitmq: node rabbit@localhost, epmd and distribution on 127.0.0.1, in $env"
        cat >>"$env" <<'EOF'
NODENAME=rabbit@localhost
ERL_EPMD_ADDRESS=127.0.0.1
export ERL_FLAGS="-kernel inet_dist_use_interface {127,0,0,1}"
EOF
    fi
}

rabbitmq_up() {
    local installed_now=0 deadline
    # RabbitMQ closes its AMQP listener on stop_app, so an open port means the app runs.
    if tcp_open "$RABBITMQ_PORT"; then
        log "rabbitmq: already up on 127.0.0.1:$RABBITMQ_PORT"
        return 0
    fi
    if ! command -v rabbitmq-server >/dev/null 2>&1; then
        log "rabbitmq: rabbitmq-server not found, installing the Debian package"
        [[ $(id -u) -eq 0 ]] || die "rabbitmq: rabbitmq-server is not installed and installing it needs root"
        export DEBIAN_FRONTEND=noninteractive
        apt-get update || die "rabbitmq: apt-get update failed"
        apt-get install -y rabbitmq-server || die "rabbitmq: apt-get install -y rabbitmq-server failed"
        command -v rabbitmq-server >/dev/null 2>&1 || die "rabbitmq: rabbitmq-server still missing after apt-get install"
        installed_now=1
        rabbit_configure_loopback
        # The package may have started a node with the default config; restart it with ours.
        if rabbit_node_up; then
            log "rabbitmq: restarting the node the package started, to pick up the loopback config"
            timeout 60 rabbitmqctl stop >/dev/null 2>&1 || true
        fi
    fi

    if rabbit_node_up; then
        if ! rabbit_app_up; then
            log "rabbitmq: node answers but the app is stopped; rabbitmqctl start_app"
            timeout "$RABBITMQ_START_TIMEOUT" rabbitmqctl start_app || die "rabbitmq: rabbitmqctl start_app failed"
        fi
    else
        log "rabbitmq: node not answering; starting it with rabbitmq-server -detached"
        rabbitmq-server -detached || die "rabbitmq: rabbitmq-server -detached failed (see /var/log/rabbitmq/)"
        timeout "$RABBITMQ_START_TIMEOUT" rabbitmqctl await_startup >/dev/null 2>&1 ||
            log "rabbitmq: rabbitmqctl await_startup did not succeed within ${RABBITMQ_START_TIMEOUT}s; checking the port"
        if ! rabbit_app_up; then
            # A node that came up with its app stopped (left by stop_app before a restart).
            if rabbit_node_up; then
                timeout "$RABBITMQ_START_TIMEOUT" rabbitmqctl start_app >/dev/null 2>&1 || true
            fi
        fi
    fi

    deadline=$((SECONDS + RABBITMQ_START_TIMEOUT))
    until tcp_open "$RABBITMQ_PORT"; do
        if ((SECONDS >= deadline)); then
            log_tail "/var/log/rabbitmq/rabbit@localhost.log"
            log_tail /var/log/rabbitmq/startup_err
            die "rabbitmq: nothing accepts connections on 127.0.0.1:$RABBITMQ_PORT after ${RABBITMQ_START_TIMEOUT}s"
        fi
        sleep 0.5
    done
    if ((installed_now)); then
        log "rabbitmq: installed and up on 127.0.0.1:$RABBITMQ_PORT"
    else
        log "rabbitmq: up on 127.0.0.1:$RABBITMQ_PORT"
    fi
}

rabbitmq_down() {
    if [[ ${MAILROOM_STOP_SYSTEM_BROKERS:-0} != 1 ]]; then
        log "rabbitmq: left running (it is the machine's service; set MAILROOM_STOP_SYSTEM_BROKERS=1 to stop it)"
        return 0
    fi
    if ! command -v rabbitmqctl >/dev/null 2>&1 || ! rabbit_node_up; then
        log "rabbitmq: not running"
        return 0
    fi
    timeout 60 rabbitmqctl stop || die "rabbitmq: rabbitmqctl stop failed"
    log "rabbitmq: stopped"
}

rabbitmq_status() {
    local state=down version=""
    if ! command -v rabbitmq-server >/dev/null 2>&1; then
        state="down (not installed)"
    elif tcp_open "$RABBITMQ_PORT"; then
        state=up
        version=$(rabbit_version || true)
    elif rabbit_node_up; then
        state="down (node running, app stopped)"
        version=$(rabbit_version || true)
    fi
    printf '%-9s %-5s %-28s %s\n' rabbitmq "$state" "amqp://127.0.0.1:$RABBITMQ_PORT" "${version:+rabbitmq $version}"
}

# ---------------------------------------------------------------- kafka (tansu)

tansu_installed_version() {
    command -v tansu >/dev/null 2>&1 || return 1
    # prints "tansu 0.6.0"
    tansu --version 2>/dev/null | awk '{print $2; exit}'
}

tansu_install() {
    local v deadline
    v=$(tansu_installed_version || true)
    [[ $v == "$TANSU_VERSION" ]] && return 0

    mkdir -p "$KAFKA_DIR"
    # One install at a time: our own (lock) and any other running `cargo install tansu`.
    exec 8>"$KAFKA_DIR/install.lock"
    flock -w "$TANSU_INSTALL_TIMEOUT" 8 || die "kafka: timed out waiting for another brokers.sh to finish installing tansu"
    deadline=$((SECONDS + TANSU_INSTALL_TIMEOUT))
    while pgrep -f "cargo install .*tansu" >/dev/null 2>&1; do
        ((SECONDS < deadline)) || die "kafka: another 'cargo install tansu' is still running after ${TANSU_INSTALL_TIMEOUT}s"
        log "kafka: another 'cargo install tansu' is running; waiting for it"
        sleep 15
    done
    v=$(tansu_installed_version || true)
    if [[ $v != "$TANSU_VERSION" ]]; then
        command -v cargo >/dev/null 2>&1 || die "kafka: cargo not found (need a Rust toolchain to install tansu)"
        log "kafka: installing tansu $TANSU_VERSION (found: ${v:-none}); cargo install takes ~12 min on 2 cores, log: $KAFKA_DIR/install.log"
        if ! cargo install tansu --locked --version "$TANSU_VERSION" --features "$TANSU_FEATURES" \
            >"$KAFKA_DIR/install.log" 2>&1; then
            log_tail "$KAFKA_DIR/install.log"
            die "kafka: cargo install tansu --version $TANSU_VERSION failed"
        fi
        v=$(tansu_installed_version || true)
        [[ $v == "$TANSU_VERSION" ]] || die "kafka: after install, 'tansu --version' reports '${v:-nothing}', wanted $TANSU_VERSION"
    fi
    flock -u 8
    exec 8>&-
}

# tansu 0.6's sqlite schema has no index on header (topition, offset_id), yet its fetch looks
# up each fetched record's headers by that pair: every record read scans every header ever
# stored, so a topic of 10,000 records with headers takes minutes to read and a consumer looks
# stalled. The index turns that scan into a lookup; it is idempotent and tansu's own queries
# are unchanged.
tansu_index_headers() {
    command -v python3 >/dev/null 2>&1 || die "kafka: python3 not found (needed to add tansu's missing header index)"
    python3 - "$KAFKA_DIR/tansu.db" <<'PY' || die "kafka: could not add the header index to $KAFKA_DIR/tansu.db"
import sqlite3, sys, time
db = sqlite3.connect(sys.argv[1], timeout=60)
for _ in range(300):
    if db.execute("select 1 from sqlite_master where type = 'table' and name = 'header'").fetchone():
        break
    time.sleep(0.1)
else:
    sys.exit("tansu has not created its header table after 30 s")
db.execute("create index if not exists mailroom_header_by_record on header (topition, offset_id)")
db.commit()
PY
}

# tansu 0.6 keeps accepting connections after its storage task panicked, answering every
# request with an error; such a broker is down for our purposes. The log since our last start
# tells.
tansu_wedged() {
    local logfile="$KAFKA_DIR/tansu.log"
    [[ -f $logfile ]] || return 1
    awk '/^=== brokers.sh: starting tansu/ { bad = 0 } /panicked at/ { bad = 1 } END { exit !bad }' "$logfile"
}

kafka_up() {
    local pidfile="$KAFKA_DIR/tansu.pid" logfile="$KAFKA_DIR/tansu.log" pid deadline
    if pid_alive "$pidfile" tansu && tcp_open "$KAFKA_PORT" && tansu_wedged; then
        log "kafka: tansu (pid $(<"$pidfile")) is up but its storage task panicked (see $logfile); restarting it"
        kafka_down
    fi
    if pid_alive "$pidfile" tansu && tcp_open "$KAFKA_PORT"; then
        tansu_index_headers
        log "kafka: already up on 127.0.0.1:$KAFKA_PORT (pid $(<"$pidfile"))"
        return 0
    fi
    tansu_install
    if ! pid_alive "$pidfile" tansu && tcp_open "$KAFKA_PORT"; then
        die "kafka: something not started by this script already listens on 127.0.0.1:$KAFKA_PORT ($(ss -ltnp "sport = :$KAFKA_PORT" 2>/dev/null | tail -n +2 | tr -s ' ' | head -n 1))"
    fi
    if pid_alive "$pidfile" tansu; then
        # Alive but not (yet) accepting: it may still be starting; the wait below decides.
        pid=$(<"$pidfile")
        log "kafka: tansu pid $pid is running but not accepting yet; waiting"
    else
        mkdir -p "$KAFKA_DIR"
        printf '\n=== brokers.sh: starting tansu at %s\n' "$(date -u +%FT%TZ)" >>"$logfile"
        # tansu 0.6.0 resolves a sqlite:// URL against its working directory, even an
        # absolute one (sqlite:///abs/path -> $PWD/abs/path), so run it in the data dir.
        # Environment variables that tansu would read for options we do not pass are dropped.
        (
            cd "$KAFKA_DIR"
            exec env -u SCHEMA_REGISTRY -u OTEL_EXPORTER_OTLP_ENDPOINT -u CLUSTER_ID \
                setsid nohup tansu broker \
                --listener-url "tcp://127.0.0.1:$KAFKA_PORT" \
                --advertised-listener-url "tcp://127.0.0.1:$KAFKA_PORT" \
                --storage-engine "sqlite://tansu.db" \
                </dev/null >>"$logfile" 2>&1
        ) &
        pid=$!
        echo "$pid" >"$pidfile"
        log "kafka: started tansu $TANSU_VERSION (pid $pid), storage $KAFKA_DIR/tansu.db, log $logfile"
    fi
    deadline=$((SECONDS + KAFKA_START_TIMEOUT))
    until tcp_open "$KAFKA_PORT"; do
        if ! proc_alive "$pid"; then
            rm -f "$pidfile"
            log_tail "$logfile"
            die "kafka: tansu exited before accepting connections on 127.0.0.1:$KAFKA_PORT"
        fi
        if ((SECONDS >= deadline)); then
            log_tail "$logfile"
            die "kafka: tansu (pid $pid) not accepting on 127.0.0.1:$KAFKA_PORT after ${KAFKA_START_TIMEOUT}s"
        fi
        sleep 0.2
    done
    tansu_index_headers
    log "kafka: up on 127.0.0.1:$KAFKA_PORT"
}

kafka_down() { stop_pidfile kafka "$KAFKA_DIR/tansu.pid" tansu TERM; }
kafka_kill() { stop_pidfile kafka "$KAFKA_DIR/tansu.pid" tansu KILL; }
# Stop tansu, drop its storage and start it empty: test runs start from a known state, since
# tansu 0.6's sqlite storage can carry a wedged state from an earlier crash.
kafka_reset() {
    kafka_down
    rm -f "$KAFKA_DIR"/tansu.db "$KAFKA_DIR"/tansu.db-*
    log "kafka: storage dropped"
    kafka_up
}

kafka_status() {
    local state=down version="" v pid=""
    v=$(tansu_installed_version || true)
    [[ -n $v ]] && version="tansu $v" || state="down (not installed)"
    if pid_alive "$KAFKA_DIR/tansu.pid" tansu; then
        pid=$(<"$KAFKA_DIR/tansu.pid")
        tcp_open "$KAFKA_PORT" && state=up || state="down (pid $pid not accepting)"
        [[ $state == up ]] && tansu_wedged && state="down (storage panicked; 'up' restarts it)"
    elif tcp_open "$KAFKA_PORT"; then
        state="up (not started by this script)"
    fi
    printf '%-9s %-5s %-28s %s\n' kafka "$state" "127.0.0.1:$KAFKA_PORT" "$version${pid:+ pid $pid}"
}

# ---------------------------------------------------------------- sqs (fauxqs)

fauxqs_installed_version() {
    local pj="$SQS_DIR/node_modules/fauxqs/package.json"
    [[ -f $pj ]] || return 1
    node -p 'require(process.argv[1]).version' "$pj" 2>/dev/null
}

fauxqs_install() {
    local v
    command -v node >/dev/null 2>&1 || die "sqs: node not found (fauxqs $FAUXQS_VERSION needs Node >= 20): apt-get install -y nodejs npm"
    command -v npm >/dev/null 2>&1 || die "sqs: npm not found: apt-get install -y npm"
    v=$(fauxqs_installed_version || true)
    if [[ $v != "$FAUXQS_VERSION" ]]; then
        mkdir -p "$SQS_DIR"
        [[ -f $SQS_DIR/package.json ]] ||
            printf '{ "name": "mailroom-sqs-broker", "private": true }\n' >"$SQS_DIR/package.json"
        log "sqs: installing fauxqs $FAUXQS_VERSION (found: ${v:-none}) into $SQS_DIR"
        if ! (cd "$SQS_DIR" && npm install --no-audit --no-fund "fauxqs@$FAUXQS_VERSION") >"$SQS_DIR/install.log" 2>&1; then
            log_tail "$SQS_DIR/install.log"
            die "sqs: npm install fauxqs@$FAUXQS_VERSION failed"
        fi
        v=$(fauxqs_installed_version || true)
        [[ $v == "$FAUXQS_VERSION" ]] || die "sqs: after npm install, fauxqs reports version '${v:-nothing}', wanted $FAUXQS_VERSION"
    fi
    # fauxqs's own CLI (dist/cli.js -> startFauxqs) always listens on 0.0.0.0; FAUXQS_HOST only
    # changes the host in queue URLs. This launcher runs the same startFauxqs, with the listen
    # address forced to loopback.
    cat >"$SQS_DIR/run-fauxqs.mjs" <<'EOF'
// Generated by scripts/brokers.sh: run fauxqs's startFauxqs() bound to 127.0.0.1 only.
import net from "node:net";
const bind = process.env.FAUXQS_BIND ?? "127.0.0.1";
const listen = net.Server.prototype.listen;
net.Server.prototype.listen = function (...args) {
  const opts = args[0];
  if (opts && typeof opts === "object" && !Array.isArray(opts)) args[0] = { ...opts, host: bind };
  return listen.apply(this, args);
};
const { startFauxqs } = await import("fauxqs");
await startFauxqs({});
EOF
}

sqs_up() {
    local pidfile="$SQS_DIR/fauxqs.pid" logfile="$SQS_DIR/fauxqs.log" pid deadline
    local health="http://127.0.0.1:$SQS_PORT/health"
    if pid_alive "$pidfile" run-fauxqs && http_ok "$health"; then
        log "sqs: already up on http://127.0.0.1:$SQS_PORT (pid $(<"$pidfile"))"
        return 0
    fi
    fauxqs_install
    if ! pid_alive "$pidfile" run-fauxqs && tcp_open "$SQS_PORT"; then
        die "sqs: something not started by this script already listens on 127.0.0.1:$SQS_PORT ($(ss -ltnp "sport = :$SQS_PORT" 2>/dev/null | tail -n +2 | tr -s ' ' | head -n 1))"
    fi
    if pid_alive "$pidfile" run-fauxqs; then
        pid=$(<"$pidfile")
        log "sqs: fauxqs pid $pid is running but not healthy yet; waiting"
    else
        local logger=false
        [[ ${MAILROOM_SQS_LOG:-0} == 1 ]] && logger=true
        printf '\n=== brokers.sh: starting fauxqs at %s\n' "$(date -u +%FT%TZ)" >>"$logfile"
        (
            cd "$SQS_DIR"
            exec env -u FAUXQS_HOST -u FAUXQS_INIT FAUXQS_PORT="$SQS_PORT" FAUXQS_BIND=127.0.0.1 \
                FAUXQS_LOGGER="$logger" setsid nohup node run-fauxqs.mjs \
                </dev/null >>"$logfile" 2>&1
        ) &
        pid=$!
        echo "$pid" >"$pidfile"
        log "sqs: started fauxqs $FAUXQS_VERSION (pid $pid), log $logfile"
    fi
    deadline=$((SECONDS + SQS_START_TIMEOUT))
    until http_ok "$health"; do
        if ! proc_alive "$pid"; then
            rm -f "$pidfile"
            log_tail "$logfile"
            die "sqs: fauxqs exited before answering $health"
        fi
        if ((SECONDS >= deadline)); then
            log_tail "$logfile"
            die "sqs: fauxqs (pid $pid) did not answer $health within ${SQS_START_TIMEOUT}s"
        fi
        sleep 0.2
    done
    log "sqs: up on http://127.0.0.1:$SQS_PORT"
}

sqs_down() { stop_pidfile sqs "$SQS_DIR/fauxqs.pid" run-fauxqs TERM; }
sqs_kill() { stop_pidfile sqs "$SQS_DIR/fauxqs.pid" run-fauxqs KILL; }

sqs_status() {
    local state=down version="" v pid=""
    if command -v node >/dev/null 2>&1; then
        v=$(fauxqs_installed_version || true)
    else
        v=""
    fi
    [[ -n $v ]] && version="fauxqs $v" || state="down (not installed)"
    if pid_alive "$SQS_DIR/fauxqs.pid" run-fauxqs; then
        pid=$(<"$SQS_DIR/fauxqs.pid")
        http_ok "http://127.0.0.1:$SQS_PORT/health" && state=up || state="down (pid $pid not healthy)"
    elif tcp_open "$SQS_PORT"; then
        state="up (not started by this script)"
    fi
    printf '%-9s %-5s %-28s %s\n' sqs "$state" "http://127.0.0.1:$SQS_PORT" "$version${pid:+ pid $pid}"
}

# ---------------------------------------------------------------- main

names_or_all() {
    local n
    if (($# == 0)); then
        printf '%s\n' "${ALL_BROKERS[@]}"
        return
    fi
    for n in "$@"; do
        case $n in
            rabbitmq | kafka | sqs) printf '%s\n' "$n" ;;
            *) die "unknown broker '$n' (expected one of: ${ALL_BROKERS[*]})" ;;
        esac
    done
}

main() {
    local cmd=${1:-}
    (($# > 0)) && shift
    local names n
    case $cmd in
        reset)
            (($# > 0)) || die "reset needs a broker name (kafka)"
            for n in "$@"; do
                case $n in
                    kafka) mkdir -p "$BROKERS_HOME" && kafka_reset ;;
                    *) die "reset supports kafka only (the others keep nothing or are machine services)" ;;
                esac
            done
            ;;
        up | down | status | restart)
            names=$(names_or_all "$@") || exit 1
            mkdir -p "$BROKERS_HOME"
            for n in $names; do
                case $cmd in
                    up) "${n}_up" ;;
                    down) "${n}_down" ;;
                    restart) "${n}_down" && "${n}_up" ;;
                    status) "${n}_status" ;;
                esac
            done
            ;;
        kill)
            (($# > 0)) || die "kill needs a broker name (kafka or sqs)"
            for n in "$@"; do
                case $n in
                    kafka) kafka_kill ;;
                    sqs) sqs_kill ;;
                    rabbitmq) die "kill rabbitmq is not supported (machine service); use 'rabbitmqctl stop_app' and then 'scripts/brokers.sh up rabbitmq'" ;;
                    *) die "unknown broker '$n' (expected kafka or sqs)" ;;
                esac
            done
            ;;
        -h | --help | help)
            usage
            ;;
        "")
            usage >&2
            exit 2
            ;;
        *)
            usage >&2
            die "unknown command '$cmd'"
            ;;
    esac
}

main "$@"
