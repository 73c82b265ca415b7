//! A broker variant (RabbitMQ's stream queues, `?queue_type=stream`) is an entry of its own in
//! the report: named as such in every table, chosen for replay when its replay case passed and
//! not when it failed, weighed against Kafka in the "event log with replay" verdict on its
//! figures; `compare --local` measures it.

#![cfg(all(feature = "rabbitmq", feature = "kafka"))]

#[path = "common/variant.rs"]
mod variant;

use mailroom_bench::compare;
use mailroom_bench::report::{self, NeedLine};
use variant::{comparison, STREAMS, STREAM_URL};

fn line<'a>(lines: &'a [NeedLine], need: &str) -> &'a NeedLine {
    lines
        .iter()
        .find(|l| l.need.starts_with(need))
        .unwrap_or_else(|| panic!("no line {need:?} in {lines:#?}"))
}

#[test]
fn local_urls_add_the_stream_variant_after_rabbitmq_and_name_it() {
    let urls = compare::local_urls(&["amqp", "kafka"]);
    let classic = urls
        .iter()
        .position(|u| u.starts_with("amqp") && !u.contains("queue_type"))
        .expect("RabbitMQ on classic queues");
    assert!(
        urls[classic + 1].ends_with("queue_type=stream"),
        "the stream variant follows its broker: {urls:?}"
    );
    assert_eq!(
        compare::variant_of(&urls[classic + 1]),
        Some("stream queues")
    );
    assert_eq!(compare::variant_of(&urls[classic]), None);
    assert_eq!(
        compare::variant_of("amqps://h/%2f?heartbeat=5&queue_type=stream"),
        Some("stream queues")
    );
    assert_eq!(compare::variant_of("amqp://h?queue_type=classic"), None);
    assert_eq!(compare::variant_of("kafka://h?queue_type=stream"), None);
    assert!(
        !compare::local_urls(&["kafka"])
            .iter()
            .any(|u| u.contains("queue_type")),
        "no RabbitMQ in the build, no variant"
    );
}

#[test]
fn the_stream_variant_is_chosen_for_replay_when_its_replay_case_passed() {
    // Kafka moves more: it leads the event-log verdict, the variant is weighed on its figure.
    let lines = report::needs(&comparison(5_000.0, 90_000.0, "pass", "pass"));
    let replay = line(&lines, "Replay from an earlier position");
    assert_eq!(
        replay.choice,
        format!("{STREAMS}, kafka (checked)"),
        "{replay:?}"
    );
    assert!(
        replay.evidence.contains(&format!(
            "{STREAMS}: declared, conformance case replay_from_earliest passed (5 replayed of 5)"
        )) && replay.evidence.contains("rabbitmq: declares no replay"),
        "{replay:?}"
    );
    let log = line(&lines, "Verdict: event log with replay");
    assert_eq!(log.choice, "kafka", "{log:?}");
    assert!(
        log.evidence.contains(&format!(
            "{STREAMS}: has them all (checked by replay_from_earliest, per_key_order), \
             5000 msgs/s at max rate"
        )) && log.evidence.contains("rabbitmq lacks replay"),
        "{log:?}"
    );
    // The variant has no competing consumers: a task queue is not its job.
    let tasks = line(&lines, "Verdict: task queue with retries");
    assert!(
        tasks
            .evidence
            .contains(&format!("{STREAMS} lacks competing_consumers")),
        "{tasks:?}"
    );
    assert!(
        tasks.evidence.contains(
            "kafka: has them all (client-side: attempt_count, dead_letter, max_delivery_attempts)"
        ),
        "Kafka's client-side dead letters are named: {tasks:?}"
    );

    // Where the stream variant moves more, or Kafka's replay case failed, it is the choice.
    let lines = report::needs(&comparison(95_000.0, 90_000.0, "pass", "pass"));
    assert_eq!(
        line(&lines, "Verdict: event log with replay").choice,
        STREAMS
    );
    let lines = report::needs(&comparison(5_000.0, 90_000.0, "pass", "fail"));
    let log = line(&lines, "Verdict: event log with replay");
    assert_eq!(
        log.choice,
        format!("{STREAMS} (the only one able)"),
        "{log:?}"
    );
    assert!(log.evidence.contains("kafka lacks replay"), "{log:?}");
    assert!(
        !lines.iter().any(|l| l.choice.contains("memory")),
        "the in-process broker is a reference line, never the choice: {lines:#?}"
    );
}

