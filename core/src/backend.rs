//! A connected broker, and picking one at run time by URL scheme.

use std::fmt;
use std::sync::Arc;

use async_trait::async_trait;

use crate::capabilities::Capabilities;
use crate::consumer::{Consumer, ConsumerOptions};
use crate::error::{Error, Result};
use crate::producer::Producer;
use crate::topology::Topology;

/// A connection to one broker: the source of producers, consumers and the topology API.
#[async_trait]
pub trait Backend: Send + Sync {
    /// The backend's short name (`memory`, `rabbitmq`, ...), used in errors and reports.
    fn name(&self) -> &'static str;

    /// What this backend supports, as opened.
    fn capabilities(&self) -> &Capabilities;

    /// The broker's implementation and version, as the broker reports it (for reports).
    async fn server_version(&self) -> Result<String>;

    /// A producer.
    async fn producer(&self) -> Result<Box<dyn Producer>>;

    /// A consumer on `queue`.
    async fn consumer(&self, queue: &str, options: ConsumerOptions) -> Result<Box<dyn Consumer>>;

    /// The topology API (exchanges, queues, bindings).
    fn topology(&self) -> &dyn Topology;

    /// Close the connection; producers and consumers made from it stop working.
    async fn close(&self) -> Result<()>;
}

/// Opens backends for the URL schemes it names. Each backend crate exports one.
#[async_trait]
pub trait BackendFactory: Send + Sync {
    /// The URL schemes this factory opens (`["amqp", "amqps"]`).
    fn schemes(&self) -> &'static [&'static str];

    /// Open a backend from a URL whose scheme is one of `schemes()`.
    async fn connect(&self, url: &str) -> Result<Arc<dyn Backend>>;
}

/// The set of compiled-in backends, consulted by scheme.
#[derive(Default, Clone)]
pub struct Registry {
    factories: Vec<Arc<dyn BackendFactory>>,
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
    /// error that lists the schemes that are available.
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
        factory.connect(url).await
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
