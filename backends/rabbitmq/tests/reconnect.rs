//! A broker restart whose reconnect fails at one step, made deterministic with a relay.
//!
//! Each case lets the first connection work (a producer sends, a consumer receives and acks),
//! then cuts it as a broker restart does, and fails the next connection at one step of the
//! reconnect: the handshake, channel.open, confirm.select, basic.qos, the topology replay's
//! queue.declare, basic.consume, the first publish or the first ack. The fault is a stall
//! (silence, sockets open), a swallowed method (the broker never answers it, everything else
//! flows) or a cut. After it, the producer and the consumer must work again within the
//! reconnect timeout; when every reconnect fails, each must fail with a typed error by then.
//! Heartbeats are off, so only the backend's own bounds can notice a silent broker.

mod common;

use std::future::Future;
use std::time::{Duration, Instant};

use common::relay::{self, Action, At, Method, Relay, Which};
use common::{unique, within, Waypoints};
use mailroom_core::{Backend, Destination, ErrorKind, Message, QueueSpec};
use mailroom_rabbitmq::RabbitBackend;

const CONNECT: Duration = Duration::from_millis(1000);
const RECONNECT: Duration = Duration::from_millis(8000);
/// Every case's overall bound: far more than a recovery may take, far less than a hang.
const CASE_BOUND: Duration = Duration::from_secs(60);

fn query(connect: Duration, reconnect: Duration) -> String {
    format!(
        "connect_timeout_ms={}&reconnect_timeout_ms={}&heartbeat_secs=0",
        connect.as_millis(),
        reconnect.as_millis()
    )
}

/// Await `fut`, failing the test if it takes longer than `limit`.
async fn bounded<T>(
    what: &str,
    limit: Duration,
    relay: &Relay,
    waypoints: &Waypoints,
    fut: impl Future<Output = T>,
) -> T {
    waypoints.at("case", what);
    match tokio::time::timeout(limit, fut).await {
        Ok(v) => v,
        Err(_) => panic!(
            "{what} did not finish within {limit:?} (relay: {})",
            relay.events()
        ),
    }
}

/// The first connection works; the restart cuts it; the second fails at `step` with `action`;
/// the producer and the consumer must both work again within the reconnect timeout.
async fn restart_survives(step: Method, action: Action) {
    let waypoints = Waypoints::default();
    let case = format!("{action:?} at {step} on the first reconnect");
    within(CASE_BOUND, &waypoints, async {
        let relay = Relay::start().await;
        let backend = RabbitBackend::from_url(&relay.url(&query(CONNECT, RECONNECT)))
            .await
            .unwrap();
        let q = unique("mr-reconnect");
        backend
            .topology()
            .declare_queue(&QueueSpec::new(&q))
            .await
            .unwrap();
        let dest = Destination::queue(&q);
        let producer = backend.producer().await.unwrap();
        producer.send(&dest, Message::new("before")).await.unwrap();
        let mut consumer = backend.consumer(&q, Default::default()).await.unwrap();
        let d = consumer.receive().await.unwrap();
        d.ack().await.unwrap();

        let fault = relay.fault(Which::Nth(2), At::Method(step), action);
        relay.cut_all();
        let restarted = Instant::now();
        // Recovering may cost one failed attempt (a connect timeout) plus backoff, well within
        // the reconnect timeout.
        let limit = RECONNECT;
        for payload in ["after", "later"] {
            bounded(
                &format!("{case}: send of '{payload}'"),
                limit,
                &relay,
                &waypoints,
                producer.send(&dest, Message::new(payload)),
            )
            .await
            .unwrap_or_else(|e| panic!("{case}: send of '{payload}' failed: {e}"));
            // A stalled connection keeps what the broker delivered on it until the broker
            // notices it is gone (its heartbeat; off here), so the relay cuts it now, as the
            // heartbeat would. The client found it out on its own to get this far.
            relay.cut_stalled();
            // A message acked just before the restart, or whose ack the fault ate, may come
            // again first.
            loop {
                let d = bounded(
                    &format!("{case}: receive of '{payload}'"),
                    limit,
                    &relay,
                    &waypoints,
                    consumer.receive(),
                )
                .await
                .unwrap_or_else(|e| panic!("{case}: receive of '{payload}' failed: {e}"));
                let got = d.message().payload().clone();
                let acked =
                    bounded(&format!("{case}: ack"), limit, &relay, &waypoints, d.ack()).await;
                if got.as_ref() == payload.as_bytes() {
                    // An ack on a channel the fault killed is `Closed` (the broker redelivers),
                    // one that could not be handed over in time `Timeout`.
                    if let Err(e) = acked {
                        assert!(
                            matches!(e.kind(), ErrorKind::Closed | ErrorKind::Timeout),
                            "{case}: ack failed: {e}"
                        );
                    }
                    break;
                }
            }
        }
        assert!(
            fault.fired() > 0,
            "{case}: the relay never saw {step} on the reconnect, so this case tested nothing \
             (relay: {})",
            relay.events()
        );
        eprintln!(
            "{case}: recovered in {:?} ({} connections)",
            restarted.elapsed(),
            relay.accepted()
        );
        relay.clear_faults();
        let _ = bounded(
            "consumer close",
            CONNECT * 3,
            &relay,
            &waypoints,
            consumer.close(),
        )
        .await;
        let _ = bounded(
            "producer close",
            CONNECT * 3,
            &relay,
            &waypoints,
            producer.close(),
        )
        .await;
        let _ = backend.topology().delete_queue(&q).await;
        let _ = bounded(
            "backend close",
            CONNECT * 3,
            &relay,
            &waypoints,
            backend.close(),
        )
        .await;
    })
    .await
}

