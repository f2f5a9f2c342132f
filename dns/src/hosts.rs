//! The `hosts` plugin: names from inline entries and a hosts file, as CoreDNS's `hosts`.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::path::PathBuf;
use std::sync::{Arc, Weak};
use std::time::{Duration, SystemTime};

use arc_swap::ArcSwap;

use crate::corefile::Hosts;
use svcplane_model::dns::reverse_name;

use crate::name::{falls_through, in_zone};

/// Addresses per name and names per address, from inline entries and the file together.
#[derive(Debug, Default)]
pub struct Table {
    v4: HashMap<String, Vec<Ipv4Addr>>,
    v6: HashMap<String, Vec<Ipv6Addr>>,
    /// `in-addr.arpa.`/`ip6.arpa.` name → names of that address.
    reverse: HashMap<String, Vec<String>>,
}

/// What `hosts` says of a question.
#[derive(Debug, PartialEq, Eq)]
pub enum Found {
    /// Addresses (A/AAAA) for the name.
    Addresses(Vec<IpAddr>),
    /// PTR targets for a reverse name.
    Names(Vec<String>),
    /// The name exists, with nothing of this type.
    NoData,
    /// No entry for this name.
    Missing,
}

impl Table {
    fn add(&mut self, ip: IpAddr, names: &[String], reverse: bool) {
        for name in names {
            match ip {
                IpAddr::V4(v4) => push_new(self.v4.entry(name.clone()).or_default(), v4),
                IpAddr::V6(v6) => push_new(self.v6.entry(name.clone()).or_default(), v6),
            }
            if reverse {
                push_new(
                    self.reverse
                        .entry(format!("{}.", reverse_name(ip)))
                        .or_default(),
                    name.clone(),
                );
            }
        }
    }

    /// Builds the table from the inline entries and `file`'s contents (hosts(5) syntax; bad
    /// lines are skipped with a warning).
    pub fn build(settings: &Hosts, file: &str) -> Table {
        let mut table = Table::default();
        let reverse = !settings.no_reverse;
        for (ip, names) in &settings.inline {
            table.add(*ip, names, reverse);
        }
        for (n, line) in file.lines().enumerate() {
            let line = line.split('#').next().unwrap_or("");
            let mut words = line.split_whitespace();
            let Some(first) = words.next() else { continue };
            let Ok(ip) = first.split('%').next().unwrap_or(first).parse::<IpAddr>() else {
                tracing::warn!(file = %settings.file.display(), line = n + 1, "hosts: skipping a line that does not start with an address");
                continue;
            };
            let names: Vec<String> = words.map(absolute_lower).collect();
            table.add(ip, &names, reverse);
        }
        table
    }

    pub fn lookup(&self, lower: &str, qtype: crate::QType) -> Found {
        use crate::QType;
        if qtype == QType::Ptr {
            return match self.reverse.get(lower) {
                Some(names) => Found::Names(names.clone()),
                None => Found::Missing,
            };
        }
        let v4 = self.v4.get(lower);
        let v6 = self.v6.get(lower);
        if v4.is_none() && v6.is_none() {
            return Found::Missing;
        }
        let found: Vec<IpAddr> = match qtype {
            QType::A => v4.into_iter().flatten().map(|ip| IpAddr::V4(*ip)).collect(),
            QType::Aaaa => v6.into_iter().flatten().map(|ip| IpAddr::V6(*ip)).collect(),
            _ => vec![],
        };
        if found.is_empty() {
            Found::NoData
        } else {
            Found::Addresses(found)
        }
    }
}

fn push_new<T: PartialEq>(list: &mut Vec<T>, item: T) {
    if !list.contains(&item) {
        list.push(item);
    }
}

fn absolute_lower(name: &str) -> String {
    let mut name = name.to_ascii_lowercase();
    if !name.ends_with('.') {
        name.push('.');
    }
    name
}

/// One `hosts` plugin at run time: its settings and the current table, re-read from the file
/// every `reload` when it changed.
#[derive(Debug)]
pub struct HostsPlugin {
    pub settings: Hosts,
    table: ArcSwap<Table>,
}

