use std::collections::BTreeMap;

/// Labels as the model keeps them: sorted by key, boxed, immutable.
///
/// Every Service and Pod in every cache carries labels, so the representation matters: a
/// `BTreeMap` allocates whole nodes (room for eleven pairs) even for one label. A sorted slice
/// costs exactly its pairs and still answers lookups by binary search.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Default)]
pub struct Labels(Box<[(Box<str>, Box<str>)]>);

impl Labels {
    pub fn get(&self, key: &str) -> Option<&str> {
        self.0
            .binary_search_by(|(k, _)| (**k).cmp(key))
            .ok()
            .map(|i| &*self.0[i].1)
    }

    pub fn iter(&self) -> impl Iterator<Item = (&str, &str)> {
        self.0.iter().map(|(k, v)| (&**k, &**v))
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// The API's map form, for writing objects.
    pub fn to_map(&self) -> BTreeMap<String, String> {
        self.iter()
            .map(|(k, v)| (k.to_owned(), v.to_owned()))
            .collect()
    }
}

impl From<&BTreeMap<String, String>> for Labels {
    fn from(map: &BTreeMap<String, String>) -> Self {
        // A BTreeMap iterates in key order with unique keys: already sorted.
        Labels(
            map.iter()
                .map(|(k, v)| (k.as_str().into(), v.as_str().into()))
                .collect(),
        )
    }
}

impl<K: Into<Box<str>>, V: Into<Box<str>>> FromIterator<(K, V)> for Labels {
    /// Sorts by key; for a repeated key the last value wins, as in a map.
    fn from_iter<I: IntoIterator<Item = (K, V)>>(iter: I) -> Self {
        let mut pairs: Vec<(Box<str>, Box<str>)> = iter
            .into_iter()
            .map(|(k, v)| (k.into(), v.into()))
            .collect();
        pairs.reverse();
        pairs.sort_by(|a, b| a.0.cmp(&b.0));
        pairs.dedup_by(|later, earlier| later.0 == earlier.0);
        Labels(pairs.into_boxed_slice())
    }
}

/// An equality-based label selector, as Services use (`spec.selector`).
///
/// An empty selector is never built: a Service with no or an empty selector has `None`, which
/// upstream treats as "endpoints are managed by someone else".
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Selector(Labels);

impl Selector {
    /// `None` for no labels, as the API round-trips `selector: {}` to no selector.
    pub fn new(labels: Labels) -> Option<Self> {
        (!labels.is_empty()).then_some(Self(labels))
    }

    /// True when every key of the selector is present in `labels` with the same value.
    pub fn matches(&self, labels: &Labels) -> bool {
        self.0.iter().all(|(k, v)| labels.get(k) == Some(v))
    }

    pub fn labels(&self) -> &Labels {
        &self.0
    }
}

#[cfg(test)]
mod tests;
