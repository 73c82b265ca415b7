//! Exchanges as SNS topics: the kind kept as a topic tag; a binding as the queue's subscription
//! to the topic, with raw message delivery and a filter policy (see `filter.rs`).

use aws_sdk_sns::types::Tag;
use aws_sdk_sqs::types::QueueAttributeName;
use mailroom_core::operation::{BIND, DECLARE_EXCHANGE, DELETE_EXCHANGE, UNBIND};
use mailroom_core::{Binding, Error, ErrorKind, ExchangeKind, ExchangeSpec, Result};
use serde_json::{json, Value};

use crate::connection::Connection;
use crate::error::{context, from_sdk};
use crate::filter;

/// Topic tag holding the exchange kind (`direct`, `topic`, `fanout`, `headers`).
pub const KIND_TAG: &str = "mailroom.exchange-kind";

/// Check `name` against SNS's topic-name rules: 1 to 256 of `A-Za-z0-9_-`, `.fifo` allowed last.
pub fn validate_exchange_name(name: &str) -> Result<()> {
    mailroom_core::topology::validate_name("exchange", name)?;
    let stem = name.strip_suffix(".fifo").unwrap_or(name);
    let ok = name.len() <= 256
        && !stem.is_empty()
        && stem
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_');
    if ok {
        Ok(())
    } else {
        Err(Error::invalid_input(format!(
            "exchange name {name:?} is not valid on SQS, where an exchange is an SNS topic: 1 to \
             256 characters of A-Z a-z 0-9 - _, with .fifo at the end for a FIFO topic"
        )))
    }
}

fn kind_of(text: &str) -> Option<ExchangeKind> {
    ExchangeKind::ALL.into_iter().find(|k| k.as_str() == text)
}

/// Create the topic, tagged with its kind. SNS answers a second create with other tags with
/// `InvalidParameter`, which is a conflict here.
pub(crate) async fn declare(connection: &Connection, spec: &ExchangeSpec) -> Result<()> {
    let op = DECLARE_EXCHANGE;
    validate_exchange_name(&spec.name).map_err(|e| context(e, op))?;
    connection.check_open(op)?;
    let tag = Tag::builder()
        .key(KIND_TAG)
        .value(spec.kind.as_str())
        .build()
        .map_err(|e| {
            context(
                Error::new(ErrorKind::Encode, "topic tag could not be built").with_source(e),
                op,
            )
        })?;
    let mut call = connection.sns.create_topic().name(&spec.name).tags(tag);
    if spec.name.ends_with(".fifo") {
        call = call.attributes("FifoTopic", "true");
    }
    let out = call.send().await.map_err(|e| {
        let err = from_sdk(e, op);
        if err.message().contains("already exists") {
            context(
                Error::new(
                    ErrorKind::Conflict,
                    format!(
                        "exchange '{}' exists with another kind than {} ({})",
                        spec.name,
                        spec.kind,
                        err.message()
                    ),
                ),
                op,
            )
        } else {
            err
        }
    })?;
    let arn = out.topic_arn().ok_or_else(|| {
        context(
            Error::new(ErrorKind::Broker, "CreateTopic returned no topic ARN"),
            op,
        )
    })?;
    connection.remember_topic(&spec.name, arn);
    Ok(())
}

/// Delete the topic and with it every subscription; deleting a missing exchange succeeds.
pub(crate) async fn delete(connection: &Connection, name: &str) -> Result<()> {
    let op = DELETE_EXCHANGE;
    connection.check_open(op)?;
    let arn = match topic_arn(connection, name, op).await {
        Ok(arn) => arn,
        Err(e) if e.kind() == ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(e),
    };
    connection.forget_topic(name);
    connection
        .sns
        .delete_topic()
        .topic_arn(arn)
        .send()
        .await
        .map_err(|e| from_sdk(e, op))?;
    Ok(())
}

/// The ARN of exchange `name`'s topic: cached, or found by listing topics (SNS has no lookup by
/// name); `NotFound` if there is none.
pub(crate) async fn topic_arn(
    connection: &Connection,
    name: &str,
    op: &'static str,
) -> Result<String> {
    if let Some(arn) = connection.cached_topic(name) {
        return Ok(arn);
    }
    let suffix = format!(":{name}");
    let mut token = None;
    loop {
        let out = connection
            .sns
            .list_topics()
            .set_next_token(token)
            .send()
            .await
            .map_err(|e| from_sdk(e, op))?;
        if let Some(arn) = out
            .topics()
            .iter()
            .filter_map(|t| t.topic_arn())
            .find(|arn| arn.ends_with(&suffix))
        {
            connection.remember_topic(name, arn);
            return Ok(arn.to_owned());
        }
        token = out.next_token().map(str::to_owned);
        if token.is_none() {
            return Err(context(
                Error::not_found(format!("exchange '{name}' does not exist")),
                op,
            ));
        }
    }
}

