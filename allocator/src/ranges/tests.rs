use super::*;

fn range(s: &str) -> CidrRange {
    CidrRange::new(s.parse().expect("cidr")).expect("usable")
}

fn ip(s: &str) -> u128 {
    ip_to_u128(s.parse().expect("ip"))
}

#[test]
fn ip_bands_follow_kep_3070() {
    // (cidr, static band, dynamic band) as docs/upstream/apiserver-allocation.md §4.4 lists them.
    let cases = [
        (
            "10.96.0.0/12",
            Some(("10.96.0.1", "10.96.1.0")),
            Some(("10.96.1.1", "10.111.255.254")),
        ),
        (
            "10.96.0.0/16",
            Some(("10.96.0.1", "10.96.1.0")),
            Some(("10.96.1.1", "10.96.255.254")),
        ),
        (
            "10.0.0.0/21",
            Some(("10.0.0.1", "10.0.0.128")),
            Some(("10.0.0.129", "10.0.7.254")),
        ),
        (
            "10.0.0.0/24",
            Some(("10.0.0.1", "10.0.0.16")),
            Some(("10.0.0.17", "10.0.0.254")),
        ),
        (
            "10.0.0.0/27",
            Some(("10.0.0.1", "10.0.0.16")),
            Some(("10.0.0.17", "10.0.0.30")),
        ),
        ("10.0.0.0/28", None, Some(("10.0.0.1", "10.0.0.14"))),
        ("10.0.0.0/30", None, Some(("10.0.0.1", "10.0.0.2"))),
        (
            "fd00::/108",
            Some(("fd00::1", "fd00::100")),
            Some(("fd00::101", "fd00::f:ffff")),
        ),
        (
            "fd00::/64",
            Some(("fd00::1", "fd00::100")),
            Some(("fd00::101", "fd00::ffff:ffff:ffff:ffff")),
        ),
    ];
    for (cidr, fixed, dynamic) in cases {
        let r = range(cidr);
        let span = |b: Option<(&str, &str)>| b.map(|(a, z)| ip(a)..=ip(z));
        assert_eq!(r.static_band, span(fixed), "{cidr} static");
        assert_eq!(r.dynamic_band, span(dynamic), "{cidr} dynamic");
    }
}

#[test]
fn unusable_cidrs() {
    for cidr in [
        "10.0.0.0/31",
        "10.0.0.1/32",
        "fd00::1/128",
        "fd00::/48",
        "ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff/128",
    ] {
        assert!(
            CidrRange::new(cidr.parse().expect("cidr")).is_none(),
            "{cidr}"
        );
    }
}

#[test]
fn contains_excludes_network_and_broadcast() {
    let r = range("10.96.0.0/16");
    assert!(!r.contains("10.96.0.0".parse().expect("ip")));
    assert!(r.contains("10.96.0.1".parse().expect("ip")));
    assert!(r.contains("10.96.255.254".parse().expect("ip")));
    assert!(!r.contains("10.96.255.255".parse().expect("ip")));
    assert!(!r.contains("10.97.0.1".parse().expect("ip")));
    assert!(!r.contains("fd00::1".parse().expect("ip")));
    assert_eq!(r.size(), 65534);
    let v6 = range("fd00::/112");
    assert!(
        v6.contains("fd00::ffff".parse().expect("ip")),
        "IPv6 keeps the all-ones address"
    );
}

#[test]
fn port_bands_follow_kep_3668() {
    assert_eq!(PortRange::DEFAULT.static_band(), Some(30000..=30085));
    let r: PortRange = "30000-30999".parse().expect("range");
    assert_eq!(port_band_offset(r.size()), 31);
    assert_eq!(port_band_offset(5000), 128);
    assert_eq!(port_band_offset(16), 0);
    assert_eq!(port_band_offset(17), 16);
    // A policy sub-range straddling the band edge: dynamic part first.
    let sub: PortRange = "30080-30100".parse().expect("range");
    assert_eq!(
        PortRange::DEFAULT.bands_of(sub),
        vec![30086..=30100, 30080..=30085]
    );
    let low: PortRange = "30000-30010".parse().expect("range");
    assert_eq!(PortRange::DEFAULT.bands_of(low), vec![30000..=30010]);
    assert!("32767-30000".parse::<PortRange>().is_err());
    assert!("0-10".parse::<PortRange>().is_err());
    assert!("x".parse::<PortRange>().is_err());
}

#[test]
fn scan_prefers_the_first_band_and_wraps() {
    let bands = [10..=19, 0..=9];
    // Everything in the upper band from the start on is taken: wraps to its beginning.
    assert_eq!(scan(&bands, 0.5, 100, |n| (12..=19).contains(&n)), Some(10));
    // Upper band full: falls back to the static band.
    assert_eq!(scan(&bands, 0.0, 100, |n| n >= 10), Some(0));
    // All full.
    assert_eq!(scan(&bands, 0.3, 100, |_| true), None);
    // The budget bounds the probes per band: the upper band gives up, the lower one is tried.
    assert_eq!(scan(&bands, 0.0, 5, |n| n >= 5), Some(0));
    assert_eq!(scan(&bands, 0.0, 5, |n| n != 16 && n != 9), None);
    // Start fraction near 1 stays in range.
    assert_eq!(scan(&[5..=5], 0.999, 10, |_| false), Some(5));
}
