//! The allow-list: the table of differences from CoreDNS in `docs/dns.md`, read as data, so the
//! test and the documentation cannot drift apart.
//!
//! Each row is `| `id` | `matcher` | CoreDNS | svcplane-dns | why |`. The matcher is a list of
//! `key=value` conditions (`key!=value` negates; `,` separates alternatives), all of which must
//! hold for a question, and `fields=` naming the reply fields the row allows to differ:
//!
//! - `name=` glob over the lower-case name without the trailing dot (`*` matches within a
//!   label, `**` across labels);
//! - `type=`, `class=`, `case=` (`lower`, `mixed`), `edns=` (`none`, `edns0`, `do`, `small`,
//!   `v1`), `proto=` (`udp`, `tcp`), `shape=` (glob over the question's shape);
//! - `coredns=`, `svcplane=`: that server's reply: an rcode name, `NODATA` (NOERROR, empty
//!   answer), `DATA` (NOERROR with an answer) or `none` (no reply);
//! - `fields=`: any of `reply rcode aa tc rd ra ad cd opt do question answer authority
//!   additional`.

use std::collections::BTreeSet;

use super::questions::Question;
use super::wire::Outcome;

pub const DOC: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../docs/dns.md");
/// The heading of the table's section in `docs/dns.md`.
pub const HEADING: &str = "## Differences from CoreDNS";

const FIELDS: [&str; 14] = [
    "reply",
    "rcode",
    "aa",
    "tc",
    "rd",
    "ra",
    "ad",
    "cd",
    "opt",
    "do",
    "question",
    "answer",
    "authority",
    "additional",
];

#[derive(Debug)]
struct Condition {
    key: String,
    negated: bool,
    values: Vec<String>,
}

#[derive(Debug)]
pub struct Entry {
    pub id: String,
    conditions: Vec<Condition>,
    pub fields: BTreeSet<&'static str>,
}

/// `*` matches within one label (no dot), `**` matches anything. Names are ASCII.
fn glob(pattern: &str, text: &str) -> bool {
    let (p, t) = (pattern.as_bytes(), text.as_bytes());
    if let Some(rest) = pattern.strip_prefix("**") {
        return (0..=t.len()).any(|i| glob(rest, &text[i..]));
    }
    if let Some(rest) = pattern.strip_prefix('*') {
        for i in 0..=t.len() {
            if glob(rest, &text[i..]) {
                return true;
            }
            if t.get(i) == Some(&b'.') {
                return false;
            }
        }
        return false;
    }
    match (p.first(), t.first()) {
        (None, None) => true,
        (Some(a), Some(b)) if a == b => glob(&pattern[1..], &text[1..]),
        _ => false,
    }
}

/// The labels a server's outcome answers to in `coredns=` / `svcplane=`.
fn outcome_labels(outcome: &Outcome) -> Vec<String> {
    match outcome {
        Err(_) => vec!["none".into()],
        Ok(reply) => {
            let mut labels = vec![reply.rcode.clone()];
            if reply.rcode == "NOERROR" {
                labels.push(
                    if reply.answer.is_empty() {
                        "NODATA"
                    } else {
                        "DATA"
                    }
                    .into(),
                );
            }
            labels
        }
    }
}

impl Entry {
    fn parse(id: &str, matcher: &str, why: &str) -> Result<Self, String> {
        let mut conditions = Vec::new();
        let mut fields = BTreeSet::new();
        for token in matcher.split_whitespace() {
            let (key, negated, value) = if let Some((k, v)) = token.split_once("!=") {
                (k, true, v)
            } else if let Some((k, v)) = token.split_once('=') {
                (k, false, v)
            } else {
                return Err(format!("{id}: {token:?} is not key=value"));
            };
            let values: Vec<String> = value.split(',').map(str::to_owned).collect();
            match key {
                "fields" => {
                    for v in &values {
                        let known = FIELDS
                            .iter()
                            .find(|f| **f == v.as_str())
                            .ok_or_else(|| format!("{id}: unknown field {v:?}"))?;
                        fields.insert(*known);
                    }
                }
                "name" | "type" | "class" | "case" | "edns" | "proto" | "shape" | "coredns"
                | "svcplane" => conditions.push(Condition {
                    key: key.to_owned(),
                    negated,
                    values,
                }),
                _ => return Err(format!("{id}: unknown key {key:?}")),
            }
        }
        if fields.is_empty() {
            return Err(format!("{id}: no fields= given"));
        }
        if why.trim().is_empty() {
            return Err(format!("{id}: no reason given"));
        }
        Ok(Entry {
            id: id.to_owned(),
            conditions,
            fields,
        })
    }

