//! The exchange API on RabbitMQ: native exchanges, classic, quorum and stream queues, bindings.
//!
//! Each declaration runs on a fresh channel, so a `PRECONDITION_FAILED` (which makes the broker
//! close the channel) costs only that channel: it is reported as `Conflict` and the connection
//! keeps working.
//!
//! | `QueueSpec`              | queue argument                                                  |
//! |--------------------------|-----------------------------------------------------------------|
//! | `durable`                | durable flag                                                    |
//! | `max_length` + overflow  | `x-max-length`, `x-overflow=reject-publish` (both overflows: with `Backpressure` the producer retries a refused message until there is room) |
//! | `message_ttl`            | `x-message-ttl` (ms)                                            |
//! | `dead_letter_queue`      | `x-dead-letter-exchange=""`, `x-dead-letter-routing-key=<dlq>`  |
//! | `max_delivery_attempts`  | a quorum queue (`x-queue-type=quorum`) with `x-delivery-limit`  |
//! | `partitions`             | ignored (RabbitMQ queues are not partitioned)                   |
//! | `extra`                  | passed through as x-arguments: integers as numbers, `true`/`false` as booleans, the rest as strings (e.g. `x-queue-type=quorum`, `x-single-active-consumer=true`) |
//! | (queue type)             | `x-queue-type=stream` when the spec says so in `extra`, or when the backend was opened with `?queue_type=stream` and the spec names no type. A stream is always durable and takes no `max_length`, `message_ttl`, `dead_letter_queue` or `max_delivery_attempts` (a `Config` error naming the queue); its retention is set through `extra` (`x-max-length-bytes`, `x-max-age`, `x-stream-max-segment-size-bytes`) |

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use lapin::options::{
    ExchangeDeclareOptions, ExchangeDeleteOptions, QueueBindOptions, QueueDeclareOptions,
    QueueDeleteOptions,
};
use lapin::types::{AMQPValue, FieldTable, LongString, ShortString};
use lapin::Channel;
use mailroom_core::operation::{
    BIND, DECLARE_EXCHANGE, DECLARE_QUEUE, DELETE_EXCHANGE, DELETE_QUEUE, QUEUE_DEPTH, UNBIND,
};
use mailroom_core::{
    Binding, Destination, Error, ExchangeKind, ExchangeSpec, HeaderMatch, QueueSpec, Result, Route,
    Topology,
};

use crate::config::QueueType;
use crate::connection::Connection;
use crate::BACKEND;

/// The queue argument that picks the queue type.
pub const QUEUE_TYPE_ARG: &str = "x-queue-type";

/// Whether the spec declares a quorum queue (asked for, or implied by `max_delivery_attempts`).
pub(crate) fn is_quorum(spec: &QueueSpec) -> bool {
    spec.max_delivery_attempts.is_some()
        || spec.extra.get(QUEUE_TYPE_ARG).map(String::as_str) == Some("quorum")
}

/// Whether the spec declares a stream queue: it says so in `extra`, or it names no type and
/// the backend's queue type is `stream`.
pub(crate) fn is_stream(spec: &QueueSpec, default: QueueType) -> bool {
    match spec.extra.get(QUEUE_TYPE_ARG) {
        Some(kind) => kind == QueueType::Stream.as_str(),
        None => default == QueueType::Stream,
    }
}

/// What a stream queue cannot be declared with, as a `Config` error naming the queue.
fn check_stream(spec: &QueueSpec) -> Result<()> {
    let refuse = |what: &str| {
        Err(Error::config(format!(
            "queue '{}' is a stream, and RabbitMQ streams {what}",
            spec.name
        )))
    };
    if !spec.durable {
        return refuse("are always durable; declare it durable");
    }
    if spec.max_length.is_some() {
        return refuse(
            "cannot be bounded by message count (set retention with x-max-length-bytes or \
             x-max-age in extra)",
        );
    }
    if spec.message_ttl.is_some() {
        return refuse("have no per-message TTL (x-max-age in extra sets retention)");
    }
    if spec.dead_letter_queue.is_some() {
        return refuse("do not dead-letter");
    }
    if spec.max_delivery_attempts.is_some() {
        return refuse("keep no delivery count (max_delivery_attempts needs a quorum queue)");
    }
    Ok(())
}