async fn kind(
    connection: &Connection,
    arn: &str,
    name: &str,
    op: &'static str,
) -> Result<ExchangeKind> {
    let out = connection
        .sns
        .list_tags_for_resource()
        .resource_arn(arn)
        .send()
        .await
        .map_err(|e| from_sdk(e, op))?;
    let tag = out.tags().iter().find(|t| t.key() == KIND_TAG);
    tag.and_then(|t| kind_of(t.value())).ok_or_else(|| {
        context(
            Error::new(
                ErrorKind::Unsupported,
                format!(
                    "SNS topic '{name}' has no {KIND_TAG} tag naming an exchange kind; declare \
                     it through mailroom (or tag it) to bind queues to it"
                ),
            ),
            op,
        )
    })
}

/// The queue's subscription to the topic, if any.
async fn subscription(
    connection: &Connection,
    topic: &str,
    queue_arn: &str,
    op: &'static str,
) -> Result<Option<String>> {
    let mut token = None;
    loop {
        let out = connection
            .sns
            .list_subscriptions_by_topic()
            .topic_arn(topic)
            .set_next_token(token)
            .send()
            .await
            .map_err(|e| from_sdk(e, op))?;
        if let Some(arn) = out
            .subscriptions()
            .iter()
            .find(|s| s.endpoint() == Some(queue_arn))
            .and_then(|s| s.subscription_arn())
        {
            return Ok(Some(arn.to_owned()));
        }
        token = out.next_token().map(str::to_owned);
        if token.is_none() {
            return Ok(None);
        }
    }
}

async fn filter_policy(connection: &Connection, sub: &str, op: &'static str) -> Result<String> {
    let out = connection
        .sns
        .get_subscription_attributes()
        .subscription_arn(sub)
        .send()
        .await
        .map_err(|e| from_sdk(e, op))?;
    Ok(out
        .attributes()
        .and_then(|a| a.get("FilterPolicy"))
        .cloned()
        .unwrap_or_default())
}

async fn set_filter_policy(
    connection: &Connection,
    sub: &str,
    policy: String,
    op: &'static str,
) -> Result<()> {
    connection
        .sns
        .set_subscription_attributes()
        .subscription_arn(sub)
        .attribute_name("FilterPolicy")
        .attribute_value(policy)
        .send()
        .await
        .map_err(|e| from_sdk(e, op))?;
    Ok(())
}

/// What bind and unbind both look up: the topic, its kind checked against the route, the queue.
struct Target {
    topic: String,
    queue_url: String,
    queue_arn: String,
    groups: Option<Vec<filter::Group>>,
}

async fn target(connection: &Connection, binding: &Binding, op: &'static str) -> Result<Target> {
    binding.validate().map_err(|e| context(e, op))?;
    connection.check_open(op)?;
    let topic = topic_arn(connection, &binding.exchange, op).await?;
    let kind = kind(connection, &topic, &binding.exchange, op).await?;
    if !binding.route.fits(kind) {
        return Err(context(
            Error::invalid_input(format!(
                "a {:?} route cannot bind to {kind} exchange '{}'",
                binding.route, binding.exchange
            )),
            op,
        ));
    }
    let groups = filter::groups(&binding.route).map_err(|e| context(e, op))?;
    let queue_url = connection.queue_url(&binding.queue, op).await?;
    let queue_arn = connection.queue_arn(&queue_url, op).await?;
    Ok(Target {
        topic,
        queue_url,
        queue_arn,
        groups,
    })
}

/// Subscribe the queue (raw delivery, the binding's filter policy), or add the binding's
/// alternatives to the policy of its existing subscription.
pub(crate) async fn bind(connection: &Connection, binding: &Binding) -> Result<()> {
    let op = BIND;
    let t = target(connection, binding, op).await?;
    let _serial = connection.bindings.lock().await;
    allow_topic(connection, &t, op).await?;
    // Another process's bind of the same queue may subscribe it between the lookup and the
    // Subscribe, which SNS then refuses ("already exists"): the second pass adds to that one.
    for pass in 0..2 {
        match add_to_subscription(connection, &t, op).await {
            Err(e) if pass == 0 && e.message().contains("already exists") => continue,
            other => return other,
        }
    }
    Ok(())
}

