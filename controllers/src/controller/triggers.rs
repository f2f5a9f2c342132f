//! The `endpoints.kubernetes.io/last-change-trigger-time` a write carries (upstream's
//! `TriggerTimeTracker`): on a Service's first sync, its creation time; afterwards the earliest
//! change (pod Ready transition, Service re-creation) not yet seen by the previous sync. Each
//! controller keeps its own, as upstream's do. Pure.

use std::collections::HashMap;
use std::sync::Arc;

use k8s_openapi::jiff::Timestamp;
use svcplane_model::{ObjectKey, Pod, Service};

#[derive(Debug, Default)]
pub struct TriggerTimes {
    services: HashMap<ObjectKey, Seen>,
}

/// What the last sync of a Service saw.
#[derive(Debug, Default)]
struct Seen {
    created: Option<Timestamp>,
    pods: HashMap<Box<str>, Timestamp>,
}

impl TriggerTimes {
    /// The trigger time of a sync of `svc` that sees `pods`, and remember what it saw.
    pub fn observe(&mut self, svc: &Service, pods: &[Arc<Pod>]) -> Option<Timestamp> {
        let first = !self.services.contains_key(&svc.key);
        let seen = self.services.entry(svc.key.clone()).or_default();
        let mut earliest: Option<Timestamp> = None;
        let mut consider = |t: Timestamp| earliest = Some(earliest.map_or(t, |e| e.min(t)));
        if svc.created != seen.created
            && let Some(c) = svc.created
        {
            consider(c);
        }
        let mut pods_now = HashMap::with_capacity(pods.len());
        for pod in pods {
            if let Some(t) = pod.ready_since {
                if seen.pods.get(&pod.key.name) != Some(&t) {
                    consider(t);
                }
                pods_now.insert(pod.key.name.clone(), t);
            }
        }
        seen.created = svc.created;
        seen.pods = pods_now;
        if first { svc.created } else { earliest }
    }

    /// The Service is gone.
    pub fn forget(&mut self, key: &ObjectKey) {
        self.services.remove(key);
    }
}

#[cfg(test)]
mod tests;
