//! Transactions: a consumer and a transactional producer whose work commits as one.
//!
//! A [`KafkaTransactional`] owns a librdkafka producer with `transactional.id` set to the unit's
//! id and a consumer in the queue's group with automatic commits off and `read_committed`. Its
//! transaction holds the outputs sent and, for each input partition, the offset after the last
//! input received; `commit` hands those offsets to the transaction with the consumer's group
//! metadata (`send_offsets_to_transaction`, so a consumer that lost the partitions to a rebalance
//! cannot commit them) and commits, so the outputs become visible and the inputs consumed
//! together.
//!
//! **Fencing.** Opening calls `init_transactions` before the consumer joins the group: the
//! coordinator aborts whatever transaction a previous holder of the id left open and bumps the
//! producer epoch, so that holder's later calls fail with `Fenced`, and the consumer then reads
//! only offsets that are stable (no transaction pending on them).
//!
//! **Abort** discards the outputs and seeks each input partition back to the first input of the
//! transaction, so the inputs are received again through the same unit. A unit whose partitions
//! are revoked mid-transaction can no longer commit them (their new owner starts from the last
//! commit), so its commit aborts instead and says why.
//!
//! This file is the unit and its states (open, beginning, broken, closed). What the transaction
//! consumed (the input offsets, and the rebalance callback that dooms it) is in
//! `transaction_inputs.rs`; the transactional producer's blocking calls (init, commit, abort,
//! each on the blocking pool, bounded by the backend's operation timeout, retried while
//! retriable) are in `transaction_producer.rs`.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use mailroom_core::operation::{ABORT, CLOSE, COMMIT, RECEIVE, SEND};
use mailroom_core::{
    DeliveryInfo, Destination, Error, ErrorKind, Message, Receipt, Result, TransactionCounts,
    TransactionInput, TransactionOptions, Transactional,
};
use rdkafka::consumer::{Consumer as _, StreamConsumer};
use rdkafka::error::KafkaResult;
use rdkafka::producer::Producer as _;
use rdkafka::Message as _;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

use crate::codec::{decode, Decoded, Stamps};
use crate::connection::{blocking, Connection};
use crate::consumer::is_moot;
use crate::producer::{lost_report, Completion, ProducerCore};
use crate::routing::RouteFilter;
use crate::topology::validate_topic;
use crate::transaction_inputs::{TxContext, TxInputs};
use crate::transaction_producer::{self, is_fatal, CommitFailure};
use crate::{error, BACKEND};

/// A Kafka transactional unit on one queue (see the crate docs, **Transactions**), and
/// [`Transactional`].
///
/// Dropping it aborts an open transaction and leaves the group, blocking the dropping thread
/// for that long (bounded by the operation timeout); call [`Transactional::close`] to do it
/// without blocking.
pub struct KafkaTransactional {
    consumer: Option<Arc<StreamConsumer<TxContext>>>,
    producer: Arc<ProducerCore>,
    inputs: TxInputs,
    queue: Arc<str>,
    topics: HashMap<String, Arc<str>>,
    timeout: Duration,
    /// `begin_transaction` succeeded and neither commit nor abort has ended it yet.
    open: bool,
    /// A `begin_transaction` on the blocking pool whose caller was cancelled: awaited first.
    beginning: Option<JoinHandle<KafkaResult<()>>>,
    outputs: usize,
    confirms: Vec<oneshot::Receiver<Result<Receipt>>>,
    /// Which records of the bound exchanges' topics this queue takes (client-side routing).
    routes: RouteFilter,
    /// Set once the unit cannot continue; every later call answers with it.
    broken: Option<(ErrorKind, String)>,
}

