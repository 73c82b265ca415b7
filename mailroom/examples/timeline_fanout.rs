//! In-line work with out-of-band fan-out: post a message, see it at once, followers later.
//!
//! The request path does only what the author must see: it writes the post to the author's own
//! timeline and publishes one `posted` event. A fan-out worker consumes that event and writes the
//! post into every follower's timeline, in chunks, acking the event only when every chunk is
//! written (so a crash mid-fan-out redelivers the event instead of losing followers' copies).
//! With 100,000 followers the request returns in microseconds while the fan-out takes far
//! longer — which is why it is out of band. `cargo run --release --example timeline_fanout`.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use mailroom::{Destination, Producer, QueueSpec, Result};
use serde::{Deserialize, Serialize};

/// Timelines by user: what each user's home page would show.
#[derive(Default)]
pub struct Timelines {
    by_user: Mutex<HashMap<u32, Vec<u64>>>,
}

impl Timelines {
    fn append(&self, users: impl IntoIterator<Item = u32>, post: u64) {
        let mut map = self.by_user.lock().unwrap_or_else(|p| p.into_inner());
        for user in users {
            map.entry(user).or_default().push(post);
        }
    }

    /// How many users have `post` on their timeline.
    pub fn holding(&self, post: u64) -> usize {
        let map = self.by_user.lock().unwrap_or_else(|p| p.into_inner());
        map.values().filter(|posts| posts.contains(&post)).count()
    }
}

#[derive(Debug, Serialize, Deserialize)]
struct Posted {
    post: u64,
    author: u32,
}

/// What a run measured.
#[derive(Debug)]
pub struct Outcome {
    /// Time the request path took (own timeline + one publish, confirmed).
    pub request: Duration,
    /// Time from the request's start until every follower's timeline held the post.
    pub fanout: Duration,
    /// Time the fan-out worker spent writing followers' timelines.
    pub fanout_work: Duration,
    /// Followers whose timeline holds the post.
    pub delivered: usize,
}

const CHUNK: usize = 1_000;

/// The request handler: write the author's own timeline, publish one event, return.
async fn post_message(
    timelines: &Timelines,
    producer: &dyn Producer,
    queue: &str,
    author: u32,
    post: u64,
) -> Result<()> {
    timelines.append([author], post);
    let event = mailroom::json::encode(&Posted { post, author })?;
    producer.send(&Destination::queue(queue), event).await?;
    Ok(())
}

/// Post once as an author with `followers` followers and measure both paths.
pub async fn run(url: &str, followers: u32) -> Result<Outcome> {
    let broker = mailroom::connect(url).await?;
    let queue = format!(
        "posted-{}",
        &mailroom::MessageId::generate().to_string()[..8]
    );
    broker
        .topology()
        .declare_queue(&QueueSpec::new(&queue))
        .await?;
    let timelines = Arc::new(Timelines::default());
    let author = 0;
    let follower_ids: Arc<Vec<u32>> = Arc::new((1..=followers).collect());

    // The fan-out worker runs in the background, as its own service would.
    let mut consumer = broker.consumer(&queue, Default::default()).await?;
    let worker_timelines = timelines.clone();
    let worker = tokio::spawn(async move {
        let delivery = consumer.receive().await?;
        let event: Posted = delivery.json()?;
        let began = Instant::now();
        for chunk in follower_ids.chunks(CHUNK) {
            worker_timelines.append(chunk.iter().copied(), event.post);
            // Give the runtime back between chunks: the fan-out must not starve requests.
            tokio::task::yield_now().await;
        }
        delivery.ack().await?;
        consumer.close().await?;
        Ok::<_, mailroom::Error>((began, Instant::now()))
    });

    let producer = broker.producer().await?;
    let start = Instant::now();
    post_message(&timelines, producer.as_ref(), &queue, author, 1).await?;
    let request = start.elapsed();
    let (began, done) = worker
        .await
        .map_err(|e| mailroom::Error::new(mailroom::ErrorKind::Broker, e.to_string()))??;
    let outcome = Outcome {
        request,
        fanout: done - start,
        fanout_work: done - began,
        delivered: timelines.holding(1) - 1,
    };
    producer.close().await?;
    let _ = broker.topology().delete_queue(&queue).await;
    broker.close().await?;
    Ok(outcome)
}

#[tokio::main]
async fn main() -> Result<()> {
    let url = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "memory://".into());
    let followers = 100_000;
    let outcome = run(&url, followers).await?;
    println!(
        "request returned in {:?} (author sees the post); fan-out to {} of {followers} followers \
         took {:?} of work and was complete {:?} after the request started",
        outcome.request, outcome.delivered, outcome.fanout_work, outcome.fanout
    );
    Ok(())
}
