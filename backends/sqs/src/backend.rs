//! The SQS connection: one SDK client, a queue-URL cache, and the source of producers and
//! consumers.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use aws_sdk_sqs::config::timeout::TimeoutConfig;
use aws_sdk_sqs::config::{BehaviorVersion, Credentials, Region};
use aws_sdk_sqs::types::QueueAttributeName;
use aws_sdk_sqs::Client;
use aws_smithy_http_client::tls;
use mailroom_core::{
    Backend, Capabilities, Capability, Consumer, ConsumerOptions, Error, ErrorKind, Producer,
    Result, Topology,
};

use crate::config::{CredentialsSource, SqsConfig};
use crate::consumer::SqsConsumer;
use crate::error::{ctx, from_sdk};
use crate::producer::SqsProducer;
use crate::topology::SqsTopology;
use crate::{capabilities, BACKEND};

/// What producers, consumers and the topology share.
pub(crate) struct Shared {
    pub client: Client,
    pub config: SqsConfig,
    pub caps: Capabilities,
    urls: Mutex<HashMap<String, String>>,
    closed: AtomicBool,
}

impl Shared {
    /// The URL of queue `name`, cached; `NotFound` if it does not exist.
    pub async fn queue_url(&self, name: &str, operation: &'static str) -> Result<String> {
        if let Some(url) = self.lock_urls().get(name) {
            return Ok(url.clone());
        }
        let out = self
            .client
            .get_queue_url()
            .queue_name(name)
            .send()
            .await
            .map_err(|e| {
                let err = from_sdk(e, operation);
                if err.kind() == ErrorKind::NotFound {
                    ctx(
                        Error::not_found(format!("queue '{name}' does not exist")),
                        operation,
                    )
                } else {
                    err
                }
            })?;
        let url = out.queue_url().unwrap_or_default().to_owned();
        if url.is_empty() {
            return Err(ctx(
                Error::new(
                    ErrorKind::Broker,
                    format!("GetQueueUrl for '{name}' returned no URL"),
                ),
                operation,
            ));
        }
        self.lock_urls().insert(name.to_owned(), url.clone());
        Ok(url)
    }

    pub fn remember_url(&self, name: &str, url: &str) {
        self.lock_urls().insert(name.to_owned(), url.to_owned());
    }

    pub fn forget_url(&self, name: &str) {
        self.lock_urls().remove(name);
    }

    /// The ARN of the queue at `url`.
    pub async fn queue_arn(&self, url: &str, operation: &'static str) -> Result<String> {
        let out = self
            .client
            .get_queue_attributes()
            .queue_url(url)
            .attribute_names(QueueAttributeName::QueueArn)
            .send()
            .await
            .map_err(|e| from_sdk(e, operation))?;
        out.attributes()
            .and_then(|a| a.get(&QueueAttributeName::QueueArn))
            .cloned()
            .ok_or_else(|| {
                ctx(
                    Error::new(ErrorKind::Broker, format!("queue {url} reported no ARN")),
                    operation,
                )
            })
    }

    pub fn is_closed(&self) -> bool {
        self.closed.load(Ordering::Acquire)
    }

    pub fn check_open(&self, operation: &'static str) -> Result<()> {
        if self.is_closed() {
            Err(ctx(Error::closed("the SQS backend is closed"), operation))
        } else {
            Ok(())
        }
    }

