//! The testkit's network-fault scenario on Kafka: a stream of sends and receives through the
//! testkit's relay while it cuts, stalls and slows every connection, then heals. Every call
//! ends within a bound derived from the URL's timeouts below, and every confirmed message is
//! received afterwards (duplicates counted and printed).
//!
//! The relay listens on 127.0.0.1:9095, what the broker's FAULTS listener (127.0.0.1:9094,
//! scripts/kafka/) advertises, so every connection librdkafka makes passes through it; only
//! one relay can bind it, so the three faults run one after another in one test.

use std::sync::Arc;
use std::time::Duration;

use mailroom_core::Backend;
use mailroom_kafka::KafkaBackend;
use mailroom_testkit::relay::Relay;
use mailroom_testkit::{within, Bounds, NetworkFault, NetworkFaultScenario, Waypoints};

const DIRECT_URL: &str = "kafka://127.0.0.1:9092";
/// Where the relay listens: the address the broker's FAULTS listener advertises.
const RELAY_LISTEN: &str = "127.0.0.1:9095";
/// The FAULTS listener the relay forwards to.
const FAULTS_LISTENER: &str = "127.0.0.1:9094";
/// `message.timeout.ms`: bounds a send's confirm.
const MESSAGE_TIMEOUT: Duration = Duration::from_millis(4000);
/// `reconnect.backoff.max.ms`: while connections are refused a record fails up to this much
/// after its message timeout (see silent_peer.rs).
const RECONNECT_BACKOFF_MAX: Duration = Duration::from_millis(1000);
/// `operation_timeout_ms`: bounds admin calls and consumer close.
const OPERATION_TIMEOUT: Duration = Duration::from_millis(2000);
/// Scheduling room on a loaded two-core machine.
const SLACK: Duration = Duration::from_millis(3000);
/// The whole test: three runs of about 10 s each plus recovery (a group rejoin may wait out
/// the 10 s session timeout), far less than a hang.
const OVERALL: Duration = Duration::from_secs(300);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sends_and_receives_end_bounded_and_nothing_confirmed_is_lost_through_network_faults() {
    let waypoints = Waypoints::default();
    within(OVERALL, &waypoints, async {
        let relay = Relay::builder(FAULTS_LISTENER)
            .listen(RELAY_LISTEN)
            .start()
            .await
            .unwrap_or_else(|e| {
                panic!("cannot bind the relay on {RELAY_LISTEN} (is another test using it?): {e}")
            });
        let url = format!(
            "kafka://{RELAY_LISTEN}?message.timeout.ms={}&operation_timeout_ms={}\
             &reconnect.backoff.max.ms={}",
            MESSAGE_TIMEOUT.as_millis(),
            OPERATION_TIMEOUT.as_millis(),
            RECONNECT_BACKOFF_MAX.as_millis()
        );
        let poll = Duration::from_millis(500);
        let send = MESSAGE_TIMEOUT + RECONNECT_BACKOFF_MAX + SLACK;
        let scenario = NetworkFaultScenario::new(
            Arc::new(move || {
                let url = url.clone();
                Box::pin(async move {
                    Ok(Arc::new(KafkaBackend::from_url(&url).await?) as Arc<dyn Backend>)
                })
            }),
            Arc::new(|| {
                Box::pin(async {
                    Ok(Arc::new(KafkaBackend::from_url(DIRECT_URL).await?) as Arc<dyn Backend>)
                })
            }),
            Bounds {
                send,
                receive: poll + SLACK,
                ack: SLACK,
                poll,
                before: Duration::from_millis(1500),
                // Longer than the backend's own send timeout, so that sends fail (typed) during it.
                fault: Duration::from_secs(6),
                after: Duration::from_secs(2),
                recovery: Duration::from_secs(45),
            },
        );
        let mut failures = Vec::new();
        for fault in NetworkFault::all() {
            match scenario.run(&relay, fault, &waypoints).await {
                Ok(report) => {
                    eprintln!("kafka {report}");
                    assert!(
                        report.confirmed > 0,
                        "{fault}: nothing was confirmed: {report}"
                    );
                }
                Err(e) => failures.push(format!("{fault}: {e} (relay: {})", relay.events())),
            }
            relay.heal();
        }
        assert!(failures.is_empty(), "{}", failures.join("\n"));
    })
    .await;
}
