//! One question through one server block's plugins, in CoreDNS's order: rewrite, autopath,
//! hosts, kubernetes, forward; then `answer auto` and loadbalance on the way out.

use std::net::IpAddr;

use hickory_proto::op::ResponseCode;
use hickory_proto::rr::rdata::{A, AAAA, CNAME, PTR};
use hickory_proto::rr::{DNSClass, Name, RData, Record as WireRecord, RecordType};

use crate::answer::answer_lower;
use crate::answer::reverse_zone;
use crate::corefile::{NameMatch, Rewrite};
use crate::forward::ForwardError;
use crate::hosts::Found;
use crate::name::in_zone;
use crate::plan::{Block, KubeSettings};
use crate::server::{qtype, rcode, wire, wire_all, wire_name};
use crate::{Index, PodMode, QType, Rcode, answer};

/// A reply before it is fitted to the client and encoded.
#[derive(Debug, Clone)]
pub struct Response {
    pub rcode: ResponseCode,
    pub authoritative: bool,
    pub recursion_available: bool,
    pub answers: Vec<WireRecord>,
    pub authorities: Vec<WireRecord>,
    pub additionals: Vec<WireRecord>,
}

impl Response {
    fn empty(rcode: ResponseCode, authoritative: bool) -> Self {
        Response {
            rcode,
            authoritative,
            recursion_available: false,
            answers: vec![],
            authorities: vec![],
            additionals: vec![],
        }
    }
}

/// What a block does with a question.
#[derive(Debug)]
pub enum Outcome {
    Reply(Response),
    /// An error reply with this rcode and no records.
    Error(ResponseCode),
    /// A plugin failed (forwarding): replied to as `Error`, and it ends autopath's walk.
    Failure(ResponseCode),
}

/// A plugin's verdict: done, or on to the next plugin.
enum Step {
    Done(Outcome),
    Next,
}

/// A question's name as text: absolute, as the client wrote it (for owner names) and in lower
/// case (for matching).
#[derive(Debug, Clone)]
pub struct QName {
    pub text: String,
    pub lower: String,
}

impl QName {
    pub fn new(text: String) -> Self {
        let lower = text.to_ascii_lowercase();
        QName { text, lower }
    }
}

impl Block {
    /// Answers `name`/`qtype` asked by `src`.
    pub async fn resolve(
        &self,
        index: &Index,
        name: QName,
        qtype: RecordType,
        src: IpAddr,
    ) -> Outcome {
        let (asked, rewritten) = match self.rewrite_name(&name.lower) {
            Some((lower, rule)) => (QName::new(lower), Some((rule, name.lower))),
            None => (name, None),
        };
        let mut outcome = match self.autopath_search(index, &asked, src) {
            Some((base, search)) => self.autopath(index, &asked, &base, &search, qtype).await,
            None => self.inner(index, &asked, qtype).await,
        };
        if let Outcome::Reply(reply) = &mut outcome
            && let Some((rule, original)) = rewritten
        {
            revert(reply, rule, &asked.lower, &original);
        }
        self.balance(&mut outcome);
        outcome
    }

    /// The answer when memory alone gives it (no rewrite or autopath, no upstream to ask):
    /// the common case, answered without the machinery of [`Block::resolve`]. `None` means
    /// `resolve` must run.
    pub fn resolve_now(&self, index: &Index, name: &QName, qtype: RecordType) -> Option<Outcome> {
        if !self.rewrite.is_empty() || self.autopath.is_some() {
            return None;
        }
        let mut outcome = match self.hosts.as_ref().map(|h| self.hosts_step(h, name, qtype)) {
            Some(Step::Done(outcome)) => outcome,
            _ => {
                let kube = self.kubernetes.as_ref().filter(|k| k.covers(&name.lower))?;
                match kubernetes_local(index, kube, name, qtype) {
                    Local::Done(outcome) => outcome,
                    // Forwarding or falling through: for `resolve`.
                    Local::Next | Local::Chase(..) => return None,
                }
            }
        };
        self.balance(&mut outcome);
        Some(outcome)
    }