macro_rules! survives {
    ($($name:ident: $step:expr, [$($action:ident),+];)+) => {$(
        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn $name() {
            for action in [$(Action::$action),+] {
                restart_survives($step, action).await;
            }
        }
    )+};
}

survives! {
    restart_survives_a_fault_at_connection_open: relay::CONNECTION_OPEN, [Stall, Swallow, Cut];
    restart_survives_a_fault_at_channel_open: relay::CHANNEL_OPEN, [Stall, Swallow, Cut];
    restart_survives_a_fault_at_confirm_select: relay::CONFIRM_SELECT, [Stall, Swallow, Cut];
    restart_survives_a_fault_at_basic_qos: relay::BASIC_QOS, [Stall, Swallow, Cut];
    restart_survives_a_fault_at_queue_redeclare: relay::QUEUE_DECLARE, [Stall, Swallow, Cut];
    restart_survives_a_fault_at_basic_consume: relay::BASIC_CONSUME, [Stall, Swallow, Cut];
    // A swallowed publish would shift the broker's confirm numbering against the client's, a
    // relay artefact no broker produces; a stall and a cut are what a publish meets.
    restart_survives_a_fault_at_the_first_publish: relay::BASIC_PUBLISH, [Stall, Cut];
    restart_survives_a_fault_at_the_first_ack: relay::BASIC_ACK, [Stall, Swallow, Cut];
}

const SHORT_CONNECT: Duration = Duration::from_millis(500);
const SHORT_RECONNECT: Duration = Duration::from_millis(3000);

