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
        wire::ORIGINAL_ID_HEADER,
        wire::DROPPED_HEADER,
        wire::ROUTING_KEY_HEADER,
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
    let expected: BTreeSet<String> = [
        mailroom::sqs::META_ATTR,
        mailroom::sqs::ENCODING_ATTR,
        mailroom::sqs::ROUTING_KEY_ATTR,
        mailroom::sqs::ROUTING_WORDS_ATTR,
    ]
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
    // What a decode adds to a foreign message, on every broker that decodes one.
    for name in ["rabbitmq", "kafka", "sqs"] {
        must(name, &[wire::ORIGINAL_ID_HEADER, wire::DROPPED_HEADER]);
    }
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
        &[
            mailroom::sqs::META_ATTR,
            mailroom::sqs::ENCODING_ATTR,
            mailroom::sqs::ROUTING_KEY_ATTR,
            mailroom::sqs::ROUTING_WORDS_ATTR,
        ],
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

/// The `@aws-sdk/client-sqs` that `scripts/brokers.sh` installs beside fauxqs.
fn node_modules() -> std::path::PathBuf {
    use std::path::PathBuf;
    let modules = match std::env::var_os("MAILROOM_SQS_NODE_MODULES") {
        Some(p) => PathBuf::from(p),
        None => std::env::var_os("MAILROOM_BROKERS_HOME")
            .map(PathBuf::from)
            .unwrap_or_else(|| {
                PathBuf::from(std::env::var_os("HOME").unwrap_or_default())
                    .join(".local/share/mailroom-brokers")
            })
            .join("sqs/node_modules"),
    };
    assert!(
        modules.join("@aws-sdk/client-sqs").is_dir(),
        "{} has no @aws-sdk/client-sqs: run `scripts/brokers.sh up sqs` (or set \
         MAILROOM_SQS_NODE_MODULES)",
        modules.display()
    );
    modules
}

/// The first fenced block of `lang` on a page.
fn snippet(text: &str, lang: &str) -> String {
    let start = text
        .find(&format!("```{lang}\n"))
        .unwrap_or_else(|| panic!("no {lang} snippet"))
        + lang.len()
        + 4;
    let len = text[start..].find("```").expect("an unclosed snippet");
    text[start..start + len].to_owned()
}

/// The Node snippet on the SQS page, run as it is written, reads a CloudEvent mailroom sent:
/// id, key, timestamp, binary payload and every header in order, with the event's eight
/// attributes as SQS attributes of their own and the rest packed in `mailroom.meta`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_node_snippet_on_the_sqs_page_reads_what_mailroom_sent() {
    use mailroom::cloudevents::cloudevents::event::Data;
    use mailroom::cloudevents::cloudevents::{EventBuilder, EventBuilderV10};
    use mailroom::cloudevents::EventCodec;
    use mailroom::{Backend, Destination, MessageId, QueueSpec};

    let url =
        std::env::var("MAILROOM_SQS_URL").unwrap_or_else(|_| mailroom::sqs::DEFAULT_URL.into());
    let backend = mailroom::sqs::SqsBackend::from_url(&url).await.unwrap();
    let queue = format!("wire-docs-{}", MessageId::generate());
    backend
        .topology()
        .declare_queue(&QueueSpec::new(&queue))
        .await
        .unwrap();
    let event = EventBuilderV10::new()
        .id("order-42-placed")
        .source("/shop/orders")
        .ty("com.example.order.placed")
        .subject("order-42")
        .time("2024-05-01T10:00:00.250Z")
        .data_with_schema(
            "application/octet-stream",
            "https://example.com/schemas/order",
            Data::Binary(vec![0, 1, 254, 255]),
        )
        .extension("partitionkey", "customer-7")
        .extension("tenant", "acme")
        .build()
        .unwrap();
    let mut message = EventCodec::binary(Binding::Sqs)
        .encode_with_key(event, "customer-7")
        .unwrap();
    message.headers_mut().insert("trace-id", "t-1").unwrap();
    backend
        .producer()
        .await
        .unwrap()
        .send(&Destination::queue(&queue), message.clone())
        .await
        .unwrap();
    let queue_url = backend
        .client()
        .get_queue_url()
        .queue_name(&queue)
        .send()
        .await
        .unwrap()
        .queue_url()
        .unwrap()
        .to_owned();

    let endpoint = format!(
        "http://{}",
        url.trim_start_matches("sqs://")
            .split(['?', '/'])
            .next()
            .unwrap_or_default()
            .rsplit('@')
            .next()
            .unwrap_or_default()
    );
    let code = snippet(&page("sqs"), "js").replace("http://127.0.0.1:4566", &endpoint);
    let script = format!(
        "const url = process.env.QUEUE_URL;\n(async () => {{\n{code}\nconsole.log(JSON.stringify(received));\n}})().catch((e) => {{ console.error(e); process.exit(1); }});\n"
    );
    let path = std::env::temp_dir().join(format!("mailroom-wire-docs-{}.cjs", std::process::id()));
    std::fs::write(&path, script).unwrap();
    let out = std::process::Command::new("node")
        .arg(&path)
        .env("NODE_PATH", node_modules())
        .env("QUEUE_URL", &queue_url)
        .env("AWS_ACCESS_KEY_ID", "wire-docs")
        .env("AWS_SECRET_ACCESS_KEY", "wire-docs")
        .output()
        .expect("node runs the SQS page's snippet (fauxqs needs node too)");
    std::fs::remove_file(&path).ok();
    assert!(
        out.status.success(),
        "the snippet failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let received: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let got = &received[0];
    assert_eq!(got["id"], message.id().to_string());
    assert_eq!(got["key"], "customer-7");
    assert_eq!(got["ts"], 1_714_557_600_250_u64);
    assert_eq!(got["payload"]["data"], serde_json::json!([0, 1, 254, 255]));
    let headers: Vec<(String, String)> = serde_json::from_value(got["headers"].clone()).unwrap();
    let sent: Vec<(String, String)> = message
        .headers()
        .iter()
        .map(|(n, v)| (n.to_owned(), v.to_owned()))
        .collect();
    assert_eq!(headers, sent, "every header, in order");
    let attributes: BTreeSet<String> = serde_json::from_value(got["attributes"].clone()).unwrap();
    let expected: BTreeSet<String> = [
        "ce_specversion",
        "ce_id",
        "ce_type",
        "ce_source",
        "content-type",
        "ce_dataschema",
        "ce_subject",
        "ce_time",
        mailroom::sqs::META_ATTR,
        mailroom::sqs::ENCODING_ATTR,
    ]
    .map(str::to_owned)
    .into();
    assert_eq!(
        attributes, expected,
        "the ten attributes, as docs/wire/sqs.md says"
    );
    backend.topology().delete_queue(&queue).await.ok();
}
