//! Allocation policy: which ServiceCIDRs and which NodePort sub-range a Service's dynamic picks
//! come from, chosen by namespace and Service labels. Loaded from a YAML file (`--policy-file`):
//!
//! ```yaml
//! rules:
//! - name: team-a                  # for messages and metrics
//!   namespaces: [team-a, team-a-ci]   # empty or absent: every namespace
//!   serviceSelector: {tier: edge}     # matchLabels; empty or absent: every Service
//!   serviceCIDRs: [team-a]            # ServiceCIDR names, tried in order; absent: all
//!   nodePortRange: 31000-31999        # inside --service-node-port-range; absent: all of it
//! ```
//!
//! The first rule that matches wins; no match means upstream's behaviour (every ServiceCIDR,
//! the whole NodePort range). A policy only steers *dynamic* picks: a Service that asks for a
//! specific IP or port gets it if it is free and inside the cluster's ranges.

use std::collections::BTreeMap;
use std::path::Path;

use serde::Deserialize;

use crate::ranges::PortRange;

#[derive(Debug, Clone, Default, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct Policy {
    #[serde(default)]
    pub rules: Vec<Rule>,
}

#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Rule {
    pub name: String,
    #[serde(default)]
    pub namespaces: Vec<String>,
    #[serde(default)]
    pub service_selector: BTreeMap<String, String>,
    #[serde(default, rename = "serviceCIDRs")]
    pub service_cidrs: Vec<String>,
    #[serde(default, deserialize_with = "port_range")]
    pub node_port_range: Option<PortRange>,
}

fn port_range<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<PortRange>, D::Error> {
    let s: Option<String> = Option::deserialize(d)?;
    s.map(|s| s.parse().map_err(serde::de::Error::custom))
        .transpose()
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("reading policy file {path}")]
    Read {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("policy file {path}: {message}")]
    Parse { path: String, message: String },
    #[error(
        "policy rule {rule}: nodePortRange {range} is not inside --service-node-port-range {global}"
    )]
    OutsideRange {
        rule: String,
        range: PortRange,
        global: PortRange,
    },
}

impl Policy {
    pub fn load(path: &Path, node_ports: PortRange) -> Result<Self, Error> {
        let text = std::fs::read_to_string(path).map_err(|source| Error::Read {
            path: path.display().to_string(),
            source,
        })?;
        Self::parse(&text, node_ports).map_err(|e| match e {
            Error::Parse { message, .. } => Error::Parse {
                path: path.display().to_string(),
                message,
            },
            other => other,
        })
    }

    pub fn parse(text: &str, node_ports: PortRange) -> Result<Self, Error> {
        let policy: Policy = serde_saphyr::from_str(text).map_err(|e| Error::Parse {
            path: String::new(),
            message: e.to_string(),
        })?;
        for rule in &policy.rules {
            if let Some(range) = rule.node_port_range
                && !node_ports.covers(range)
            {
                return Err(Error::OutsideRange {
                    rule: rule.name.clone(),
                    range,
                    global: node_ports,
                });
            }
        }
        Ok(policy)
    }

    /// The first rule for a Service in `namespace` with `labels`.
    pub fn rule_for(&self, namespace: &str, labels: &BTreeMap<String, String>) -> Option<&Rule> {
        self.rules.iter().find(|r| {
            (r.namespaces.is_empty() || r.namespaces.iter().any(|n| n == namespace))
                && r.service_selector
                    .iter()
                    .all(|(k, v)| labels.get(k) == Some(v))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn first_matching_rule_wins() {
        let p = Policy::parse(
            "rules:\n- name: edge\n  namespaces: [a]\n  serviceSelector: {tier: edge}\n  nodePortRange: 31000-31009\n- name: a\n  namespaces: [a]\n  serviceCIDRs: [extra]\n",
            PortRange::DEFAULT,
        )
        .expect("valid");
        let edge = BTreeMap::from([("tier".to_owned(), "edge".to_owned())]);
        let none = BTreeMap::new();
        assert_eq!(
            p.rule_for("a", &edge).map(|r| r.name.as_str()),
            Some("edge")
        );
        assert_eq!(
            p.rule_for("a", &edge).and_then(|r| r.node_port_range),
            Some(PortRange {
                first: 31000,
                last: 31009
            })
        );
        assert_eq!(p.rule_for("a", &none).map(|r| r.name.as_str()), Some("a"));
        assert_eq!(
            p.rule_for("a", &none).map(|r| r.service_cidrs.clone()),
            Some(vec!["extra".to_owned()])
        );
        assert!(p.rule_for("b", &edge).is_none());
    }

    #[test]
    fn bad_files_are_refused_with_a_reason() {
        let outside = Policy::parse(
            "rules:\n- name: x\n  nodePortRange: 20000-20010\n",
            PortRange::DEFAULT,
        );
        assert!(
            matches!(outside, Err(Error::OutsideRange { .. })),
            "{outside:?}"
        );
        let unknown = Policy::parse("rules:\n- name: x\n  nodePorts: 1\n", PortRange::DEFAULT);
        assert!(matches!(unknown, Err(Error::Parse { .. })), "{unknown:?}");
        let range = Policy::parse(
            "rules:\n- name: x\n  nodePortRange: banana\n",
            PortRange::DEFAULT,
        );
        assert!(matches!(range, Err(Error::Parse { .. })), "{range:?}");
        assert_eq!(
            Policy::parse("", PortRange::DEFAULT)
                .map(|p| p.rules.len())
                .ok(),
            Some(0)
        );
    }
}
