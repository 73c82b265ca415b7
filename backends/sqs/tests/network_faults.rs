//! The testkit's network-fault scenario on SQS (the shared fauxqs): a stream of sends and
//! receives through the testkit's relay while it cuts, stalls and slows every connection, then
//! heals. Every call ends within a bound derived from the URL's timeouts below, and every
//! confirmed message is received afterwards (duplicates counted and printed). A settle lost in
//! the fault is redelivered after the queue's 2 s visibility timeout.

use std::net::ToSocketAddrs;
use std::sync::Arc;
use std::time::Duration;

use mailroom_core::Backend;
use mailroom_sqs::{SqsBackend, SqsConfig, DEFAULT_URL};
use mailroom_testkit::relay::Relay;
use mailroom_testkit::{within, Bounds, NetworkFault, NetworkFaultScenario, Waypoints};

/// `connect_timeout_ms`, `operation_timeout_ms`, `wait_time_ms` of the backend under test: one
/// SDK call takes at most the operation timeout plus the long-poll wait.
const CONNECT_MS: u64 = 500;
const OPERATION_MS: u64 = 2000;
const WAIT_MS: u64 = 500;
/// Scheduling room on a loaded two-core machine.
const SLACK: Duration = Duration::from_millis(3000);
/// The whole test: three runs of about 10 s each plus recovery, far less than a hang.
const OVERALL: Duration = Duration::from_secs(240);

fn sqs_url() -> String {
    std::env::var("MAILROOM_SQS_URL").unwrap_or_else(|_| DEFAULT_URL.to_owned())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sends_and_receives_end_bounded_and_nothing_confirmed_is_lost_through_network_faults() {
    let waypoints = Waypoints::default();
    within(OVERALL, &waypoints, async {
        let endpoint = SqsConfig::from_url(&sqs_url())
            .unwrap()
            .endpoint
            .expect("the network-fault test needs a local SQS endpoint (MAILROOM_SQS_URL)");
        let upstream = endpoint
            .strip_prefix("http://")
            .expect("the relay passes plain HTTP only")
            .to_socket_addrs()
            .ok()
            .and_then(|mut a| a.next())
            .expect("the SQS endpoint's address");
        let relay = Relay::start(&upstream.to_string()).await.unwrap();
        let url = format!(
            "sqs://{}?region=us-east-1&connect_timeout_ms={CONNECT_MS}\
             &operation_timeout_ms={OPERATION_MS}&wait_time_ms={WAIT_MS}",
            relay.addr()
        );
        let call = Duration::from_millis(OPERATION_MS + WAIT_MS);
        let poll = Duration::from_millis(WAIT_MS);
        let scenario = NetworkFaultScenario::new(
            Arc::new(move || {
                let url = url.clone();
                Box::pin(async move {
                    Ok(Arc::new(SqsBackend::from_url(&url).await?) as Arc<dyn Backend>)
                })
            }),
            Arc::new(|| {
                Box::pin(async {
                    Ok(Arc::new(SqsBackend::from_url(&sqs_url()).await?) as Arc<dyn Backend>)
                })
            }),
            Bounds {
                send: call + SLACK,
                // A receive may make a receive call and then wait for its poll.
                receive: call + poll + SLACK,
                ack: call + SLACK,
                poll,
                before: Duration::from_millis(1500),
                // Longer than the backend's own send timeout, so that sends fail (typed) during it.
                fault: Duration::from_secs(6),
                after: Duration::from_secs(2),
                recovery: Duration::from_secs(30),
            },
        )
        .queue_spec(|spec| spec.extra("VisibilityTimeout", "2"));
        let mut failures = Vec::new();
        for fault in NetworkFault::all() {
            match scenario.run(&relay, fault, &waypoints).await {
                Ok(report) => {
                    eprintln!("sqs {report}");
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
