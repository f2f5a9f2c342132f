//! The controller's writes, behind a small trait: [`ApiWriter`] sends them to the API server
//! through one controller's client (and rate limiter); [`FakeWriter`] keeps objects in memory so
//! the sync paths (no-op, stale, conflict, terminating namespace) are tested without a server.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use k8s_openapi::api::core::v1::Endpoints;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::api::{Api, DeleteParams, PostParams, Preconditions};
use kube::core::Status;
use kube::{Client, Resource};
use svcplane_model::ObjectKey;
use tokio::sync::Semaphore;

pub type WriteResult<T> = Result<T, kube::Error>;

/// What one controller writes. Deletes of objects already gone succeed.
#[async_trait]
pub trait Writer: Send + Sync {
    async fn create_endpoints(&self, ep: &Endpoints) -> WriteResult<Endpoints>;
    async fn replace_endpoints(&self, ep: &Endpoints) -> WriteResult<Endpoints>;
    async fn delete_endpoints(&self, key: &ObjectKey) -> WriteResult<()>;
    async fn create_slice(&self, slice: &EndpointSlice) -> WriteResult<EndpointSlice>;
    async fn replace_slice(&self, slice: &EndpointSlice) -> WriteResult<EndpointSlice>;
    /// Deletes the slice only if it still has `uid` (a slice re-created under the same name
    /// is someone else's business).
    async fn delete_slice(&self, key: &ObjectKey, uid: Option<&str>) -> WriteResult<()>;
}

/// Writes through one API client.
#[derive(Clone)]
pub struct ApiWriter {
    client: Client,
}

impl std::fmt::Debug for ApiWriter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ApiWriter").finish_non_exhaustive()
    }
}

impl ApiWriter {
    pub fn new(client: Client) -> Self {
        Self { client }
    }

    fn api<K>(&self, namespace: Option<&str>) -> Api<K>
    where
        K: Resource<Scope = k8s_openapi::NamespaceResourceScope>,
        K::DynamicType: Default,
    {
        Api::namespaced(self.client.clone(), namespace.unwrap_or_default())
    }
}

fn gone_is_fine(result: WriteResult<()>) -> WriteResult<()> {
    match result {
        Err(kube::Error::Api(s)) if s.is_not_found() => Ok(()),
        other => other,
    }
}

#[async_trait]
impl Writer for ApiWriter {
    async fn create_endpoints(&self, ep: &Endpoints) -> WriteResult<Endpoints> {
        let api: Api<Endpoints> = self.api(ep.metadata.namespace.as_deref());
        api.create(&PostParams::default(), ep).await
    }

    async fn replace_endpoints(&self, ep: &Endpoints) -> WriteResult<Endpoints> {
        let api: Api<Endpoints> = self.api(ep.metadata.namespace.as_deref());
        let name = ep.metadata.name.as_deref().unwrap_or_default();
        api.replace(name, &PostParams::default(), ep).await
    }

    async fn delete_endpoints(&self, key: &ObjectKey) -> WriteResult<()> {
        let api: Api<Endpoints> = self.api(Some(&key.namespace));
        gone_is_fine(
            api.delete(&key.name, &DeleteParams::default())
                .await
                .map(drop),
        )
    }

    async fn create_slice(&self, slice: &EndpointSlice) -> WriteResult<EndpointSlice> {
        let api: Api<EndpointSlice> = self.api(slice.metadata.namespace.as_deref());
        api.create(&PostParams::default(), slice).await
    }

    async fn replace_slice(&self, slice: &EndpointSlice) -> WriteResult<EndpointSlice> {
        let api: Api<EndpointSlice> = self.api(slice.metadata.namespace.as_deref());
        let name = slice.metadata.name.as_deref().unwrap_or_default();
        api.replace(name, &PostParams::default(), slice).await
    }

