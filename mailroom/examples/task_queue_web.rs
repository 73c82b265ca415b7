//! Offline work with polling: the user asks for slow work, gets an answer at once, and watches it
//! finish.
//!
//! `POST /tasks` records the task as queued, publishes it and answers `202 Accepted` with the
//! task id straight away. Workers (several, sharing the queue) consume tasks, mark them running,
//! do the slow work and mark them done — or failed, with the reason. The page at `/` submits a
//! task and polls `GET /tasks/{id}` until it ends. A worker that crashes mid-task never settles its
//! delivery, so the broker hands the task to another worker: nothing is lost.
//!
//! `cargo run --example task_queue_web [URL] [PORT]`, then open http://127.0.0.1:PORT/ (default
//! memory:// and port 8080). Submit `crash once` to watch a worker die and another finish the
//! task, or `fail` for a task that fails with a reason.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{Html, IntoResponse};
use axum::routing::{get, post};
use axum::{Json, Router};
use mailroom::{Backend, Destination, Producer, QueueSpec, Result};
use serde::{Deserialize, Serialize};

/// Where a task is.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "state", rename_all = "snake_case")]
pub enum Status {
    /// Accepted and waiting for a worker.
    Queued,
    /// A worker is on it (attempt counts crashes too).
    Running {
        /// Which delivery attempt this is.
        attempt: u32,
    },
    /// Finished.
    Done {
        /// The work's output.
        result: String,
    },
    /// Ended without a result.
    Failed {
        /// Why.
        reason: String,
    },
}

#[derive(Serialize, Deserialize)]
struct Task {
    id: String,
    input: String,
}

#[derive(Deserialize)]
struct Submit {
    input: String,
}

/// The service: a task store (a database in real life) and the producer requests publish with.
pub struct App {
    statuses: Mutex<HashMap<String, Status>>,
    producer: Box<dyn Producer>,
    queue: String,
    /// The first task containing "crash" kills its worker once; later attempts succeed.
    crashed_once: AtomicBool,
    /// How long one unit of "slow work" takes.
    work: Duration,
}

impl App {
    fn set(&self, id: &str, status: Status) {
        self.statuses
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(id.to_owned(), status);
    }

    /// The status of a task, if it exists.
    pub fn status(&self, id: &str) -> Option<Status> {
        self.statuses
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(id)
            .cloned()
    }
}

async fn submit(State(app): State<Arc<App>>, Json(body): Json<Submit>) -> impl IntoResponse {
    let id = mailroom::MessageId::generate().to_string();
    app.set(&id, Status::Queued);
    let task = Task {
        id: id.clone(),
        input: body.input,
    };
    let sent = async {
        let message = mailroom::json::builder(&task)?.id(&id).build()?;
        app.producer
            .send(&Destination::queue(&app.queue), message)
            .await
    }
    .await;
    match sent {
        Ok(_) => (
            StatusCode::ACCEPTED,
            Json(serde_json::json!({ "id": id, "status_url": format!("/tasks/{id}") })),
        ),
        Err(e) => {
            app.set(
                &id,
                Status::Failed {
                    reason: e.to_string(),
                },
            );
            (
                StatusCode::SERVICE_UNAVAILABLE,
                Json(serde_json::json!({ "id": id, "error": e.to_string() })),
            )
        }
    }
}

async fn status(State(app): State<Arc<App>>, Path(id): Path<String>) -> impl IntoResponse {
    match app.status(&id) {
        Some(s) => (
            StatusCode::OK,
            Json(serde_json::to_value(s).unwrap_or_default()),
        ),
        None => (
            StatusCode::NOT_FOUND,
            Json(serde_json::json!({ "error": format!("no task {id}") })),
        ),
    }
}

async fn page() -> Html<&'static str> {
    Html(PAGE)
}

/// One worker: take a task, mark it running, work, mark it done or failed, then ack.
async fn worker(app: Arc<App>, broker: Arc<dyn Backend>, name: usize) -> Result<()> {
    let mut consumer = broker.consumer(&app.queue, Default::default()).await?;
    loop {
        let delivery = consumer.receive().await?;
        let task: Task = match delivery.json() {
            Ok(t) => t,
            Err(e) => {
                delivery
                    .nack(mailroom::Nack::dead_letter(e.to_string()))
                    .await?;
                continue;
            }
        };
        app.set(
            &task.id,
            Status::Running {
                attempt: delivery.attempt(),
            },
        );
        tokio::time::sleep(app.work).await;
        if task.input.contains("crash") && !app.crashed_once.swap(true, Ordering::SeqCst) {
            // The worker dies mid-task: its delivery is dropped unsettled and goes back to the
            // queue, where another worker picks it up.
            tracing::warn!(worker = name, task = %task.id, "worker crashed mid-task");
            drop(delivery);
            return Ok(());
        }
        if task.input.contains("fail") {
            let reason = format!("input {:?} asks to fail", task.input);
            app.set(&task.id, Status::Failed { reason });
        } else {
            tokio::time::sleep(app.work).await;
            let words = task.input.split_whitespace().count();
            let result = format!("{} ({words} words)", task.input.to_uppercase());
            app.set(&task.id, Status::Done { result });
        }
        // Acked only once the outcome is recorded: a crash before this line redelivers.
        delivery.ack().await?;
    }
}

