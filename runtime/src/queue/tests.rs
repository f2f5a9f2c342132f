use std::time::Duration;

use super::*;

fn queue() -> Queue<&'static str> {
    Queue::new(Duration::from_millis(10), Duration::from_millis(40))
}

#[tokio::test(start_paused = true)]
async fn keys_are_deduplicated_and_served_in_order() {
    let q = queue();
    q.add("a");
    q.add("b");
    q.add("a");
    assert_eq!(q.len(), 2);
    assert_eq!(q.next().await.map(|(k, _)| k), Some("a"));
    assert_eq!(q.next().await.map(|(k, _)| k), Some("b"));
    assert!(q.is_empty());
}

#[tokio::test(start_paused = true)]
async fn a_key_added_while_active_comes_back_after_done_not_before() {
    let q = queue();
    q.add("a");
    let (k, _) = q.next().await.expect("a");
    q.add("a");
    // Not handed to a second worker while the first holds it.
    assert!(q.is_empty());
    assert_eq!(q.done(&k, true), None);
    assert_eq!(q.next().await.map(|(k, _)| k), Some("a"));
}

#[tokio::test(start_paused = true)]
async fn failures_back_off_exponentially_up_to_the_cap_and_reset_on_success() {
    let q = queue();
    let mut delays = Vec::new();
    q.add("a");
    for _ in 0..4 {
        let (k, _) = q.next().await.expect("a");
        delays.push(q.done(&k, false).expect("a retry"));
    }
    assert_eq!(delays, [10, 20, 40, 40].map(Duration::from_millis).to_vec());
    let (k, _) = q.next().await.expect("a comes back after its backoff");
    assert_eq!(q.done(&k, true), None);
    q.add("a");
    let (k, _) = q.next().await.expect("a");
    assert_eq!(q.done(&k, false), Some(Duration::from_millis(10)));
}

#[tokio::test(start_paused = true)]
async fn close_wakes_waiting_workers() {
    let q = queue();
    let waiter = {
        let q = q.clone();
        tokio::spawn(async move { q.next().await })
    };
    tokio::task::yield_now().await;
    q.close();
    assert!(waiter.await.expect("join").is_none());
}
