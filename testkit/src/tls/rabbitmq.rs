//! A private RabbitMQ node with TLS listeners, for the RabbitMQ backend's `tls` tests: its own
//! node name, AMQP ports, Erlang distribution port, config, data and log directories, and no
//! plugins; started from the `rabbitmq-server` the machine has (below the Debian wrapper, which
//! would switch to the `rabbitmq` user), never the machine's own node.

use std::net::TcpStream;
use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use super::certs::TestCerts;
use super::process::{await_ready, free_port, fresh_dir, Guarded};
use super::TestUser;

/// How long the node may take to open its listeners (Erlang boots slowly on a loaded machine).
const START_LIMIT: Duration = Duration::from_secs(180);

/// A running private node (see the module docs), whose one user is the one it was started with.
#[derive(Debug)]
pub struct PrivateRabbitMq {
    /// Its TLS (amqps) port, on 127.0.0.1 and on 127.0.0.2.
    pub tls_port: u16,
    /// Its plain AMQP port on 127.0.0.1.
    pub plain_port: u16,
    /// The certificates it presents (for 127.0.0.1 and localhost only, so 127.0.0.2 mismatches).
    pub certs: TestCerts,
    /// How long it took to start.
    pub started_in: Duration,
    _process: Guarded,
}

impl PrivateRabbitMq {
    /// Generate certificates, start the node with `user` as its only user, and wait for its TLS
    /// listeners.
    pub fn start(user: &TestUser) -> Result<Self, String> {
        let begun = std::time::Instant::now();
        let server = [
            "/usr/lib/rabbitmq/bin/rabbitmq-server",
            "/usr/sbin/rabbitmq-server",
        ]
        .into_iter()
        .map(PathBuf::from)
        .find(|p| p.is_file())
        .ok_or("rabbitmq-server is not installed (scripts/brokers.sh up rabbitmq installs it)")?;
        let dir = fresh_dir("mailroom-tls-rabbitmq")?;
        let certs = TestCerts::generate(&dir)?;
        let (tls_port, plain_port, dist_port) = (free_port()?, free_port()?, free_port()?);
        let config = dir.join("rabbitmq.conf");
        let text = format!(
            "listeners.tcp.local = 127.0.0.1:{plain_port}\n\
             listeners.ssl.local = 127.0.0.1:{tls_port}\n\
             listeners.ssl.mismatch = 127.0.0.2:{tls_port}\n\
             ssl_options.cacertfile = {ca}\n\
             ssl_options.certfile = {cert}\n\
             ssl_options.keyfile = {key}\n\
             ssl_options.verify = verify_none\n\
             ssl_options.fail_if_no_peer_cert = false\n\
             default_user = {user}\n\
             default_pass = {password}\n\
             default_vhost = /\n\
             default_permissions.configure = .*\n\
             default_permissions.read = .*\n\
             default_permissions.write = .*\n",
            user = user.name,
            password = user.password,
            ca = certs.ca.display(),
            cert = certs.server_cert.display(),
            key = certs.server_key.display(),
        );
        write(&config, &text)?;
        // An empty env file keeps the machine's /etc/rabbitmq/rabbitmq-env.conf (its node name)
        // out; no plugins, so nothing else opens a port.
        write(&dir.join("rabbitmq-env.conf"), "")?;
        write(&dir.join("enabled_plugins"), "[].\n")?;
        let node = format!("mailroom-tls-{}@localhost", std::process::id());
        let mut command = Command::new(server);
        command
            .current_dir(&dir)
            .env("HOME", &dir)
            .env("RABBITMQ_CONF_ENV_FILE", dir.join("rabbitmq-env.conf"))
            .env("RABBITMQ_NODENAME", &node)
            .env("RABBITMQ_NODE_IP_ADDRESS", "127.0.0.1")
            .env("RABBITMQ_NODE_PORT", plain_port.to_string())
            .env("RABBITMQ_DIST_PORT", dist_port.to_string())
            .env("RABBITMQ_CONFIG_FILE", &config)
            .env("RABBITMQ_MNESIA_BASE", dir.join("mnesia"))
            .env("RABBITMQ_LOG_BASE", dir.join("log"))
            .env("RABBITMQ_ENABLED_PLUGINS_FILE", dir.join("enabled_plugins"))
            .env("ERL_EPMD_ADDRESS", "127.0.0.1")
            .env(
                "RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS",
                "-kernel inet_dist_use_interface {127,0,0,1}",
            );
        let mut process = Guarded::spawn(command, &dir, "rabbitmq")?;
        await_ready(&mut process, "rabbitmq", START_LIMIT, || {
            listening(tls_port, "127.0.0.1") && listening(tls_port, "127.0.0.2")
        })?;
        Ok(PrivateRabbitMq {
            tls_port,
            plain_port,
            certs,
            started_in: begun.elapsed(),
            _process: process,
        })
    }
}

fn listening(port: u16, host: &str) -> bool {
    let Ok(addr) = format!("{host}:{port}").parse() else {
        return false;
    };
    TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok()
}

fn write(path: &std::path::Path, text: &str) -> Result<(), String> {
    std::fs::write(path, text).map_err(|e| format!("writing {}: {e}", path.display()))
}
