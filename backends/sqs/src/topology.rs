//! Queues with their SQS attributes and redrive policy; exchanges, which are SNS topics, through
//! `exchange.rs`.

use std::collections::HashMap;
use std::sync::Arc;

use async_trait::async_trait;
use aws_sdk_sqs::types::QueueAttributeName;
use mailroom_core::operation::QUEUE_DEPTH;
use mailroom_core::{Binding, Error, ErrorKind, ExchangeSpec, QueueSpec, Result, Topology};

use crate::connection::Connection;
use crate::error::{context, from_sdk};
use crate::exchange;

/// `maxReceiveCount` for a queue given a dead-letter queue but no attempt limit: SQS records a
/// dead-letter queue only inside a redrive policy, and 1000 is the largest count it accepts.
pub const DEFAULT_MAX_RECEIVE_COUNT: u32 = 1000;

/// Declares and deletes SQS queues, and exchanges (SNS topics) with their bindings.
pub struct SqsTopology {
    connection: Arc<Connection>,
}

impl SqsTopology {
    pub(crate) fn new(connection: Arc<Connection>) -> Self {
        SqsTopology { connection }
    }
}

/// Check `name` against SQS's queue-name rules: 1 to 80 of `A-Za-z0-9_-`, `.fifo` allowed last.
pub fn validate_queue_name(name: &str) -> Result<()> {
    mailroom_core::topology::validate_name("queue", name)?;
    let stem = name.strip_suffix(".fifo").unwrap_or(name);
    let ok = name.len() <= 80
        && !stem.is_empty()
        && stem
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_');
    if ok {
        Ok(())
    } else {
        Err(Error::invalid_input(format!(
            "queue name {name:?} is not valid for SQS: 1 to 80 characters of A-Z a-z 0-9 - _, \
             with .fifo at the end for a FIFO queue"
        )))
    }
}

impl SqsTopology {
    async fn attributes(&self, spec: &QueueSpec) -> Result<HashMap<QueueAttributeName, String>> {
        let op = "declare_queue";
        let mut attrs = HashMap::new();
        for (key, value) in &spec.extra {
            let name = QueueAttributeName::try_parse(key).map_err(|_| {
                context(
                    Error::invalid_input(format!(
                        "queue '{}': {key:?} is not an SQS queue attribute (e.g. \
                         VisibilityTimeout, MessageRetentionPeriod, DelaySeconds, \
                         ReceiveMessageWaitTimeSeconds, ContentBasedDeduplication)",
                        spec.name
                    )),
                    op,
                )
            })?;
            attrs.insert(name, value.clone());
        }
        let fifo = spec.name.ends_with(".fifo");
        if fifo {
            attrs.insert(QueueAttributeName::FifoQueue, "true".into());
        }
        match (&spec.dead_letter_queue, spec.max_delivery_attempts) {
            (None, None) => {}
            (None, Some(_)) => {
                return Err(context(
                    Error::invalid_input(format!(
                        "queue '{}': max_delivery_attempts needs a dead_letter_queue (SQS counts \
                         attempts only to redrive to one)",
                        spec.name
                    )),
                    op,
                ))
            }
            (Some(dlq), attempts) => {
                if dlq.ends_with(".fifo") != fifo {
                    return Err(context(
                        Error::invalid_input(format!(
                            "queue '{}' and its dead-letter queue '{dlq}' must both be FIFO or \
                             both standard",
                            spec.name
                        )),
                        op,
                    ));
                }
                let max = attempts.unwrap_or(DEFAULT_MAX_RECEIVE_COUNT);
                if max > DEFAULT_MAX_RECEIVE_COUNT {
                    return Err(context(
                        Error::invalid_input(format!(
                            "queue '{}': max_delivery_attempts {max} exceeds SQS's 1000",
                            spec.name
                        )),
                        op,
                    ));
                }
                let dlq_url = self.connection.queue_url(dlq, op).await.map_err(|e| {
                    if e.kind() == ErrorKind::NotFound {
                        context(
                            Error::not_found(format!(
                                "dead-letter queue '{dlq}' of queue '{}' does not exist; \
                                 declare it first",
                                spec.name
                            )),
                            op,
                        )
                    } else {
                        e
                    }
                })?;
                let arn = self.connection.queue_arn(&dlq_url, op).await?;
                let policy = serde_json::json!({
                    "deadLetterTargetArn": arn,
                    "maxReceiveCount": max.to_string(),
                });
                attrs.insert(QueueAttributeName::RedrivePolicy, policy.to_string());
            }
        }
        Ok(attrs)
    }
}

