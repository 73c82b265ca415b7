//! A connected broker, and picking one at run time by URL scheme.

use std::fmt;
use std::sync::Arc;

use async_trait::async_trait;

use crate::capabilities::{Capabilities, Capability};
use crate::consumer::{Consumer, ConsumerOptions};
use crate::error::{Error, Result};
use crate::guarantee::DeliveryGuarantee;
use crate::layer::{CapabilityLayer, Layer, LayerStack};
use crate::producer::{Producer, ProducerOptions};
use crate::topology::Topology;
use crate::transaction::{TransactionOptions, Transactional};

/// A connection to one broker: the source of producers, consumers and the topology API.
#[async_trait]
pub trait Backend: Send + Sync {
    /// The backend's short name (`memory`, `rabbitmq`, ...), used in errors and reports.
    fn name(&self) -> &'static str;

    /// What this backend supports, as opened.
    fn capabilities(&self) -> &Capabilities;

    /// The broker's implementation and version, as the broker reports it (for reports).
    async fn server_version(&self) -> Result<String>;

    /// A producer, with the backend's configured delivery guarantee.
    async fn producer(&self) -> Result<Box<dyn Producer>>;

    /// A producer opened with `options` (its [`DeliveryGuarantee`]).
    ///
    /// A guarantee the backend does not offer
    /// ([`Capabilities::delivery_guarantees`]) is `Unsupported`, naming it, before any I/O. This
    /// default serves backends that offer only `Confirmed` (their `producer`); a backend that
    /// offers more overrides it.
    async fn producer_with(&self, options: ProducerOptions) -> Result<Box<dyn Producer>> {
        let level = options.guarantee.unwrap_or_default();
        self.capabilities().delivery_guarantees.require(
            level,
            self.name(),
            crate::operation::PRODUCER,
        )?;
        if level != DeliveryGuarantee::Confirmed {
            return Err(Error::unsupported(format!(
                "backend '{}' declares the delivery guarantee '{level}' but does not implement \
                 Backend::producer_with",
                self.name()
            ))
            .with_backend(self.name())
            .with_operation(crate::operation::PRODUCER));
        }
        self.producer().await
    }

    /// A consumer on `queue`.
    async fn consumer(&self, queue: &str, options: ConsumerOptions) -> Result<Box<dyn Consumer>>;

    /// The topology API (exchanges, queues, bindings).
    fn topology(&self) -> &dyn Topology;

    /// A transactional unit consuming `queue`: what it receives and what it sends are committed
    /// together or not at all (see [`Transactional`]).
    ///
    /// Needs the `transactions` capability: a backend without it answers `Unsupported` before
    /// any network call. This default does exactly that, so only a backend that declares
    /// `transactions` overrides it.
    async fn transactional(
        &self,
        queue: &str,
        options: TransactionOptions,
    ) -> Result<Box<dyn Transactional>> {
        let _ = (queue, options);
        self.capabilities()
            .require(Capability::Transactions, self.name(), "transactional")?;
        Err(Error::unsupported(format!(
            "backend '{}' declares transactions but does not implement Backend::transactional",
            self.name()
        ))
        .with_backend(self.name())
        .with_operation("transactional"))
    }

    /// The identity of the broker cluster this backend is connected to, when the broker has
    /// one: two backends with the same identity reach the same cluster, so one transaction can
    /// span both (a pipeline's source and sink). `None` when the backend cannot tell; this
    /// default says so without any I/O.
    async fn cluster_id(&self) -> Result<Option<String>> {
        Ok(None)
    }

    /// Close the connection; producers and consumers made from it stop working.
    async fn close(&self) -> Result<()>;

    /// Whether this backend's settle handles refuse, themselves, every nack its
    /// [`Capabilities`] say it cannot carry out (a delayed requeue without `delayed_delivery`),
    /// with the [`Unsupported`](crate::ErrorKind::Unsupported) error naming the capability and
    /// the delivery left to come back, as the [`CapabilityLayer`] would. The layer then leaves
    /// this backend's consumers as they are, which spares a boxed future per receive and a
    /// settle handle per delivery. The default, `false`, has the layer check every nack.
    fn settle_refuses_unsupported(&self) -> bool {
        false
    }

