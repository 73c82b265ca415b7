//! Exchanges as SNS topics against the SQS-API server of scripts/brokers.sh (fauxqs speaks SNS on
//! the same endpoint): what arrives through a topic is what a direct send delivers, several
//! bindings of one queue share its subscription, unbind removes exactly its own, and what SNS
//! cannot express is refused at bind naming it.

use std::time::Duration;

use mailroom_core::{
    Backend, Binding, ConsumerOptions, Destination, ErrorKind, ExchangeKind, ExchangeSpec,
    HeaderMatch, Message, MessageId, QueueSpec, Timestamp,
};
use mailroom_sqs::{SqsBackend, SqsConfig, DEFAULT_URL};

/// Longest wait for one expected delivery; receives poll, so an empty queue ends sooner.
const WAIT: Duration = Duration::from_secs(5);
/// How long a queue must stay empty to count as having received nothing more.
const QUIET: Duration = Duration::from_millis(600);

fn url() -> String {
    std::env::var("MAILROOM_SQS_URL").unwrap_or_else(|_| DEFAULT_URL.to_owned())
}

async fn backend() -> SqsBackend {
    tokio::time::timeout(
        Duration::from_secs(30),
        SqsBackend::connect(SqsConfig::from_url(&url()).unwrap()),
    )
    .await
    .expect("connecting to the SQS server took over 30s (scripts/brokers.sh up sqs)")
    .expect("the SQS server at MAILROOM_SQS_URL (or 127.0.0.1:4566) answers")
}

fn name(what: &str) -> String {
    let id = uuid::Uuid::new_v4().simple().to_string();
    format!("mr-sns-{what}-{}", &id[..12])
}

/// An exchange of `kind` and `n` fresh queues.
async fn setup(b: &SqsBackend, kind: ExchangeKind, n: usize) -> (String, Vec<String>) {
    let ex = name("ex");
    let topo = b.topology();
    topo.declare_exchange(&ExchangeSpec::new(&ex, kind))
        .await
        .unwrap();
    let mut queues = Vec::new();
    for i in 0..n {
        let q = name(&format!("q{i}"));
        topo.declare_queue(&QueueSpec::new(&q)).await.unwrap();
        queues.push(q);
    }
    (ex, queues)
}

async fn teardown(b: &SqsBackend, ex: &str, queues: &[String]) {
    for q in queues {
        let _ = b.topology().delete_queue(q).await;
    }
    let _ = b.topology().delete_exchange(ex).await;
}

/// Every message in `queue` until it stays empty for [`QUIET`], acked; the ids, sorted.
async fn drain(b: &SqsBackend, queue: &str, expect: usize) -> Vec<Message> {
    let mut c = b.consumer(queue, ConsumerOptions::default()).await.unwrap();
    let mut got = Vec::new();
    loop {
        let wait = if got.len() < expect { WAIT } else { QUIET };
        match c.receive_timeout(wait).await.unwrap() {
            Some(d) => {
                got.push(d.message().clone());
                d.ack().await.unwrap();
            }
            None => break,
        }
    }
    c.close().await.unwrap();
    got
}