    fn lock_urls(&self) -> std::sync::MutexGuard<'_, HashMap<String, String>> {
        // A poisoned cache is still a valid cache: entries are inserted whole.
        self.urls.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// A connection to SQS (or an SQS-API server).
pub struct SqsBackend {
    shared: Arc<Shared>,
    topology: SqsTopology,
}

impl SqsBackend {
    /// Connect with `config`, checking that the endpoint answers.
    pub async fn connect(config: SqsConfig) -> Result<Self> {
        config.validate()?;
        let http = aws_smithy_http_client::Builder::new()
            .tls_provider(tls::Provider::Rustls(
                tls::rustls_provider::CryptoMode::Ring,
            ))
            .build_https();
        let timeouts = TimeoutConfig::builder()
            .connect_timeout(config.connect_timeout)
            .operation_timeout(config.operation_timeout + config.wait_time)
            .build();
        let mut loader = aws_config::defaults(BehaviorVersion::latest())
            .http_client(http)
            .timeout_config(timeouts);
        match (&config.region, &config.endpoint) {
            (Some(region), _) => loader = loader.region(Region::new(region.clone())),
            // An emulator does not care which region; AWS needs the real one (from the chain).
            (None, Some(_)) => loader = loader.region(Region::from_static("us-east-1")),
            (None, None) => {}
        }
        if let CredentialsSource::Static(c) = &config.credentials {
            loader = loader.credentials_provider(Credentials::new(
                c.access_key_id.clone(),
                c.secret_access_key.clone(),
                c.session_token.clone(),
                None,
                "mailroom-sqs",
            ));
        }
        if let Some(endpoint) = &config.endpoint {
            loader = loader.endpoint_url(endpoint.clone());
        }
        let sdk_config = loader.load().await;
        if sdk_config.region().is_none() {
            return Err(ctx(
                Error::config("no AWS region: add ?region=... to the sqs:// URL or set AWS_REGION"),
                "connect",
            ));
        }
        let client = Client::new(&sdk_config);
        // Fail fast on a wrong endpoint or refused credentials; a service that answers at all,
        // even with "access denied" for ListQueues, is reachable.
        if let Err(e) = client.list_queues().max_results(1).send().await {
            let err = from_sdk(e, "connect");
            let denied = err.kind() == ErrorKind::Auth
                && err
                    .to_string()
                    .to_ascii_lowercase()
                    .contains("accessdenied");
            if !denied {
                return Err(err);
            }
        }
        let caps = capabilities(&config);
        let shared = Arc::new(Shared {
            client,
            config,
            caps,
            urls: Mutex::new(HashMap::new()),
            closed: AtomicBool::new(false),
        });
        Ok(SqsBackend {
            topology: SqsTopology::new(shared.clone()),
            shared,
        })
    }

    /// Parse `url` and connect.
    pub async fn from_url(url: &str) -> Result<Self> {
        Self::connect(SqsConfig::from_url(url)?).await
    }

    /// The configuration this backend was opened with.
    pub fn config(&self) -> &SqsConfig {
        &self.shared.config
    }

    /// The SDK client, for what mailroom does not cover (queue tags, purges, SNS wiring ...).
    pub fn client(&self) -> &Client {
        &self.shared.client
    }

    /// A producer with its concrete type.
    pub fn sqs_producer(&self) -> Result<SqsProducer> {
        self.shared.check_open("producer")?;
        Ok(SqsProducer::new(self.shared.clone()))
    }

    /// A consumer with its concrete type.
    pub async fn sqs_consumer(&self, queue: &str, options: ConsumerOptions) -> Result<SqsConsumer> {
        self.shared.check_open("consumer")?;
        if options.replay.is_some() {
            self.shared
                .caps
                .require(Capability::Replay, BACKEND, "consumer")?;
        }
        SqsConsumer::open(self.shared.clone(), queue, options).await
    }
}

impl std::fmt::Debug for SqsBackend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SqsBackend")
            .field("config", &self.shared.config)
            .finish()
    }
}

#[async_trait]
impl Backend for SqsBackend {
    fn name(&self) -> &'static str {
        BACKEND
    }

    fn capabilities(&self) -> &Capabilities {
        &self.shared.caps
    }

    async fn server_version(&self) -> Result<String> {
        // SQS reports no version; say which service and where, which is what a report needs.
        let region = self
            .shared
            .client
            .config()
            .region()
            .map(|r| r.to_string())
            .unwrap_or_default();
        Ok(match &self.shared.config.endpoint {
            Some(endpoint) => format!("SQS API at {endpoint}, region {region}"),
            None => format!("Amazon SQS, region {region}"),
        })
    }

    async fn producer(&self) -> Result<Box<dyn Producer>> {
        Ok(Box::new(self.sqs_producer()?))
    }

    async fn consumer(&self, queue: &str, options: ConsumerOptions) -> Result<Box<dyn Consumer>> {
        Ok(Box::new(self.sqs_consumer(queue, options).await?))
    }

    fn topology(&self) -> &dyn Topology {
        &self.topology
    }

    async fn close(&self) -> Result<()> {
        self.shared.closed.store(true, Ordering::Release);
        Ok(())
    }
}
