/// Why a Kubernetes object could not become a model value.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Error {
    #[error("{kind} has no {field}")]
    MissingField {
        kind: &'static str,
        field: &'static str,
    },
    #[error("{kind} field {field} holds invalid IP address {value:?}")]
    InvalidIp {
        kind: &'static str,
        field: &'static str,
        value: String,
    },
    #[error("{kind} field {field} holds invalid CIDR {value:?}")]
    InvalidCidr {
        kind: &'static str,
        field: &'static str,
        value: String,
    },
    #[error("{kind} field {field} holds {value}, outside {min}..={max}")]
    OutOfRange {
        kind: &'static str,
        field: &'static str,
        value: i64,
        min: i64,
        max: i64,
    },
    #[error("{kind} field {field} holds unknown value {value:?}")]
    UnknownValue {
        kind: &'static str,
        field: &'static str,
        value: String,
    },
    #[error("EndpointSlice address type {0:?} is not served (only IPv4 and IPv6 are)")]
    UnsupportedAddressType(String),
}

impl Error {
    /// A fixed label for metrics: one per variant, never built from object data.
    pub fn reason(&self) -> &'static str {
        match self {
            Error::MissingField { .. } => "missing_field",
            Error::InvalidIp { .. } => "invalid_ip",
            Error::InvalidCidr { .. } => "invalid_cidr",
            Error::OutOfRange { .. } => "out_of_range",
            Error::UnknownValue { .. } => "unknown_value",
            Error::UnsupportedAddressType(_) => "unsupported_address_type",
        }
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;