fn short(what: &str, name: &str) -> Result<ShortString> {
    ShortString::try_new(name).map_err(|_| {
        Error::invalid_input(format!(
            "{what} {name:?} is longer than AMQP's 255-byte limit"
        ))
    })
}

fn long(text: &str) -> AMQPValue {
    AMQPValue::LongString(LongString::from(text.as_bytes()))
}

fn millis(d: Duration) -> AMQPValue {
    AMQPValue::LongLongInt(d.as_millis().min(i64::MAX as u128) as i64)
}

/// The x-arguments of a queue declaration, or a `Config` error for a spec RabbitMQ cannot honour;
/// `default` is the backend's queue type, for a spec that names none.
pub(crate) fn queue_arguments(spec: &QueueSpec, default: QueueType) -> Result<FieldTable> {
    let ctx = |e: Error| e.with_backend(BACKEND).with_operation(DECLARE_QUEUE);
    let mut args = FieldTable::default();
    if is_stream(spec, default) {
        check_stream(spec).map_err(ctx)?;
        if !spec.extra.contains_key(QUEUE_TYPE_ARG) {
            args.insert(QUEUE_TYPE_ARG.into(), long(QueueType::Stream.as_str()));
        }
    }
    for (key, value) in &spec.extra {
        let key = short("queue argument", key).map_err(ctx)?;
        let value = if let Ok(n) = value.parse::<i64>() {
            AMQPValue::LongLongInt(n)
        } else if let Ok(b) = value.parse::<bool>() {
            AMQPValue::Boolean(b)
        } else {
            long(value)
        };
        args.insert(key, value);
    }
    if let Some(max) = spec.max_length {
        args.insert(
            "x-max-length".into(),
            AMQPValue::LongLongInt(max.min(i64::MAX as u64) as i64),
        );
        // RabbitMQ's default overflow (drop-head) discards accepted messages; both mailroom
        // policies refuse new ones instead.
        args.insert("x-overflow".into(), long("reject-publish"));
    }
    if let Some(ttl) = spec.message_ttl {
        args.insert("x-message-ttl".into(), millis(ttl));
    }
    if let Some(dlq) = &spec.dead_letter_queue {
        args.insert("x-dead-letter-exchange".into(), long(""));
        args.insert("x-dead-letter-routing-key".into(), long(dlq));
    }
    if let Some(max) = spec.max_delivery_attempts {
        match spec.extra.get(QUEUE_TYPE_ARG).map(String::as_str) {
            None | Some("quorum") => {}
            Some(other) => {
                return Err(ctx(Error::config(format!(
                    "queue '{}': max_delivery_attempts needs a quorum queue, but {QUEUE_TYPE_ARG} \
                     is {other:?}",
                    spec.name
                ))))
            }
        }
        if !spec.durable {
            return Err(ctx(Error::config(format!(
                "queue '{}': max_delivery_attempts needs a quorum queue, and quorum queues are \
                 always durable; declare it durable",
                spec.name
            ))));
        }
        args.insert(QUEUE_TYPE_ARG.into(), long("quorum"));
        // The broker dead-letters once a message was returned more than `x-delivery-limit`
        // times, so the limit is one less than the attempts allowed.
        args.insert(
            "x-delivery-limit".into(),
            AMQPValue::LongLongInt(i64::from(max) - 1),
        );
    }
    if is_quorum(spec) && !spec.durable {
        return Err(ctx(Error::config(format!(
            "queue '{}': quorum queues are always durable; declare it durable",
            spec.name
        ))));
    }
    Ok(args)
}

fn lapin_kind(kind: ExchangeKind) -> lapin::ExchangeKind {
    match kind {
        ExchangeKind::Direct => lapin::ExchangeKind::Direct,
        ExchangeKind::Topic => lapin::ExchangeKind::Topic,
        ExchangeKind::Fanout => lapin::ExchangeKind::Fanout,
        ExchangeKind::Headers => lapin::ExchangeKind::Headers,
    }
}