async fn add_to_subscription(connection: &Connection, t: &Target, op: &'static str) -> Result<()> {
    let existing = subscription(connection, &t.topic, &t.queue_arn, op).await?;
    match (existing, &t.groups) {
        // A fanout subscription has no policy: already bound.
        (Some(_), None) => Ok(()),
        (Some(sub), Some(add)) => {
            let mut groups = filter::parse(Some(&filter_policy(connection, &sub, op).await?))
                .map_err(|e| context(e, op))?;
            let before = groups.len();
            for g in add {
                if !groups.contains(g) {
                    groups.push(g.clone());
                }
            }
            if groups.len() == before {
                return Ok(());
            }
            let policy = filter::render(&groups).map_err(|e| context(e, op))?;
            set_filter_policy(connection, &sub, policy, op).await
        }
        (None, groups) => {
            let mut call = connection
                .sns
                .subscribe()
                .topic_arn(&t.topic)
                .protocol("sqs")
                .endpoint(&t.queue_arn)
                .return_subscription_arn(true)
                // The queue gets the message as published, not wrapped in an SNS envelope.
                .attributes("RawMessageDelivery", "true");
            if let Some(groups) = groups {
                let policy = filter::render(groups).map_err(|e| context(e, op))?;
                call = call
                    .attributes("FilterPolicyScope", "MessageAttributes")
                    .attributes("FilterPolicy", policy);
            }
            call.send().await.map_err(|e| from_sdk(e, op))?;
            Ok(())
        }
    }
}

/// Remove the binding's alternatives from the queue's policy; the last one (or a fanout binding)
/// removes the subscription. Unbinding what is not bound succeeds.
pub(crate) async fn unbind(connection: &Connection, binding: &Binding) -> Result<()> {
    let op = UNBIND;
    let t = match target(connection, binding, op).await {
        Ok(t) => t,
        Err(e) if e.kind() == ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(e),
    };
    let _serial = connection.bindings.lock().await;
    let Some(sub) = subscription(connection, &t.topic, &t.queue_arn, op).await? else {
        return Ok(());
    };
    let remaining = match t.groups {
        None => Vec::new(),
        Some(remove) => {
            let mut groups = filter::parse(Some(&filter_policy(connection, &sub, op).await?))
                .map_err(|e| context(e, op))?;
            groups.retain(|g| !remove.contains(g));
            groups
        }
    };
    if remaining.is_empty() {
        connection
            .sns
            .unsubscribe()
            .subscription_arn(sub)
            .send()
            .await
            .map_err(|e| from_sdk(e, op))?;
        return Ok(());
    }
    let policy = filter::render(&remaining).map_err(|e| context(e, op))?;
    set_filter_policy(connection, &sub, policy, op).await
}

/// Let the topic send to the queue: on AWS, SNS delivers to a queue only if the queue's access
/// policy allows `sqs:SendMessage` from the topic. One statement per topic is added to what the
/// queue's policy already says.
async fn allow_topic(connection: &Connection, t: &Target, op: &'static str) -> Result<()> {
    let out = connection
        .client
        .get_queue_attributes()
        .queue_url(&t.queue_url)
        .attribute_names(QueueAttributeName::Policy)
        .send()
        .await
        .map_err(|e| from_sdk(e, op))?;
    let current = out
        .attributes()
        .and_then(|a| a.get(&QueueAttributeName::Policy))
        .filter(|p| !p.trim().is_empty());
    let mut policy: Value = match current {
        Some(text) => serde_json::from_str(text).map_err(|e| {
            context(
                Error::new(
                    ErrorKind::Broker,
                    format!(
                        "the access policy of queue '{}' is not JSON: {e}",
                        t.queue_url
                    ),
                ),
                op,
            )
        })?,
        None => json!({ "Version": "2012-10-17", "Statement": [] }),
    };
    let statement = json!({
        "Effect": "Allow",
        "Principal": { "Service": "sns.amazonaws.com" },
        "Action": "sqs:SendMessage",
        "Resource": t.queue_arn,
        "Condition": { "ArnEquals": { "aws:SourceArn": t.topic } },
    });
    let Value::Object(map) = &mut policy else {
        return Err(context(
            Error::new(
                ErrorKind::Broker,
                format!(
                    "the access policy of queue '{}' is not a JSON object",
                    t.queue_url
                ),
            ),
            op,
        ));
    };
    // A policy may hold a single statement as an object rather than a list.
    let mut statements = match map.remove("Statement") {
        Some(Value::Array(list)) => list,
        Some(one @ Value::Object(_)) => vec![one],
        _ => Vec::new(),
    };
    let same = |s: &Value| {
        s.get("Condition") == statement.get("Condition")
            && s.get("Action") == statement.get("Action")
    };
    if statements.iter().any(same) {
        return Ok(());
    }
    statements.push(statement);
    map.insert("Statement".to_owned(), Value::Array(statements));
    connection
        .client
        .set_queue_attributes()
        .queue_url(&t.queue_url)
        .attributes(QueueAttributeName::Policy, policy.to_string())
        .send()
        .await
        .map_err(|e| from_sdk(e, op))?;
    Ok(())
}