    async fn delete_slice(&self, key: &ObjectKey, uid: Option<&str>) -> WriteResult<()> {
        let api: Api<EndpointSlice> = self.api(Some(&key.namespace));
        let dp = DeleteParams {
            preconditions: Some(Preconditions {
                uid: uid.map(str::to_owned),
                resource_version: None,
            }),
            ..DeleteParams::default()
        };
        gone_is_fine(api.delete(&key.name, &dp).await.map(drop))
    }
}

/// One write as [`FakeWriter`] saw it: verb, resource, `namespace/name`.
pub type Call = (&'static str, &'static str, String);

#[derive(Debug, Default)]
struct FakeState {
    endpoints: HashMap<ObjectKey, Endpoints>,
    slices: HashMap<ObjectKey, EndpointSlice>,
    calls: Vec<Call>,
    /// Errors the next writes fail with, in order.
    failures: Vec<Status>,
    /// Namespaces being deleted: creates there fail as the API server fails them.
    terminating: Vec<String>,
    next: u64,
}

/// An in-memory API for one controller's writes: assigns uids, resource versions and
/// generations, rejects stale resource versions with 409 as the API server does, and can be
/// told to fail or to hold writes.
#[derive(Debug, Clone, Default)]
pub struct FakeWriter {
    state: Arc<Mutex<FakeState>>,
    /// When set, every write first takes a permit: tests hold a sync in the middle of a write.
    gate: Arc<Mutex<Option<Arc<Semaphore>>>>,
    /// Writes begun, held or not.
    entered: Arc<std::sync::atomic::AtomicUsize>,
}

fn status(code: u16, reason: &str, message: &str) -> Status {
    Status::failure(message, reason).with_code(code)
}

impl FakeWriter {
    pub fn new() -> Self {
        Self::default()
    }

    fn state(&self) -> std::sync::MutexGuard<'_, FakeState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Every write so far.
    pub fn calls(&self) -> Vec<Call> {
        self.state().calls.clone()
    }

    /// The next write fails with this status (queued behind earlier ones).
    pub fn fail_next(&self, code: u16, reason: &str, message: &str) {
        self.state().failures.push(status(code, reason, message));
    }

    pub fn terminate_namespace(&self, namespace: &str) {
        self.state().terminating.push(namespace.to_owned());
    }

    pub fn endpoints(&self, key: &ObjectKey) -> Option<Endpoints> {
        self.state().endpoints.get(key).cloned()
    }

    pub fn slices(&self) -> Vec<EndpointSlice> {
        self.state().slices.values().cloned().collect()
    }

    /// Someone else deletes the slice `key` on the server.
    pub fn remove_slice(&self, key: &ObjectKey) {
        self.state().slices.remove(key);
    }

    /// From now on writes wait for permits handed out by the returned semaphore.
    pub fn hold(&self) -> Arc<Semaphore> {
        let gate = Arc::new(Semaphore::new(0));
        *self.gate.lock().unwrap_or_else(|e| e.into_inner()) = Some(gate.clone());
        gate
    }

    /// Writes begun so far, including those waiting at [`FakeWriter::hold`]'s gate.
    pub fn entered(&self) -> usize {
        self.entered.load(std::sync::atomic::Ordering::SeqCst)
    }

    async fn enter(&self) {
        self.entered
            .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        let gate = self.gate.lock().unwrap_or_else(|e| e.into_inner()).clone();
        if let Some(gate) = gate
            && let Ok(permit) = gate.acquire().await
        {
            permit.forget();
        }
    }

    /// Records the call; returns the injected failure, if one is due.
    fn begin(
        &self,
        verb: &'static str,
        resource: &'static str,
        key: &ObjectKey,
    ) -> WriteResult<()> {
        let mut s = self.state();
        s.calls.push((verb, resource, key.to_string()));
        if !s.failures.is_empty() {
            return Err(kube::Error::Api(Box::new(s.failures.remove(0))));
        }
        if verb == "create" && s.terminating.iter().any(|ns| **ns == *key.namespace) {
            return Err(kube::Error::Api(Box::new(status(
                403,
                "Forbidden",
                &format!(
                    "{resource} \"{}\" is forbidden: unable to create new content in namespace {} because it is being terminated",
                    key.name, key.namespace
                ),
            ))));
        }
        Ok(())
    }
}