pub(crate) async fn declare_exchange_on(ch: &Channel, spec: &ExchangeSpec) -> lapin::Result<()> {
    ch.exchange_declare(
        spec.name.as_str().into(),
        lapin_kind(spec.kind),
        ExchangeDeclareOptions {
            durable: spec.durable,
            ..ExchangeDeclareOptions::default()
        },
        FieldTable::default(),
    )
    .await
}

pub(crate) async fn declare_queue_on(
    ch: &Channel,
    spec: &QueueSpec,
    args: FieldTable,
) -> lapin::Result<()> {
    ch.queue_declare(
        spec.name.as_str().into(),
        QueueDeclareOptions {
            durable: spec.durable,
            ..QueueDeclareOptions::default()
        },
        args,
    )
    .await
    .map(drop)
}

/// Routing key and arguments of a binding.
fn binding_parts(binding: &Binding) -> (String, FieldTable) {
    let mut args = FieldTable::default();
    let key = match &binding.route {
        Route::Key(k) => k.clone(),
        Route::Pattern(p) => p.as_str().to_owned(),
        Route::All => String::new(),
        Route::Headers { mode, headers } => {
            let mode = match mode {
                HeaderMatch::All => "all",
                HeaderMatch::Any => "any",
            };
            args.insert("x-match".into(), long(mode));
            for (name, value) in headers {
                if let Ok(name) = ShortString::try_new(name.as_str()) {
                    args.insert(name, long(value));
                }
            }
            String::new()
        }
    };
    (key, args)
}

pub(crate) async fn bind_on(ch: &Channel, binding: &Binding) -> lapin::Result<()> {
    let (key, args) = binding_parts(binding);
    ch.queue_bind(
        binding.queue.as_str().into(),
        binding.exchange.as_str().into(),
        ShortString::try_new(key).unwrap_or_default(),
        QueueBindOptions::default(),
        args,
    )
    .await
}

/// How long an idle delay queue lives after its last declaration, on top of twice its delay.
const DELAY_QUEUE_IDLE: Duration = Duration::from_secs(600);

/// The delay queue that holds messages for `destination` for `delay`, then dead-letters them to
/// it: a durable queue with `x-message-ttl`, dead-lettering to the destination's exchange and
/// routing key, and `x-expires` so unused ones go away.
pub(crate) fn delay_queue(destination: &Destination, delay: Duration) -> (String, FieldTable) {
    let ms = delay.as_millis().max(1);
    let (exchange, key) = match destination {
        Destination::Queue(q) => ("", q.as_ref()),
        Destination::Exchange { name, routing_key } => (name.as_ref(), routing_key.as_ref()),
    };
    // FNV-1a over both parts keeps names unique and stable across processes and versions.
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for b in exchange.bytes().chain([0u8]).chain(key.bytes()) {
        hash ^= u64::from(b);
        hash = hash.wrapping_mul(0x0100_0000_01b3);
    }
    // Keep the name under AMQP's 255 bytes: a readable prefix, cut on a character boundary.
    let mut readable = format!("{exchange}.{key}");
    let mut cut = readable.len().min(160);
    while !readable.is_char_boundary(cut) {
        cut -= 1;
    }
    readable.truncate(cut);
    let name = format!("mailroom.delay.{ms}ms.{readable}.{hash:016x}");
    let mut args = FieldTable::default();
    args.insert(
        "x-message-ttl".into(),
        AMQPValue::LongLongInt(ms.min(i64::MAX as u128) as i64),
    );
    args.insert("x-dead-letter-exchange".into(), long(exchange));
    args.insert("x-dead-letter-routing-key".into(), long(key));
    let expires = ms.saturating_mul(2) + DELAY_QUEUE_IDLE.as_millis();
    args.insert(
        "x-expires".into(),
        AMQPValue::LongLongInt(expires.min(i64::MAX as u128) as i64),
    );
    (name, args)
}

/// The exchange API of a RabbitMQ backend.
pub struct RabbitTopology {
    connection: Arc<Connection>,
}

impl RabbitTopology {
    pub(crate) fn new(connection: Arc<Connection>) -> Self {
        RabbitTopology { connection }
    }
}

