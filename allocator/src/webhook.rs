//! The admission webhook: AdmissionReview in, AdmissionReview out, and the shared state the
//! watches keep current. Every request is answered; nothing a client sends can panic it.
//!
//! - A body that is not an AdmissionReview with a request gets HTTP 400 and a plain-text
//!   reason (the API server then applies the webhook's `failurePolicy`).
//! - A request about anything but a Service create or update, or whose Service cannot be
//!   read, is admitted unchanged: the API server's registry allocates as it always does.
//! - A replica that is not the leader, or has not synced its watches, admits unchanged too:
//!   it cannot know what the leader has handed out, and the registry stays the arbiter.

use std::collections::HashMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use k8s_openapi::api::core::v1::Service;
use kube::core::DynamicObject;
use kube::core::admission::{AdmissionRequest, AdmissionResponse, AdmissionReview, Operation};

use crate::decide::{self, Context, Decision, Request, Value_};
use crate::index::{Index, Owner, Owns};
use crate::metrics::Metrics;
use crate::policy::Policy;
use crate::sticky::{Remembered, Sticky, unix_now};

/// What the webhook and the watches share.
#[derive(Debug)]
pub struct Allocator {
    pub index: Mutex<Index>,
    pub sticky: Mutex<Sticky>,
    /// Every live Service's values by port name, remembered on delete for stickiness.
    pub live: Mutex<HashMap<Owner, Remembered>>,
    pub policy: Policy,
    pub metrics: Metrics,
    leading: AtomicBool,
    synced: AtomicBool,
}

/// An HTTP answer: status and body (JSON for reviews, text for errors).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Answer {
    pub status: u16,
    pub body: Vec<u8>,
    pub json: bool,
}

impl Allocator {
    pub fn new(index: Index, sticky: Sticky, policy: Policy, metrics: Metrics) -> Self {
        Self {
            index: Mutex::new(index),
            sticky: Mutex::new(sticky),
            live: Mutex::new(HashMap::new()),
            policy,
            metrics,
            leading: AtomicBool::new(false),
            synced: AtomicBool::new(false),
        }
    }

    pub fn set_leading(&self, leading: bool) {
        self.leading.store(leading, Ordering::Release);
        self.metrics.leader.set(i64::from(leading));
    }

    pub fn set_synced(&self, synced: bool) {
        self.synced.store(synced, Ordering::Release);
    }

    pub fn is_leading(&self) -> bool {
        self.leading.load(Ordering::Acquire)
    }

    pub fn is_synced(&self) -> bool {
        self.synced.load(Ordering::Acquire)
    }

    /// Records a Service as the watch reports it (`None`: deleted).
    pub fn apply_service(&self, owner: &Owner, svc: Option<&Service>) {
        lock(&self.index).apply_service(owner, svc);
        let mut live = lock(&self.live);
        match svc {
            Some(svc) => {
                if let Some(r) = Remembered::of(svc, 0) {
                    live.insert(owner.clone(), r);
                } else {
                    live.remove(owner);
                }
                lock(&self.sticky).forget(owner);
            }
            None => {
                if let Some(mut r) = live.remove(owner) {
                    r.deleted_at = unix_now();
                    lock(&self.sticky).remember(r);
                }
            }
        }
    }

    /// Answers one webhook call.
    pub fn review(&self, body: &[u8]) -> Answer {
        let start = Instant::now();
        let answer = self.review_inner(body);
        self.metrics.duration.observe(start.elapsed().as_secs_f64());
        answer
    }

