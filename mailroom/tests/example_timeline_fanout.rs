//! The fan-out example: every follower gets the post, and the request is far quicker than the
//! fan-out it triggers.

#[allow(dead_code)]
#[path = "../examples/timeline_fanout.rs"]
mod timeline_fanout;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn all_followers_receive_the_post_after_the_request_returned() {
    let outcome = timeline_fanout::run("memory://", 100_000).await.unwrap();
    assert_eq!(outcome.delivered, 100_000);
    // The request path does one write and one confirmed send; the fan-out does 100,000 writes.
    assert!(outcome.request < outcome.fanout_work, "{outcome:?}");
    assert!(outcome.fanout >= outcome.fanout_work, "{outcome:?}");
}