#[async_trait]
impl Topology for RabbitTopology {
    async fn declare_exchange(&self, spec: &ExchangeSpec) -> Result<()> {
        self.connection.check_open(DECLARE_EXCHANGE)?;
        let what = format!("exchange '{}' ({})", spec.name, spec.kind);
        self.connection
            .with_channel(DECLARE_EXCHANGE, &what, |ch| async move {
                declare_exchange_on(&ch, spec).await
            })
            .await?;
        let mut registry = self.connection.declared();
        registry.exchanges.retain(|e| e.name != spec.name);
        registry.exchanges.push(spec.clone());
        Ok(())
    }

    async fn delete_exchange(&self, name: &str) -> Result<()> {
        self.connection.check_open(DELETE_EXCHANGE)?;
        let what = format!("exchange '{name}'");
        self.connection
            .with_channel(DELETE_EXCHANGE, &what, |ch| async move {
                ch.exchange_delete(name.into(), ExchangeDeleteOptions::default())
                    .await
            })
            .await?;
        let mut registry = self.connection.declared();
        registry.exchanges.retain(|e| e.name != name);
        registry.bindings.retain(|b| b.exchange != name);
        Ok(())
    }

    async fn declare_queue(&self, spec: &QueueSpec) -> Result<()> {
        self.connection.check_open(DECLARE_QUEUE)?;
        let args = queue_arguments(spec, self.connection.config.queue_type)?;
        let what = format!("queue '{}'", spec.name);
        self.connection
            .with_channel(DECLARE_QUEUE, &what, |ch| {
                let args = args.clone();
                async move { declare_queue_on(&ch, spec, args).await }
            })
            .await?;
        let mut registry = self.connection.declared();
        if registry
            .queues
            .insert(spec.name.clone(), spec.clone())
            .is_none()
        {
            registry.queue_order.push(spec.name.clone());
        }
        Ok(())
    }

    async fn delete_queue(&self, name: &str) -> Result<()> {
        self.connection.check_open(DELETE_QUEUE)?;
        if self.connection.queue_settings(name).stream {
            // The group's stored position goes with the stream: a stream declared again under
            // this name starts at offset 0, and an old position would skip its first messages.
            let position = crate::stream::position_queue(name);
            let what = format!("queue '{position}' (the position of stream '{name}')");
            self.connection
                .with_channel(DELETE_QUEUE, &what, |ch| {
                    let position = position.clone();
                    async move {
                        ch.queue_delete(position.as_str().into(), QueueDeleteOptions::default())
                            .await
                            .map(drop)
                    }
                })
                .await?;
        }
        let what = format!("queue '{name}'");
        self.connection
            .with_channel(DELETE_QUEUE, &what, |ch| async move {
                ch.queue_delete(name.into(), QueueDeleteOptions::default())
                    .await
                    .map(drop)
            })
            .await?;
        let mut registry = self.connection.declared();
        registry.queues.remove(name);
        registry.queue_order.retain(|q| q != name);
        registry.bindings.retain(|b| b.queue != name);
        Ok(())
    }

    async fn bind(&self, binding: &Binding) -> Result<()> {
        let ctx = |e: Error| e.with_backend(BACKEND).with_operation(BIND);
        self.connection.check_open(BIND)?;
        self.check_route(binding).map_err(ctx)?;
        let what = format!(
            "binding of queue '{}' to exchange '{}'",
            binding.queue, binding.exchange
        );
        self.connection
            .with_channel(BIND, &what, |ch| async move { bind_on(&ch, binding).await })
            .await?;
        let mut registry = self.connection.declared();
        if !registry.bindings.contains(binding) {
            registry.bindings.push(binding.clone());
        }
        Ok(())
    }

    async fn unbind(&self, binding: &Binding) -> Result<()> {
        let ctx = |e: Error| e.with_backend(BACKEND).with_operation(UNBIND);
        self.connection.check_open(UNBIND)?;
        binding.validate().map_err(ctx)?;
        let what = format!(
            "binding of queue '{}' to exchange '{}'",
            binding.queue, binding.exchange
        );
        let (key, args) = binding_parts(binding);
        self.connection
            .with_channel(UNBIND, &what, |ch| {
                let (key, args) = (key.clone(), args.clone());
                async move {
                    ch.queue_unbind(
                        binding.queue.as_str().into(),
                        binding.exchange.as_str().into(),
                        ShortString::try_new(key).unwrap_or_default(),
                        args,
                    )
                    .await
                }
            })
            .await?;
        self.connection.declared().bindings.retain(|b| b != binding);
        Ok(())
    }