    /// `loadbalance` on a reply, when the block has it.
    fn balance(&self, outcome: &mut Outcome) {
        if self.loadbalance
            && let Outcome::Reply(reply) = outcome
            && reply.rcode == ResponseCode::NoError
        {
            for section in [
                &mut reply.answers,
                &mut reply.authorities,
                &mut reply.additionals,
            ] {
                if section.len() > 1 {
                    shuffle(section);
                }
            }
        }
    }

    /// The rewritten name and the rule that stopped (or last applied), if any rule matched.
    fn rewrite_name(&self, lower: &str) -> Option<(String, &Rewrite)> {
        let mut current: Option<(String, &Rewrite)> = None;
        for rule in &self.rewrite {
            let name = current.as_ref().map_or(lower, |(n, _)| n.as_str());
            if let Some(new) = apply(rule, name) {
                let stop = !rule.continues;
                current = Some((new, rule));
                if stop {
                    break;
                }
            }
        }
        current
    }

    /// For a pod's question in its first search domain (`<name>.<ns>.svc.<zone>`): the base
    /// name and the search path to walk (CoreDNS's autopath with `@kubernetes`).
    fn autopath_search(
        &self,
        index: &Index,
        name: &QName,
        src: IpAddr,
    ) -> Option<(String, Vec<String>)> {
        let lower = name.lower.as_str();
        let zones = self.autopath.as_ref()?;
        let kube = self.kubernetes.as_ref()?;
        if kube.config.pods != PodMode::Verified
            || !zones.iter().any(|z| in_zone(lower, z))
            || !in_zone(lower, &kube.config.zone)
        {
            return None;
        }
        let namespace = index.pod_namespace(src)?;
        let zone = format!("{}.", kube.config.zone);
        let first = format!("{namespace}.svc.{zone}");
        let base = lower.strip_suffix(&first)?.strip_suffix('.')?;
        if base.is_empty() {
            return None;
        }
        // The base keeps the client's letter case, as CoreDNS's.
        let base = &name.text[..base.len()];
        let mut search = vec![first, format!("svc.{zone}"), zone];
        search.extend(self.search.iter().cloned());
        search.push(String::new());
        Some((base.to_owned(), search))
    }

    /// Walks the search path: the first expansion that is not NXDOMAIN answers, with a CNAME
    /// from the question to it; if every one is NXDOMAIN, the first expansion's reply.
    async fn autopath(
        &self,
        index: &Index,
        asked: &QName,
        base: &str,
        search: &[String],
        qtype: RecordType,
    ) -> Outcome {
        let mut first = None;
        for (i, domain) in search.iter().enumerate() {
            let expansion = if domain.is_empty() {
                format!("{base}.")
            } else {
                format!("{base}.{domain}")
            };
            let outcome = self.inner(index, &QName::new(expansion), qtype).await;
            let written = match &outcome {
                Outcome::Reply(r) => r.rcode != ResponseCode::NXDomain,
                Outcome::Error(_) => false,
                // A plugin failed: its SERVFAIL ends the walk.
                Outcome::Failure(_) => return outcome,
            };
            if written && let Outcome::Reply(mut reply) = outcome {
                cname_to_answer(&mut reply, &asked.text);
                if i > 0
                    && let Some(m) = &self.metrics
                {
                    m.autopath();
                }
                return Outcome::Reply(reply);
            }
            if i == 0 {
                first = Some(outcome);
            }
        }
        first.unwrap_or(Outcome::Error(ResponseCode::ServFail))
    }