impl KafkaTransactional {
    pub(crate) async fn open(
        connection: Arc<Connection>,
        queue: &str,
        options: TransactionOptions,
    ) -> Result<Self> {
        let operation = "transactional";
        validate_topic("queue", queue).map_err(|e| e.with_operation(operation))?;
        if options.id.is_empty() {
            return Err(Error::invalid_input(
                "a transactional unit needs an id (TransactionOptions::new(id)): the same for \
                 an instance across restarts, unique among running instances",
            )
            .with_backend(BACKEND)
            .with_operation(operation));
        }
        let mut topics = vec![queue.to_owned()];
        topics.extend(connection.declared.bound_exchanges(queue));
        let mut present = Vec::new();
        for topic in topics {
            match connection.partitions(&topic).await? {
                Some(_) => present.push(topic),
                None if topic == queue => {
                    return Err(Error::not_found(format!(
                        "queue '{queue}' does not exist; declare it first"
                    ))
                    .with_backend(BACKEND)
                    .with_operation(operation))
                }
                None => tracing::warn!(queue, exchange = %topic, "bound exchange is gone"),
            }
        }
        let config = &connection.config;
        let timeout = config.operation_timeout;
        let producer = ProducerCore::with_client_config(
            &config.transactional_producer_client_config(&options.id, options.timeout),
            config,
            connection.capabilities.clone(),
        )?;
        // Fence the id's previous holder before joining the group, so that its open
        // transaction is aborted before this unit reads any offset it may have touched.
        transaction_producer::init(&producer, timeout, operation).await?;
        let inputs = TxInputs::default();
        let consumer: StreamConsumer<TxContext> = config
            .transactional_consumer_client_config(queue)
            .create_with_context(inputs.context())
            .map_err(|e| error::map(e, operation))?;
        let names: Vec<&str> = present.iter().map(String::as_str).collect();
        consumer
            .subscribe(&names)
            .map_err(|e| error::map(e, operation))?;
        Ok(KafkaTransactional {
            consumer: Some(Arc::new(consumer)),
            producer,
            inputs,
            queue: Arc::from(queue),
            topics: present
                .iter()
                .map(|t| (t.clone(), Arc::from(t.as_str())))
                .collect(),
            timeout,
            open: false,
            beginning: None,
            outputs: 0,
            confirms: Vec::new(),
            routes: RouteFilter::new(connection.declared.clone(), Arc::from(queue)),
            broken: None,
        })
    }

    /// The consumer, or the error that says why the unit cannot be used.
    fn usable(&self, operation: &'static str) -> Result<Arc<StreamConsumer<TxContext>>> {
        let Some(consumer) = self.consumer.as_ref() else {
            return Err(Error::closed("the transactional unit is closed")
                .with_backend(BACKEND)
                .with_operation(operation));
        };
        if let Some((kind, why)) = &self.broken {
            return Err(Error::new(*kind, why.clone())
                .set_temporary(false)
                .with_backend(BACKEND)
                .with_operation(operation));
        }
        Ok(consumer.clone())
    }

    /// Mark the unit unusable because of `error`, and return it (permanent).
    fn break_with(&mut self, error: Error) -> Error {
        let why = format!(
            "the transactional unit stopped: {error}; open a new one with the same id (it \
             finishes this one's transaction before it starts)"
        );
        self.broken = Some((error.kind(), why));
        self.open = false;
        error.set_temporary(false)
    }

    /// Begin a transaction unless one is open (cancel-safe: an interrupted begin is awaited by
    /// the next call instead of being started twice).
    async fn begin(&mut self, operation: &'static str) -> Result<()> {
        if self.open {
            return Ok(());
        }
        let handle = self.beginning.get_or_insert_with(|| {
            let producer = self.producer.clone();
            tokio::task::spawn_blocking(move || producer.client().begin_transaction())
        });
        let began = handle.await;
        self.beginning = None;
        match began {
            Ok(Ok(())) => {
                self.open = true;
                Ok(())
            }
            Ok(Err(e)) => {
                let fatal = is_fatal(&e);
                let error = error::map(e, operation);
                Err(if fatal { self.break_with(error) } else { error })
            }
            Err(e) => Err(Error::new(
                ErrorKind::Broker,
                format!("begin_transaction did not finish: {e}"),
            )
            .with_backend(BACKEND)
            .with_operation(operation)),
        }
    }

    fn topic_of(&self, name: &str) -> Arc<str> {
        self.topics
            .get(name)
            .cloned()
            .unwrap_or_else(|| Arc::from(name))
    }

    fn input(&self, m: &rdkafka::message::BorrowedMessage<'_>) -> TransactionInput {
        let topic = self.topic_of(m.topic());
        let Decoded {
            message,
            attempt,
            routing_key,
        } = decode(m);
        let offset = m.offset();
        self.inputs.received(topic, m.partition(), offset);
        TransactionInput {
            message,
            info: DeliveryInfo {
                attempt,
                redelivered: attempt > 1,
                source: self.queue.clone(),
                partition: Some(m.partition()),
                offset: Some(offset),
                consumer_group: Some(self.queue.clone()),
                routing_key: routing_key.map(Arc::from),
            },
        }
    }

