//! A private Apache Kafka with TLS and SASL listeners, for the Kafka backend's `tls` tests: the
//! jars `scripts/brokers.sh` cached, its own ports and data directory, one KRaft node, and SCRAM
//! users written at format time (`kafka-storage format --add-scram`). Never the shared broker.
//!
//! | listener | protocol | what for |
//! |---|---|---|
//! | `plaintext_port` | PLAINTEXT | between broker and itself; credentials sent here are the "listener without SASL" case |
//! | `ssl_port` | SSL, certificate for 127.0.0.1/localhost | TLS |
//! | `sasl_port` | SASL_PLAINTEXT, SCRAM-SHA-256/512 and PLAIN | SASL logins |
//! | `sasl_ssl_port` | SASL_SSL, same mechanisms | SASL over TLS |
//! | `other_host_port` | SSL, certificate for another host name | hostname mismatch |

use std::io::Read;
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use base64::Engine as _;

use super::certs::TestCerts;
use super::process::{await_ready, free_port, fresh_dir, run_bounded, Guarded};
use super::TestUser;
use crate::local_broker::brokers_script;

/// How long formatting, and then starting, may each take (a JVM start on a loaded machine).
const START_LIMIT: Duration = Duration::from_secs(180);

/// A running private Kafka (see the module docs for its listeners).
#[derive(Debug)]
pub struct PrivateKafka {
    /// PLAINTEXT listener.
    pub plaintext_port: u16,
    /// SSL listener with the certificate for 127.0.0.1 and localhost.
    pub ssl_port: u16,
    /// SASL_PLAINTEXT listener (SCRAM-SHA-256, SCRAM-SHA-512, PLAIN).
    pub sasl_port: u16,
    /// SASL_SSL listener (same mechanisms).
    pub sasl_ssl_port: u16,
    /// SSL listener whose certificate names another host.
    pub other_host_port: u16,
    /// The certificates.
    pub certs: TestCerts,
    /// How long formatting and starting took.
    pub started_in: Duration,
    _process: Guarded,
}

impl PrivateKafka {
    /// Generate certificates, format a data directory with `users`, start the broker and wait
    /// until it serves.
    pub fn start(users: &[TestUser]) -> Result<Self, String> {
        let begun = std::time::Instant::now();
        let libs = kafka_libs()?;
        let classpath = format!("{}/*", libs.display());
        let dir = fresh_dir("mailroom-tls-kafka")?;
        let certs = TestCerts::generate(&dir)?;
        let [plaintext_port, controller_port, ssl_port, sasl_port, sasl_ssl_port, other_host_port] =
            [(); 6].map(|_| free_port());
        let (plaintext_port, controller_port, ssl_port, sasl_port, sasl_ssl_port, other_host_port) = (
            plaintext_port?,
            controller_port?,
            ssl_port?,
            sasl_port?,
            sasl_ssl_port?,
            other_host_port?,
        );
        let mut plain_users = String::new();
        for user in users {
            plain_users.push_str(&format!(" user_{}=\"{}\"", user.name, user.password));
        }
        let scram = "org.apache.kafka.common.security.scram.ScramLoginModule required;";
        let plain = format!(
            "org.apache.kafka.common.security.plain.PlainLoginModule required{plain_users};"
        );
        let listener = |name: &str, port: u16| format!("{name}://127.0.0.1:{port}");
        let advertised = [
            listener("PLAINTEXT", plaintext_port),
            listener("SSL", ssl_port),
            listener("SASL_PLAINTEXT", sasl_port),
            listener("SASL_SSL", sasl_ssl_port),
            listener("OTHERHOST", other_host_port),
        ]
        .join(",");
        let mut properties = format!(
            "process.roles=broker,controller\n\
             node.id=1\n\
             controller.quorum.bootstrap.servers=127.0.0.1:{controller_port}\n\
             listeners={advertised},{controller}\n\
             advertised.listeners={advertised}\n\
             controller.listener.names=CONTROLLER\n\
             inter.broker.listener.name=PLAINTEXT\n\
             listener.security.protocol.map=PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT,SSL:SSL,\
             SASL_PLAINTEXT:SASL_PLAINTEXT,SASL_SSL:SASL_SSL,OTHERHOST:SSL\n\
             ssl.keystore.type=PEM\n\
             ssl.keystore.location={keystore}\n\
             listener.name.otherhost.ssl.keystore.type=PEM\n\
             listener.name.otherhost.ssl.keystore.location={other_keystore}\n\
             sasl.enabled.mechanisms=SCRAM-SHA-256,SCRAM-SHA-512,PLAIN\n\
             log.dirs={data}\n\
             offsets.topic.replication.factor=1\n\
             transaction.state.log.replication.factor=1\n\
             transaction.state.log.min.isr=1\n\
             share.coordinator.state.topic.replication.factor=1\n\
             share.coordinator.state.topic.min.isr=1\n\
             group.initial.rebalance.delay.ms=0\n\
             auto.create.topics.enable=false\n",
            controller = listener("CONTROLLER", controller_port),
            keystore = certs.server_keystore.display(),
            other_keystore = certs.other_host_keystore.display(),
            data = dir.join("data").display(),
        );
        for name in ["sasl_plaintext", "sasl_ssl"] {
            for mechanism in ["scram-sha-256", "scram-sha-512"] {
                properties.push_str(&format!(
                    "listener.name.{name}.{mechanism}.sasl.jaas.config={scram}\n"
                ));
            }
            properties.push_str(&format!(
                "listener.name.{name}.plain.sasl.jaas.config={plain}\n"
            ));
        }
        let config = dir.join("server.properties");
        std::fs::write(&config, properties)
            .map_err(|e| format!("writing {}: {e}", config.display()))?;

        let java = |system_properties: &[String], args: &[&str]| {
            let mut c = Command::new("java");
            c.args([
                "-Xms64m",
                "-Xmx384m",
                "-XX:+UseSerialGC",
                "-XX:TieredStopAtLevel=1",
            ])
            .arg("-Djava.awt.headless=true")
            .args(system_properties)
            .arg("-cp")
            .arg(&classpath)
            .args(args);
            c
        };
        let mut format = java(
            &[],
            &[
                "kafka.tools.StorageTool",
                "format",
                "--standalone",
                "-t",
                &cluster_id(),
                "-c",
            ],
        );
        format.arg(&config);
        for user in users {
            for mechanism in ["SCRAM-SHA-256", "SCRAM-SHA-512"] {
                format.arg("--add-scram").arg(format!(
                    "{mechanism}=[name={},password={}]",
                    user.name, user.password
                ));
            }
        }
        run_bounded(format, &dir, "kafka-storage-format", START_LIMIT)?;
        let log_config: Vec<String> = log_config()
            .map(|path| format!("-Dlog4j2.configurationFile={}", path.display()))
            .into_iter()
            .collect();
        let mut command = java(&log_config, &["kafka.Kafka"]);
        command.arg(&config).current_dir(&dir);
        let mut process = Guarded::spawn(command, &dir, "kafka")?;
        let out = dir.join("kafka.out");
        await_ready(&mut process, "kafka", START_LIMIT, || {
            started(&out)
                && [
                    plaintext_port,
                    ssl_port,
                    sasl_port,
                    sasl_ssl_port,
                    other_host_port,
                ]
                .iter()
                .all(|p| TcpStream::connect(("127.0.0.1", *p)).is_ok())
        })?;
        Ok(PrivateKafka {
            plaintext_port,
            ssl_port,
            sasl_port,
            sasl_ssl_port,
            other_host_port,
            certs,
            started_in: begun.elapsed(),
            _process: process,
        })
    }
}