    /// hosts, kubernetes, forward.
    async fn inner(&self, index: &Index, name: &QName, qtype: RecordType) -> Outcome {
        if let Some(hosts) = &self.hosts
            && let Step::Done(outcome) = self.hosts_step(hosts, name, qtype)
        {
            return outcome;
        }
        if let Some(kube) = &self.kubernetes
            && kube.covers(&name.lower)
            && let Step::Done(outcome) = self.kubernetes_step(index, kube, name, qtype).await
        {
            return outcome;
        }
        if let Step::Done(outcome) = self.forward_step(name, qtype).await {
            return outcome;
        }
        Outcome::Error(self.unhandled)
    }

    /// CoreDNS's `hosts`: PTR from the reverse entries wherever asked; other types for names
    /// in its zones. A name it has no address for falls through, or is SERVFAIL (hosts has no
    /// SOA to say NXDOMAIN with).
    fn hosts_step(
        &self,
        hosts: &crate::hosts::HostsPlugin,
        name: &QName,
        rtype: RecordType,
    ) -> Step {
        let ptr = rtype == RecordType::PTR;
        if !ptr && !hosts.covers(&name.lower) {
            return Step::Next;
        }
        let Some(owner) = wire_name(&name.lower) else {
            return Step::Next;
        };
        let ttl = hosts.settings.ttl;
        let records: Vec<WireRecord> = match hosts.lookup(&name.lower, qtype(rtype)) {
            Found::Addresses(ips) => ips
                .into_iter()
                .map(|ip| {
                    let data = match ip {
                        IpAddr::V4(v4) => RData::A(A(v4)),
                        IpAddr::V6(v6) => RData::AAAA(AAAA(v6)),
                    };
                    WireRecord::from_rdata(owner.clone(), ttl, data)
                })
                .collect(),
            Found::Names(names) => names
                .iter()
                .filter_map(|n| wire_name(n))
                .map(|target| WireRecord::from_rdata(owner.clone(), ttl, RData::PTR(PTR(target))))
                .collect(),
            Found::NoData => vec![],
            Found::Missing if ptr => return Step::Next,
            Found::Missing => {
                if hosts.falls_through(&name.lower) {
                    return Step::Next;
                }
                return Step::Done(Outcome::Error(ResponseCode::ServFail));
            }
        };
        let mut reply = Response::empty(ResponseCode::NoError, true);
        reply.answers = records;
        Step::Done(Outcome::Reply(reply))
    }

    /// The kubernetes plugin, with the upstream part of an ExternalName outside the zone.
    async fn kubernetes_step(
        &self,
        index: &Index,
        kube: &KubeSettings,
        name: &QName,
        rtype: RecordType,
    ) -> Step {
        let (result, target) = match kubernetes_local(index, kube, name, rtype) {
            Local::Done(outcome) => return Step::Done(outcome),
            Local::Next => return Step::Next,
            Local::Chase(result, target) => (result, target),
        };
        // The CNAME's target is outside the zone: append what upstream says of it. Its rcode
        // does not matter (CoreDNS answers NOERROR with the CNAME alone).
        let mut answers = wire_all(&result.answers);
        let lower = format!("{}.", target.to_ascii_lowercase());
        if let Some(f) = self.forward.iter().find(|f| f.covers(&lower))
            && let Ok(target) = Name::from_ascii(format!("{target}."))
        {
            match f.forwarder.resolve(&target, rtype, DNSClass::IN).await {
                Ok(reply) => answers.extend(reply.answers),
                Err(error) => {
                    tracing::debug!(%error, %target, "chasing an ExternalName failed")
                }
            }
        }
        Step::Done(Outcome::Reply(local_reply(&result, answers)))
    }

