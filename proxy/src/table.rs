//! One family's table as this process last wrote it, kept as the entries each owner (a
//! Service, or the flags) claims, and the two ways of writing it: the whole table
//! ([`Table::full`], one transaction that replaces it) or only what changed since the last
//! commit ([`Table::partial`]: element deletions and additions, the chains whose rules changed
//! flushed and rewritten, sets of new dispatch groups declared, empty ones removed).
//!
//! A partial sync costs what changed, not what exists: re-planning a Service replaces its
//! claims, and only keys whose effective entry moved are written. Two owners may claim the
//! same key (two Services with one external IP and port); the lowest owner's entry is the one
//! written, so the table never holds two elements for one key and a transaction never fails on
//! a duplicate.

use std::collections::{BTreeMap, HashMap};
use std::fmt::Write as _;
use std::sync::LazyLock;

use svcplane_model::{AddressType, ObjectKey};

use crate::plan::Plan;
use crate::render::{
    self, Entry, Fragment, Globals, Object, ObjectName, SetName, Skeleton, TABLE, Words,
};

/// The owner of what the flags and the cluster-wide objects put into the table (ServiceCIDRs,
/// NodePort addresses). Sorts before every Service.
pub static GLOBAL_OWNER: LazyLock<ObjectKey> = LazyLock::new(|| ObjectKey::new("", ""));

/// Elements per `add element` statement: keeps lines a manageable size.
const CHUNK: usize = 1000;

type Key = (SetName, String);

#[derive(Debug)]
pub struct Table {
    family: AddressType,
    globals: Globals,
    /// Per key, every owner's entry, lowest owner first; the first is the effective one.
    claims: HashMap<Key, Vec<(ObjectKey, Entry)>>,
    objects: HashMap<ObjectName, Vec<(ObjectKey, Object)>>,
    /// What each owner claims.
    owned: HashMap<ObjectKey, (Vec<Key>, Vec<ObjectName>)>,
    /// Effective entries per set.
    sizes: BTreeMap<SetName, usize>,
    /// Keys and objects changed since the last commit, with their effective value then.
    changed: HashMap<Key, Option<Entry>>,
    changed_objects: HashMap<ObjectName, Option<Object>>,
    /// The skeleton in the kernel, when the kernel holds what this table last wrote.
    applied: Option<Skeleton>,
}

fn effective<V>(claims: Option<&Vec<(ObjectKey, V)>>) -> Option<&V> {
    claims.and_then(|c| c.first()).map(|(_, v)| v)
}

/// Adds or replaces `owner`'s claim in a lowest-owner-first list.
fn claim<V>(list: &mut Vec<(ObjectKey, V)>, owner: &ObjectKey, value: V) {
    match list.binary_search_by(|(o, _)| o.cmp(owner)) {
        Ok(i) => list[i].1 = value,
        Err(i) => list.insert(i, (owner.clone(), value)),
    }
}

fn unclaim<V>(list: &mut Vec<(ObjectKey, V)>, owner: &ObjectKey) {
    if let Ok(i) = list.binary_search_by(|(o, _)| o.cmp(owner)) {
        list.remove(i);
    }
}

impl Table {
    pub fn new(family: AddressType) -> Self {
        Table {
            family,
            globals: Globals::default(),
            claims: HashMap::new(),
            objects: HashMap::new(),
            owned: HashMap::new(),
            sizes: BTreeMap::new(),
            changed: HashMap::new(),
            changed_objects: HashMap::new(),
            applied: None,
        }
    }

    fn words(&self) -> Words {
        render::words(self.family)
    }

    /// Takes the flags and cluster-wide facts of `plan` (its per-Service parts are ignored).
    pub fn set_globals(&mut self, plan: &Plan) {
        self.globals = Globals::of(plan);
        let globals_only = Plan {
            family: plan.family,
            nodeport_ips: plan.nodeport_ips.clone(),
            service_cidrs: plan.service_cidrs.clone(),
            ..Plan::default()
        };
        self.set(GLOBAL_OWNER.clone(), render::fragment(&globals_only));
    }