#[test]
fn the_stream_variant_is_not_chosen_for_replay_when_its_replay_case_failed() {
    let lines = report::needs(&comparison(95_000.0, 90_000.0, "fail", "pass"));
    let replay = line(&lines, "Replay from an earlier position");
    assert_eq!(replay.choice, "kafka (checked)", "{replay:?}");
    assert!(
        replay.evidence.contains(&format!(
            "{STREAMS}: declared, but conformance case replay_from_earliest FAILED"
        )),
        "{replay:?}"
    );
    let log = line(&lines, "Verdict: event log with replay");
    assert_eq!(log.choice, "kafka (the only one able)", "{log:?}");
    assert!(
        log.evidence.contains(&format!("{STREAMS} lacks replay")),
        "{log:?}"
    );
}

#[test]
fn the_report_gives_the_variant_its_own_entry_in_every_table() {
    let c = comparison(5_000.0, 90_000.0, "pass", "pass");
    let md = report::markdown(&c, &[]);
    assert!(
        md.contains(&format!("| {STREAMS} | `{STREAM_URL}` | test |")),
        "brokers table: {md}"
    );
    assert!(
        md.contains(&format!("| max rate | {STREAMS} | 5000 |")),
        "results table: {md}"
    );
    let section = |label: &str| {
        let head = format!("## {label} — capabilities and conformance");
        let start = md
            .find(&head)
            .unwrap_or_else(|| panic!("no section {head:?}: {md}"));
        let rest = &md[start + head.len()..];
        rest[..rest.find("\n## ").unwrap_or(rest.len())].to_owned()
    };
    let streams = section(STREAMS);
    let classic = section("rabbitmq");
    let kafka = section("kafka");
    assert!(
        streams.contains("| replay | yes |")
            && streams.contains("| competing_consumers | no |")
            && streams.contains("| replay_from_earliest | pass |"),
        "{streams}"
    );
    assert!(classic.contains("| replay | no |"), "{classic}");
    // Every capability row says whether the broker or the client does it.
    for row in [
        "| exchange_topic | yes (client-side) |",
        "| dead_letter | yes (client-side) |",
        "| max_delivery_attempts | yes (client-side) |",
        "| attempt_count | yes (client-side) |",
        "| replay | yes |",
        "| repeated_header_names | yes |",
    ] {
        assert!(kafka.contains(row), "Kafka's {row}: {kafka}");
    }
    assert!(
        classic.contains("| repeated_header_names | no |")
            && classic.contains("| exchange_topic | yes |"),
        "AMQP tables hold a name once; RabbitMQ routes natively: {classic}"
    );
    assert_eq!(
        md.matches("backends/rabbitmq/src/lib.rs").count(),
        1,
        "the settings note names a broker's crate once: {md}"
    );
    let html = report::html(&c, &[]);
    assert!(
        html.contains(&format!(
            "<h2>{STREAMS} — capabilities and conformance</h2>"
        )) && html.contains(&format!("<td>{STREAMS}</td>")),
        "{html}"
    );
}

#[test]
fn the_variant_results_are_written_beside_the_defaults_not_over_them() {
    let dir = std::env::temp_dir().join(format!(
        "mailroom-variant-{}",
        mailroom::MessageId::generate()
    ));
    let c = comparison(5_000.0, 90_000.0, "pass", "pass");
    compare::write(&c, &dir).expect("the report is written");
    let mut files: Vec<String> = std::fs::read_dir(dir.join("results"))
        .expect("results/")
        .map(|e| {
            e.expect("an entry")
                .file_name()
                .to_string_lossy()
                .into_owned()
        })
        .collect();
    files.sort();
    let runs: usize = c.backends.iter().map(|b| b.runs.len()).sum();
    assert_eq!(files.len(), runs, "one file per run: {files:?}");
    assert!(
        files.contains(&"rabbitmq-stream-queues-00-max-rate.json".to_owned())
            && files.contains(&"rabbitmq-00-max-rate.json".to_owned()),
        "{files:?}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}