    fn review_inner(&self, body: &[u8]) -> Answer {
        let review: AdmissionReview<DynamicObject> = match serde_json::from_slice(body) {
            Ok(r) => r,
            Err(error) => return self.malformed(format!("not an AdmissionReview: {error}")),
        };
        let req: AdmissionRequest<DynamicObject> = match review.try_into() {
            Ok(r) => r,
            Err(_) => return self.malformed("the AdmissionReview carries no request".to_owned()),
        };
        let op = match req.operation {
            Operation::Create => "create",
            Operation::Update => "update",
            _ => return self.respond(&req, "other", "unchanged", AdmissionResponse::from(&req)),
        };
        let resp = AdmissionResponse::from(&req);
        if !req.resource.group.is_empty()
            || req.resource.resource != "services"
            || req.sub_resource.is_some()
        {
            return self.respond(&req, op, "unchanged", resp);
        }
        let decode = |o: &Option<DynamicObject>| -> Result<Option<Service>, String> {
            o.as_ref()
                .map(|o| {
                    serde_json::to_value(o)
                        .and_then(serde_json::from_value::<Service>)
                        .map_err(|e| e.to_string())
                })
                .transpose()
        };
        let (service, old) = match (decode(&req.object), decode(&req.old_object)) {
            (Ok(Some(s)), Ok(old)) => (s, old),
            (Ok(None), _) => {
                return self.undecodable(&req, op, resp, "the request has no object".to_owned());
            }
            (Err(e), _) | (_, Err(e)) => return self.undecodable(&req, op, resp, e),
        };
        if !self.is_leading() {
            return self.respond(&req, op, "not_leader", resp);
        }
        if !self.is_synced() {
            return self.respond(&req, op, "not_ready", resp);
        }
        let namespace = req
            .namespace
            .clone()
            .or_else(|| service.metadata.namespace.clone())
            .unwrap_or_else(|| "default".to_owned());
        let name = service
            .metadata
            .name
            .clone()
            .filter(|n| !n.is_empty())
            .or_else(|| Some(req.name.clone()).filter(|n| !n.is_empty()));
        let owner = match name {
            Some(name) => Owner::new(namespace.as_str(), name),
            None => crate::index::generated_owner(
                &namespace,
                service.metadata.generate_name.as_deref().unwrap_or(""),
            ),
        };
        let create = matches!(req.operation, Operation::Create);
        let labels = service.metadata.labels.clone().unwrap_or_default();
        let rule = self.policy.rule_for(&namespace, &labels);
        let sticky = if create && !owner.is_generated() {
            lock(&self.sticky).get(&owner, unix_now()).cloned()
        } else {
            None
        };
        let decision = {
            let mut idx = lock(&self.index);
            let request = Request {
                create,
                service: &service,
                old: old.as_ref(),
                owner: &owner,
                dry_run: req.dry_run,
            };
            let ctx = Context {
                rule,
                sticky: sticky.as_ref(),
            };
            decide::decide(&mut idx, request, ctx, &mut rand::rng(), Instant::now())
        };
        match decision {
            Decision::Unchanged => self.respond(&req, op, "unchanged", resp),
            Decision::Deny(denial) => {
                self.metrics
                    .denials
                    .with_label_values(&[denial.reason.as_str()])
                    .inc();
                tracing::info!(service = %owner, reason = denial.reason.as_str(), message = %denial.message, "denied");
                let mut resp = resp.deny(format!("svcplane-allocator: {}", denial.message));
                // 422 Invalid, as the registry's own refusals of the same requests.
                resp.result.code = 422;
                resp.result.reason = "Invalid".to_owned();
                self.respond(&req, op, "denied", resp)
            }
            Decision::Patch { ops, picks } => {
                if !req.dry_run {
                    for p in &picks {
                        self.metrics
                            .allocations
                            .with_label_values(&[p.kind.as_str(), p.how.as_str()])
                            .inc();
                    }
                }
                tracing::debug!(service = %owner, picks = ?picks.iter().map(|p| match &p.value { Value_::Ip(ip) => ip.to_string(), Value_::Port(port) => port.to_string() }).collect::<Vec<_>>(), "allocated");
                match serde_json::to_vec(&ops) {
                    Ok(patch) => self.respond_with(&req, op, "patched", resp, Some(patch)),
                    Err(error) => self.malformed(format!("encoding the patch: {error}")),
                }
            }
        }
    }

    fn respond(
        &self,
        req: &AdmissionRequest<DynamicObject>,
        op: &str,
        result: &str,
        resp: AdmissionResponse,
    ) -> Answer {
        self.respond_with(req, op, result, resp, None)
    }

    fn respond_with(
        &self,
        req: &AdmissionRequest<DynamicObject>,
        op: &str,
        result: &str,
        resp: AdmissionResponse,
        patch: Option<Vec<u8>>,
    ) -> Answer {
        self.metrics.requests.with_label_values(&[op, result]).inc();
        let mut review = resp.into_review();
        // Answer in the version we were asked in (v1; v1beta1 reviews are accepted too).
        review.types = req.types.clone();
        let encoded = serde_json::to_value(&review).map(|mut v| {
            // The API server reads `patch` as Go []byte: a base64 string.
            if let (Some(patch), Some(r)) =
                (patch, v.get_mut("response").and_then(|r| r.as_object_mut()))
            {
                r.insert("patch".into(), B64.encode(patch).into());
                r.insert("patchType".into(), "JSONPatch".into());
            }
            v
        });
        match encoded.and_then(|v| serde_json::to_vec(&v)) {
            Ok(body) => Answer {
                status: 200,
                body,
                json: true,
            },
            Err(error) => self.malformed(format!("encoding the response: {error}")),
        }
    }

    fn undecodable(
        &self,
        req: &AdmissionRequest<DynamicObject>,
        op: &str,
        mut resp: AdmissionResponse,
        error: String,
    ) -> Answer {
        tracing::warn!(uid = %req.uid, %error, "could not read the Service in an admission request; admitting it unchanged");
        resp.warnings = Some(vec![format!(
            "svcplane-allocator could not read this Service ({error}); the API server allocates for it"
        )]);
        self.respond(req, op, "undecodable", resp)
    }

    fn malformed(&self, reason: String) -> Answer {
        self.metrics
            .requests
            .with_label_values(&["unknown", "malformed"])
            .inc();
        tracing::warn!(%reason, "malformed admission request");
        Answer {
            status: 400,
            body: format!("{reason}\n").into_bytes(),
            json: false,
        }
    }
}

/// A poisoned lock only means another request panicked mid-decision, which the code never
/// does on purpose; the state is still consistent (reservations are plain inserts).
pub fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

#[cfg(test)]
mod tests;
