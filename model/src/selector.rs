use std::collections::BTreeMap;

/// An equality-based label selector, as Services use (`spec.selector`).
///
/// An empty selector is never built: a Service with no or an empty selector has `None`, which
/// upstream treats as "endpoints are managed by someone else".
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Selector(BTreeMap<String, String>);

impl Selector {
    /// `None` for an empty map, as the API round-trips `selector: {}` to no selector.
    pub fn from_map(labels: BTreeMap<String, String>) -> Option<Self> {
        (!labels.is_empty()).then_some(Self(labels))
    }

    /// True when every key of the selector is present in `labels` with the same value.
    pub fn matches(&self, labels: &BTreeMap<String, String>) -> bool {
        self.0.iter().all(|(k, v)| labels.get(k) == Some(v))
    }

    pub fn as_map(&self) -> &BTreeMap<String, String> {
        &self.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn map(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn matching_table() {
        let cases: &[(&[(&str, &str)], &[(&str, &str)], bool)] = &[
            (&[("app", "web")], &[("app", "web")], true),
            (&[("app", "web")], &[("app", "web"), ("tier", "fe")], true),
            (&[("app", "web"), ("tier", "fe")], &[("app", "web")], false),
            (&[("app", "web")], &[("app", "db")], false),
            (&[("app", "web")], &[], false),
            (&[("app", "")], &[("app", "")], true),
            (&[("app", "")], &[], false),
        ];
        for (sel, labels, want) in cases {
            let sel = Selector::from_map(map(sel)).expect("non-empty selector");
            assert_eq!(sel.matches(&map(labels)), *want, "{sel:?} vs {labels:?}");
        }
    }

    #[test]
    fn empty_selector_is_none() {
        assert_eq!(Selector::from_map(BTreeMap::new()), None);
    }
}
