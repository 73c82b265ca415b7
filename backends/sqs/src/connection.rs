//! One connection to SQS: the SDK clients (SQS, and SNS for exchanges, built from one config so
//! they share the HTTP client and credentials; each keeps its own pool of connections and
//! retries), the queue-URL and topic-ARN caches, and whether it was closed. Every producer,
//! consumer and topology handle holds it.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use aws_config::ecs::EcsCredentialsProvider;
use aws_config::environment::EnvironmentVariableCredentialsProvider;
use aws_config::imds::credentials::ImdsCredentialsProvider;
use aws_config::meta::credentials::CredentialsProviderChain;
use aws_config::profile::ProfileFileCredentialsProvider;
use aws_config::provider_config::ProviderConfig;
use aws_config::web_identity_token::WebIdentityTokenCredentialsProvider;
use aws_sdk_sqs::config::timeout::TimeoutConfig;
use aws_sdk_sqs::config::SharedHttpClient;
use aws_sdk_sqs::config::{BehaviorVersion, Credentials, Region};
use aws_sdk_sqs::error::SdkError;
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
        if let Some(endpoint) = &config.endpoint {
            resolve(endpoint, config.connect_timeout).await?;
        }
        // A receive adds its long-poll wait to this bound (`receive_timeouts`).
        let timeouts = TimeoutConfig::builder()
            .connect_timeout(config.connect_timeout)
            .operation_timeout(config.operation_timeout)
            .build();
        let mut loader = aws_config::defaults(BehaviorVersion::latest())
            .http_client(http.clone())
            .timeout_config(timeouts);
        match (&config.region, &config.endpoint) {
            (Some(region), _) => loader = loader.region(Region::new(region.clone())),
            // An emulator does not care which region; AWS needs the real one (from the chain).
            (None, Some(_)) => loader = loader.region(Region::from_static("us-east-1")),
            (None, None) => {}
        }
        loader = match &config.credentials {
            CredentialsSource::Static(c) => loader.credentials_provider(Credentials::new(
                c.access_key_id.clone(),
                c.secret_access_key.clone(),
                c.session_token.clone(),
                None,
                "mailroom-sqs",
            )),
            chain => loader.credentials_provider(credentials_chain(
                chain == &CredentialsSource::ChainAndImds,
                http,
                config.region.clone(),
            )),
        };
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
            // The chain's own report is a nested Debug dump of every provider it tried.
            if !matches!(config.credentials, CredentialsSource::Static(_))
                && format!("{e:?}").contains("CredentialsNotLoaded")
            {
                return Err(context(
                    Error::new(ErrorKind::Auth, no_credentials(&config)),
                    CONNECT,
                ));
            }
            // The operation timeout ran out (not the connect timeout: that is a dispatch
            // failure, reported as such).
            let operation_timed_out = matches!(e, SdkError::TimeoutError(_));
            let err = from_sdk(e, CONNECT);
            if operation_timed_out {
                return Err(context(
                    Error::new(
                        ErrorKind::Timeout,
                        format!(
                            "the SQS endpoint {} did not answer within {:?} \
                             (operation_timeout_ms)",
                            config.endpoint.as_deref().unwrap_or("of AWS"),
                            config.operation_timeout
                        ),
                    ),
                    CONNECT,
                ));
            }
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

    /// The timeouts of a receive call: the operation timeout plus its long-poll wait.
    pub fn receive_timeouts(&self) -> TimeoutConfig {
        TimeoutConfig::builder()
            .connect_timeout(self.config.connect_timeout)
            .operation_timeout(self.config.operation_timeout + self.config.wait_time)
            .build()
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

/// Fail at once, naming the host, when the endpoint's host name does not resolve (a typo in
/// the URL): the SDK would report it only as a dispatch failure deep in its error chain.
async fn resolve(endpoint: &str, wait: Duration) -> Result<()> {
    let (tls, rest) = match endpoint.split_once("://") {
        Some((scheme, rest)) => (scheme == "https", rest),
        None => (false, endpoint),
    };
    let host_port = rest.split('/').next().unwrap_or(rest);
    let has_port = match host_port.rsplit_once(']') {
        Some((_, after)) => after.starts_with(':'),
        None => host_port.contains(':'),
    };
    let target = match has_port {
        true => host_port.to_owned(),
        false => format!("{host_port}:{}", if tls { 443 } else { 80 }),
    };
    let failed = match tokio::time::timeout(wait, tokio::net::lookup_host(target.as_str())).await {
        Ok(Ok(_)) => return Ok(()),
        Ok(Err(e)) => e.to_string(),
        Err(_) => format!("no answer from the resolver within {wait:?}"),
    };
    Err(context(
        Error::new(
            ErrorKind::Connection,
            format!("cannot resolve the host of the SQS endpoint {endpoint}: {failed}"),
        ),
        CONNECT,
    ))
}

/// What to do when the credential chain found no keys.
fn no_credentials(config: &SqsConfig) -> String {
    let imds = match config.credentials {
        CredentialsSource::ChainAndImds => ", or the EC2 instance metadata service",
        _ => {
            "; on EC2 with an instance role add ?credentials=chain_and_imds (the instance \
             metadata service is not asked otherwise)"
        }
    };
    format!(
        "no AWS credentials found: none in the sqs:// URL (KEY_ID:SECRET@), the environment \
         (AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY), the shared profile, a web identity token \
         or the ECS container{imds}"
    )
}

/// The standard credential chain, with the EC2 instance metadata service only when asked for
/// (see [`CredentialsSource::Chain`]).
fn credentials_chain(
    imds: bool,
    http: SharedHttpClient,
    region: Option<String>,
) -> CredentialsProviderChain {
    let conf = ProviderConfig::without_region()
        .with_http_client(http)
        .with_region(region.map(Region::new));
    let chain = CredentialsProviderChain::first_try(
        "Environment",
        EnvironmentVariableCredentialsProvider::new(),
    )
    .or_else(
        "Profile",
        ProfileFileCredentialsProvider::builder()
            .configure(&conf)
            .build(),
    )
    .or_else(
        "WebIdentityToken",
        WebIdentityTokenCredentialsProvider::builder()
            .configure(&conf)
            .build(),
    )
    .or_else(
        "EcsContainer",
        EcsCredentialsProvider::builder().configure(&conf).build(),
    );
    if imds {
        chain.or_else(
            "Ec2InstanceMetadata",
            ImdsCredentialsProvider::builder().configure(&conf).build(),
        )
    } else {
        chain
    }
}

fn lock(
    cache: &Mutex<HashMap<String, String>>,
) -> std::sync::MutexGuard<'_, HashMap<String, String>> {
    // A poisoned cache is still a valid cache: entries are inserted whole.
    cache.lock().unwrap_or_else(|p| p.into_inner())
}