    async fn forward_step(&self, name: &QName, rtype: RecordType) -> Step {
        let Some(f) = self.forward.iter().find(|f| f.covers(&name.lower)) else {
            return Step::Next;
        };
        let Some(wire) = wire_name(&name.text) else {
            return Step::Done(Outcome::Error(ResponseCode::ServFail));
        };
        match f.forwarder.resolve(&wire, rtype, DNSClass::IN).await {
            Ok(reply) => Step::Done(Outcome::Reply(Response {
                rcode: reply.rcode,
                authoritative: false,
                recursion_available: true,
                answers: reply.answers,
                authorities: reply.authorities,
                additionals: reply.additionals,
            })),
            Err(ForwardError::Overloaded(max)) => {
                tracing::debug!(name = %name.text, max, "forward: max_concurrent reached; refusing");
                Step::Done(Outcome::Error(ResponseCode::Refused))
            }
            Err(error) => {
                if self.errors {
                    tracing::warn!(%error, name = %name.text, qtype = %rtype, "forwarding failed");
                } else {
                    tracing::debug!(%error, name = %name.text, "forwarding failed");
                }
                Step::Done(Outcome::Failure(ResponseCode::ServFail))
            }
        }
    }
}

/// What the kubernetes plugin makes of a question from memory alone.
enum Local {
    Done(Outcome),
    /// On to the next plugin (the name falls through).
    Next,
    /// An ExternalName whose target (the String) is outside the zone: the answer so far.
    Chase(crate::Answer, String),
}

/// The kubernetes plugin without I/O: the index's answer, or NXDOMAIN with the zone's SOA for
/// a name it lacks (as CoreDNS's plugin answers without `fallthrough`), or on to the next plugin.
fn kubernetes_local(index: &Index, kube: &KubeSettings, name: &QName, rtype: RecordType) -> Local {
    let mut result = answer_lower(index, &kube.config, &name.text, &name.lower, qtype(rtype));
    if result.forward {
        let Some(apex) = reverse_zone(&name.lower).filter(|_| !kube.falls_through(&name.lower))
        else {
            return Local::Next;
        };
        let soa = answer(index, &kube.config, apex, QType::Soa);
        let mut reply = Response::empty(ResponseCode::NXDomain, true);
        reply.authorities = wire_all(&soa.answers);
        return Local::Done(Outcome::Reply(reply));
    }
    if result.rcode == Rcode::NxDomain && kube.falls_through(&name.lower) {
        return Local::Next;
    }
    match result.chase.take() {
        Some(target) => Local::Chase(result, target),
        None => Local::Done(Outcome::Reply(local_reply(
            &result,
            wire_all(&result.answers),
        ))),
    }
}

/// The reply to a question the kubernetes plugin answered, with `answers` as encoded.
fn local_reply(result: &crate::Answer, answers: Vec<WireRecord>) -> Response {
    Response {
        rcode: rcode(result.rcode),
        authoritative: result.authoritative,
        recursion_available: false,
        answers,
        authorities: result.authority.iter().filter_map(wire).collect(),
        additionals: wire_all(&result.additionals),
    }
}

/// `rule` applied to `lower` (absolute, lower case): the new name, absolute, if it matched.
/// FROM and TO of every kind but regex are lower-case names with a trailing dot (as CoreDNS
/// normalizes them), so prefixes and substrings end at a label boundary.
pub fn apply(rule: &Rewrite, lower: &str) -> Option<String> {
    let new = match rule.kind {
        NameMatch::Exact => (lower == rule.from).then(|| rule.to.clone())?,
        NameMatch::Prefix => format!("{}{}", rule.to, lower.strip_prefix(&rule.from)?),
        NameMatch::Suffix => format!("{}{}", lower.strip_suffix(&rule.from)?, rule.to),
        NameMatch::Substring => {
            if !lower.contains(&rule.from) {
                return None;
            }
            lower.replace(&rule.from, &rule.to)
        }
        NameMatch::Regex => {
            let caps = rule.regex.as_ref()?.captures(lower)?;
            let mut out = rule.to.clone();
            for i in (0..caps.len()).rev() {
                let group = caps.get(i).map_or("", |m| m.as_str());
                out = out.replace(&format!("{{{i}}}"), group);
            }
            out
        }
    };
    let mut new = new.to_ascii_lowercase();
    if !new.ends_with('.') {
        new.push('.');
    }
    Some(new)
}

