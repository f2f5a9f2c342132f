use ipnet::IpNet;
use k8s_openapi::api::networking::v1 as networking;

use crate::convert::{cidr, convert_all, required};
use crate::{Error, ObjectKey, Result};

const KIND: &str = "ServiceCIDR";

/// A `networking.k8s.io/v1` ServiceCIDR: ranges ClusterIPs are allocated from. The proxy drops
/// traffic to addresses inside them that no Service holds; the allocator allocates from them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServiceCidr {
    /// Cluster-scoped: an empty namespace.
    pub key: ObjectKey,
    /// One per family at most.
    pub cidrs: Vec<IpNet>,
}

impl TryFrom<&networking::ServiceCIDR> for ServiceCidr {
    type Error = Error;

    fn try_from(obj: &networking::ServiceCIDR) -> Result<Self> {
        let name = required(KIND, "metadata.name", &obj.metadata.name)?;
        let raw = obj
            .spec
            .as_ref()
            .and_then(|s| s.cidrs.as_deref())
            .unwrap_or_default();
        Ok(ServiceCidr {
            key: ObjectKey::new("", name),
            cidrs: convert_all(raw, |c| cidr(KIND, "spec.cidrs", c))?,
        })
    }
}

#[cfg(test)]
mod tests {
    use k8s_openapi::api::networking::v1::{ServiceCIDR, ServiceCIDRSpec};
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

    use super::*;

    fn raw(cidrs: &[&str]) -> ServiceCIDR {
        ServiceCIDR {
            metadata: ObjectMeta {
                name: Some("kubernetes".into()),
                ..Default::default()
            },
            spec: Some(ServiceCIDRSpec {
                cidrs: Some(cidrs.iter().map(|c| (*c).to_owned()).collect()),
            }),
            status: None,
        }
    }

    #[test]
    fn converts_and_rejects_bad_ranges() {
        let ok = ServiceCidr::try_from(&raw(&["10.96.0.0/16", "fd00:10:96::/112"])).expect("valid");
        assert_eq!(ok.key, ObjectKey::new("", "kubernetes"));
        assert_eq!(ok.cidrs.len(), 2);
        let bad = ServiceCidr::try_from(&raw(&["10.96.0.0/99"])).expect_err("invalid");
        assert_eq!(bad.reason(), "invalid_cidr");
    }
}
