//! The wire-format pages (`docs/wire/*.md`) name the headers and attributes the code writes:
//! every mailroom name on a page (prose and the Java / Python / Node snippets alike) is one the
//! code defines, and every name a broker's codec writes is on that broker's page.
#![cfg(all(
    feature = "rabbitmq",
    feature = "kafka",
    feature = "sqs",
    feature = "cloudevents"
))]

use std::collections::BTreeSet;

use mailroom::cloudevents::Binding;
use mailroom::wire;

fn page(name: &str) -> String {
    let path = format!("{}/../docs/wire/{name}.md", env!("CARGO_MANIFEST_DIR"));
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path}: {e}"))
}

/// Every name in `text` that starts with `prefix`, up to the first character that cannot be
/// part of a header name (`*` ends a family such as `x-mailroom-dead-letter-*`, left out).
fn names_with(text: &str, prefix: &str) -> BTreeSet<String> {
    let mut found = BTreeSet::new();
    for (at, _) in text.match_indices(prefix) {
        let before = text[..at].chars().next_back();
        if before.is_some_and(|c| c.is_ascii_alphanumeric() || c == '-' || c == '.') {
            continue;
        }
        let raw: String = text[at..]
            .chars()
            .take_while(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '.' | '_'))
            .collect();
        if text[at + raw.len()..].starts_with('*') {
            continue;
        }
        let name = raw.trim_end_matches(['.', '-']).to_owned();
        // The bare prefix (`startswith("x-mailroom-")` in a snippet) names no header.
        if name.len() < prefix.len() {
            continue;
        }
        found.insert(name);
    }
    found
}

/// Every `x-mailroom-*` header some backend writes or reads.
fn mailroom_headers() -> BTreeSet<&'static str> {
    let mut all: BTreeSet<&str> = [
        wire::ID_HEADER,
        wire::KEY_HEADER,
        wire::TIMESTAMP_HEADER,
        wire::ATTEMPT_HEADER,
        wire::DEAD_LETTER_REASON_HEADER,
        wire::DEAD_LETTER_SOURCE_HEADER,
        wire::DEAD_LETTER_ATTEMPTS_HEADER,
        mailroom::rabbitmq::codec::DELAYED_HEADER,
        mailroom::rabbitmq::codec::ORDER_HEADER,
    ]
    .into();
    all.extend(wire::LEGACY_TIMESTAMP_HEADERS);
    all
}

const DEAD_LETTER: [&str; 3] = [
    wire::DEAD_LETTER_REASON_HEADER,
    wire::DEAD_LETTER_SOURCE_HEADER,
    wire::DEAD_LETTER_ATTEMPTS_HEADER,
];

#[test]
fn every_mailroom_header_on_a_page_is_one_the_code_defines() {
    let known = mailroom_headers();
    for name in ["memory", "rabbitmq", "kafka", "sqs"] {
        for found in names_with(&page(name), "x-mailroom-") {
            assert!(
                known.contains(found.as_str()),
                "docs/wire/{name}.md names {found}, which no backend writes; known: {known:?}"
            );
        }
    }
    let sqs_attributes: BTreeSet<String> = names_with(&page("sqs"), "mailroom.");
    let expected: BTreeSet<String> = [mailroom::sqs::META_ATTR, mailroom::sqs::ENCODING_ATTR]
        .map(str::to_owned)
        .into();
    assert_eq!(sqs_attributes, expected, "docs/wire/sqs.md");
}

#[test]
fn every_header_a_codec_writes_is_on_its_brokers_page() {
    let must = |name: &str, headers: &[&str]| {
        let text = page(name);
        for h in headers {
            assert!(
                text.contains(&format!("`{h}`")),
                "docs/wire/{name}.md does not name {h}"
            );
        }
    };
    must("memory", &DEAD_LETTER);
    must(
        "kafka",
        &[
            wire::ID_HEADER,
            wire::TIMESTAMP_HEADER,
            wire::ATTEMPT_HEADER,
            mailroom::kafka::ID_HEADER,
        ],
    );
    must("kafka", &DEAD_LETTER);
    must(
        "rabbitmq",
        &[
            wire::KEY_HEADER,
            wire::TIMESTAMP_HEADER,
            wire::ATTEMPT_HEADER,
            mailroom::rabbitmq::codec::DELAYED_HEADER,
            mailroom::rabbitmq::codec::ORDER_HEADER,
            mailroom::rabbitmq::codec::CONTENT_TYPE_HEADER,
            mailroom::rabbitmq::codec::DELIVERY_COUNT_HEADER,
        ],
    );
    must("rabbitmq", &DEAD_LETTER);
    must(
        "sqs",
        &[mailroom::sqs::META_ATTR, mailroom::sqs::ENCODING_ATTR],
    );
    must("sqs", &DEAD_LETTER);
    for (name, binding) in [
        ("memory", Binding::Memory),
        ("rabbitmq", Binding::Amqp),
        ("kafka", Binding::Kafka),
        ("sqs", Binding::Sqs),
    ] {
        let attributes = ["specversion", "id", "source", "type"];
        let headers: Vec<String> = attributes.iter().map(|a| binding.header_name(a)).collect();
        let headers: Vec<&str> = headers.iter().map(String::as_str).collect();
        must(name, &headers);
        // The trace context the tracing layer may add is mentioned, by its W3C names.
        must(name, &["traceparent", "tracestate"]);
    }
}

#[test]
fn the_scanner_finds_names_and_skips_families() {
    let found = names_with(
        "`x-mailroom-id`, x-mailroom-dead-letter-*, (\"x-mailroom-key\"). startswith(\"x-mailroom-\")",
        "x-mailroom-",
    );
    assert_eq!(
        found,
        BTreeSet::from(["x-mailroom-id".to_owned(), "x-mailroom-key".to_owned()])
    );
}