    /// Replaces everything `owner` claims with `fragment` (empty: the owner is gone).
    pub fn set(&mut self, owner: ObjectKey, fragment: Fragment) {
        let (old_keys, old_objects) = self.owned.remove(&owner).unwrap_or_default();
        let new_keys: Vec<Key> = fragment.entries.keys().cloned().collect();
        let new_objects: Vec<ObjectName> = fragment.objects.keys().cloned().collect();
        for key in old_keys {
            if fragment.entries.contains_key(&key) {
                continue;
            }
            self.touch(&key);
            let was = self.claims.contains_key(&key);
            if let Some(list) = self.claims.get_mut(&key) {
                unclaim(list, &owner);
                if list.is_empty() {
                    self.claims.remove(&key);
                }
            }
            self.resize(&key, was);
        }
        for (key, entry) in fragment.entries {
            let unchanged = self.claims.get(&key).is_some_and(|list| {
                list.binary_search_by(|(o, _)| o.cmp(&owner))
                    .is_ok_and(|i| list[i].1 == entry)
            });
            if unchanged {
                continue;
            }
            self.touch(&key);
            let was = self.claims.contains_key(&key);
            claim(self.claims.entry(key.clone()).or_default(), &owner, entry);
            self.resize(&key, was);
        }
        for name in old_objects {
            if fragment.objects.contains_key(&name) {
                continue;
            }
            self.touch_object(&name);
            if let Some(list) = self.objects.get_mut(&name) {
                unclaim(list, &owner);
                if list.is_empty() {
                    self.objects.remove(&name);
                }
            }
        }
        for (name, object) in fragment.objects {
            let unchanged = self.objects.get(&name).is_some_and(|list| {
                list.binary_search_by(|(o, _)| o.cmp(&owner))
                    .is_ok_and(|i| list[i].1 == object)
            });
            if !unchanged {
                self.touch_object(&name);
                claim(self.objects.entry(name).or_default(), &owner, object);
            }
        }
        if !new_keys.is_empty() || !new_objects.is_empty() {
            self.owned.insert(owner, (new_keys, new_objects));
        }
    }

    /// Remembers `key`'s effective entry as of the last commit, before it first changes.
    fn touch(&mut self, key: &Key) {
        if !self.changed.contains_key(key) {
            let now = effective(self.claims.get(key)).cloned();
            self.changed.insert(key.clone(), now);
        }
    }

    fn touch_object(&mut self, name: &ObjectName) {
        if !self.changed_objects.contains_key(name) {
            let now = effective(self.objects.get(name)).cloned();
            self.changed_objects.insert(name.clone(), now);
        }
    }

    /// Keeps the per-set count of keys held, after `key` was (`was`) or was not held.
    fn resize(&mut self, key: &Key, was: bool) {
        match (was, self.claims.contains_key(key)) {
            (false, true) => *self.sizes.entry(key.0).or_default() += 1,
            (true, false) => {
                if let Some(n) = self.sizes.get_mut(&key.0) {
                    *n -= 1;
                    if *n == 0 {
                        self.sizes.remove(&key.0);
                    }
                }
            }
            _ => {}
        }
    }

    fn present(&self) -> Vec<SetName> {
        self.sizes.keys().copied().collect()
    }

    fn skeleton(&self) -> Skeleton {
        render::skeleton(self.family, &self.globals, &self.present())
    }

    /// Number of keys and objects that changed since the last commit.
    pub fn pending(&self) -> usize {
        self.changed.len() + self.changed_objects.len()
    }

