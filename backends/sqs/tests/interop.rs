//! Interop both ways with a client none of us wrote: the AWS SDK for JavaScript
//! (`@aws-sdk/client-sqs`) that fauxqs installs beside itself (scripts/brokers.sh).
//!
//! mailroom -> JS: the JS client reads text bodies as they are, headers as string attributes, and
//! a binary payload as base64 marked by `mailroom.encoding`. JS -> mailroom: a message the JS
//! client sent, with string and number attributes, is consumed with its body and attributes.

use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use mailroom_core::Backend;
use mailroom_core::{ConsumerOptions, Destination, Message, QueueSpec};
use mailroom_sqs::{SqsBackend, DEFAULT_URL};

fn url() -> String {
    std::env::var("MAILROOM_SQS_URL").unwrap_or_else(|_| DEFAULT_URL.to_owned())
}

/// The JS SDK that fauxqs installed; the test fails, naming the fix, when it is missing.
fn js_sdk() -> PathBuf {
    let modules = match std::env::var_os("MAILROOM_SQS_NODE_MODULES") {
        Some(p) => PathBuf::from(p),
        None => {
            let home = std::env::var_os("MAILROOM_BROKERS_HOME")
                .map(PathBuf::from)
                .unwrap_or_else(|| {
                    PathBuf::from(std::env::var_os("HOME").unwrap_or_default())
                        .join(".local/share/mailroom-brokers")
                });
            home.join("sqs/node_modules")
        }
    };
    let sdk = modules.join("@aws-sdk/client-sqs");
    assert!(
        sdk.is_dir(),
        "interop needs the @aws-sdk/client-sqs that fauxqs installs: {} is missing; run \
         `scripts/brokers.sh up sqs` (or set MAILROOM_SQS_NODE_MODULES)",
        sdk.display()
    );
    sdk
}

fn endpoint() -> String {
    let u = url();
    let host = u
        .trim_start_matches("sqs://")
        .split(['?', '/'])
        .next()
        .unwrap_or("")
        .rsplit('@')
        .next()
        .unwrap_or("")
        .to_owned();
    format!("http://{host}")
}

const SCRIPT: &str = r#"
const sqs = require(process.env.SDK);
const client = new sqs.SQSClient({
  endpoint: process.env.ENDPOINT, region: "us-east-1",
  credentials: { accessKeyId: "interop", secretAccessKey: "interop" },
});
(async () => {
  const QueueUrl = process.env.QUEUE_URL;
  if (process.env.MODE === "receive") {
    const want = Number(process.env.COUNT);
    const out = [];
    for (let i = 0; i < 20 && out.length < want; i++) {
      const r = await client.send(new sqs.ReceiveMessageCommand({
        QueueUrl, MaxNumberOfMessages: 10, WaitTimeSeconds: 1, MessageAttributeNames: ["All"],
      }));
      for (const m of r.Messages ?? []) {
        const attrs = {};
        for (const [k, v] of Object.entries(m.MessageAttributes ?? {})) {
          attrs[k] = v.StringValue ?? Buffer.from(v.BinaryValue).toString("base64");
        }
        out.push({ body: m.Body, attrs });
        await client.send(new sqs.DeleteMessageCommand({ QueueUrl, ReceiptHandle: m.ReceiptHandle }));
      }
    }
    console.log(JSON.stringify(out));
  } else {
    const r = await client.send(new sqs.SendMessageCommand({
      QueueUrl, MessageBody: "sent by the JavaScript SDK \u00e9",
      MessageAttributes: {
        color: { DataType: "String", StringValue: "blue" },
        count: { DataType: "Number", StringValue: "42" },
      },
    }));
    console.log(JSON.stringify({ id: r.MessageId }));
  }
})().catch((e) => { console.error(e); process.exit(1); });
"#;