/// The API server's side of a write: resource version, generation, uid; 409 on a stale one.
fn store<K>(
    map: &mut HashMap<ObjectKey, K>,
    next: &mut u64,
    obj: &K,
    create: bool,
) -> WriteResult<K>
where
    K: Resource + Clone + k8s_openapi::Metadata<Ty = ObjectMeta>,
{
    let key = ObjectKey::of(obj);
    let current = map.get(&key);
    let conflict = match (create, current) {
        (true, Some(_)) => Some(status(409, "AlreadyExists", "already exists")),
        (false, None) => Some(status(404, "NotFound", "not found")),
        (false, Some(c)) if c.meta().resource_version != obj.meta().resource_version => {
            Some(status(
                409,
                "Conflict",
                "the object has been modified; please apply your changes to the latest version and try again",
            ))
        }
        _ => None,
    };
    if let Some(s) = conflict {
        return Err(kube::Error::Api(Box::new(s)));
    }
    *next += 1;
    let mut written = obj.clone();
    let meta = written.meta_mut();
    meta.resource_version = Some(next.to_string());
    match current {
        Some(c) => {
            meta.uid = c.meta().uid.clone();
            meta.generation = Some(c.meta().generation.unwrap_or(1) + 1);
        }
        None => {
            meta.uid = Some(format!("uid-{next}"));
            meta.generation = Some(1);
        }
    }
    map.insert(key, written.clone());
    Ok(written)
}

#[async_trait]
impl Writer for FakeWriter {
    async fn create_endpoints(&self, ep: &Endpoints) -> WriteResult<Endpoints> {
        self.enter().await;
        self.begin("create", "endpoints", &ObjectKey::of(ep))?;
        let s = &mut *self.state();
        store(&mut s.endpoints, &mut s.next, ep, true)
    }

    async fn replace_endpoints(&self, ep: &Endpoints) -> WriteResult<Endpoints> {
        self.enter().await;
        self.begin("update", "endpoints", &ObjectKey::of(ep))?;
        let s = &mut *self.state();
        store(&mut s.endpoints, &mut s.next, ep, false)
    }

    async fn delete_endpoints(&self, key: &ObjectKey) -> WriteResult<()> {
        self.enter().await;
        self.begin("delete", "endpoints", key)?;
        self.state().endpoints.remove(key);
        Ok(())
    }

    async fn create_slice(&self, slice: &EndpointSlice) -> WriteResult<EndpointSlice> {
        self.enter().await;
        let mut slice = slice.clone();
        if slice.metadata.name.is_none() {
            // generateName, as the API server fills it in.
            let prefix = slice.metadata.generate_name.clone().unwrap_or_default();
            let n = self.state().next + 1;
            slice.metadata.name = Some(format!("{prefix}{n}"));
        }
        self.begin("create", "endpointslices", &ObjectKey::of(&slice))?;
        let s = &mut *self.state();
        store(&mut s.slices, &mut s.next, &slice, true)
    }

    async fn replace_slice(&self, slice: &EndpointSlice) -> WriteResult<EndpointSlice> {
        self.enter().await;
        self.begin("update", "endpointslices", &ObjectKey::of(slice))?;
        let s = &mut *self.state();
        store(&mut s.slices, &mut s.next, slice, false)
    }

    async fn delete_slice(&self, key: &ObjectKey, uid: Option<&str>) -> WriteResult<()> {
        self.enter().await;
        self.begin("delete", "endpointslices", key)?;
        let mut s = self.state();
        let same = s
            .slices
            .get(key)
            .is_some_and(|c| uid.is_none() || c.metadata.uid.as_deref() == uid);
        if same {
            s.slices.remove(key);
        }
        Ok(())
    }
}
