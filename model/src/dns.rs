//! DNS names of cluster objects, per the Kubernetes DNS-Based Service Discovery specification,
//! with CoreDNS's choices where the specification is silent (dashed IPv6 names).
//!
//! Names are returned without the trailing root dot; callers that need an absolute name add it.

use std::fmt::Write as _;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use crate::{ObjectKey, Protocol};

/// `<svc>.<ns>.svc.<zone>`.
pub fn service_fqdn(key: &ObjectKey, zone: &str) -> String {
    format!("{}.{}.svc.{}", key.name, key.namespace, zone)
}

/// `_<port>._<proto>.<svc>.<ns>.svc.<zone>` for a named port.
pub fn srv_name(port_name: &str, protocol: Protocol, key: &ObjectKey, zone: &str) -> String {
    format!(
        "_{}._{}.{}",
        port_name,
        protocol.as_str().to_ascii_lowercase(),
        service_fqdn(key, zone)
    )
}

/// `<dashed-ip>.<ns>.pod.<zone>`.
pub fn pod_fqdn(ip: IpAddr, namespace: &str, zone: &str) -> String {
    format!("{}.{}.pod.{}", dashed_ip(ip), namespace, zone)
}

/// The label an endpoint without a hostname answers to: `10-244-1-5`, or for IPv6 the
/// compressed text form with `:` turned into `-` (`fd00--5`), with a `0` appended when it would
/// end in `-`, as CoreDNS names them.
pub fn dashed_ip(ip: IpAddr) -> String {
    match ip {
        IpAddr::V4(v4) => v4.to_string().replace('.', "-"),
        IpAddr::V6(v6) => {
            let mut s = v6.to_string().replace(':', "-");
            if s.ends_with('-') {
                s.push('0');
            }
            s
        }
    }
}

/// The inverse of [`dashed_ip`], as CoreDNS reads pod names: exactly three dashes and no `--`
/// is IPv4, anything else is tried as IPv6.
pub fn parse_dashed_ip(label: &str) -> Option<IpAddr> {
    if label.matches('-').count() == 3 && !label.contains("--") {
        label
            .replace('-', ".")
            .parse::<Ipv4Addr>()
            .ok()
            .map(IpAddr::V4)
    } else {
        label
            .replace('-', ":")
            .parse::<Ipv6Addr>()
            .ok()
            .map(IpAddr::V6)
    }
}

/// `d.c.b.a.in-addr.arpa`, or the 32-nibble `ip6.arpa` name.
pub fn reverse_name(ip: IpAddr) -> String {
    match ip {
        IpAddr::V4(v4) => {
            let [a, b, c, d] = v4.octets();
            format!("{d}.{c}.{b}.{a}.in-addr.arpa")
        }
        IpAddr::V6(v6) => {
            let mut s = String::with_capacity(72);
            for byte in v6.octets().iter().rev() {
                let _ = write!(s, "{:x}.{:x}.", byte & 0x0f, byte >> 4);
            }
            s.push_str("ip6.arpa");
            s
        }
    }
}

/// The address a full reverse name points at; `None` for partial names (a zone cut such as
/// `244.10.in-addr.arpa`) and anything malformed. Case-insensitive; a trailing dot is allowed.
pub fn parse_reverse_name(name: &str) -> Option<IpAddr> {
    let name = name.strip_suffix('.').unwrap_or(name).to_ascii_lowercase();
    if let Some(rest) = name.strip_suffix(".in-addr.arpa") {
        let labels: Vec<&str> = rest.split('.').collect();
        if labels.len() != 4 {
            return None;
        }
        let mut octets = [0u8; 4];
        for (slot, label) in octets.iter_mut().zip(labels.iter().rev()) {
            // Only plain decimal: u8 parsing alone would accept a sign, and a leading zero is
            // not how any address is written in a reverse name.
            let digits = !label.is_empty() && label.bytes().all(|b| b.is_ascii_digit());
            if !digits || (label.len() > 1 && label.starts_with('0')) {
                return None;
            }
            *slot = label.parse().ok()?;
        }
        return Some(IpAddr::V4(Ipv4Addr::from(octets)));
    }
    let rest = name.strip_suffix(".ip6.arpa")?;
    let nibbles: Vec<&str> = rest.split('.').collect();
    if nibbles.len() != 32 {
        return None;
    }
    let mut value: u128 = 0;
    for label in nibbles.iter().rev() {
        let mut chars = label.chars();
        let (Some(c), None) = (chars.next(), chars.next()) else {
            return None;
        };
        value = (value << 4) | u128::from(c.to_digit(16)?);
    }
    Some(IpAddr::V6(Ipv6Addr::from(value)))
}

#[cfg(test)]
mod tests;