    /// Whether this backend's producers refuse, themselves, every send its [`Capabilities`]
    /// say it cannot carry out ([`Capabilities::check_message`]: over `max_message_size` or
    /// `max_headers`, repeated header names, a delay it lacks or over `max_delay`; and a send
    /// to an exchange without exchanges), before anything else they check, with the same
    /// errors and the message returned inside them, as the [`CapabilityLayer`] would; a batch
    /// refuses only its messages that fail, each in its place. The layer then leaves this
    /// backend's producers as they are, which spares a wrapper call per send. The default,
    /// `false`, has the layer check every send. Transactional units are checked either way.
    fn producer_refuses_unsupported(&self) -> bool {
        false
    }

    /// The names of the [layers](crate::layer) this backend sits inside, outermost first; a
    /// bare backend has none. [`Registry::connect`] reads it so that a factory that already
    /// applied the [`CapabilityLayer`] does not get a second one.
    fn layers(&self) -> Vec<&'static str> {
        Vec::new()
    }
}

/// Opens backends for the URL schemes it names. Each backend crate exports one.
#[async_trait]
pub trait BackendFactory: Send + Sync {
    /// The URL schemes this factory opens (`["amqp", "amqps"]`).
    fn schemes(&self) -> &'static [&'static str];

    /// Open a backend from a URL whose scheme is one of `schemes()`.
    ///
    /// The factories of mailroom's backend crates return the backend inside the
    /// [`CapabilityLayer`], so what they open refuses what it lacks however it was opened;
    /// [`Registry::connect`] adds the layer to a backend that comes without it.
    async fn connect(&self, url: &str) -> Result<Arc<dyn Backend>>;
}

/// The set of compiled-in backends, consulted by scheme.
///
/// Every backend it opens comes inside the [`CapabilityLayer`] (exactly once: a factory may
/// have applied it already), and inside the layers added with [`Registry::layer`] (outside the
/// capability check).
#[derive(Default, Clone)]
pub struct Registry {
    factories: Vec<Arc<dyn BackendFactory>>,
    layers: LayerStack,
}

impl Registry {
    /// An empty registry.
    pub fn new() -> Self {
        Registry::default()
    }

    /// Add a backend factory.
    pub fn with(mut self, factory: impl BackendFactory + 'static) -> Self {
        self.factories.push(Arc::new(factory));
        self
    }

    /// Put every backend opened from now on inside `layer` too: the first layer added is the
    /// outermost, and all of them sit outside the capability check.
    pub fn layer(mut self, layer: impl Layer) -> Self {
        self.layers = self.layers.layer(layer);
        self
    }

    /// Every scheme that can be opened.
    pub fn schemes(&self) -> Vec<&'static str> {
        self.factories
            .iter()
            .flat_map(|f| f.schemes().iter().copied())
            .collect()
    }

    /// Open the backend a URL names.
    ///
    /// A URL without `scheme://`, or with a scheme no compiled-in backend opens, is a `Config`
    /// error that lists the schemes that are available. The backend comes inside the
    /// capability check and the registry's layers.
    pub async fn connect(&self, url: &str) -> Result<Arc<dyn Backend>> {
        let scheme = parse_scheme(url).map_err(|e| self.explain(e))?;
        let factory = self
            .factories
            .iter()
            .find(|f| f.schemes().contains(&scheme))
            .ok_or_else(|| {
                self.explain(Error::config(format!(
                    "unknown URL scheme '{scheme}' in {}",
                    crate::url::redact(url)
                )))
            })?;
        let backend = factory.connect(url).await?;
        let checked = if backend.layers().contains(&CapabilityLayer.name()) {
            backend
        } else {
            LayerStack::new().layer(CapabilityLayer).apply(backend)
        };
        Ok(self.layers.apply(checked))
    }

    fn explain(&self, error: Error) -> Error {
        let schemes = self
            .schemes()
            .iter()
            .map(|s| format!("{s}://"))
            .collect::<Vec<_>>()
            .join(", ");
        let message = format!(
            "{}; compiled-in schemes: {schemes} (enable cargo features rabbitmq, kafka, sqs for more)",
            error.message()
        );
        Error::config(message).with_operation("connect")
    }
}

