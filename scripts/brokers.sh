#!/usr/bin/env bash
# Install and run the local brokers that mailroom's tests and benchmarks use.
# Everything listens on 127.0.0.1 only. See usage() below, or run with --help.
set -euo pipefail

export HOME="${HOME:-$(getent passwd "$(id -u)" | cut -d: -f6)}"
export PATH="$HOME/.cargo/bin:$PATH:/usr/local/sbin:/usr/sbin:/sbin"

BROKERS_HOME="${MAILROOM_BROKERS_HOME:-$HOME/.local/share/mailroom-brokers}"
SCRIPTS_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ALL_BROKERS=(rabbitmq kafka sqs)

RABBITMQ_PORT=5672
RABBITMQ_START_TIMEOUT="${MAILROOM_RABBITMQ_START_TIMEOUT:-90}"

# Apache Kafka, pinned: its broker jars come from Maven Central (scripts/kafka/pom.xml).
KAFKA_VERSION=4.1.1
KAFKA_PORT=9092
KAFKA_DIR="$BROKERS_HOME/kafka"
KAFKA_START_TIMEOUT="${MAILROOM_KAFKA_START_TIMEOUT:-90}"
KAFKA_HEAP="${MAILROOM_KAFKA_HEAP:-1g}"
KAFKA_POM="$SCRIPTS_DIR/kafka/pom.xml"
KAFKA_CONF_TEMPLATE="$SCRIPTS_DIR/kafka/server.properties"
KAFKA_LOG_CONFIG="$SCRIPTS_DIR/kafka/log4j2.yaml"

# tansu, a Kafka-protocol broker in Rust: opt-in only (`up tansu`), on its own port, for
# checking the Kafka backend against a second implementation. Not what `kafka` means.
TANSU_VERSION=0.6.0
TANSU_FEATURES=dynostore,libsql
TANSU_PORT=9192
TANSU_DIR="$BROKERS_HOME/tansu"
TANSU_START_TIMEOUT="${MAILROOM_TANSU_START_TIMEOUT:-60}"
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

NAME is one or more of: ${ALL_BROKERS[*]} (default: all), or tansu (opt-in, never a default).

commands:
  up [NAME...]       install what is missing, start what is not running, wait until it answers.
                     Idempotent: a second 'up' is a quick no-op.
  down [NAME...]     stop cleanly (SIGTERM, then SIGKILL after ${STOP_TIMEOUT}s).
                     RabbitMQ is the machine's own service and is left running unless
                     MAILROOM_STOP_SYSTEM_BROKERS=1 (then: rabbitmqctl stop).
  restart [NAME...]  down, then up.
  reset kafka|tansu  stop it, drop its data, start it empty.
  kill NAME...       SIGKILL at once, for fault tests (kafka, sqs, tansu). Bring back with 'up'.
                     For RabbitMQ use 'rabbitmqctl stop_app'; 'up rabbitmq' runs start_app.
  status [NAME...]   one line per broker: up/down, address, version. Always exits 0.
  version NAME       the implementation and version serving NAME's port, when this script
                     started it (e.g. "Apache Kafka 4.1.1"); exits 1 if it is not running.
                     Test reports name the broker with it.

brokers (all on loopback):
  rabbitmq  amqp://guest:guest@127.0.0.1:${RABBITMQ_PORT}  Debian package rabbitmq-server
  kafka     127.0.0.1:${KAFKA_PORT}   Apache Kafka ${KAFKA_VERSION} (jars from Maven Central), KRaft, one
                                    broker+controller node (controller on 127.0.0.1:9093), data in ${KAFKA_DIR}
  tansu     127.0.0.1:${TANSU_PORT}   tansu ${TANSU_VERSION} (cargo install, ~12 min), sqlite storage in ${TANSU_DIR}
  sqs       http://127.0.0.1:${SQS_PORT}  fauxqs ${FAUXQS_VERSION} (npm), in-memory, in ${SQS_DIR}

