//! One connection to SQS: the SDK clients (SQS, and SNS for exchanges, built from one config so
//! they share the HTTP client and credentials; each keeps its own pool of connections and
//! retries), the queue-URL and topic-ARN caches, and whether it was closed. Every producer,
//! consumer and topology handle holds it.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use aws_sdk_sqs::config::timeout::TimeoutConfig;
use aws_sdk_sqs::config::{BehaviorVersion, Credentials, Region};
use aws_sdk_sqs::types::QueueAttributeName;
use aws_sdk_sqs::Client;
use aws_smithy_http_client::tls;
use mailroom_core::operation::CONNECT;
use mailroom_core::{Capabilities, ClosedFlag, Error, ErrorKind, Result};

use crate::config::{CredentialsSource, SqsConfig};
use crate::error::{context, from_sdk};
use crate::{capabilities, BACKEND};

/// What producers, consumers and the topology of one connection share.
pub(crate) struct Connection {
    pub client: Client,
    /// SNS on the same endpoint: exchanges are its topics.
    pub sns: aws_sdk_sns::Client,
    pub config: SqsConfig,
    pub capabilities: Capabilities,
    urls: Mutex<HashMap<String, String>>,
    /// Exchange name → topic ARN.
    topics: Mutex<HashMap<String, String>>,
    /// Held by bind and unbind around their read-modify-write of a subscription's policy, so
    /// that this connection's bindings never lose one another's alternatives.
    pub bindings: tokio::sync::Mutex<()>,
    closed: ClosedFlag,
}

impl Connection {
    /// Make the SDK client for `config` and check that the endpoint answers.
    pub async fn open(config: SqsConfig) -> Result<Arc<Self>> {
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
            return Err(context(
                Error::config("no AWS region: add ?region=... to the sqs:// URL or set AWS_REGION"),
                CONNECT,
            ));
        }
        let client = Client::new(&sdk_config);
        let sns = aws_sdk_sns::Client::new(&sdk_config);
        // Fail fast on a wrong endpoint or refused credentials; a service that answers at all,
        // even with "access denied" for ListQueues, is reachable.
        if let Err(e) = client.list_queues().max_results(1).send().await {
            let err = from_sdk(e, CONNECT);
            let denied = err.kind() == ErrorKind::Auth
                && err
                    .to_string()
                    .to_ascii_lowercase()
                    .contains("accessdenied");
            if !denied {
                return Err(err);
            }
        }
        Ok(Arc::new(Connection {
            client,
            sns,
            topics: Mutex::new(HashMap::new()),
            bindings: tokio::sync::Mutex::new(()),
            capabilities: capabilities(&config),
            config,
            urls: Mutex::new(HashMap::new()),
            closed: ClosedFlag::new(BACKEND),
        }))
    }

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
                    context(
                        Error::not_found(format!("queue '{name}' does not exist")),
                        operation,
                    )
                } else {
                    err
                }
            })?;
        let url = out.queue_url().unwrap_or_default().to_owned();
        if url.is_empty() {
            return Err(context(
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
                context(
                    Error::new(ErrorKind::Broker, format!("queue {url} reported no ARN")),
                    operation,
                )
            })
    }

    /// The cached ARN of exchange `name`'s topic, if known.
    pub fn cached_topic(&self, name: &str) -> Option<String> {
        lock(&self.topics).get(name).cloned()
    }

    pub fn remember_topic(&self, name: &str, arn: &str) {
        lock(&self.topics).insert(name.to_owned(), arn.to_owned());
    }

    pub fn forget_topic(&self, name: &str) {
        lock(&self.topics).remove(name);
    }

    pub fn is_closed(&self) -> bool {
        self.closed.is_closed()
    }

    pub fn check_open(&self, operation: &'static str) -> Result<()> {
        self.closed.check_open(operation)
    }

    pub fn close(&self) {
        self.closed.close();
    }

    fn lock_urls(&self) -> std::sync::MutexGuard<'_, HashMap<String, String>> {
        lock(&self.urls)
    }
}

fn lock(
    cache: &Mutex<HashMap<String, String>>,
) -> std::sync::MutexGuard<'_, HashMap<String, String>> {
    // A poisoned cache is still a valid cache: entries are inserted whole.
    cache.lock().unwrap_or_else(|p| p.into_inner())
}