fn run_js(mode: &str, queue_url: &str, count: usize) -> serde_json::Value {
    let dir = std::env::temp_dir().join(format!("mailroom-sqs-interop-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let script = dir.join("interop.cjs");
    std::fs::write(&script, SCRIPT).unwrap();
    let out = Command::new("node")
        .arg(&script)
        .env("SDK", js_sdk())
        .env("ENDPOINT", endpoint())
        .env("QUEUE_URL", queue_url)
        .env("MODE", mode)
        .env("COUNT", count.to_string())
        .output()
        .expect("node must be installed for the interop test (fauxqs needs it too)");
    assert!(
        out.status.success(),
        "node {mode} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "node printed no JSON ({e}): {}",
            String::from_utf8_lossy(&out.stdout)
        )
    })
}

fn fresh(what: &str) -> String {
    format!(
        "mr-interop-{what}-{}",
        &uuid::Uuid::new_v4().simple().to_string()[..12]
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mailroom_to_javascript() {
    let backend = SqsBackend::from_url(&url()).await.unwrap();
    let q = fresh("to-js");
    backend
        .topology()
        .declare_queue(&QueueSpec::new(&q))
        .await
        .unwrap();
    let producer = backend.producer().await.unwrap();
    let text = Message::builder("hello from mailroom \u{e9}")
        .header("trace-id", "abc-123")
        .header("tenant", "acme")
        .build()
        .unwrap();
    let binary = Message::builder(vec![0u8, 159, 146, 150, 255])
        .header("kind", "binary")
        .build()
        .unwrap();
    let dest = Destination::queue(&q);
    producer.send(&dest, text).await.unwrap();
    producer.send(&dest, binary).await.unwrap();

    let queue_url = backend
        .client()
        .get_queue_url()
        .queue_name(&q)
        .send()
        .await
        .unwrap();
    let got = run_js("receive", queue_url.queue_url().unwrap(), 2);
    let got = got.as_array().unwrap();
    assert_eq!(got.len(), 2, "{got:?}");
    let text_msg = got
        .iter()
        .find(|m| m["attrs"]["trace-id"] == "abc-123")
        .unwrap_or_else(|| panic!("no message with the trace-id attribute: {got:?}"));
    assert_eq!(text_msg["body"], "hello from mailroom \u{e9}");
    assert_eq!(text_msg["attrs"]["tenant"], "acme");
    assert!(text_msg["attrs"].get("mailroom.encoding").is_none());

    let bin_msg = got.iter().find(|m| m["attrs"]["kind"] == "binary").unwrap();
    assert_eq!(bin_msg["attrs"]["mailroom.encoding"], "base64");
    use base64::Engine as _;
    let decoded = base64::engine::general_purpose::STANDARD
        .decode(bin_msg["body"].as_str().unwrap())
        .unwrap();
    assert_eq!(decoded, vec![0u8, 159, 146, 150, 255]);

    backend.topology().delete_queue(&q).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn javascript_to_mailroom() {
    let backend = SqsBackend::from_url(&url()).await.unwrap();
    let q = fresh("from-js");
    backend
        .topology()
        .declare_queue(&QueueSpec::new(&q))
        .await
        .unwrap();
    let queue_url = backend
        .client()
        .get_queue_url()
        .queue_name(&q)
        .send()
        .await
        .unwrap();
    let sent = run_js("send", queue_url.queue_url().unwrap(), 1);

    let mut consumer = backend
        .consumer(&q, ConsumerOptions::default())
        .await
        .unwrap();
    let d = consumer
        .receive_timeout(Duration::from_secs(15))
        .await
        .unwrap()
        .expect("the JS client's message");
    let m = d.message();
    assert_eq!(
        m.payload().as_ref(),
        "sent by the JavaScript SDK \u{e9}".as_bytes()
    );
    assert_eq!(m.headers().get("color"), Some("blue"));
    assert_eq!(m.headers().get("count"), Some("42"));
    assert_eq!(m.id().to_string(), sent["id"].as_str().unwrap());
    assert_eq!(d.attempt(), 1);
    assert!(
        m.timestamp().is_some(),
        "SentTimestamp becomes the timestamp"
    );
    d.ack().await.unwrap();
    consumer.close().await.unwrap();
    backend.topology().delete_queue(&q).await.unwrap();
}