/// The file's contents and modification time; missing or unreadable is empty (and logged).
fn read(path: &PathBuf) -> (String, Option<SystemTime>) {
    match std::fs::read_to_string(path) {
        Ok(text) => (
            text,
            std::fs::metadata(path).and_then(|m| m.modified()).ok(),
        ),
        Err(error) => {
            tracing::warn!(file = %path.display(), %error, "hosts: cannot read the file; using the inline entries only");
            (String::new(), None)
        }
    }
}

impl HostsPlugin {
    pub fn new(settings: Hosts) -> Arc<Self> {
        let (text, _) = read(&settings.file);
        let table = Table::build(&settings, &text);
        Arc::new(HostsPlugin {
            settings,
            table: ArcSwap::from_pointee(table),
        })
    }

    pub fn covers(&self, lower: &str) -> bool {
        self.settings.zones.iter().any(|z| in_zone(lower, z))
    }

    pub fn falls_through(&self, lower: &str) -> bool {
        falls_through(&self.settings.fallthrough, lower)
    }

    pub fn lookup(&self, lower: &str, qtype: crate::QType) -> Found {
        self.table.load().lookup(lower, qtype)
    }

    /// Re-reads the file every `reload` while the plugin is in use (it stops when the
    /// configuration holding it is replaced).
    pub fn watch(self: &Arc<Self>) {
        let interval = self.settings.reload;
        if interval.is_zero() {
            return;
        }
        let weak: Weak<Self> = Arc::downgrade(self);
        let path = self.settings.file.clone();
        tokio::spawn(async move {
            let mut seen = std::fs::metadata(&path).and_then(|m| m.modified()).ok();
            loop {
                tokio::time::sleep(interval.max(Duration::from_secs(1))).await;
                let Some(plugin) = weak.upgrade() else { return };
                let modified = std::fs::metadata(&path).and_then(|m| m.modified()).ok();
                if modified == seen {
                    continue;
                }
                let (text, modified) = read(&path);
                seen = modified;
                plugin
                    .table
                    .store(Arc::new(Table::build(&plugin.settings, &text)));
                tracing::info!(file = %path.display(), "hosts: file re-read");
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::QType;

    fn settings() -> Hosts {
        Hosts {
            file: "/nonexistent".into(),
            zones: vec![".".into()],
            inline: vec![(
                "192.0.2.10".parse().expect("ip"),
                vec!["db.corp.example.".into(), "db2.corp.example.".into()],
            )],
            ttl: 3600,
            no_reverse: false,
            reload: Duration::ZERO,
            fallthrough: None,
        }
    }

    #[test]
    fn inline_and_file_entries_answer_together() {
        let file = "# comment\n192.0.2.11 Web.Corp.Example web\n2001:db8::11 web.corp.example\nnot-an-ip x\n";
        let t = Table::build(&settings(), file);
        let ip = |s: &str| s.parse::<IpAddr>().expect("ip");
        assert_eq!(
            t.lookup("db.corp.example.", QType::A),
            Found::Addresses(vec![ip("192.0.2.10")])
        );
        assert_eq!(
            t.lookup("web.corp.example.", QType::Aaaa),
            Found::Addresses(vec![ip("2001:db8::11")])
        );
        assert_eq!(t.lookup("db.corp.example.", QType::Aaaa), Found::NoData);
        assert_eq!(t.lookup("db.corp.example.", QType::Txt), Found::NoData);
        assert_eq!(t.lookup("nope.corp.example.", QType::A), Found::Missing);
        assert_eq!(
            t.lookup("10.2.0.192.in-addr.arpa.", QType::Ptr),
            Found::Names(vec!["db.corp.example.".into(), "db2.corp.example.".into()])
        );
        assert_eq!(
            t.lookup(
                "1.1.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.8.b.d.0.1.0.0.2.ip6.arpa.",
                QType::Ptr
            ),
            Found::Names(vec!["web.corp.example.".into()])
        );
        let mut no_reverse = settings();
        no_reverse.no_reverse = true;
        let t = Table::build(&no_reverse, "");
        assert_eq!(
            t.lookup("10.2.0.192.in-addr.arpa.", QType::Ptr),
            Found::Missing
        );
    }
}
