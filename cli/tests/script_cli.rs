//! The CLI as scripts use it, run as the built binary: `consume --format json` and the human
//! format, `produce --from-lines` / `--from-json`, exit codes, memory:// refused, and
//! `consume --format json | produce --from-json` moving binary messages from RabbitMQ to Kafka
//! byte-exactly. Brokers as `scripts/brokers.sh up` starts them (`MAILROOM_RABBITMQ_URL`,
//! `MAILROOM_KAFKA_URL` override the addresses).

use std::process::{Command, Output, Stdio};

/// Longest any one run of the binary may take: a consume that never stops (its `--idle` not
/// honoured, a broker that stalls) is killed and fails its test instead of hanging the suite.
const RUN_LIMIT_SECS: &str = "180";

fn mailroom() -> Command {
    let mut command = Command::new("timeout");
    command.args([
        "--kill-after=10",
        RUN_LIMIT_SECS,
        env!("CARGO_BIN_EXE_mailroom"),
    ]);
    // A debug filter, so the library's log lines are there to be checked for colour codes.
    command.env("MAILROOM_LOG", "debug").env_remove("NO_COLOR");
    command
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// Run with `stdin` written to the command's standard input.
#[cfg(feature = "rabbitmq")]
fn run_with_stdin(mut command: Command, stdin: Vec<u8>) -> Output {
    let mut child = command
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("mailroom runs");
    let mut input = child.stdin.take().unwrap();
    let writer = std::thread::spawn(move || {
        use std::io::Write as _;
        // The command may stop reading early (a bad line): a broken pipe is expected then.
        let _ = input.write_all(&stdin);
    });
    let out = child.wait_with_output().unwrap();
    writer.join().unwrap();
    out
}

#[test]
fn produce_and_consume_refuse_memory_and_need_a_url() {
    for args in [
        &[
            "produce",
            "--url",
            "memory://",
            "--to",
            "q",
            "--message",
            "x",
        ][..],
        &[
            "consume",
            "--url",
            "memory://",
            "--queue",
            "q",
            "--idle",
            "1",
        ][..],
    ] {
        let out = mailroom().args(args).output().unwrap();
        let stderr = text(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {stderr}");
        assert!(stderr.contains("inside one process"), "{stderr}");
        assert!(stderr.contains("--url amqp://"), "{stderr}");
        assert!(stdout_is_empty(&out), "{}", text(&out.stdout));
        assert!(
            !stderr.contains('\x1b'),
            "no colour codes off a terminal: {stderr:?}"
        );
    }
    for args in [
        &["produce", "--to", "q", "--message", "x"][..],
        &["consume", "--queue", "q"][..],
    ] {
        let out = mailroom().args(args).output().unwrap();
        let stderr = text(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {stderr}");
        assert!(stderr.contains("--url"), "{stderr}");
    }
}

fn stdout_is_empty(out: &Output) -> bool {
    out.stdout.is_empty()
}

#[test]
fn help_documents_the_exit_codes_and_the_formats() {
    for command in ["produce", "consume"] {
        let out = mailroom().args([command, "--help"]).output().unwrap();
        let help = text(&out.stdout);
        assert!(out.status.success(), "{help}");
        for expected in ["Exit status:", "  3  a line of", "MAILROOM_LOG"] {
            assert!(
                help.contains(expected),
                "{command} --help lacks {expected:?}:\n{help}"
            );
        }
    }
    let help = text(
        &mailroom()
            .args(["produce", "--help"])
            .output()
            .unwrap()
            .stdout,
    );
    assert!(
        help.contains("--from-json") && help.contains("--from-lines"),
        "{help}"
    );
    let help = text(
        &mailroom()
            .args(["consume", "--help"])
            .output()
            .unwrap()
            .stdout,
    );
    assert!(help.contains("--format"), "{help}");
}

#[test]
fn a_missing_input_file_is_a_usage_error_before_any_broker() {
    let out = mailroom()
        .args(["produce", "--url", "amqp://127.0.0.1:1/%2f", "--to", "q"])
        .args(["--from-json", "/nonexistent/mailroom-input.jsonl"])
        .output()
        .unwrap();
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("cannot open /nonexistent/mailroom-input.jsonl"),
        "{stderr}"
    );
}

/// Queues filled and drained through the library, beside the binary under test.
#[cfg(any(feature = "rabbitmq", feature = "kafka", feature = "sqs"))]
mod brokers {
    // Each broker's tests use a different subset of these.
    #![allow(dead_code)]
    use super::*;
    use mailroom::{ConsumerOptions, Message, QueueSpec};
    use std::time::Duration;

    pub fn unique(prefix: &str) -> String {
        format!("{prefix}-{}", mailroom::MessageId::generate())
    }

    /// Declare `queue` on `url` and send `messages` there through the library.
    pub async fn fill(url: &str, queue: &str, messages: &[Message]) {
        let backend = mailroom::connect(url)
            .await
            .expect("broker up (scripts/brokers.sh up)");
        backend
            .topology()
            .declare_queue(&QueueSpec::new(queue))
            .await
            .unwrap();
        let producer = backend.producer().await.unwrap();
        let dest = mailroom::Destination::queue(queue);
        for result in producer.send_batch(&dest, messages.to_vec()).await.unwrap() {
            result.unwrap();
        }
        producer.close().await.unwrap();
        backend.close().await.unwrap();
    }

    /// Receive up to `n` messages from `queue` through the library, acking each.
    pub async fn drain(url: &str, queue: &str, n: usize) -> Vec<Message> {
        let backend = mailroom::connect(url).await.unwrap();
        let mut consumer = backend
            .consumer(queue, ConsumerOptions::default())
            .await
            .unwrap();
        let mut got = Vec::new();
        let started = std::time::Instant::now();
        while got.len() < n && started.elapsed() < Duration::from_secs(90) {
            if let Some(d) = consumer
                .receive_timeout(Duration::from_secs(5))
                .await
                .unwrap()
            {
                got.push(d.message().clone());
                d.ack().await.unwrap();
            } else if !got.is_empty() {
                // Quiet after the first: no more are coming (the first may wait for a group).
                break;
            }
        }
        consumer.close().await.unwrap();
        let _ = backend.topology().delete_queue(queue).await;
        backend.close().await.unwrap();
        got
    }

    pub fn consume(url: &str, queue: &str, format: &str, count: usize) -> Output {
        let count = count.to_string();
        let out = mailroom()
            .args([
                "consume", "--url", url, "--queue", queue, "--format", format,
            ])
            .args(["--count", &count, "--idle", "5"])
            .output()
            .unwrap();
        assert!(out.status.success(), "{}", text(&out.stderr));
        out
    }
}

#[cfg(feature = "rabbitmq")]
mod rabbitmq {
    use super::brokers::{consume, drain, fill, unique};
    use super::*;
    use mailroom::{Message, Timestamp};

    pub fn rabbitmq_url() -> String {
        std::env::var("MAILROOM_RABBITMQ_URL")
            .unwrap_or_else(|_| "amqp://guest:guest@127.0.0.1:5672/%2f".to_owned())
    }

    fn samples() -> Vec<Message> {
        vec![
            Message::builder("first line\nid=forged attempt=1 payload=\"x\"")
                .key("k\né")
                .timestamp(Timestamp::from_millis(1_700_000_000_123))
                .header("z-last", "one\ntwo")
                .header("a-first", "1")
                .build()
                .unwrap(),
            Message::new(vec![0xff, 0xfe, b'\n', 0x00, 0xc3, 0x28]),
            Message::new(Vec::new()),
        ]
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_human_format_escapes_and_labels_binary() {
        let url = rabbitmq_url();
        let queue = unique("cli-human");
        let messages = samples();
        fill(&url, &queue, &messages).await;
        let out = {
            let (url, queue) = (url.clone(), queue.clone());
            tokio::task::spawn_blocking(move || consume(&url, &queue, "human", 3))
                .await
                .unwrap()
        };
        let stdout = text(&out.stdout);
        let lines: Vec<&str> = stdout.lines().collect();
        assert_eq!(lines.len(), 3, "one line per message:\n{stdout}");
        let first = lines.iter().find(|l| l.contains("first line")).unwrap();
        assert!(
            first.contains(r#"payload="first line\nid=forged attempt=1 payload=\"x\"""#),
            "{first}"
        );
        assert!(first.contains(r#"key="k\né""#), "{first}");
        assert!(
            first.contains(r#"headers={"z-last": "one\ntwo", "a-first": "1"}"#),
            "{first}"
        );
        assert!(first.contains("timestamp_ms=1700000000123"), "{first}");
        assert!(
            lines
                .iter()
                .any(|l| l.ends_with("payload(base64)=//4KAMMo")),
            "binary is base64 and says so:\n{stdout}"
        );
        assert!(
            lines.iter().any(|l| l.ends_with(r#"payload="""#)),
            "{stdout}"
        );
        assert!(!stdout.contains('\u{fffd}'), "nothing lossy:\n{stdout}");
        let _ = drain(&url, &queue, 0).await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_json_format_has_one_object_per_message() {
        let url = rabbitmq_url();
        let queue = unique("cli-json");
        let messages = samples();
        fill(&url, &queue, &messages).await;
        let out = {
            let (url, queue) = (url.clone(), queue.clone());
            tokio::task::spawn_blocking(move || consume(&url, &queue, "json", 3))
                .await
                .unwrap()
        };
        let stdout = text(&out.stdout);
        let lines: Vec<&str> = stdout.lines().collect();
        assert_eq!(lines.len(), 3, "{stdout}");
        for (line, sent) in lines.iter().zip(&messages) {
            let v: serde_json::Value = serde_json::from_str(line).unwrap();
            assert_eq!(v["id"], sent.id().to_string(), "{line}");
            assert_eq!(v["source"], queue.as_str(), "{line}");
            assert_eq!(v["attempt"], 1, "{line}");
            assert_eq!(v["redelivered"], false, "{line}");
            assert!(
                v.get("partition").is_none(),
                "RabbitMQ has no partitions: {line}"
            );
            assert_eq!(
                v["key"],
                sent.key().map_or(serde_json::Value::Null, Into::into)
            );
            assert_eq!(
                v["timestamp"],
                sent.timestamp()
                    .map_or(serde_json::Value::Null, |t| t.as_millis().into())
            );
        }
        let first = lines[0];
        assert!(
            first.contains(r#""headers":{"z-last":"one\ntwo","a-first":"1"}"#),
            "headers in their order: {first}"
        );
        assert!(
            first.contains(r#""payload":"first line\nid=forged"#),
            "{first}"
        );
        assert!(!first.contains("encoding"), "{first}");
        assert!(
            lines[1].contains(r#""payload":"//4KAMMo","encoding":"base64""#),
            "{}",
            lines[1]
        );
        assert!(lines[2].contains(r#""payload":"""#), "{}", lines[2]);
        let _ = drain(&url, &queue, 0).await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_bad_line_is_named_and_the_lines_before_it_are_sent() {
        let url = rabbitmq_url();
        let queue = unique("cli-bad-line");
        let input = "{\"payload\":\"ok\"}\n\n{\"payload\":\"x\",\"encoding\":\"hex\"}\n\
                     {\"payload\":\"never sent\"}\n";
        let out = {
            let (url, queue) = (url.clone(), queue.clone());
            tokio::task::spawn_blocking(move || {
                let mut command = mailroom();
                command
                    .args(["produce", "--url", &url, "--to", &queue, "--declare"])
                    .args(["--from-json", "-"]);
                run_with_stdin(command, input.into())
            })
            .await
            .unwrap()
        };
        let stderr = text(&out.stderr);
        assert_eq!(out.status.code(), Some(3), "{stderr}");
        assert!(
            stderr.contains("error: line 3: \"encoding\" is \"hex\""),
            "the line and the problem: {stderr}"
        );
        assert!(stderr.contains("1 message(s) confirmed"), "{stderr}");
        assert!(!stderr.contains('\x1b'), "no colour codes: {stderr:?}");
        let got = drain(&url, &queue, 2).await;
        assert_eq!(got.len(), 1, "only the line before the bad one");
        assert_eq!(got[0].payload().as_ref(), b"ok");

        // Not JSON at all, and a message the library refuses (an empty header name).
        for (input, expected) in [
            (
                "{\"payload\":\"a\"}\nnot json\n",
                "error: line 2: column 2: expected ident",
            ),
            (
                "{\"payload\":\"a\",\"headers\":{\"\":\"v\"}}\n",
                "error: line 1: header name is empty",
            ),
            ("\u{0}\u{ff}\n", "error: line 1: column 1"),
        ] {
            let queue = unique("cli-bad-line");
            let (url2, queue2) = (url.clone(), queue.clone());
            let out = tokio::task::spawn_blocking(move || {
                let mut command = mailroom();
                command
                    .args(["produce", "--url", &url2, "--to", &queue2, "--declare"])
                    .args(["--from-json", "-"]);
                run_with_stdin(command, input.into())
            })
            .await
            .unwrap();
            let stderr = text(&out.stderr);
            assert_eq!(out.status.code(), Some(3), "{input:?}: {stderr}");
            assert!(stderr.contains(expected), "{input:?}: {stderr}");
            let _ = drain(&url, &queue, 0).await;
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn large_and_binary_payloads_go_through_lines_and_json() {
        let url = rabbitmq_url();
        let queue = unique("cli-large");
        // Over the ~128 KiB a single command-line argument may hold.
        let big_line: Vec<u8> = (0..200 * 1024).map(|i| b'a' + (i % 26) as u8).collect();
        let mut lines = big_line.clone();
        lines.extend_from_slice(b"\n\xff\xfe binary\r\n\nlast without newline");
        let out = {
            let (url, queue) = (url.clone(), queue.clone());
            tokio::task::spawn_blocking(move || {
                let mut command = mailroom();
                command
                    .args(["produce", "--url", &url, "--to", &queue, "--declare"])
                    .args(["--from-lines", "-", "--key", "k", "--header", "h=v"]);
                run_with_stdin(command, lines)
            })
            .await
            .unwrap()
        };
        assert!(out.status.success(), "{}", text(&out.stderr));
        assert!(
            text(&out.stdout).starts_with("4 message(s) confirmed"),
            "{}",
            text(&out.stdout)
        );
        let got = drain(&url, &queue, 4).await;
        let payloads: Vec<&[u8]> = got.iter().map(|m| m.payload().as_ref()).collect();
        assert_eq!(
            payloads,
            [
                &big_line[..],
                b"\xff\xfe binary\r",
                b"",
                b"last without newline"
            ]
        );
        assert!(got.iter().all(|m| m.key() == Some("k")));
        assert!(got.iter().all(|m| m.headers().get("h") == Some("v")));

        // A 300 KiB binary payload as one JSON line.
        let queue = unique("cli-large");
        let big: Vec<u8> = (0..300 * 1024u32).map(|i| (i * 7 % 251) as u8).collect();
        let line = format!(
            "{{\"payload\":\"{}\",\"encoding\":\"base64\",\"id\":\"big-1\"}}\n",
            b64(&big)
        );
        let out = {
            let (url, queue) = (url.clone(), queue.clone());
            tokio::task::spawn_blocking(move || {
                let mut command = mailroom();
                command
                    .args(["produce", "--url", &url, "--to", &queue, "--declare"])
                    .args(["--from-json", "-"]);
                run_with_stdin(command, line.into())
            })
            .await
            .unwrap()
        };
        assert!(out.status.success(), "{}", text(&out.stderr));
        let got = drain(&url, &queue, 1).await;
        assert_eq!(got[0].payload().as_ref(), &big[..]);
        assert_eq!(got[0].id().to_string(), "big-1");
    }

    /// Standard padded base64, written out here so the test checks the CLI against an
    /// independent encoder.
    fn b64(bytes: &[u8]) -> String {
        const ALPHABET: &[u8; 64] =
            b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
        let mut out = String::new();
        for chunk in bytes.chunks(3) {
            let n = chunk
                .iter()
                .enumerate()
                .fold(0u32, |n, (i, b)| n | (u32::from(*b) << (16 - 8 * i)));
            for i in 0..4 {
                if i <= chunk.len() {
                    out.push(ALPHABET[(n >> (18 - 6 * i) & 63) as usize] as char);
                } else {
                    out.push('=');
                }
            }
        }
        out
    }

    #[test]
    fn the_test_encoder_is_base64() {
        assert_eq!(b64(b"\xff\xfe\n\x00\xc3\x28"), "//4KAMMo");
        assert_eq!(b64(b"ab"), "YWI=");
        assert_eq!(b64(b"a"), "YQ==");
    }
}

/// `consume --format json | produce --from-json` between two brokers, checked byte by byte.
#[cfg(feature = "kafka")]
mod moves {
    use super::brokers::{drain, fill, unique};
    use super::*;
    use mailroom::{Message, Timestamp};

    fn url(var: &str, default: &str) -> String {
        std::env::var(var).unwrap_or_else(|_| default.to_owned())
    }

    #[cfg(feature = "rabbitmq")]
    fn rabbitmq_url() -> String {
        url(
            "MAILROOM_RABBITMQ_URL",
            "amqp://guest:guest@127.0.0.1:5672/%2f",
        )
    }

    /// Random bytes from a fixed seed (xorshift), so a failure can be replayed.
    struct Bytes(u64);

    impl Bytes {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            self.0
        }
        fn fill(&mut self, len: usize) -> Vec<u8> {
            (0..len).map(|_| self.next() as u8).collect()
        }
    }

    /// `n` messages: random bytes (mostly invalid UTF-8, some with newlines), some UTF-8 text,
    /// some empty; keys on half, two headers (with newlines and quotes) on a third, timestamps
    /// on a fifth.
    fn messages(n: u64) -> Vec<Message> {
        let mut rng = Bytes(0x5eed_1234_abcd_9876);
        (0..n)
            .map(|i| {
                let len = (rng.next() % 600) as usize;
                let mut payload = rng.fill(len);
                match i % 10 {
                    // Valid UTF-8 with newlines and quotes: sent as text, must stay text.
                    0 => payload = format!("line {i}\nnext \"é\" ✓\r\n").into_bytes(),
                    1 => payload.clear(),
                    2 => payload.extend_from_slice(b"\n\xc3\x28\n"),
                    _ => {}
                }
                let mut builder = Message::builder(payload);
                if i % 2 == 0 {
                    builder = builder.key(format!("key-{} é", i % 7));
                }
                if i % 3 == 0 {
                    builder = builder
                        .header("z-first", format!("v{i}\n\t\"x\""))
                        .header("a-second", "✓");
                }
                if i % 5 == 0 {
                    builder = builder.timestamp(Timestamp::from_millis(1_700_000_000_000 + i));
                }
                builder.build().unwrap()
            })
            .collect()
    }

    /// Fill a queue on `from`, pipe it through the two commands into a fresh queue on `to`, and
    /// check that every message arrived exactly as it was sent.
    #[cfg(feature = "rabbitmq")]
    async fn move_and_check(from: &str, to: &str, n: u64) {
        use std::collections::HashMap;
        let queue = unique("cli-move");
        let target = unique("cli-move");
        let sent = messages(n);
        fill(from, &queue, &sent).await;

        let count = n.to_string();
        let (from2, to2, queue2, target2) = (
            from.to_owned(),
            to.to_owned(),
            queue.clone(),
            target.clone(),
        );
        let (consumed, produced) = tokio::task::spawn_blocking(move || {
            let mut consume = mailroom()
                .args(["consume", "--url", &from2, "--queue", &queue2])
                .args(["--format", "json", "--count", &count, "--idle", "10"])
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .unwrap();
            let produced = mailroom()
                .args(["produce", "--url", &to2, "--to", &target2, "--declare"])
                .args(["--from-json", "-"])
                .stdin(consume.stdout.take().unwrap())
                .output()
                .unwrap();
            (consume.wait_with_output().unwrap(), produced)
        })
        .await
        .unwrap();
        assert!(consumed.status.success(), "{}", text(&consumed.stderr));
        assert!(
            text(&consumed.stderr).contains(&format!("{n} message(s) received and acked")),
            "{}",
            text(&consumed.stderr)
        );
        assert!(produced.status.success(), "{}", text(&produced.stderr));
        assert!(
            text(&produced.stdout).starts_with(&format!("{n} message(s) confirmed")),
            "{}",
            text(&produced.stdout)
        );

        let got = drain(to, &target, sent.len()).await;
        assert_eq!(got.len(), sent.len(), "every message arrives");
        let by_id: HashMap<String, &Message> =
            got.iter().map(|m| (m.id().to_string(), m)).collect();
        for original in &sent {
            let moved = by_id
                .get(&original.id().to_string())
                .unwrap_or_else(|| panic!("{} did not arrive", original.id()));
            assert_eq!(moved.payload(), original.payload(), "{}", original.id());
            assert_eq!(
                moved.headers().iter().collect::<Vec<_>>(),
                original.headers().iter().collect::<Vec<_>>(),
                "headers and their order, {}",
                original.id()
            );
            assert_eq!(moved.key(), original.key());
            assert_eq!(moved.timestamp(), original.timestamp());
            assert!(**moved == *original, "the whole message, {}", original.id());
        }
        let _ = drain(from, &queue, 0).await;
    }

    #[cfg(all(feature = "rabbitmq", feature = "kafka"))]
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_thousand_binary_messages_move_from_rabbitmq_to_kafka_byte_exactly() {
        let kafka = url("MAILROOM_KAFKA_URL", "kafka://127.0.0.1:9092");
        move_and_check(&rabbitmq_url(), &kafka, 1000).await;
    }

    /// Kafka's lines say where each record sits.
    #[cfg(feature = "kafka")]
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn kafka_json_lines_carry_partition_and_offset() {
        let kafka = url("MAILROOM_KAFKA_URL", "kafka://127.0.0.1:9092");
        let topic = unique("cli-json-kafka");
        fill(&kafka, &topic, &messages(2)).await;
        let (kafka2, topic2) = (kafka.clone(), topic.clone());
        let out = tokio::task::spawn_blocking(move || {
            super::brokers::consume(&kafka2, &topic2, "json", 2)
        })
        .await
        .unwrap();
        let stdout = text(&out.stdout);
        let mut positions = Vec::new();
        for line in stdout.lines() {
            let v: serde_json::Value = serde_json::from_str(line).unwrap();
            let partition = v["partition"].as_i64().expect("a partition");
            let offset = v["offset"].as_i64().expect("an offset");
            assert!(partition >= 0 && offset >= 0, "{line}");
            positions.push((partition, offset));
        }
        positions.dedup();
        assert_eq!(positions.len(), 2, "two records, two positions:\n{stdout}");
        let _ = drain(&kafka, &topic, 0).await;
    }
}