    /// The whole table: replaced in one transaction.
    pub fn full(&self, out: &mut String) {
        let w = self.words();
        let f = w.family;
        render::delete_table(self.family, out);
        let _ = writeln!(
            out,
            "add table {f} {TABLE} {{ comment \"rules for svcplane-proxy\"; }}"
        );
        let skeleton = self.skeleton();
        for (name, spec) in skeleton.chains.iter() {
            let _ = writeln!(out, "add chain {f} {TABLE} {name}{spec}");
        }
        let mut objects: Vec<(&ObjectName, &Object)> = self
            .objects
            .iter()
            .filter_map(|(n, l)| effective(Some(l)).map(|o| (n, o)))
            .collect();
        objects.sort_by(|a, b| a.0.cmp(b.0));
        for (name, object) in &objects {
            declare(out, f, name, object);
        }
        for decl in skeleton.sets.values() {
            let _ = writeln!(out, "{decl}");
        }
        for (chain, rules) in skeleton.rules.iter() {
            for r in rules {
                let _ = writeln!(out, "add rule {f} {TABLE} {chain} {r}");
            }
        }
        for (name, object) in &objects {
            if let (ObjectName::Chain(chain), Object::Chain(rules)) = (name, object) {
                for r in rules {
                    let _ = writeln!(out, "add rule {f} {TABLE} {chain} {r}");
                }
            }
        }
        let mut by_set: BTreeMap<SetName, Vec<String>> = BTreeMap::new();
        for ((set, _), list) in &self.claims {
            if let Some(Entry(elements)) = effective(Some(list)) {
                let texts = by_set.entry(*set).or_default();
                texts.extend(elements.iter().map(|(k, rest)| format!("{k}{rest}")));
            }
        }
        for (set, mut texts) in by_set {
            texts.sort_unstable();
            statements(out, "add", f, &set.to_string(), &texts);
        }
    }

    /// Only what changed since the last commit, or `None` when that cannot be written as a
    /// change (nothing committed yet, or the kernel's copy is in doubt after a failure).
    pub fn partial(&self, out: &mut String) -> Option<()> {
        let before = self.applied.as_ref()?;
        let now = self.skeleton();
        // A declaration that changed under one name (a base chain's hook, a set's type) cannot
        // be written as a change; only a full sync is safe.
        let redeclared = |a: &render::Ordered<String>, b: &render::Ordered<String>| {
            a.iter()
                .any(|(name, decl)| b.get(name).is_some_and(|d| d != decl))
        };
        if redeclared(&before.chains, &now.chains) || redeclared(&before.sets, &now.sets) {
            return None;
        }
        let f = self.words().family;
        // 1. New sets and objects.
        for (name, decl) in now.sets.iter() {
            if !before.sets.contains_key(name) {
                let _ = writeln!(out, "{decl}");
            }
        }
        for (name, spec) in now.chains.iter() {
            if !before.chains.contains_key(name) {
                let _ = writeln!(out, "add chain {f} {TABLE} {name}{spec}");
            }
        }
        let mut changed_objects: Vec<(&ObjectName, &Option<Object>)> =
            self.changed_objects.iter().collect();
        changed_objects.sort_by(|a, b| a.0.cmp(b.0));
        let current = |name: &ObjectName| effective(self.objects.get(name));
        for (name, old) in &changed_objects {
            if old.is_none()
                && let Some(object) = current(name)
            {
                declare(out, f, name, object);
            }
        }
        // 2. Chains whose rules changed: flushed and rewritten.
        for (chain, rules) in now.rules.iter() {
            if before.rules.get(chain) != Some(rules) {
                let existed = before.chains.contains_key(chain);
                write_chain(out, f, chain, rules, existed);
            }
        }
        for (chain, _) in before
            .rules
            .iter()
            .filter(|(c, _)| !now.rules.contains_key(c))
        {
            let _ = writeln!(out, "flush chain {f} {TABLE} {chain}");
        }
        for (name, old) in &changed_objects {
            if let (ObjectName::Chain(chain), Some(Object::Chain(rules))) = (name, current(name))
                && old.as_ref() != Some(&Object::Chain(rules.clone()))
            {
                write_chain(out, f, chain, rules, old.is_some());
            }
        }
        // 3. Elements: deletions first, so a key whose entry changed can be added again.
        let mut keys: Vec<(&Key, &Option<Entry>)> = self.changed.iter().collect();
        keys.sort_by(|a, b| a.0.cmp(b.0));
        let mut deletes: BTreeMap<SetName, Vec<String>> = BTreeMap::new();
        let mut adds: BTreeMap<SetName, Vec<String>> = BTreeMap::new();
        for (key, old) in keys {
            let new = effective(self.claims.get(key));
            if old.as_ref() == new {
                continue;
            }
            let old = old.as_ref().map_or(&[][..], |e| &e.0[..]);
            let new = new.map_or(&[][..], |e| &e.0[..]);
            for (k, rest) in old {
                if !new.iter().any(|(nk, nr)| nk == k && nr == rest) {
                    deletes.entry(key.0).or_default().push(k.clone());
                }
            }
            for (k, rest) in new {
                if !old.iter().any(|(ok, or)| ok == k && or == rest) {
                    adds.entry(key.0).or_default().push(format!("{k}{rest}"));
                }
            }
        }
        for (set, keys) in &deletes {
            statements(out, "delete", f, &set.to_string(), keys);
        }
        for (set, texts) in &adds {
            statements(out, "add", f, &set.to_string(), texts);
        }
        // 4. What is gone: objects (chains emptied before any is deleted), then sets of
        // dispatch groups left empty.
        let gone: Vec<&ObjectName> = changed_objects
            .iter()
            .filter(|(name, old)| old.is_some() && current(name).is_none())
            .map(|(name, _)| *name)
            .collect();
        for name in &gone {
            if let ObjectName::Chain(chain) = name {
                let _ = writeln!(out, "flush chain {f} {TABLE} {chain}");
            }
        }
        for name in &gone {
            match name {
                ObjectName::Chain(chain) => {
                    let _ = writeln!(out, "delete chain {f} {TABLE} {chain}");
                }
                ObjectName::Set(set) => {
                    let _ = writeln!(out, "delete set {f} {TABLE} {set}");
                }
            }
        }
        let gone_chains: Vec<&String> = before
            .chains
            .iter()
            .map(|(name, _)| name)
            .filter(|name| !now.chains.contains_key(name))
            .collect();
        for chain in &gone_chains {
            let _ = writeln!(out, "flush chain {f} {TABLE} {chain}");
        }
        for chain in &gone_chains {
            let _ = writeln!(out, "delete chain {f} {TABLE} {chain}");
        }
        for (name, decl) in before.sets.iter() {
            if !now.sets.contains_key(name) {
                let kind = if decl.starts_with("add map") {
                    "map"
                } else {
                    "set"
                };
                let _ = writeln!(out, "delete {kind} {f} {TABLE} {name}");
            }
        }
        Some(())
    }

