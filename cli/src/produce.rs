//! `mailroom produce`: send messages to a queue or an exchange, from the command line, from the
//! lines of a file, or from the JSON lines `consume --format json` writes.

use std::collections::VecDeque;
use std::path::PathBuf;

use clap::Args;
use mailroom::{Destination, ErrorKind, Message, PendingConfirm, Producer, QueueSpec};
use tokio::io::{AsyncBufReadExt, AsyncRead, BufReader};

use crate::{connect_broker, jsonl, Failure};

/// The `produce` subcommand's arguments.
#[derive(Args)]
pub(crate) struct ProduceArgs {
    /// Broker URL (amqp://, kafka://, sqs://). There is no default, and memory:// is refused:
    /// it lives inside one process, so what is sent there is gone when this command exits.
    #[arg(long)]
    url: String,
    /// `queue`, or `exchange:routing.key`.
    #[arg(long)]
    to: String,
    /// The payload text (default: a numbered line per message). The command line holds at most
    /// ~128 KiB: larger payloads go through --from-lines or --from-json.
    #[arg(long, conflicts_with_all = ["from_lines", "from_json"])]
    message: Option<String>,
    /// How many messages (with --message or the numbered default).
    #[arg(long, default_value_t = 1, conflicts_with_all = ["from_lines", "from_json"])]
    count: u64,
    /// One message per line of FILE (`-`: stdin). The payload is the line's bytes without its
    /// `\n` (a `\r` stays; any bytes, not only UTF-8); an empty line is an empty message.
    #[arg(long, value_name = "FILE|-", conflicts_with = "from_json")]
    from_lines: Option<PathBuf>,
    /// One message per line of FILE (`-`: stdin), each a JSON object as `consume --format json`
    /// writes: `payload` (text, or base64 with `"encoding": "base64"`), and optionally
    /// `headers` (an object of strings), `key`, `id`, `timestamp` (ms since the epoch).
    /// `source`, `attempt`, `redelivered`, `partition` and `offset` are ignored; any other field
    /// is an error. Blank lines are skipped.
    #[arg(long, value_name = "FILE|-")]
    from_json: Option<PathBuf>,
    /// Ordering / partitioning key (not with --from-json, whose lines carry their own).
    #[arg(long, conflicts_with = "from_json")]
    key: Option<String>,
    /// Headers as name=value (repeatable; not with --from-json, whose lines carry their own).
    #[arg(
        long = "header",
        value_name = "NAME=VALUE",
        conflicts_with = "from_json"
    )]
    headers: Vec<String>,
    /// Declare the queue first (for `--to QUEUE`).
    #[arg(long)]
    declare: bool,
}

/// Most sends awaiting their confirm at once: a long input streams through in bounded memory.
const MAX_PENDING: usize = 4096;

/// Where the messages come from.
enum Input {
    Flags { message: Option<String>, count: u64 },
    Lines(PathBuf),
    Json(PathBuf),
}

/// Run `mailroom produce`.
pub(crate) async fn run(args: ProduceArgs) -> Result<(), Failure> {
    let ProduceArgs {
        url,
        to,
        message,
        count,
        from_lines,
        from_json,
        key,
        headers,
        declare,
    } = args;
    let dest = Destination::parse(&to).map_err(|e| Failure::Usage(format!("--to: {e}")))?;
    let mut fixed = Vec::with_capacity(headers.len());
    for h in &headers {
        let (name, value) = h
            .split_once('=')
            .ok_or_else(|| Failure::Usage(format!("--header {h:?} must be NAME=VALUE")))?;
        fixed.push((name.to_owned(), value.to_owned()));
    }
    let input = match (from_lines, from_json) {
        (Some(path), _) => Input::Lines(path),
        (_, Some(path)) => Input::Json(path),
        _ => Input::Flags { message, count },
    };
    // Open the input before connecting, so a missing file is reported without touching a broker.
    let reader = match &input {
        Input::Lines(path) | Input::Json(path) => Some(open(path).await?),
        Input::Flags { .. } => None,
    };
    let backend = connect_broker(&url, "produce").await?;
    if let (true, Destination::Queue(q)) = (declare, &dest) {
        backend
            .topology()
            .declare_queue(&QueueSpec::new(&**q))
            .await?;
    }
    let producer = backend.producer().await?;
    let mut sender = Sender {
        producer: producer.as_ref(),
        dest: &dest,
        pending: VecDeque::new(),
        confirmed: 0,
    };
    // The first failure stops the input; what was sent before it is still awaited, so the
    // count of confirmed messages printed is true.
    let outcome = match (input, reader) {
        (Input::Flags { message, count }, _) => {
            let mut outcome = Ok(());
            for i in 0..count {
                let text = message.clone().unwrap_or_else(|| format!("message {i}"));
                let built = with_fixed(Message::builder(text), key.as_deref(), &fixed)
                    .map_err(|e| Failure::Usage(e.to_string()));
                outcome = match built {
                    Ok(m) => sender.send(None, m).await,
                    Err(e) => Err(e),
                };
                if outcome.is_err() {
                    break;
                }
            }
            outcome
        }
        (Input::Lines(_), Some(reader)) => {
            read_lines(
                reader,
                |mut bytes| {
                    if bytes.last() == Some(&b'\n') {
                        bytes.pop();
                    }
                    with_fixed(Message::builder(bytes), key.as_deref(), &fixed)
                        .map(Some)
                        .map_err(|e| e.message().to_owned())
                },
                &mut sender,
            )
            .await
        }
        (Input::Json(_), Some(reader)) => {
            read_lines(
                reader,
                |bytes| {
                    let text = std::str::from_utf8(&bytes)
                        .map_err(|e| format!("not UTF-8 ({e}); JSON lines must be UTF-8"))?;
                    if text.trim().is_empty() {
                        return Ok(None);
                    }
                    jsonl::from_line(text).map(Some)
                },
                &mut sender,
            )
            .await
        }
        (_, None) => Ok(()),
    };
    let settled = sender.finish().await;
    let confirmed = sender.confirmed;
    let closed = producer.close().await;
    let redacted = mailroom::url::redact(&url);
    match outcome.and(settled) {
        Ok(()) => {
            closed?;
            println!("{confirmed} message(s) confirmed by {redacted} for {dest}");
            Ok(())
        }
        Err(failure) => {
            eprintln!(
                "{confirmed} message(s) confirmed by {redacted} for {dest} before the failure"
            );
            Err(failure)
        }
    }
}