    async fn queue_depth(&self, queue: &str) -> Result<Option<u64>> {
        self.connection.check_open(QUEUE_DEPTH)?;
        let what = format!("queue '{queue}'");
        // A passive declare changes nothing and answers with the ready-message count (a
        // missing queue is a 404, mapped to NotFound).
        let declared = self
            .connection
            .with_channel(QUEUE_DEPTH, &what, |ch| async move {
                ch.queue_declare(
                    queue.into(),
                    QueueDeclareOptions {
                        passive: true,
                        ..QueueDeclareOptions::default()
                    },
                    FieldTable::default(),
                )
                .await
            })
            .await?;
        Ok(Some(u64::from(declared.message_count())))
    }
}

impl RabbitTopology {
    /// A route that cannot work on the exchange's kind (when this backend declared it) is
    /// invalid input rather than a binding that silently never matches.
    fn check_route(&self, binding: &Binding) -> Result<()> {
        let registry = self.connection.declared();
        if let Some(spec) = registry
            .exchanges
            .iter()
            .find(|e| e.name == binding.exchange)
        {
            if !binding.route.fits(spec.kind) {
                return Err(Error::invalid_input(format!(
                    "binding of queue '{}' to {} exchange '{}' uses a route of another kind \
                     ({:?})",
                    binding.queue, spec.kind, spec.name, binding.route
                )));
            }
        }
        Ok(())
    }
}

/// Declare the delay queue for `destination` and `delay` on `ch`; returns its name.
pub(crate) async fn declare_delay_queue(
    ch: &Channel,
    destination: &Destination,
    delay: Duration,
) -> lapin::Result<String> {
    let (name, args) = delay_queue(destination, delay);
    ch.queue_declare(
        ShortString::try_new(name.as_str()).unwrap_or_default(),
        QueueDeclareOptions {
            durable: true,
            ..QueueDeclareOptions::default()
        },
        args,
    )
    .await?;
    Ok(name)
}

#[cfg(test)]
mod tests {
    use super::*;
    use mailroom_core::ErrorKind;

    fn queue_type(args: &FieldTable) -> Option<String> {
        match args.inner().get(QUEUE_TYPE_ARG) {
            Some(AMQPValue::LongString(s)) => Some(String::from_utf8_lossy(s.as_bytes()).into()),
            _ => None,
        }
    }

    #[test]
    fn a_stream_is_declared_by_the_backends_type_or_by_the_spec() {
        let plain = QueueSpec::new("q");
        let args = queue_arguments(&plain, QueueType::Stream).unwrap();
        assert_eq!(queue_type(&args).as_deref(), Some("stream"));
        assert_eq!(
            queue_type(&queue_arguments(&plain, QueueType::Classic).unwrap()),
            None
        );
        let named = QueueSpec::new("q").extra(QUEUE_TYPE_ARG, "stream");
        let args = queue_arguments(&named, QueueType::Classic).unwrap();
        assert_eq!(queue_type(&args).as_deref(), Some("stream"));
        assert!(is_stream(&named, QueueType::Classic));
        // A spec that names another type keeps it on a stream backend.
        let classic = QueueSpec::new("q").extra(QUEUE_TYPE_ARG, "classic");
        assert!(!is_stream(&classic, QueueType::Stream));
    }

    #[test]
    fn what_a_stream_cannot_honour_is_a_config_error_naming_the_queue() {
        let refused = [
            QueueSpec::new("s").durable(false),
            QueueSpec::new("s").max_length(10, mailroom_core::Overflow::Reject),
            QueueSpec::new("s").message_ttl(Duration::from_secs(1)),
            QueueSpec::new("s").dead_letter_queue("dlq"),
            QueueSpec::new("s").max_delivery_attempts(3),
        ];
        for spec in refused {
            let err = queue_arguments(&spec, QueueType::Stream).unwrap_err();
            assert_eq!(err.kind(), ErrorKind::Config, "{spec:?}: {err}");
            assert!(err.to_string().contains("queue 's' is a stream"), "{err}");
        }
    }
}