environment:
  MAILROOM_BROKERS_HOME          data dir (default: \$HOME/.local/share/mailroom-brokers)
  MAILROOM_STOP_SYSTEM_BROKERS=1 let 'down rabbitmq' stop the machine's RabbitMQ
  MAILROOM_KAFKA_HEAP            Apache Kafka's JVM heap (default 1g)
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

# await_serving NAME PID PIDFILE LOGFILE TIMEOUT WHAT CHECK...: wait until CHECK succeeds;
# fail loudly, with the log's tail, if the process dies first or TIMEOUT seconds pass.
await_serving() {
    local name=$1 pid=$2 pidfile=$3 logfile=$4 timeout=$5 what=$6 deadline
    shift 6
    deadline=$((SECONDS + timeout))
    until "$@"; do
        if ! proc_alive "$pid"; then
            rm -f "$pidfile"
            log_tail "$logfile"
            die "$name: exited before $what"
        fi
        if ((SECONDS >= deadline)); then
            log_tail "$logfile"
            die "$name: pid $pid not $what after ${timeout}s"
        fi
        sleep 0.2
    done
}

# refuse_foreign NAME PORT: something this script did not start holds the port; say what.
refuse_foreign() {
    die "$1: something not started by this script already listens on 127.0.0.1:$2 ($(ss -ltnp "sport = :$2" 2>/dev/null | tail -n +2 | tr -s ' ' | head -n 1))"
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

# Stream queues (?queue_type=stream, read over AMQP 0-9-1: no plugin needed) need the
# stream_queue feature flag: on by default on a fresh 3.9+ node, off on one upgraded from 3.8.
# Enabling it again is a no-op, and needs no restart.
rabbit_enable_streams() {
    timeout 30 rabbitmqctl -q enable_feature_flag stream_queue >/dev/null 2>&1 ||
        log "rabbitmq: could not enable the stream_queue feature flag; stream queues will be refused"
}

rabbitmq_up() {
    local installed_now=0 deadline
    # RabbitMQ closes its AMQP listener on stop_app, so an open port means the app runs.
    if tcp_open "$RABBITMQ_PORT"; then
        rabbit_enable_streams
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
    rabbit_enable_streams
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

# ---------------------------------------------------------------- kafka (Apache Kafka)

# The broker's jars come from Maven Central through scripts/kafka/pom.xml, once per version.
kafka_dist() { printf '%s/apache-kafka-%s' "$KAFKA_DIR" "$KAFKA_VERSION"; }
kafka_java() { java -Xms256m -Xmx"$KAFKA_HEAP" -cp "$(kafka_dist)/libs/*" "$@"; }

kafka_install() {
    local dist libs
    dist=$(kafka_dist)
    libs="$dist/libs"
    [[ -f $dist/.complete ]] && return 0
    command -v java >/dev/null 2>&1 || die "kafka: java not found (Apache Kafka $KAFKA_VERSION needs Java 17+): apt-get install -y openjdk-17-jre-headless"
    command -v mvn >/dev/null 2>&1 || die "kafka: mvn not found (it fetches the broker's jars from Maven Central): apt-get install -y maven"
    local java_major
    java_major=$(java -XshowSettings:properties -version 2>&1 | awk -F' = ' '/java.specification.version/ {print $2}')
    [[ ${java_major%%.*} -ge 17 ]] 2>/dev/null || die "kafka: Apache Kafka $KAFKA_VERSION needs Java 17+, found '${java_major:-unknown}'"
    mkdir -p "$KAFKA_DIR"
    exec 8>"$KAFKA_DIR/install.lock"
    flock -w 600 8 || die "kafka: timed out waiting for another brokers.sh to finish fetching Apache Kafka"
    if [[ ! -f $dist/.complete ]]; then
        log "kafka: fetching Apache Kafka $KAFKA_VERSION's jars from Maven Central (log: $KAFKA_DIR/install.log)"
        rm -rf "$dist"
        if ! mvn -B -q -f "$KAFKA_POM" -Dkafka.version="$KAFKA_VERSION" \
            dependency:copy-dependencies -DincludeScope=runtime -DoutputDirectory="$libs" \
            >"$KAFKA_DIR/install.log" 2>&1; then
            log_tail "$KAFKA_DIR/install.log"
            die "kafka: mvn dependency:copy-dependencies for org.apache.kafka:kafka_2.13:$KAFKA_VERSION failed"
        fi
        [[ -f $libs/kafka_2.13-$KAFKA_VERSION.jar ]] || die "kafka: $libs/kafka_2.13-$KAFKA_VERSION.jar missing after mvn"
        touch "$dist/.complete"
    fi
    flock -u 8
    exec 8>&-
}

# Writes server.properties into the data dir and formats the storage once (a KRaft node will not
# start on an unformatted log dir).
kafka_format() {
    local conf="$KAFKA_DIR/server.properties" data="$KAFKA_DIR/data"
    kafka_conf >"$conf"
    [[ -f $data/meta.properties ]] && return 0
    mkdir -p "$data"
    log "kafka: formatting $data (KRaft, one standalone controller)"
    local cluster_id
    cluster_id=$(kafka_java kafka.tools.StorageTool random-uuid 2>>"$KAFKA_DIR/install.log") ||
        die "kafka: StorageTool random-uuid failed (see $KAFKA_DIR/install.log)"
    kafka_java kafka.tools.StorageTool format --standalone -t "$cluster_id" -c "$conf" \
        >>"$KAFKA_DIR/install.log" 2>&1 || {
        log_tail "$KAFKA_DIR/install.log"
        die "kafka: StorageTool format failed"
    }
}

# The server logs this once it serves clients; an open port alone can precede that.
kafka_started_since_last_start() {
    awk '/^=== brokers.sh: starting Apache Kafka/ { ok = 0 } /Kafka Server started/ { ok = 1 } END { exit !ok }' \
        "$KAFKA_DIR/kafka.log" 2>/dev/null
}

kafka_serving() { tcp_open "$KAFKA_PORT" && kafka_started_since_last_start; }

# The server.properties this checkout asks for, with the data dir filled in.
kafka_conf() { sed "s#@LOG_DIR@#$KAFKA_DIR/data#" "$KAFKA_CONF_TEMPLATE"; }

kafka_up() {
    local pidfile="$KAFKA_DIR/kafka.pid" logfile="$KAFKA_DIR/kafka.log" pid
    # A broker left running by an older checkout keeps the settings it started with; tests that
    # depend on a setting (retention, above all) would then pass or fail by which ran first.
    if pid_alive "$pidfile" kafka.Kafka && ! kafka_conf | cmp -s - "$KAFKA_DIR/server.properties"; then
        log "kafka: scripts/kafka/server.properties changed since pid $(<"$pidfile") started; restarting it"
        kafka_down
    fi
    if pid_alive "$pidfile" kafka.Kafka && tcp_open "$KAFKA_PORT" && kafka_started_since_last_start; then
        log "kafka: already up on 127.0.0.1:$KAFKA_PORT (pid $(<"$pidfile"))"
        return 0
    fi
    kafka_install
    if ! pid_alive "$pidfile" kafka.Kafka && tcp_open "$KAFKA_PORT"; then
        refuse_foreign kafka "$KAFKA_PORT"
    fi
    if pid_alive "$pidfile" kafka.Kafka; then
        pid=$(<"$pidfile")
        log "kafka: pid $pid is running but not serving yet; waiting"
    else
        kafka_format
        printf '\n=== brokers.sh: starting Apache Kafka %s at %s\n' "$KAFKA_VERSION" "$(date -u +%FT%TZ)" >>"$logfile"
        (
            cd "$KAFKA_DIR"
            exec setsid nohup java -Xms256m -Xmx"$KAFKA_HEAP" -XX:+UseG1GC -XX:MaxGCPauseMillis=20 \
                -Djava.awt.headless=true -Dlog4j2.configurationFile="$KAFKA_LOG_CONFIG" \
                -cp "$(kafka_dist)/libs/*" kafka.Kafka "$KAFKA_DIR/server.properties" \
                </dev/null >>"$logfile" 2>&1
        ) &
        pid=$!
        echo "$pid" >"$pidfile"
        log "kafka: started Apache Kafka $KAFKA_VERSION (pid $pid, heap $KAFKA_HEAP), data $KAFKA_DIR/data, log $logfile"
    fi
    await_serving kafka "$pid" "$pidfile" "$logfile" "$KAFKA_START_TIMEOUT" \
        "serving on 127.0.0.1:$KAFKA_PORT" kafka_serving
    log "kafka: up on 127.0.0.1:$KAFKA_PORT"
}

# A controlled shutdown of one node takes a few seconds; STOP_TIMEOUT covers it.
kafka_down() { stop_pidfile kafka "$KAFKA_DIR/kafka.pid" kafka.Kafka TERM; }
kafka_kill() { stop_pidfile kafka "$KAFKA_DIR/kafka.pid" kafka.Kafka KILL; }
kafka_reset() {
    kafka_down
    rm -rf "$KAFKA_DIR/data"
    log "kafka: data dropped"
    kafka_up
}

kafka_status() {
    local state=down version="" pid=""
    if [[ -f $(kafka_dist)/.complete ]]; then
        version="Apache Kafka $KAFKA_VERSION"
    else
        state="down (not installed)"
    fi
    if pid_alive "$KAFKA_DIR/kafka.pid" kafka.Kafka; then
        pid=$(<"$KAFKA_DIR/kafka.pid")
        tcp_open "$KAFKA_PORT" && kafka_started_since_last_start && state=up || state="down (pid $pid not serving)"
    elif tcp_open "$KAFKA_PORT"; then
        state="up (not started by this script)"
    fi
    printf '%-9s %-5s %-28s %s\n' kafka "$state" "127.0.0.1:$KAFKA_PORT" "$version${pid:+ pid $pid}"
}

# ---------------------------------------------------------------- tansu (opt-in: a second Kafka-protocol implementation)

tansu_installed_version() {
    command -v tansu >/dev/null 2>&1 || return 1
    # prints "tansu 0.6.0"
    tansu --version 2>/dev/null | awk '{print $2; exit}'
}

tansu_install() {
    local v deadline
    v=$(tansu_installed_version || true)
    [[ $v == "$TANSU_VERSION" ]] && return 0

    mkdir -p "$TANSU_DIR"
    # One install at a time: our own (lock) and any other running `cargo install tansu`.
    exec 8>"$TANSU_DIR/install.lock"
    flock -w "$TANSU_INSTALL_TIMEOUT" 8 || die "tansu: timed out waiting for another brokers.sh to finish installing tansu"
    deadline=$((SECONDS + TANSU_INSTALL_TIMEOUT))
    while pgrep -f "cargo install .*tansu" >/dev/null 2>&1; do
        ((SECONDS < deadline)) || die "tansu: another 'cargo install tansu' is still running after ${TANSU_INSTALL_TIMEOUT}s"
        log "tansu: another 'cargo install tansu' is running; waiting for it"
        sleep 15
    done
    v=$(tansu_installed_version || true)
    if [[ $v != "$TANSU_VERSION" ]]; then
        command -v cargo >/dev/null 2>&1 || die "tansu: cargo not found (need a Rust toolchain to install tansu)"
        log "tansu: installing tansu $TANSU_VERSION (found: ${v:-none}); cargo install takes ~12 min on 2 cores, log: $TANSU_DIR/install.log"
        if ! cargo install tansu --locked --version "$TANSU_VERSION" --features "$TANSU_FEATURES" \
            >"$TANSU_DIR/install.log" 2>&1; then
            log_tail "$TANSU_DIR/install.log"
            die "tansu: cargo install tansu --version $TANSU_VERSION failed"
        fi
        v=$(tansu_installed_version || true)
        [[ $v == "$TANSU_VERSION" ]] || die "tansu: after install, 'tansu --version' reports '${v:-nothing}', wanted $TANSU_VERSION"
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
    command -v python3 >/dev/null 2>&1 || die "tansu: python3 not found (needed to add tansu's missing header index)"
    python3 - "$TANSU_DIR/tansu.db" <<'PY' || die "tansu: could not add the header index to $TANSU_DIR/tansu.db"
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
    local logfile="$TANSU_DIR/tansu.log"
    [[ -f $logfile ]] || return 1
    awk '/^=== brokers.sh: starting tansu/ { bad = 0 } /panicked at/ { bad = 1 } END { exit !bad }' "$logfile"
}

tansu_up() {
    local pidfile="$TANSU_DIR/tansu.pid" logfile="$TANSU_DIR/tansu.log" pid
    if pid_alive "$pidfile" tansu && tcp_open "$TANSU_PORT" && tansu_wedged; then
        log "tansu: tansu (pid $(<"$pidfile")) is up but its storage task panicked (see $logfile); restarting it"
        tansu_down
    fi
    if pid_alive "$pidfile" tansu && tcp_open "$TANSU_PORT"; then
        tansu_index_headers
        log "tansu: already up on 127.0.0.1:$TANSU_PORT (pid $(<"$pidfile"))"
        return 0
    fi
    tansu_install
    if ! pid_alive "$pidfile" tansu && tcp_open "$TANSU_PORT"; then
        refuse_foreign tansu "$TANSU_PORT"
    fi
    if pid_alive "$pidfile" tansu; then
        # Alive but not (yet) accepting: it may still be starting; the wait below decides.
        pid=$(<"$pidfile")
        log "tansu: tansu pid $pid is running but not accepting yet; waiting"
    else
        mkdir -p "$TANSU_DIR"
        printf '\n=== brokers.sh: starting tansu at %s\n' "$(date -u +%FT%TZ)" >>"$logfile"
        # tansu 0.6.0 resolves a sqlite:// URL against its working directory, even an
        # absolute one (sqlite:///abs/path -> $PWD/abs/path), so run it in the data dir.
        # Environment variables that tansu would read for options we do not pass are dropped.
        (
            cd "$TANSU_DIR"
            exec env -u SCHEMA_REGISTRY -u OTEL_EXPORTER_OTLP_ENDPOINT -u CLUSTER_ID \
                setsid nohup tansu broker \
                --listener-url "tcp://127.0.0.1:$TANSU_PORT" \
                --advertised-listener-url "tcp://127.0.0.1:$TANSU_PORT" \
                --storage-engine "sqlite://tansu.db" \
                </dev/null >>"$logfile" 2>&1
        ) &
        pid=$!
        echo "$pid" >"$pidfile"
        log "tansu: started tansu $TANSU_VERSION (pid $pid), storage $TANSU_DIR/tansu.db, log $logfile"
    fi
    await_serving tansu "$pid" "$pidfile" "$logfile" "$TANSU_START_TIMEOUT" \
        "accepting on 127.0.0.1:$TANSU_PORT" tcp_open "$TANSU_PORT"
    tansu_index_headers
    log "tansu: up on 127.0.0.1:$TANSU_PORT"
}

tansu_down() { stop_pidfile kafka "$TANSU_DIR/tansu.pid" tansu TERM; }
tansu_kill() { stop_pidfile kafka "$TANSU_DIR/tansu.pid" tansu KILL; }
# Stop tansu, drop its storage and start it empty: test runs start from a known state, since
# tansu 0.6's sqlite storage can carry a wedged state from an earlier crash.
tansu_reset() {
    tansu_down
    rm -f "$TANSU_DIR"/tansu.db "$TANSU_DIR"/tansu.db-*
    log "tansu: storage dropped"
    tansu_up
}

tansu_status() {
    local state=down version="" v pid=""
    v=$(tansu_installed_version || true)
    [[ -n $v ]] && version="tansu $v" || state="down (not installed)"
    if pid_alive "$TANSU_DIR/tansu.pid" tansu; then
        pid=$(<"$TANSU_DIR/tansu.pid")
        tcp_open "$TANSU_PORT" && state=up || state="down (pid $pid not accepting)"
        [[ $state == up ]] && tansu_wedged && state="down (storage panicked; 'up' restarts it)"
    elif tcp_open "$TANSU_PORT"; then
        state="up (not started by this script)"
    fi
    printf '%-9s %-5s %-28s %s\n' tansu "$state" "127.0.0.1:$TANSU_PORT" "$version${pid:+ pid $pid}"
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
    local pidfile="$SQS_DIR/fauxqs.pid" logfile="$SQS_DIR/fauxqs.log" pid
    local health="http://127.0.0.1:$SQS_PORT/health"
    if pid_alive "$pidfile" run-fauxqs && http_ok "$health"; then
        log "sqs: already up on http://127.0.0.1:$SQS_PORT (pid $(<"$pidfile"))"
        return 0
    fi
    fauxqs_install
    if ! pid_alive "$pidfile" run-fauxqs && tcp_open "$SQS_PORT"; then
        refuse_foreign sqs "$SQS_PORT"
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
    await_serving sqs "$pid" "$pidfile" "$logfile" "$SQS_START_TIMEOUT" \
        "answering $health" http_ok "$health"
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
            rabbitmq | kafka | sqs | tansu) printf '%s\n' "$n" ;;
            *) die "unknown broker '$n' (expected one of: ${ALL_BROKERS[*]} tansu)" ;;
        esac
    done
}