    /// Wait for every output's delivery report; the first failure, if any.
    async fn delivered(&mut self) -> Option<Error> {
        let deadline = tokio::time::Instant::now() + self.timeout;
        for confirm in self.confirms.drain(..) {
            let failure = match tokio::time::timeout_at(deadline, confirm).await {
                Ok(Ok(Ok(_))) => continue,
                Ok(Ok(Err(e))) => e,
                Ok(Err(_)) => lost_report(),
                Err(_) => Error::new(
                    ErrorKind::Timeout,
                    format!("outputs not delivered within {:?}", self.timeout),
                )
                .with_backend(BACKEND)
                .with_operation(COMMIT),
            };
            return Some(failure);
        }
        None
    }

    /// Abort the open transaction and rewind the inputs; an `Aborted` error saying `why`, or
    /// the permanent error that stopped the unit.
    async fn abort_because(&mut self, why: &str, cause: Option<Error>) -> Error {
        let inputs = self.inputs.count();
        if let Err(e) = self.abort_and_rewind().await {
            return e;
        }
        let mut error = Error::new(
            ErrorKind::Aborted,
            format!(
                "the transaction was aborted: {why}; its outputs are discarded and the {inputs} \
                 inputs received in it will be delivered again"
            ),
        )
        .with_backend(BACKEND)
        .with_operation(COMMIT);
        if let Some(cause) = cause {
            error = error.with_boxed_source(Box::new(cause));
        }
        error
    }

    /// Abort (when open), then seek every input partition back to the transaction's first
    /// input, so the inputs come again.
    async fn abort_and_rewind(&mut self) -> Result<()> {
        let consumer = self.usable(ABORT)?;
        self.confirms.clear();
        if self.open || self.beginning.is_some() {
            if let Some(handle) = self.beginning.take() {
                // An interrupted begin: abort only once it has finished.
                let _ = handle.await;
            }
            let aborted = transaction_producer::abort(&self.producer, self.timeout, ABORT).await;
            if let Err(e) = aborted {
                // Whether the transaction is still open is unknown: only a new unit (whose
                // init fences this one) can settle it.
                return Err(self.break_with(e));
            }
        }
        self.open = false;
        self.outputs = 0;
        let tpl = self.inputs.rewind().map_err(|e| error::map(e, ABORT))?;
        if tpl.count() == 0 {
            return Ok(());
        }
        let timeout = self.timeout;
        let rewound = blocking(move || {
            let result = consumer
                .seek_partitions(tpl, timeout)
                .map_err(|e| error::map(e, ABORT))?;
            for element in result.elements() {
                if let Err(e) = element.error() {
                    return Err(error::map(e, ABORT));
                }
            }
            Ok(())
        })
        .await;
        // Left where it is, the consumer would skip the aborted inputs and a later commit
        // would consume them unprocessed: a unit that cannot rewind must stop (a new one starts
        // from the last commit).
        rewound.map_err(|e| self.break_with(e))
    }
}

impl std::fmt::Debug for KafkaTransactional {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KafkaTransactional")
            .field("queue", &self.queue)
            .field("open", &self.open)
            .field("pending", &self.pending())
            .field("broken", &self.broken)
            .field("closed", &self.consumer.is_none())
            .finish()
    }
}