    /// The kernel now holds what [`Table::full`] or [`Table::partial`] wrote.
    pub fn committed(&mut self) {
        self.applied = Some(self.skeleton());
        self.changed.clear();
        self.changed_objects.clear();
    }

    /// A transaction failed: the kernel holds an older table; only a full sync fixes that.
    pub fn failed(&mut self) {
        self.applied = None;
    }

    /// Whether the next write must be a full one.
    pub fn needs_full(&self) -> bool {
        self.applied.is_none()
    }
}

fn declare(out: &mut String, f: &str, name: &ObjectName, object: &Object) {
    match (name, object) {
        (ObjectName::Chain(chain), _) => {
            let _ = writeln!(out, "add chain {f} {TABLE} {chain}");
        }
        (ObjectName::Set(set), Object::Set(spec)) => {
            let _ = writeln!(out, "add set {f} {TABLE} {set} {{ {spec} }}");
        }
        (ObjectName::Set(_), Object::Chain(_)) => {}
    }
}

fn write_chain(out: &mut String, f: &str, chain: &str, rules: &[String], flush: bool) {
    if flush {
        let _ = writeln!(out, "flush chain {f} {TABLE} {chain}");
    }
    for r in rules {
        let _ = writeln!(out, "add rule {f} {TABLE} {chain} {r}");
    }
}

/// `add element`/`delete element` statements, `CHUNK` elements at a time.
fn statements(out: &mut String, verb: &str, f: &str, set: &str, texts: &[String]) {
    for chunk in texts.chunks(CHUNK) {
        let _ = writeln!(
            out,
            "{verb} element {f} {TABLE} {set} {{ {} }}",
            chunk.join(", ")
        );
    }
}

#[cfg(test)]
mod tests;