main() {
    local cmd=${1:-}
    (($# > 0)) && shift
    local names n
    case $cmd in
        reset)
            (($# > 0)) || die "reset needs a broker name (kafka or tansu)"
            for n in "$@"; do
                case $n in
                    kafka) mkdir -p "$BROKERS_HOME" && kafka_reset ;;
                    tansu) mkdir -p "$BROKERS_HOME" && tansu_reset ;;
                    *) die "reset supports kafka and tansu only (the others keep nothing or are machine services)" ;;
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
        version)
            (($# == 1)) || die "version needs one broker name"
            case $1 in
                kafka) pid_alive "$KAFKA_DIR/kafka.pid" kafka.Kafka && echo "Apache Kafka $KAFKA_VERSION" ;;
                tansu) pid_alive "$TANSU_DIR/tansu.pid" tansu && echo "tansu $(tansu_installed_version)" ;;
                sqs) pid_alive "$SQS_DIR/fauxqs.pid" run-fauxqs && echo "fauxqs $(fauxqs_installed_version)" ;;
                rabbitmq) tcp_open "$RABBITMQ_PORT" && echo "RabbitMQ $(rabbit_version)" ;;
                *) die "unknown broker '$1'" ;;
            esac
            ;;
        kill)
            (($# > 0)) || die "kill needs a broker name (kafka, sqs or tansu)"
            for n in "$@"; do
                case $n in
                    kafka) kafka_kill ;;
                    tansu) tansu_kill ;;
                    sqs) sqs_kill ;;
                    rabbitmq) die "kill rabbitmq is not supported (machine service); use 'rabbitmqctl stop_app' and then 'scripts/brokers.sh up rabbitmq'" ;;
                    *) die "unknown broker '$n' (expected kafka, sqs or tansu)" ;;
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
