//! Small parsing helpers shared by the `TryFrom` conversions.

use std::net::IpAddr;

use ipnet::IpNet;

use crate::{Error, Result};

pub(crate) fn ip(kind: &'static str, field: &'static str, value: &str) -> Result<IpAddr> {
    value.parse().map_err(|_| Error::InvalidIp {
        kind,
        field,
        value: value.to_owned(),
    })
}

pub(crate) fn cidr(kind: &'static str, field: &'static str, value: &str) -> Result<IpNet> {
    let value = value.trim();
    // A bare address is a /32 or /128, as upstream's source-range parsing accepts.
    value
        .parse::<IpNet>()
        .or_else(|_| value.parse::<IpAddr>().map(IpNet::from))
        .map_err(|_| Error::InvalidCidr {
            kind,
            field,
            value: value.to_owned(),
        })
}

pub(crate) fn port(kind: &'static str, field: &'static str, value: i32) -> Result<u16> {
    in_range(kind, field, value, 1, 65535).map(|p| p as u16)
}

pub(crate) fn in_range(
    kind: &'static str,
    field: &'static str,
    value: i32,
    min: i32,
    max: i32,
) -> Result<i32> {
    if (min..=max).contains(&value) {
        Ok(value)
    } else {
        Err(Error::OutOfRange {
            kind,
            field,
            value: value.into(),
            min: min.into(),
            max: max.into(),
        })
    }
}

pub(crate) fn required<'a>(
    kind: &'static str,
    field: &'static str,
    value: &'a Option<String>,
) -> Result<&'a str> {
    match value.as_deref() {
        Some(v) if !v.is_empty() => Ok(v),
        _ => Err(Error::MissingField { kind, field }),
    }
}

/// Converts every item, into a Vec of exactly the right capacity. (Collecting through `Result`
/// loses the size hint and over-allocates, which every cache would then carry.)
pub(crate) fn convert_all<S, T>(items: &[S], f: impl FnMut(&S) -> Result<T>) -> Result<Vec<T>> {
    let mut out = Vec::with_capacity(items.len());
    for item in items.iter().map(f) {
        out.push(item?);
    }
    Ok(out)
}

/// Empty strings in the API mean "unset". Boxed: the model's strings never grow.
pub(crate) fn boxed(value: &Option<String>) -> Option<Box<str>> {
    value.as_deref().filter(|v| !v.is_empty()).map(Box::from)
}
