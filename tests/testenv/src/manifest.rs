//! Applying the YAML manifests in `deploy/` to a test control plane, as `kubectl apply
//! --server-side --validate=strict` would.

use kube::Client;
use kube::api::{Api, DynamicObject, GroupVersionKind, Patch, PatchParams};
use kube::discovery::{Scope, pinned_kind};

use crate::{Error, Result};

/// Applies every document of `yaml` (server-side apply; unknown fields are an error) and
/// returns the objects as written.
pub async fn apply(client: &Client, yaml: &str) -> Result<Vec<DynamicObject>> {
    let docs: Vec<DynamicObject> = serde_saphyr::from_multiple(yaml)
        .map_err(|e| Error::Precondition(format!("manifest does not parse: {e}")))?;
    let params = PatchParams::apply("svcplane-testenv").validation_strict();
    let mut written = Vec::with_capacity(docs.len());
    for doc in &docs {
        let types = doc
            .types
            .as_ref()
            .ok_or_else(|| Error::Precondition("a document without apiVersion/kind".into()))?;
        let gvk = GroupVersionKind::try_from(types)
            .map_err(|e| Error::Precondition(format!("apiVersion {}: {e}", types.api_version)))?;
        let (resource, caps) = pinned_kind(client, &gvk).await?;
        let name = doc
            .metadata
            .name
            .as_deref()
            .ok_or_else(|| Error::Precondition(format!("a {} without a name", gvk.kind)))?;
        let api: Api<DynamicObject> = match caps.scope {
            Scope::Namespaced => {
                let ns = doc.metadata.namespace.as_deref().ok_or_else(|| {
                    Error::Precondition(format!("{} {name} does not say its namespace", gvk.kind))
                })?;
                Api::namespaced_with(client.clone(), ns, &resource)
            }
            Scope::Cluster => Api::all_with(client.clone(), &resource),
        };
        written.push(api.patch(name, &params, &Patch::Apply(doc)).await?);
    }
    Ok(written)
}
