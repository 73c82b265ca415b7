//! The testkit's network-fault scenario on RabbitMQ: a stream of sends and receives through
//! the testkit's relay while it cuts, stalls and slows every connection, then heals. Every call
//! ends within a bound derived from the URL's timeouts below, and every confirmed message is
//! received afterwards (duplicates counted and printed).

use std::sync::Arc;
use std::time::Duration;

use mailroom_core::Backend;
use mailroom_rabbitmq::RabbitBackend;
use mailroom_testkit::relay::Relay;
use mailroom_testkit::{within, Bounds, NetworkFault, NetworkFaultScenario, Waypoints};

const BROKER: &str = "127.0.0.1:5672";
const DIRECT_URL: &str = "amqp://guest:guest@127.0.0.1:5672/%2f";
/// `connect_timeout_ms`: bounds each wait on one method's answer.
const CONNECT: Duration = Duration::from_millis(1000);
/// `reconnect_timeout_ms`: bounds each operation, reconnects included.
const RECONNECT: Duration = Duration::from_millis(4000);
/// Scheduling room on a loaded two-core machine.
const SLACK: Duration = Duration::from_millis(3000);
/// The whole test: three runs of about 10 s each plus recovery, far less than a hang.
const OVERALL: Duration = Duration::from_secs(240);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sends_and_receives_end_bounded_and_nothing_confirmed_is_lost_through_network_faults() {
    let waypoints = Waypoints::default();
    within(OVERALL, &waypoints, async {
        let relay = Relay::start(BROKER).await.unwrap();
        // No heartbeat: only the backend's own bounds may notice a silent path.
        let url = format!(
            "amqp://guest:guest@{}/%2f?connect_timeout_ms={}&reconnect_timeout_ms={}&heartbeat_secs=0",
            relay.addr(),
            CONNECT.as_millis(),
            RECONNECT.as_millis()
        );
        let poll = Duration::from_millis(500);
        let op = RECONNECT + CONNECT + SLACK;
        let scenario = NetworkFaultScenario::new(
            Arc::new(move || {
                let url = url.clone();
                Box::pin(async move {
                    Ok(Arc::new(RabbitBackend::from_url(&url).await?) as Arc<dyn Backend>)
                })
            }),
            Arc::new(|| {
                Box::pin(async {
                    Ok(Arc::new(RabbitBackend::from_url(DIRECT_URL).await?) as Arc<dyn Backend>)
                })
            }),
            Bounds {
                send: op,
                receive: poll + op,
                ack: op,
                poll,
                before: Duration::from_millis(1500),
                // Longer than the backend's own send timeout, so that sends fail (typed) during it.
                fault: Duration::from_secs(6),
                after: Duration::from_secs(2),
                recovery: Duration::from_secs(30),
            },
        );
        let mut failures = Vec::new();
        for fault in NetworkFault::all() {
            match scenario.run(&relay, fault, &waypoints).await {
                Ok(report) => {
                    eprintln!("rabbitmq {report}");
                    assert!(report.confirmed > 0, "{fault}: nothing was confirmed: {report}");
                }
                Err(e) => failures.push(format!("{fault}: {e} (relay: {})", relay.events())),
            }
            relay.heal();
        }
        assert!(failures.is_empty(), "{}", failures.join("\n"));
    })
    .await;
}