/// The file, or stdin for `-`.
async fn open(path: &std::path::Path) -> Result<BufReader<Box<dyn AsyncRead + Unpin>>, Failure> {
    let read: Box<dyn AsyncRead + Unpin> = if path.as_os_str() == "-" {
        Box::new(tokio::io::stdin())
    } else {
        Box::new(
            tokio::fs::File::open(path)
                .await
                .map_err(|e| Failure::Usage(format!("cannot open {}: {e}", path.display())))?,
        )
    };
    Ok(BufReader::new(read))
}

/// The builder with `--key` and `--header` applied.
fn with_fixed(
    mut builder: mailroom::MessageBuilder,
    key: Option<&str>,
    headers: &[(String, String)],
) -> mailroom::Result<Message> {
    if let Some(k) = key {
        builder = builder.key(k);
    }
    for (name, value) in headers {
        builder = builder.header(name, value);
    }
    builder.build()
}

/// Send one message per line (`parse` gives it, or `None` to skip the line); stop at the first
/// line that is not a valid message, naming it.
async fn read_lines(
    mut reader: BufReader<Box<dyn AsyncRead + Unpin>>,
    mut parse: impl FnMut(Vec<u8>) -> Result<Option<Message>, String>,
    sender: &mut Sender<'_>,
) -> Result<(), Failure> {
    let mut number = 0u64;
    loop {
        let mut bytes = Vec::new();
        let read = reader
            .read_until(b'\n', &mut bytes)
            .await
            .map_err(|e| Failure::Runtime(format!("reading line {}: {e}", number + 1)))?;
        if read == 0 {
            return Ok(());
        }
        number += 1;
        match parse(bytes) {
            Ok(Some(message)) => sender.send(Some(number), message).await?,
            Ok(None) => {}
            Err(problem) => {
                return Err(Failure::Input(format!(
                    "line {number}: {problem} (nothing from this line on was sent)"
                )))
            }
        }
    }
}

/// Enqueues messages and keeps at most [`MAX_PENDING`] confirms outstanding, each with the input
/// line it came from.
struct Sender<'a> {
    producer: &'a dyn Producer,
    dest: &'a Destination,
    pending: VecDeque<(Option<u64>, PendingConfirm)>,
    confirmed: u64,
}

impl Sender<'_> {
    async fn send(&mut self, line: Option<u64>, message: Message) -> Result<(), Failure> {
        let pending = self
            .producer
            .enqueue(self.dest, message)
            .await
            .map_err(|e| failed(line, e))?;
        self.pending.push_back((line, pending));
        while self.pending.len() > MAX_PENDING {
            self.settle_oldest().await?;
        }
        Ok(())
    }

    async fn settle_oldest(&mut self) -> Result<(), Failure> {
        if let Some((line, pending)) = self.pending.pop_front() {
            pending.await.map_err(|e| failed(line, e))?;
            self.confirmed += 1;
        }
        Ok(())
    }

    /// Await every outstanding confirm; the first failure is returned after all have settled.
    async fn finish(&mut self) -> Result<(), Failure> {
        let mut first = Ok(());
        while !self.pending.is_empty() {
            if let Err(e) = self.settle_oldest().await {
                first = first.and(Err(e));
            }
        }
        first
    }
}

/// A send's failure, naming the input line it came from; a message the broker refuses as invalid
/// or too large is the input's fault (exit 3), anything else the broker's (exit 1).
fn failed(line: Option<u64>, e: mailroom::Error) -> Failure {
    let text = match line {
        Some(n) => format!("line {n}: {e}"),
        None => e.to_string(),
    };
    match e.kind() {
        ErrorKind::InvalidInput | ErrorKind::PayloadTooLarge if line.is_some() => {
            Failure::Input(text)
        }
        ErrorKind::Config => Failure::Usage(text),
        _ => Failure::Runtime(text),
    }
}
