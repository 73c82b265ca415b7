//! The polling example: 202 at once, the task reaches done (even after a worker crash), and the
//! page shows it in a real headless Chromium.

#[allow(dead_code)]
#[path = "../examples/task_queue_web.rs"]
mod task_queue_web;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use task_queue_web::Status;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// A minimal HTTP/1.1 exchange, enough to test the service without an HTTP client crate.
async fn http(addr: SocketAddr, method: &str, path: &str, body: &str) -> (u16, String) {
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    let request = format!(
        "{method} {path} HTTP/1.1\r\nhost: {addr}\r\ncontent-type: application/json\r\n\
         content-length: {}\r\nconnection: close\r\n\r\n{body}",
        body.len()
    );
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).await.unwrap();
    let status = response[9..12].parse().unwrap();
    let body = response.split("\r\n\r\n").nth(1).unwrap_or("").to_owned();
    (status, body)
}

async fn start() -> (SocketAddr, std::sync::Arc<task_queue_web::App>) {
    start_on("memory://").await
}

async fn start_on(url: &str) -> (SocketAddr, std::sync::Arc<task_queue_web::App>) {
    task_queue_web::start(
        url,
        SocketAddr::from(([127, 0, 0, 1], 0)),
        3,
        Duration::from_millis(100),
    )
    .await
    .unwrap()
}

async fn wait_for_end(app: &task_queue_web::App, id: &str) -> (Status, Vec<Status>) {
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut seen = Vec::new();
    loop {
        let status = app.status(id).expect("the task exists");
        if seen.last() != Some(&status) {
            seen.push(status.clone());
        }
        if matches!(status, Status::Done { .. } | Status::Failed { .. }) {
            return (status, seen);
        }
        assert!(Instant::now() < deadline, "task {id} stuck: {seen:?}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

fn task_id(body: &str) -> String {
    let v: serde_json::Value = serde_json::from_str(body).unwrap();
    v["id"].as_str().unwrap().to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn submit_answers_202_at_once_and_the_task_reaches_done() {
    let (addr, app) = start().await;
    let (code, body) = http(addr, "POST", "/tasks", r#"{"input":"make it loud"}"#).await;
    assert_eq!(code, 202, "{body}");
    let id = task_id(&body);
    let (end, seen) = wait_for_end(&app, &id).await;
    assert_eq!(
        end,
        Status::Done {
            result: "MAKE IT LOUD (3 words)".into()
        },
        "{seen:?}"
    );
    assert!(
        seen.iter().any(|s| matches!(s, Status::Running { .. })),
        "{seen:?}"
    );
    let (code, body) = http(addr, "GET", &format!("/tasks/{id}"), "").await;
    assert_eq!(code, 200);
    assert!(body.contains("\"state\":\"done\""), "{body}");
    let (code, _) = http(addr, "GET", "/tasks/nope", "").await;
    assert_eq!(code, 404);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_crash_mid_task_does_not_lose_the_task() {
    let (addr, app) = start().await;
    let (_, body) = http(addr, "POST", "/tasks", r#"{"input":"crash once"}"#).await;
    let id = task_id(&body);
    let (end, seen) = wait_for_end(&app, &id).await;
    assert!(matches!(end, Status::Done { .. }), "{seen:?}");
    assert!(
        seen.contains(&Status::Running { attempt: 2 }),
        "a second worker took the task over: {seen:?}"
    );
}

#[cfg(feature = "rabbitmq")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_rabbitmq_a_crashed_workers_task_is_finished_by_another() {
    let url = std::env::var("MAILROOM_RABBITMQ_URL")
        .unwrap_or_else(|_| "amqp://guest:guest@127.0.0.1:5672/%2f".into());
    let (addr, app) = start_on(&url).await;
    let (code, body) = http(addr, "POST", "/tasks", r#"{"input":"crash once"}"#).await;
    assert_eq!(code, 202, "{body}");
    let (end, seen) = wait_for_end(&app, &task_id(&body)).await;
    assert_eq!(
        end,
        Status::Done {
            result: "CRASH ONCE (2 words)".into()
        },
        "{seen:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_task_ends_failed_with_its_reason() {
    let (addr, app) = start().await;
    let (_, body) = http(addr, "POST", "/tasks", r#"{"input":"please fail"}"#).await;
    let (end, _) = wait_for_end(&app, &task_id(&body)).await;
    assert!(
        matches!(&end, Status::Failed { reason } if reason.contains("asks to fail")),
        "{end:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_page_shows_queued_running_done_in_headless_chromium() {
    // scripts/e2e.sh installs chromium and playwright-core (scripts/test.sh runs it first) and
    // prints where playwright-core is.
    // The script sits at the workspace root, one level above this crate.
    let setup = std::process::Command::new("scripts/e2e.sh")
        .current_dir(concat!(env!("CARGO_MANIFEST_DIR"), "/.."))
        .output()
        .expect("scripts/e2e.sh runs");
    assert!(
        setup.status.success(),
        "scripts/e2e.sh failed: {}",
        String::from_utf8_lossy(&setup.stderr)
    );
    let playwright = String::from_utf8(setup.stdout).unwrap().trim().to_owned();
    let (addr, _app) = start().await;
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/e2e/task_queue.cjs");
    let out = tokio::process::Command::new("node")
        .args([
            script,
            &playwright,
            &format!("http://{addr}/"),
            "hello from chromium",
        ])
        .output()
        .await
        .expect("node runs");
    assert!(
        out.status.success(),
        "browser run failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(report["status"], "done", "{report}");
    assert_eq!(
        report["result"], "HELLO FROM CHROMIUM (3 words)",
        "{report}"
    );
    let history: Vec<&str> = report["history"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap())
        .collect();
    assert_eq!(history.first(), Some(&"queued"), "{report}");
    assert_eq!(history.last(), Some(&"done"), "{report}");
    assert!(history.contains(&"running"), "{report}");
    assert_eq!(report["consoleErrors"], serde_json::json!([]), "{report}");
}