#[async_trait]
impl Topology for SqsTopology {
    async fn declare_exchange(&self, spec: &ExchangeSpec) -> Result<()> {
        exchange::declare(&self.connection, spec).await
    }

    async fn delete_exchange(&self, name: &str) -> Result<()> {
        exchange::delete(&self.connection, name).await
    }

    async fn declare_queue(&self, spec: &QueueSpec) -> Result<()> {
        let op = "declare_queue";
        validate_queue_name(&spec.name).map_err(|e| context(e, op))?;
        self.connection.check_open(op)?;
        let attrs = self.attributes(spec).await?;
        let out = self
            .connection
            .client
            .create_queue()
            .queue_name(&spec.name)
            .set_attributes(Some(attrs))
            .send()
            .await
            .map_err(|e| {
                let err = from_sdk(e, op);
                if err.kind() == ErrorKind::Conflict {
                    context(
                        Error::new(
                            ErrorKind::Conflict,
                            format!(
                                "queue '{}' exists with different attributes: {}",
                                spec.name,
                                err.message()
                            ),
                        ),
                        op,
                    )
                } else {
                    err
                }
            })?;
        if let Some(url) = out.queue_url() {
            self.connection.remember_url(&spec.name, url);
        }
        Ok(())
    }

    async fn delete_queue(&self, name: &str) -> Result<()> {
        let op = "delete_queue";
        self.connection.check_open(op)?;
        let url = self.connection.queue_url(name, op).await?;
        self.connection.forget_url(name);
        self.connection
            .client
            .delete_queue()
            .queue_url(url)
            .send()
            .await
            .map_err(|e| from_sdk(e, op))?;
        Ok(())
    }

    async fn bind(&self, binding: &Binding) -> Result<()> {
        exchange::bind(&self.connection, binding).await
    }

    async fn unbind(&self, binding: &Binding) -> Result<()> {
        exchange::unbind(&self.connection, binding).await
    }

    async fn queue_depth(&self, queue: &str) -> Result<Option<u64>> {
        let op = QUEUE_DEPTH;
        self.connection.check_open(op)?;
        let url = self.connection.queue_url(queue, op).await?;
        let out = self
            .connection
            .client
            .get_queue_attributes()
            .queue_url(url)
            .attribute_names(QueueAttributeName::ApproximateNumberOfMessages)
            .send()
            .await
            .map_err(|e| from_sdk(e, op))?;
        let count = out
            .attributes()
            .and_then(|a| a.get(&QueueAttributeName::ApproximateNumberOfMessages))
            .ok_or_else(|| {
                context(
                    Error::new(
                        ErrorKind::Broker,
                        format!("the broker sent no ApproximateNumberOfMessages for '{queue}'"),
                    ),
                    op,
                )
            })?;
        let depth = count.parse::<u64>().map_err(|_| {
            context(
                Error::new(
                    ErrorKind::Broker,
                    format!("ApproximateNumberOfMessages of '{queue}' is not a count: {count:?}"),
                ),
                op,
            )
        })?;
        Ok(Some(depth))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn queue_names_follow_sqs_rules() {
        assert!(validate_queue_name("orders-1_a").is_ok());
        assert!(validate_queue_name("orders.fifo").is_ok());
        assert!(validate_queue_name("a.b").is_err());
        assert!(validate_queue_name(".fifo").is_err());
        assert!(validate_queue_name(&"x".repeat(81)).is_err());
    }
}
