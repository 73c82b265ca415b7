//! mailroom vs raw lapin on the same broker, in one process: 1 KiB messages, publish with
//! confirms (same window of unconfirmed messages), then consume with a manual ack each (same
//! prefetch). Prints both rates and the ratio mailroom / lapin.
//!
//! `cargo bench -p mailroom-rabbitmq --bench vs_lapin` (`MAILROOM_BENCH_N` sets the count).

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use lapin::options::{
    BasicAckOptions, BasicConsumeOptions, BasicPublishOptions, BasicQosOptions,
    ConfirmSelectOptions, QueueDeclareOptions, QueueDeleteOptions,
};
use lapin::types::FieldTable;
use lapin::{BasicProperties, Connection, ConnectionProperties};
use mailroom_core::{Backend, ConsumerOptions, Destination, Message, QueueSpec};
use mailroom_rabbitmq::RabbitBackend;

const URL: &str = "amqp://guest:guest@127.0.0.1:5672/%2f";
const WINDOW: usize = 1024;
const PREFETCH: u16 = 100;
const SIZE: usize = 1024;

fn queue_name(who: &str) -> String {
    format!("mr-bench-{who}-{}", uuid::Uuid::new_v4().simple())
}

struct Rates {
    publish: f64,
    consume: f64,
}

async fn raw_lapin(n: usize) -> Rates {
    let conn = Connection::connect(URL, ConnectionProperties::default())
        .await
        .expect("connect");
    let q = queue_name("lapin");
    let ch = conn.create_channel().await.unwrap();
    ch.queue_declare(
        q.as_str().into(),
        QueueDeclareOptions {
            durable: true,
            ..QueueDeclareOptions::default()
        },
        FieldTable::default(),
    )
    .await
    .unwrap();
    ch.confirm_select(ConfirmSelectOptions::default())
        .await
        .unwrap();
    let payload = vec![b'x'; SIZE];
    let start = Instant::now();
    let mut pending = VecDeque::with_capacity(WINDOW);
    for _ in 0..n {
        if pending.len() >= WINDOW {
            let c: lapin::PublisherConfirm = pending.pop_front().unwrap();
            assert!(c.await.unwrap().is_ack());
        }
        let props = BasicProperties::default()
            .with_delivery_mode(2)
            .with_message_id(uuid::Uuid::new_v4().to_string().into());
        let c = ch
            .basic_publish(
                "".into(),
                q.as_str().into(),
                BasicPublishOptions {
                    mandatory: true,
                    immediate: false,
                },
                &payload,
                props,
            )
            .await
            .unwrap();
        pending.push_back(c);
    }
    for c in pending {
        assert!(c.await.unwrap().is_ack());
    }
    let publish = n as f64 / start.elapsed().as_secs_f64();

    let cch = conn.create_channel().await.unwrap();
    cch.basic_qos(PREFETCH, BasicQosOptions::default())
        .await
        .unwrap();
    let mut consumer = cch
        .basic_consume(
            q.as_str().into(),
            "".into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await
        .unwrap();
    let start = Instant::now();
    for _ in 0..n {
        let d = consumer.next().await.unwrap().unwrap();
        d.acker.ack(BasicAckOptions::default()).await.unwrap();
    }
    let consume = n as f64 / start.elapsed().as_secs_f64();
    ch.queue_delete(q.as_str().into(), QueueDeleteOptions::default())
        .await
        .unwrap();
    conn.close(200, "OK".into()).await.unwrap();
    Rates { publish, consume }
}

async fn mailroom(n: usize) -> Rates {
    let backend = RabbitBackend::from_url(&format!(
        "{URL}?confirm_window={WINDOW}&prefetch={PREFETCH}"
    ))
    .await
    .expect("connect");
    let q = queue_name("mailroom");
    backend
        .topology()
        .declare_queue(&QueueSpec::new(&q))
        .await
        .unwrap();
    let producer = backend.producer().await.unwrap();
    let dest = Destination::queue(&q);
    let payload = bytes::Bytes::from(vec![b'x'; SIZE]);
    let start = Instant::now();
    let mut pending = VecDeque::with_capacity(WINDOW);
    for _ in 0..n {
        if pending.len() >= WINDOW {
            let p: mailroom_core::PendingConfirm = pending.pop_front().unwrap();
            p.await.unwrap();
        }
        pending.push_back(
            producer
                .enqueue(&dest, Message::new(payload.clone()))
                .await
                .unwrap(),
        );
    }
    for p in pending {
        p.await.unwrap();
    }
    let publish = n as f64 / start.elapsed().as_secs_f64();

    let mut c = backend
        .consumer(&q, ConsumerOptions::default())
        .await
        .unwrap();
    let start = Instant::now();
    for _ in 0..n {
        let d = c
            .receive_timeout(Duration::from_secs(30))
            .await
            .unwrap()
            .unwrap();
        d.ack().await.unwrap();
    }
    let consume = n as f64 / start.elapsed().as_secs_f64();
    c.close().await.unwrap();
    backend.topology().delete_queue(&q).await.unwrap();
    backend.close().await.unwrap();
    Rates { publish, consume }
}

fn main() {
    let n: usize = std::env::var("MAILROOM_BENCH_N")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(20_000);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        // Warm up the broker and both clients, then take the best of two alternating rounds so
        // that neither side is measured only while the other's queue is still being cleaned up.
        let _ = raw_lapin(n / 10).await;
        let _ = mailroom(n / 10).await;
        let mut best_lapin = Rates { publish: 0.0, consume: 0.0 };
        let mut best_mailroom = Rates { publish: 0.0, consume: 0.0 };
        for _ in 0..2 {
            let l = raw_lapin(n).await;
            let m = mailroom(n).await;
            best_lapin.publish = best_lapin.publish.max(l.publish);
            best_lapin.consume = best_lapin.consume.max(l.consume);
            best_mailroom.publish = best_mailroom.publish.max(m.publish);
            best_mailroom.consume = best_mailroom.consume.max(m.consume);
        }
        println!(
            "vs_lapin: {n} x {SIZE} B, confirm window {WINDOW}, prefetch {PREFETCH}, persistent, durable classic queue"
        );
        println!(
            "  publish+confirm  lapin {:>9.0} msg/s   mailroom {:>9.0} msg/s   ratio {:.2}",
            best_lapin.publish,
            best_mailroom.publish,
            best_mailroom.publish / best_lapin.publish
        );
        println!(
            "  consume+ack      lapin {:>9.0} msg/s   mailroom {:>9.0} msg/s   ratio {:.2}",
            best_lapin.consume,
            best_mailroom.consume,
            best_mailroom.consume / best_lapin.consume
        );
    });
}