/// Start the service on `addr` with `workers` workers; returns the bound address and the app.
pub async fn start(
    url: &str,
    addr: SocketAddr,
    workers: usize,
    work: Duration,
) -> Result<(SocketAddr, Arc<App>)> {
    let broker = mailroom::connect(url).await?;
    let queue = format!(
        "tasks-{}",
        &mailroom::MessageId::generate().to_string()[..8]
    );
    broker
        .topology()
        .declare_queue(&QueueSpec::new(&queue))
        .await?;
    let app = Arc::new(App {
        statuses: Mutex::new(HashMap::new()),
        producer: broker.producer().await?,
        queue,
        crashed_once: AtomicBool::new(false),
        work,
    });
    for n in 0..workers {
        let (app, broker) = (app.clone(), broker.clone());
        tokio::spawn(async move {
            if let Err(e) = worker(app, broker, n).await {
                tracing::error!(worker = n, error = %e, "worker stopped");
            }
        });
    }
    let router = Router::new()
        .route("/", get(page))
        .route("/tasks", post(submit))
        .route("/tasks/{id}", get(status))
        .with_state(app.clone());
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|e| mailroom::Error::config(format!("cannot listen on {addr}")).with_source(e))?;
    let bound = listener
        .local_addr()
        .map_err(|e| mailroom::Error::config("no local address").with_source(e))?;
    tokio::spawn(async move {
        if let Err(e) = axum::serve(listener, router).await {
            tracing::error!(error = %e, "http server stopped");
        }
    });
    Ok((bound, app))
}

#[tokio::main]
async fn main() -> Result<()> {
    let url = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "memory://".into());
    let port: u16 = std::env::args()
        .nth(2)
        .map(|p| p.parse())
        .transpose()
        .map_err(|_| mailroom::Error::config("PORT must be a number"))?
        .unwrap_or(8080);
    let (addr, _app) = start(
        &url,
        SocketAddr::from(([127, 0, 0, 1], port)),
        3,
        Duration::from_millis(700),
    )
    .await?;
    println!("task queue on {url}: open http://{addr}/ (Ctrl-C to stop)");
    let _ = tokio::signal::ctrl_c().await;
    Ok(())
}

const PAGE: &str = r#"<!doctype html>
<html lang="en">
<head><meta charset="utf-8"><title>mailroom task queue</title><link rel="icon" href="data:,">
<style>
 body { font-family: system-ui, sans-serif; max-width: 40rem; margin: 2rem auto; }
 #status { font-weight: bold; } .failed { color: #b00; } .done { color: #070; }
</style></head>
<body>
<h1>Slow work, answered at once</h1>
<form id="task-form">
  <input id="input" name="input" value="hello mailroom" size="40">
  <button id="submit" type="submit">Submit</button>
</form>
<p>Task: <code id="task-id">-</code></p>
<p>Status: <span id="status">-</span></p>
<p>Result: <span id="result">-</span></p>
<ol id="history"></ol>
<script>
const $ = (id) => document.getElementById(id);
function show(s) {
  $("status").textContent = s.state;
  $("status").className = s.state;
  if (s.state === "done") $("result").textContent = s.result;
  if (s.state === "failed") $("result").textContent = s.reason;
  const last = $("history").lastElementChild;
  if (!last || last.textContent !== s.state) {
    const li = document.createElement("li"); li.textContent = s.state; $("history").appendChild(li);
  }
}
async function poll(url) {
  const r = await fetch(url);
  const s = await r.json();
  show(s);
  if (s.state !== "done" && s.state !== "failed") setTimeout(() => poll(url), 150);
}
$("task-form").addEventListener("submit", async (e) => {
  e.preventDefault();
  $("history").textContent = ""; $("result").textContent = "-";
  const r = await fetch("/tasks", { method: "POST", headers: { "content-type": "application/json" },
                                    body: JSON.stringify({ input: $("input").value }) });
  const body = await r.json();
  if (r.status !== 202) { show({ state: "failed", reason: body.error }); return; }
  $("task-id").textContent = body.id;
  show({ state: "queued" });
  poll(body.status_url);
});
</script>
</body>
</html>
"#;