/// Every reconnect fails at `step`: the producer's send (when `step` is on its way) and the
/// consumer's receive (when on its way) fail with a typed, temporary error by the reconnect
/// timeout, plus one connect timeout for the attempt under way, instead of waiting for ever.
async fn restart_that_never_recovers_fails_in_time(
    step: Method,
    action: Action,
    producer_path: bool,
    consumer_path: bool,
) {
    let waypoints = Waypoints::default();
    let case = format!("{action:?} at {step} on every reconnect");
    within(CASE_BOUND, &waypoints, async {
        let relay = Relay::start().await;
        let url = relay.url(&query(SHORT_CONNECT, SHORT_RECONNECT));
        let backend = RabbitBackend::from_url(&url).await.unwrap();
        let q = unique("mr-reconnect-never");
        backend
            .topology()
            .declare_queue(&QueueSpec::new(&q))
            .await
            .unwrap();
        let dest = Destination::queue(&q);
        let producer = backend.producer().await.unwrap();
        producer.send(&dest, Message::new("before")).await.unwrap();
        let mut consumer = backend.consumer(&q, Default::default()).await.unwrap();
        consumer.receive().await.unwrap().ack().await.unwrap();

        let fault = relay.fault(Which::From(2), At::Method(step), action);
        relay.cut_all();
        // A generous margin over the promise: timers and backoff granularity.
        let limit = SHORT_RECONNECT + SHORT_CONNECT + Duration::from_secs(2);
        let typed = |what: &str, kind: ErrorKind, temporary: bool, took: Duration| {
            assert!(
                matches!(kind, ErrorKind::Connection | ErrorKind::Timeout) && temporary,
                "{case}: {what} failed with {kind:?} (temporary {temporary}), not a temporary \
                 Connection or Timeout"
            );
            eprintln!("{case}: {what} failed with {kind:?} after {took:?}");
        };
        if producer_path {
            let started = Instant::now();
            let e = bounded(
                &format!("{case}: send"),
                limit,
                &relay,
                &waypoints,
                producer.send(&dest, Message::new("never")),
            )
            .await
            .expect_err("no broker answers, so the send cannot succeed");
            assert!(
                e.undelivered().is_some(),
                "{case}: the failed send hands the message back"
            );
            typed("send", e.kind(), e.is_temporary(), started.elapsed());
        }
        if consumer_path {
            let started = Instant::now();
            let e = bounded(
                &format!("{case}: receive"),
                limit,
                &relay,
                &waypoints,
                consumer.receive(),
            )
            .await
            .map(|_| ())
            .expect_err("no broker answers, so nothing can be received");
            typed("receive", e.kind(), e.is_temporary(), started.elapsed());
        }
        assert!(
            fault.fired() > 1,
            "{case}: the relay saw {step} on {} reconnects; the case needs it to keep failing \
             (relay: {})",
            fault.fired(),
            relay.events()
        );
        relay.clear_faults();
        let _ = bounded(
            "consumer close",
            SHORT_CONNECT * 3,
            &relay,
            &waypoints,
            consumer.close(),
        )
        .await;
        let _ = bounded(
            "producer close",
            SHORT_CONNECT * 3,
            &relay,
            &waypoints,
            producer.close(),
        )
        .await;
        let _ = bounded(
            "backend close",
            SHORT_CONNECT * 3,
            &relay,
            &waypoints,
            backend.close(),
        )
        .await;
        // The queue is left to the broker: this backend may not reach it any more.
        if let Ok(direct) = RabbitBackend::from_url(relay::DIRECT_URL).await {
            let _ = direct.topology().delete_queue(&q).await;
            let _ = direct.close().await;
        }
    })
    .await
}

macro_rules! fails_in_time {
    ($($name:ident: $step:expr, [$($action:ident),+], producer $p:expr, consumer $c:expr;)+) => {$(
        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn $name() {
            for action in [$(Action::$action),+] {
                restart_that_never_recovers_fails_in_time($step, action, $p, $c).await;
            }
        }
    )+};
}

fails_in_time! {
    a_restart_that_never_recovers_fails_in_time_at_connection_open:
        relay::CONNECTION_OPEN, [Stall, Swallow], producer true, consumer true;
    a_restart_that_never_recovers_fails_in_time_at_channel_open:
        relay::CHANNEL_OPEN, [Stall, Swallow], producer true, consumer true;
    a_restart_that_never_recovers_fails_in_time_at_confirm_select:
        relay::CONFIRM_SELECT, [Stall, Swallow], producer true, consumer false;
    a_restart_that_never_recovers_fails_in_time_at_basic_qos:
        relay::BASIC_QOS, [Stall, Swallow], producer false, consumer true;
    a_restart_that_never_recovers_fails_in_time_at_queue_redeclare:
        relay::QUEUE_DECLARE, [Stall, Swallow], producer true, consumer true;
    a_restart_that_never_recovers_fails_in_time_at_basic_consume:
        relay::BASIC_CONSUME, [Stall, Swallow], producer false, consumer true;
    a_restart_that_never_recovers_fails_in_time_at_the_first_publish:
        relay::BASIC_PUBLISH, [Stall], producer true, consumer false;
}
