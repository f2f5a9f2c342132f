//! Watches every controller runs the same way.

use futures::{Stream, StreamExt};
use kube::runtime::WatchStreamExt;
use kube::runtime::watcher::{self, Event};
use kube::{Api, Resource};

/// A watch that never ends: errors are logged and retried with kube's default backoff, and
/// re-lists arrive as `Init`/`InitApply`/`InitDone` events for the caller to reconcile.
pub fn watch<K>(api: Api<K>, config: watcher::Config) -> impl Stream<Item = Event<K>>
where
    K: Resource + Clone + std::fmt::Debug + serde::de::DeserializeOwned + Send + 'static,
    K::DynamicType: Default,
{
    watcher::watcher(api, config)
        .default_backoff()
        .filter_map(|res| async move {
            res.map_err(|error| tracing::warn!(%error, "watch failed; retrying with backoff"))
                .ok()
        })
}

/// Parses the durations flags take: `500ms`, `5s` (or a bare number of seconds), `5m`, `1h`.
pub fn parse_duration(s: &str) -> Result<std::time::Duration, String> {
    use std::time::Duration;
    let (number, unit) = s.split_at(s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len()));
    let n: u64 = number
        .parse()
        .map_err(|_| format!("{s:?} is not a duration like 500ms, 5s, 5m or 1h"))?;
    match unit {
        "ms" => Ok(Duration::from_millis(n)),
        "s" | "" => Ok(Duration::from_secs(n)),
        "m" => Ok(Duration::from_secs(n * 60)),
        "h" => Ok(Duration::from_secs(n * 3600)),
        _ => Err(format!("{s:?} is not a duration like 500ms, 5s, 5m or 1h")),
    }
}
