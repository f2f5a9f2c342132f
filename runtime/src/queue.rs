//! A keyed work queue: each key is pending at most once, never processed by two workers at
//! once (a key added while it is being processed comes back after), and failed keys return
//! after a per-key exponential backoff.

use std::collections::{HashMap, HashSet, VecDeque};
use std::hash::Hash;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::Notify;

#[derive(Debug)]
struct State<K> {
    ready: VecDeque<(K, Instant)>,
    pending: HashSet<K>,
    active: HashSet<K>,
    /// Added while active: queue again when done.
    dirty: HashSet<K>,
    failures: HashMap<K, u32>,
    closed: bool,
}

/// Cloning shares the queue.
#[derive(Debug)]
pub struct Queue<K> {
    state: Arc<Mutex<State<K>>>,
    notify: Arc<Notify>,
    base: Duration,
    cap: Duration,
}

impl<K> Clone for Queue<K> {
    fn clone(&self) -> Self {
        Self {
            state: self.state.clone(),
            notify: self.notify.clone(),
            base: self.base,
            cap: self.cap,
        }
    }
}

impl<K: Clone + Eq + Hash + Send + 'static> Queue<K> {
    /// Retries wait `base * 2^(failures-1)`, at most `cap`.
    pub fn new(base: Duration, cap: Duration) -> Self {
        Self {
            state: Arc::new(Mutex::new(State {
                ready: VecDeque::new(),
                pending: HashSet::new(),
                active: HashSet::new(),
                dirty: HashSet::new(),
                failures: HashMap::new(),
                closed: false,
            })),
            notify: Arc::new(Notify::new()),
            base,
            cap,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State<K>> {
        // A panicking worker must not wedge the queue; its state is still consistent.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Queues `key` now, unless it is already waiting.
    pub fn add(&self, key: K) {
        let mut s = self.lock();
        if s.closed {
            return;
        }
        if s.active.contains(&key) {
            s.dirty.insert(key);
            return;
        }
        if s.pending.insert(key.clone()) {
            s.ready.push_back((key, Instant::now()));
            drop(s);
            self.notify.notify_one();
        }
    }

    /// Queues `key` after `delay`.
    pub fn add_after(&self, key: K, delay: Duration) {
        let queue = self.clone();
        tokio::spawn(async move {
            tokio::time::sleep(delay).await;
            queue.add(key);
        });
    }

    /// The next key and when it was queued; `None` once closed.
    pub async fn next(&self) -> Option<(K, Instant)> {
        loop {
            let notified = self.notify.notified();
            {
                let mut s = self.lock();
                if s.closed {
                    return None;
                }
                if let Some((key, since)) = s.ready.pop_front() {
                    s.pending.remove(&key);
                    s.active.insert(key.clone());
                    if !s.ready.is_empty() {
                        self.notify.notify_one();
                    }
                    return Some((key, since));
                }
            }
            notified.await;
        }
    }

    /// Finishes `key`: on success its failures are forgotten; on failure it comes back after
    /// its backoff. Returns the backoff used, if any.
    pub fn done(&self, key: &K, ok: bool) -> Option<Duration> {
        let mut s = self.lock();
        s.active.remove(key);
        let retry = if ok {
            s.failures.remove(key);
            None
        } else {
            let n = s.failures.entry(key.clone()).or_insert(0);
            *n += 1;
            let factor = 1u32
                .checked_shl(n.saturating_sub(1).min(31))
                .unwrap_or(u32::MAX);
            Some(self.base.saturating_mul(factor).min(self.cap))
        };
        let again = s.dirty.remove(key);
        drop(s);
        if again {
            self.add(key.clone());
        }
        if let Some(delay) = retry {
            self.add_after(key.clone(), delay);
        }
        retry
    }

    /// Keys waiting (not counting those being processed).
    pub fn len(&self) -> usize {
        self.lock().ready.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Stops handing out keys; waiting workers get `None`.
    pub fn close(&self) {
        self.lock().closed = true;
        self.notify.notify_waiters();
    }
}

#[cfg(test)]
mod tests;