    /// Whether every condition holds for this question and these two outcomes.
    pub fn matches(&self, q: &Question, coredns: &Outcome, svcplane: &Outcome) -> bool {
        self.conditions.iter().all(|c| {
            let hit = match c.key.as_str() {
                "name" => c.values.iter().any(|p| glob(p, &q.lower)),
                "shape" => c.values.iter().any(|p| glob(p, q.shape)),
                "type" => c.values.iter().any(|v| *v == q.qtype.to_string()),
                "class" => c.values.iter().any(|v| *v == q.class.to_string()),
                "case" => c.values.iter().any(|v| v == q.case.label()),
                "edns" => c.values.iter().any(|v| v == q.edns.label()),
                "proto" => c.values.iter().any(|v| v == q.proto.label()),
                "coredns" | "svcplane" => {
                    let outcome = if c.key == "coredns" {
                        coredns
                    } else {
                        svcplane
                    };
                    let labels = outcome_labels(outcome);
                    c.values.iter().any(|v| labels.contains(v))
                }
                _ => false,
            };
            hit != c.negated
        })
    }
}

/// The rows of the table under [`HEADING`] in `doc`.
pub fn parse(doc: &str) -> Result<Vec<Entry>, String> {
    let section = doc
        .split_once(HEADING)
        .map(|(_, rest)| rest)
        .ok_or_else(|| format!("docs/dns.md has no {HEADING:?} section"))?;
    let section = section.split("\n## ").next().unwrap_or_default();
    let mut entries: Vec<Entry> = Vec::new();
    for line in section.lines().filter(|l| l.starts_with("| `")) {
        let cells: Vec<&str> = line.trim().trim_matches('|').split('|').collect();
        let [id, matcher, _coredns, _svcplane, why] = cells.as_slice() else {
            return Err(format!("a row without five cells: {line}"));
        };
        let id = id.trim().trim_matches('`');
        let matcher = matcher.trim().trim_matches('`');
        if entries.iter().any(|e| e.id == id) {
            return Err(format!("{id}: listed twice"));
        }
        entries.push(Entry::parse(id, matcher, why)?);
    }
    Ok(entries)
}

#[test]
fn globs() {
    assert!(glob("*.svc.cluster.local", "shop.svc.cluster.local"));
    assert!(!glob("*.svc.cluster.local", "web.shop.svc.cluster.local"));
    assert!(glob("**.svc.cluster.local", "web.shop.svc.cluster.local"));
    assert!(glob(
        "**hl.shop.svc.cluster.local",
        "_._.hl.shop.svc.cluster.local"
    ));
    assert!(glob("ns.dns.cluster.local", "ns.dns.cluster.local"));
    assert!(!glob("ns.dns.cluster.local", "x.ns.dns.cluster.local"));
    assert!(glob("*", "in-addr"));
    assert!(!glob("*", "in-addr.arpa"));
    assert!(glob("**", ""));
    assert!(!glob("**.pod.**", "pod.cluster.local"));
}

#[test]
fn rows_parse() {
    let doc = "## Differences from CoreDNS\n\n| id | m | c | s | w |\n|---|---|---|---|---|\n\
               | `a` | `type=SOA coredns=NOERROR fields=rcode` | x | y | because |\n\
               ## Next\n| `b` | `fields=rcode` | x | y | not in the section |\n";
    let entries = parse(doc).expect("parses");
    assert_eq!(entries.len(), 1);
    assert_eq!(entries[0].id, "a");
    assert!(entries[0].fields.contains("rcode"));
    assert!(parse(&doc.replace("fields=rcode", "fields=bogus")).is_err());
    assert!(parse(&doc.replace("because", " ")).is_err());
}