impl fmt::Debug for Registry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Registry")
            .field("schemes", &self.schemes())
            .field("layers", &self.layers)
            .finish()
    }
}

/// The scheme of a `scheme://rest` URL, validated.
pub fn parse_scheme(url: &str) -> Result<&str> {
    let Some((scheme, _)) = url.split_once("://") else {
        return Err(Error::config(format!(
            "malformed URL {:?}: expected scheme://..., e.g. memory:// or amqp://127.0.0.1:5672",
            crate::url::redact(url)
        )));
    };
    let valid = scheme
        .chars()
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic())
        && scheme
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '+' | '-' | '.'));
    if !valid {
        return Err(Error::config(format!(
            "malformed URL {:?}: the scheme {scheme:?} is not a valid URL scheme",
            crate::url::redact(url)
        )));
    }
    Ok(scheme)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ErrorKind;

    /// A backend whose every I/O method panics: whatever answers without panicking did no I/O.
    struct NoIo(Capabilities);

    #[async_trait]
    impl Backend for NoIo {
        fn name(&self) -> &'static str {
            "no-io"
        }
        fn capabilities(&self) -> &Capabilities {
            &self.0
        }
        async fn server_version(&self) -> Result<String> {
            panic!("server_version does I/O")
        }
        async fn producer(&self) -> Result<Box<dyn Producer>> {
            panic!("producer does I/O")
        }
        async fn consumer(&self, _: &str, _: ConsumerOptions) -> Result<Box<dyn Consumer>> {
            panic!("consumer does I/O")
        }
        fn topology(&self) -> &dyn Topology {
            panic!("topology does I/O")
        }
        async fn close(&self) -> Result<()> {
            panic!("close does I/O")
        }
    }

    fn now<F: std::future::Future>(f: F) -> F::Output {
        futures_util::FutureExt::now_or_never(f).expect("answers at once, without waiting")
    }

    #[test]
    fn transactional_without_the_capability_is_unsupported_before_any_io() {
        let backend = NoIo(Capabilities::default());
        let err = match now(backend.transactional("q", TransactionOptions::new("t-1"))) {
            Ok(_) => panic!("a backend without transactions opened a transactional unit"),
            Err(e) => e,
        };
        assert_eq!(err.kind(), ErrorKind::Unsupported);
        assert!(!err.is_temporary());
        assert_eq!(err.backend(), Some("no-io"));
        assert_eq!(err.operation(), Some("transactional"));
        assert!(err.message().contains("transactions"), "{err}");
    }

    #[test]
    fn declaring_transactions_without_implementing_them_is_still_unsupported() {
        let backend = NoIo(Capabilities {
            transactions: true,
            ..Capabilities::default()
        });
        let err = match now(backend.transactional("q", TransactionOptions::new("t-1"))) {
            Ok(_) => panic!("the default method opened a transactional unit"),
            Err(e) => e,
        };
        assert_eq!(err.kind(), ErrorKind::Unsupported);
        assert!(err.message().contains("does not implement"), "{err}");
    }

    #[test]
    fn a_guarantee_not_offered_is_unsupported_before_any_io() {
        let backend = NoIo(Capabilities::default());
        let options = ProducerOptions::default().guarantee(DeliveryGuarantee::LeaderConfirmed);
        let err = match now(backend.producer_with(options)) {
            Ok(_) => panic!("a backend offering confirmed only opened a leader_confirmed producer"),
            Err(e) => e,
        };
        assert_eq!(err.kind(), ErrorKind::Unsupported);
        assert_eq!(err.operation(), Some("producer"));
        assert!(err.message().contains("'leader_confirmed'"), "{err}");
    }

    #[test]
    fn cluster_identity_is_unknown_by_default_without_io() {
        let backend = NoIo(Capabilities::default());
        assert_eq!(now(backend.cluster_id()).unwrap(), None);
    }
}