/// `answer auto` (always on for `exact`): names in the reply that the rewrite produced are
/// given back the question's. For `suffix` the suffix is swapped back everywhere; for the
/// others the rewritten name, and names below it, become the original again. Owner names and
/// the names in CNAME, PTR, NS, SRV and SOA (mname) data are rewritten.
fn revert(reply: &mut Response, rule: &Rewrite, rewritten: &str, original: &str) {
    if !rule.answer_auto && rule.kind != NameMatch::Exact {
        return;
    }
    let map = |name: &Name| -> Option<Name> {
        let text = name.to_ascii().to_ascii_lowercase();
        let back = if rule.kind == NameMatch::Suffix {
            format!("{}{}", text.strip_suffix(&rule.to)?, rule.from)
        } else if text == rewritten {
            original.to_owned()
        } else {
            let head = text.strip_suffix(rewritten)?;
            head.ends_with('.').then(|| format!("{head}{original}"))?
        };
        wire_name(&back)
    };
    for record in reply
        .answers
        .iter_mut()
        .chain(reply.authorities.iter_mut())
        .chain(reply.additionals.iter_mut())
    {
        if let Some(name) = map(&record.name) {
            record.name = name;
        }
        match &mut record.data {
            RData::CNAME(CNAME(target)) | RData::PTR(PTR(target)) => {
                if let Some(n) = map(target) {
                    *target = n;
                }
            }
            RData::NS(ns) => {
                if let Some(n) = map(&ns.0) {
                    ns.0 = n;
                }
            }
            RData::SRV(srv) => {
                if let Some(n) = map(&srv.target) {
                    srv.target = n;
                }
            }
            RData::SOA(soa) => {
                if let Some(n) = map(&soa.mname) {
                    soa.mname = n;
                }
            }
            _ => {}
        }
    }
}

/// CoreDNS's autopath: the question's name becomes a CNAME to the first answer's owner.
fn cname_to_answer(reply: &mut Response, asked: &str) {
    let Some(first) = reply
        .answers
        .iter()
        .find(|r| !r.name.to_ascii().eq_ignore_ascii_case(asked))
    else {
        return;
    };
    let (target, ttl) = (first.name.clone(), first.ttl);
    let Some(owner) = wire_name(asked) else {
        return;
    };
    reply.answers.insert(
        0,
        WireRecord::from_rdata(owner, ttl, RData::CNAME(CNAME(target))),
    );
}

/// CoreDNS's `loadbalance` on one section: all A (or all AAAA) records are shuffled; a mix is
/// ordered CNAMEs, other records, A/AAAA shuffled, MX shuffled.
#[inline(never)]
pub fn shuffle(records: &mut Vec<WireRecord>) {
    if records.len() < 2 {
        return;
    }
    let rng = &mut rand::rng();
    let first = records[0].record_type();
    if matches!(first, RecordType::A | RecordType::AAAA)
        && records.iter().all(|r| r.record_type() == first)
    {
        rand::seq::SliceRandom::shuffle(records.as_mut_slice(), rng);
        return;
    }
    let mut all = std::mem::take(records);
    all.sort_by_key(|r| match r.record_type() {
        RecordType::CNAME => 0,
        RecordType::A | RecordType::AAAA => 2,
        RecordType::MX => 3,
        _ => 1,
    });
    let addresses = all
        .iter()
        .position(|r| matches!(r.record_type(), RecordType::A | RecordType::AAAA));
    let mx = all.iter().position(|r| r.record_type() == RecordType::MX);
    if let Some(start) = addresses {
        let end = mx.unwrap_or(all.len());
        rand::seq::SliceRandom::shuffle(&mut all[start..end], rng);
    }
    if let Some(start) = mx {
        rand::seq::SliceRandom::shuffle(&mut all[start..], rng);
    }
    *records = all;
}