/// A KRaft cluster id: 16 random bytes in URL-safe base64 without padding, as Kafka's own
/// `random-uuid` prints (one JVM start fewer).
fn cluster_id() -> String {
    loop {
        let id = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .encode(uuid::Uuid::new_v4().as_bytes());
        // Kafka never hands out an id starting with '-' (it would read as an option).
        if !id.starts_with('-') {
            return id;
        }
    }
}

fn started(out: &Path) -> bool {
    let mut text = String::new();
    std::fs::File::open(out)
        .and_then(|mut f| f.read_to_string(&mut text))
        .is_ok()
        && text.contains("Kafka Server started")
}

/// The broker jars `scripts/brokers.sh` fetched for the Kafka version it pins.
fn kafka_libs() -> Result<PathBuf, String> {
    let script = std::env::current_dir()
        .ok()
        .and_then(|d| brokers_script(&d))
        .ok_or("scripts/brokers.sh was not found above the current directory")?;
    let text =
        std::fs::read_to_string(&script).map_err(|e| format!("{}: {e}", script.display()))?;
    let version = text
        .lines()
        .find_map(|l| l.strip_prefix("KAFKA_VERSION="))
        .ok_or("no KAFKA_VERSION= in scripts/brokers.sh")?
        .trim();
    let home = match std::env::var_os("MAILROOM_BROKERS_HOME") {
        Some(home) => PathBuf::from(home),
        None => PathBuf::from(std::env::var_os("HOME").ok_or("HOME is not set")?)
            .join(".local/share/mailroom-brokers"),
    };
    let libs = home.join(format!("kafka/apache-kafka-{version}/libs"));
    if libs.join(format!("kafka_2.13-{version}.jar")).is_file() {
        Ok(libs)
    } else {
        Err(format!(
            "Apache Kafka {version}'s jars are not in {} (scripts/brokers.sh up kafka fetches them)",
            libs.display()
        ))
    }
}

/// `scripts/kafka/log4j2.yaml`, the shared broker's log configuration (to stdout).
fn log_config() -> Option<PathBuf> {
    let script = brokers_script(&std::env::current_dir().ok()?)?;
    let path = script.parent()?.join("kafka/log4j2.yaml");
    path.is_file().then_some(path)
}