#[async_trait]
impl Transactional for KafkaTransactional {
    async fn receive(&mut self) -> Result<TransactionInput> {
        let consumer = self.usable(RECEIVE)?;
        self.begin(RECEIVE).await?;
        loop {
            // Nothing below awaits after a record is taken, which keeps `receive` cancel-safe.
            match consumer.recv().await {
                Ok(m) if self.routes.admits(&m) => return Ok(self.input(&m)),
                Ok(m) => {
                    // No binding of the queue matches: consumed by this transaction, undelivered.
                    let topic = self.topic_of(m.topic());
                    self.inputs.received(topic, m.partition(), m.offset());
                }
                Err(e) if is_moot(&e) => {
                    tracing::debug!(error = %e, "transient consumer error");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                Err(e) => return Err(error::map(e, RECEIVE)),
            }
        }
    }

    async fn send(&mut self, destination: &Destination, message: Message) -> Result<()> {
        if let Err(e) = self.usable(SEND) {
            return Err(e.with_undelivered(message));
        }
        if let Err(e) = self
            .producer
            .capabilities()
            .check_message(&message, BACKEND, SEND)
        {
            return Err(e.with_undelivered(message));
        }
        let topic = destination.name();
        if let Err(e) = validate_topic("destination", topic) {
            return Err(e.with_operation(SEND).with_undelivered(message));
        }
        if let Err(e) = self.producer.ensure_topic(topic).await {
            return Err(e.with_undelivered(message));
        }
        if let Err(e) = self.begin(SEND).await {
            return Err(e.with_undelivered(message));
        }
        let permit = match self.producer.acquire().await {
            Ok(p) => p,
            Err(e) => return Err(e.with_undelivered(message)),
        };
        let (tx, rx) = oneshot::channel();
        self.producer
            .send(
                topic,
                message,
                Stamps::to(destination),
                Completion::Channel(tx),
                Some(permit),
            )
            .await?;
        self.confirms.push(rx);
        self.outputs += 1;
        Ok(())
    }

    fn pending(&self) -> TransactionCounts {
        TransactionCounts {
            inputs: self.inputs.count(),
            outputs: self.outputs,
        }
    }

    async fn commit(&mut self) -> Result<TransactionCounts> {
        let consumer = self.usable(COMMIT)?;
        if !self.open && self.beginning.is_none() {
            return Ok(TransactionCounts::default());
        }
        if self.beginning.is_some() {
            // A begin interrupted by a cancelled call: settle it before deciding anything.
            self.begin(COMMIT).await?;
        }
        let counts = self.pending();
        let doomed = self.inputs.doomed();
        if let Some(why) = doomed {
            return Err(self.abort_because(why, None).await);
        }
        if let Some(failure) = self.delivered().await {
            return Err(self
                .abort_because("an output was not delivered", Some(failure))
                .await);
        }
        let offsets = self
            .inputs
            .commit_offsets()
            .map_err(|e| error::map(e, COMMIT))?;
        let Some(group) = consumer.group_metadata() else {
            return Err(self
                .abort_because(
                    "the input consumer has no group metadata to commit with",
                    None,
                )
                .await);
        };
        let producer = self.producer.clone();
        let timeout = self.timeout;
        let committed = blocking(move || {
            Ok(transaction_producer::commit(
                &producer, &offsets, &group, timeout,
            ))
        })
        .await;
        match committed {
            Ok(Ok(())) => {
                self.open = false;
                self.outputs = 0;
                self.inputs.committed();
                Ok(counts)
            }
            Ok(Err(CommitFailure::Abortable(e))) => Err(self
                .abort_because("the broker refused the commit", Some(e))
                .await),
            Ok(Err(CommitFailure::Broken(e))) | Err(e) => Err(self.break_with(e)),
        }
    }

    async fn abort(&mut self) -> Result<()> {
        self.abort_and_rewind().await
    }

    async fn close(&mut self) -> Result<()> {
        if self.consumer.is_none() {
            return Ok(());
        }
        let mut result = Ok(());
        if self.broken.is_none() && (self.open || self.beginning.is_some()) {
            if let Some(handle) = self.beginning.take() {
                let _ = handle.await;
            }
            // No rewind: the group's next owner of each partition starts from the last commit.
            result = transaction_producer::abort(&self.producer, self.timeout, CLOSE).await;
            self.open = false;
        }
        if let Some(consumer) = self.consumer.take() {
            // Dropping the last handle closes the consumer and leaves the group (blocking).
            blocking(move || {
                drop(consumer);
                Ok(())
            })
            .await?;
        }
        result
    }
}

impl Drop for KafkaTransactional {
    fn drop(&mut self) {
        let Some(consumer) = self.consumer.take() else {
            return;
        };
        if self.broken.is_none() && self.open {
            let bound = self.timeout.min(Duration::from_secs(10));
            if let Err(e) = self.producer.client().abort_transaction(bound) {
                tracing::warn!(
                    error = %e,
                    "abort on drop failed; the next unit with this id (or the transaction timeout) ends it"
                );
            }
        }
        drop(consumer);
    }
}