fn ids(messages: &[Message]) -> Vec<MessageId> {
    let mut ids: Vec<MessageId> = messages.iter().map(|m| m.id().clone()).collect();
    ids.sort_by_key(|id| id.to_string());
    ids
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_message_through_a_topic_arrives_as_a_direct_send_delivers_it() {
    let b = backend().await;
    let (ex, qs) = setup(&b, ExchangeKind::Fanout, 2).await;
    b.topology()
        .bind(&Binding::fanout(&ex, &qs[0]))
        .await
        .unwrap();
    let mut builder = Message::builder(&b"\x00\xff binary \xfe"[..])
        .key("customer-7")
        .timestamp(Timestamp::from_millis(1_700_000_000_123))
        .header(
            "traceparent",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
        )
        .header("empty", "")
        .header("nul", "a\0b");
    for i in 0..12 {
        builder = builder.header(format!("h{i}"), format!("v{i}"));
    }
    let sent = builder.build().unwrap();
    let producer = b.producer().await.unwrap();
    producer
        .send(&Destination::exchange(&ex, "any.key"), sent.clone())
        .await
        .unwrap();
    producer
        .send(&Destination::queue(&qs[1]), sent.clone())
        .await
        .unwrap();
    let through_topic = drain(&b, &qs[0], 1).await;
    let direct = drain(&b, &qs[1], 1).await;
    assert_eq!(
        through_topic,
        std::slice::from_ref(&sent),
        "id, key, timestamp, headers, payload"
    );
    assert_eq!(through_topic, direct);
    teardown(&b, &ex, &qs).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bindings_share_one_subscription_and_unbind_removes_only_its_own() {
    let b = backend().await;
    let (ex, qs) = setup(&b, ExchangeKind::Topic, 1).await;
    let topo = b.topology();
    let created = Binding::pattern(&ex, &qs[0], "order.created").unwrap();
    let eu = Binding::pattern(&ex, &qs[0], "#.eu").unwrap();
    topo.bind(&created).await.unwrap();
    topo.bind(&eu).await.unwrap();
    topo.bind(&eu).await.unwrap(); // idempotent
    let producer = b.producer().await.unwrap();
    let send = |key: &'static str| {
        let producer = &producer;
        let ex = ex.clone();
        async move {
            let m = Message::new(key);
            producer
                .send(&Destination::exchange(&ex, key), m.clone())
                .await
                .unwrap();
            m
        }
    };
    let a = send("order.created").await;
    let c = send("invoice.eu").await;
    send("order.paid").await;
    assert_eq!(ids(&drain(&b, &qs[0], 2).await), ids(&[a, c]));

    topo.unbind(&created).await.unwrap();
    send("order.created").await;
    let still = send("order.eu").await;
    assert_eq!(
        ids(&drain(&b, &qs[0], 1).await),
        ids(&[still]),
        "#.eu stays bound after order.created is unbound"
    );
    topo.unbind(&eu).await.unwrap();
    topo.unbind(&eu).await.unwrap(); // unbinding what is not bound succeeds
    send("order.eu").await;
    assert!(drain(&b, &qs[0], 0).await.is_empty(), "nothing is bound");
    teardown(&b, &ex, &qs).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn what_sns_cannot_express_is_refused_at_bind_by_name() {
    let b = backend().await;
    let (ex, qs) = setup(&b, ExchangeKind::Topic, 1).await;
    let topo = b.topology();
    for pattern in ["order.*.eu", "a.#.z"] {
        let err = topo
            .bind(&Binding::pattern(&ex, &qs[0], pattern).unwrap())
            .await
            .unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Unsupported, "{err}");
        assert!(err.to_string().contains(&format!("{pattern:?}")), "{err}");
    }
    let wrong_route = topo
        .bind(&Binding::key(&ex, &qs[0], "k"))
        .await
        .unwrap_err();
    assert_eq!(wrong_route.kind(), ErrorKind::InvalidInput, "{wrong_route}");
    let (hx, hq) = setup(&b, ExchangeKind::Headers, 1).await;
    let err = topo
        .bind(&Binding::headers(
            &hx,
            &hq[0],
            HeaderMatch::All,
            [("content:type", "x")],
        ))
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Unsupported, "{err}");
    assert!(err.to_string().contains("content:type"), "{err}");
    teardown(&b, &ex, &qs).await;
    teardown(&b, &hx, &hq).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exchange_errors_are_typed() {
    let b = backend().await;
    let (ex, qs) = setup(&b, ExchangeKind::Direct, 0).await;
    let topo = b.topology();
    topo.declare_exchange(&ExchangeSpec::new(&ex, ExchangeKind::Direct))
        .await
        .expect("declaring the same exchange again succeeds");
    let err = topo
        .declare_exchange(&ExchangeSpec::new(&ex, ExchangeKind::Topic))
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Conflict, "{err}");
    let bad = topo
        .declare_exchange(&ExchangeSpec::new("orders.eu", ExchangeKind::Topic))
        .await
        .unwrap_err();
    assert_eq!(bad.kind(), ErrorKind::InvalidInput, "{bad}");

    let producer = b.producer().await.unwrap();
    let missing = producer
        .send(
            &Destination::exchange(name("absent"), "k"),
            Message::new("x"),
        )
        .await
        .unwrap_err();
    assert_eq!(missing.kind(), ErrorKind::NotFound, "{missing}");
    assert!(missing.undelivered().is_some(), "the message comes back");
    let delayed = Message::builder("x")
        .delay(Duration::from_secs(1))
        .build()
        .unwrap();
    let err = producer
        .send(&Destination::exchange(&ex, "k"), delayed)
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Unsupported, "{err}");
    teardown(&b, &ex, &qs).await;
    topo.delete_exchange(&ex)
        .await
        .expect("deleting a missing exchange succeeds");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_to_an_exchange_is_routed_entry_by_entry() {
    let b = backend().await;
    let (ex, qs) = setup(&b, ExchangeKind::Direct, 2).await;
    let topo = b.topology();
    topo.bind(&Binding::key(&ex, &qs[0], "a")).await.unwrap();
    topo.bind(&Binding::key(&ex, &qs[1], "b")).await.unwrap();
    let producer = b.producer().await.unwrap();
    let mut confirms = Vec::new();
    let mut want = [Vec::new(), Vec::new()];
    for i in 0..40 {
        let (key, slot) = if i % 4 == 0 { ("b", 1) } else { ("a", 0) };
        let m = Message::new(format!("{i}"));
        want[slot].push(m.clone());
        confirms.push(
            producer
                .enqueue(&Destination::exchange(&ex, key), m)
                .await
                .unwrap(),
        );
    }
    for c in confirms {
        tokio::time::timeout(Duration::from_secs(30), c)
            .await
            .expect("a publish confirm within 30s")
            .unwrap();
    }
    for (q, want) in qs.iter().zip(&want) {
        assert_eq!(ids(&drain(&b, q, want.len()).await), ids(want), "queue {q}");
    }
    teardown(&b, &ex, &qs).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fifo_exchange_delivers_to_a_fifo_queue_in_key_order() {
    let b = backend().await;
    let ex = format!("{}.fifo", name("ex"));
    let q = format!("{}.fifo", name("q"));
    let topo = b.topology();
    topo.declare_exchange(&ExchangeSpec::new(&ex, ExchangeKind::Direct))
        .await
        .unwrap();
    topo.declare_queue(&QueueSpec::new(&q)).await.unwrap();
    topo.bind(&Binding::key(&ex, &q, "k")).await.unwrap();
    let producer = b.producer().await.unwrap();
    let sent: Vec<Message> = (0..20)
        .map(|i| {
            Message::builder(format!("{i}"))
                .key("group-1")
                .build()
                .unwrap()
        })
        .collect();
    for m in &sent {
        producer
            .send(&Destination::exchange(&ex, "k"), m.clone())
            .await
            .unwrap();
    }
    let no_key = producer
        .send(&Destination::exchange(&ex, "k"), Message::new("x"))
        .await
        .unwrap_err();
    assert_eq!(no_key.kind(), ErrorKind::InvalidInput, "{no_key}");
    let got = drain(&b, &q, sent.len()).await;
    assert_eq!(got, sent, "one message group arrives in send order");
    teardown(&b, &ex, std::slice::from_ref(&q)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_binds_of_one_queue_both_take_effect() {
    let b = backend().await;
    let (ex, qs) = setup(&b, ExchangeKind::Direct, 1).await;
    let topo = b.topology();
    let (x, y) = (
        Binding::key(&ex, &qs[0], "x"),
        Binding::key(&ex, &qs[0], "y"),
    );
    let (rx, ry) = tokio::join!(topo.bind(&x), topo.bind(&y));
    rx.unwrap();
    ry.unwrap();
    let producer = b.producer().await.unwrap();
    let mut want = Vec::new();
    for key in ["x", "y", "z"] {
        let m = Message::new(key);
        producer
            .send(&Destination::exchange(&ex, key), m.clone())
            .await
            .unwrap();
        if key != "z" {
            want.push(m);
        }
    }
    assert_eq!(
        ids(&drain(&b, &qs[0], 2).await),
        ids(&want),
        "x and y, not z"
    );
    teardown(&b, &ex, &qs).await;
}
