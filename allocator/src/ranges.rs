//! Address and port arithmetic: which values a range offers, and the static/dynamic band split
//! the API server uses (KEP-3070 for ClusterIPs, KEP-3668 for NodePorts; see
//! `docs/upstream/apiserver-allocation.md` §4.4 and §5.3).
//!
//! Dynamic picks start at a random point of the upper (dynamic) band and scan with wrap-around;
//! only when that band is full do they fall back to the lower (static) band, which is thereby
//! kept for Services that ask for a fixed value.

use std::fmt;
use std::net::IpAddr;
use std::ops::RangeInclusive;

use ipnet::IpNet;

/// A contiguous, non-empty run of values, as numbers (IPv4 and IPv6 both fit a u128).
pub type Span = RangeInclusive<u128>;

pub fn ip_to_u128(ip: IpAddr) -> u128 {
    match ip {
        IpAddr::V4(v4) => u128::from(u32::from(v4)),
        IpAddr::V6(v6) => u128::from(v6),
    }
}

pub fn u128_to_ip(n: u128, v6: bool) -> IpAddr {
    if v6 {
        IpAddr::V6(n.into())
    } else {
        IpAddr::V4(u32::try_from(n).unwrap_or(u32::MAX).into())
    }
}

/// The addresses a Service CIDR hands out, split into the static and the dynamic band.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CidrRange {
    pub cidr: IpNet,
    /// network+1 ..= network+offset (empty when offset is 0).
    pub static_band: Option<Span>,
    /// The rest of the usable addresses.
    pub dynamic_band: Option<Span>,
}

impl CidrRange {
    /// `None` when the CIDR offers no address at all (IPv4 /31, /32, IPv6 /128), or is an IPv6
    /// prefix shorter than /64, which the API server refuses to allocate from.
    pub fn new(cidr: IpNet) -> Option<Self> {
        let cidr = cidr.trunc();
        let host_bits = u32::from(cidr.max_prefix_len() - cidr.prefix_len());
        if cidr.addr().is_ipv6() && cidr.prefix_len() < 64 {
            return None;
        }
        let network = ip_to_u128(cidr.network());
        // Usable: network+1 .. last, minus the IPv4 broadcast address.
        let last = match cidr {
            IpNet::V4(_) => ip_to_u128(cidr.broadcast()).checked_sub(1)?,
            IpNet::V6(_) => ip_to_u128(cidr.broadcast()),
        };
        let first = network.checked_add(1)?;
        if last < first {
            return None;
        }
        let size: u128 = if host_bits >= 127 {
            u128::MAX
        } else {
            1u128 << host_bits
        };
        let offset = ip_band_offset(size);
        let static_end = first + offset - 1;
        let (static_band, dynamic_band) = if offset == 0 {
            (None, Some(first..=last))
        } else if static_end >= last {
            (Some(first..=last), None)
        } else {
            (Some(first..=static_end), Some(static_end + 1..=last))
        };
        Some(Self {
            cidr,
            static_band,
            dynamic_band,
        })
    }

    pub fn is_v6(&self) -> bool {
        self.cidr.addr().is_ipv6()
    }

    /// Whether the API server would accept `ip` as a static request in this CIDR (the network
    /// and IPv4 broadcast addresses are not usable).
    pub fn contains(&self, ip: IpAddr) -> bool {
        if ip.is_ipv6() != self.is_v6() {
            return false;
        }
        let n = ip_to_u128(ip);
        self.bands().any(|b| b.contains(&n))
    }

    /// Upper band first: the order dynamic picks search in.
    pub fn bands(&self) -> impl Iterator<Item = Span> + '_ {
        self.dynamic_band
            .clone()
            .into_iter()
            .chain(self.static_band.clone())
    }

    /// Usable addresses, saturating at u128::MAX for huge IPv6 ranges.
    pub fn size(&self) -> u128 {
        self.bands()
            .map(|b| b.end() - b.start() + 1)
            .fold(0u128, u128::saturating_add)
    }
}

/// KEP-3070: `n` is the number of addresses of the CIDR (all of them).
pub fn ip_band_offset(n: u128) -> u128 {
    if n <= 16 { 0 } else { (n / 16).clamp(16, 256) }
}

/// KEP-3668: `size` is the number of ports in the range.
pub fn port_band_offset(size: u32) -> u32 {
    if size <= 16 {
        0
    } else {
        (size / 32).clamp(16, 128)
    }
}

/// A NodePort range such as `30000-32767` (the API server's `--service-node-port-range`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct PortRange {
    pub first: u16,
    pub last: u16,
}

impl PortRange {
    pub const DEFAULT: PortRange = PortRange {
        first: 30000,
        last: 32767,
    };

    pub fn contains(&self, port: u16) -> bool {
        (self.first..=self.last).contains(&port)
    }

    pub fn size(&self) -> u32 {
        u32::from(self.last) - u32::from(self.first) + 1
    }

    /// The static band of this range (`None` if it has none).
    pub fn static_band(&self) -> Option<Span> {
        let offset = port_band_offset(self.size());
        (offset > 0)
            .then(|| u128::from(self.first)..=u128::from(self.first) + u128::from(offset) - 1)
    }

    /// The bands of `sub` (a sub-range chosen by policy) in search order: the part of `sub`
    /// inside this range's dynamic band first, then the part inside its static band.
    pub fn bands_of(&self, sub: PortRange) -> Vec<Span> {
        let (lo, hi) = (u128::from(sub.first), u128::from(sub.last));
        let mut out = Vec::with_capacity(2);
        match self.static_band() {
            None => out.push(lo..=hi),
            Some(band) => {
                let dyn_start = band.end() + 1;
                if hi >= dyn_start {
                    out.push(lo.max(dyn_start)..=hi);
                }
                if lo <= *band.end() {
                    out.push(lo..=hi.min(*band.end()));
                }
            }
        }
        out
    }

    /// Whether `sub` lies inside this range.
    pub fn covers(&self, sub: PortRange) -> bool {
        self.first <= sub.first && sub.last <= self.last
    }
}

impl fmt::Display for PortRange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}-{}", self.first, self.last)
    }
}

impl std::str::FromStr for PortRange {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = || format!("{s:?} is not a port range like 30000-32767");
        let (a, b) = s.trim().split_once('-').ok_or_else(bad)?;
        let first: u16 = a.trim().parse().map_err(|_| bad())?;
        let last: u16 = b.trim().parse().map_err(|_| bad())?;
        if first == 0 || last < first {
            return Err(bad());
        }
        Ok(Self { first, last })
    }
}

/// Scans `bands` in order for a value `taken` says is free: each band from a random start
/// (`start_fraction` in [0, 1)) with wrap-around. Gives up on a band after `budget` probes, so
/// a huge, nearly full band cannot stall a request (and the next band is still tried).
pub fn scan(
    bands: &[Span],
    start_fraction: f64,
    budget_per_band: u64,
    mut taken: impl FnMut(u128) -> bool,
) -> Option<u128> {
    for band in bands {
        let mut budget = budget_per_band;
        let (lo, hi) = (*band.start(), *band.end());
        let len = hi - lo; // inclusive length minus one
        // A float is fine here: the start only has to be spread, not exact.
        let offset = ((len as f64) * start_fraction) as u128;
        let start = lo + offset.min(len);
        let mut n = start;
        loop {
            if budget == 0 {
                break;
            }
            budget -= 1;
            if !taken(n) {
                return Some(n);
            }
            n = if n == hi { lo } else { n + 1 };
            if n == start {
                break;
            }
        }
    }
    None
}

#[cfg(test)]
mod tests;
