//! Self-managed serving certificates for the webhook: a CA and a serving certificate kept in a
//! Secret, rotated before they expire, and the CA bundle published in the
//! MutatingWebhookConfiguration so the API server trusts what the webhook serves.
//!
//! The pure part decides ([`decide`]) and produces new material ([`Material::apply`]); the rim
//! ([`run`]) reads and writes the Secret and the webhook configuration. Every replica loads the
//! Secret's certificate into its [`CertStore`]; only the leader writes.
//!
//! Validity is not parsed back out of DER: the times each certificate was issued with are kept
//! as RFC 3339 annotations on the Secret, next to the PEM they describe. What the PEM itself
//! proves (the key matches, the chain verifies for the wanted names at a given time) is checked
//! with rustls, the way the API server's TLS client would check it.
//!
//! A CA is rotated in two steps, so no API server ever holds a bundle that does not trust the
//! certificate being served: the new CA joins the bundle (the old one stays until it expires)
//! while the serving certificate from the old CA is kept; only once the webhook configuration
//! carries that bundle is the serving certificate reissued from the new CA.

use std::collections::BTreeMap;
use std::future::Future;
use std::net::IpAddr;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use k8s_openapi::ByteString;
use k8s_openapi::api::admissionregistration::v1::MutatingWebhookConfiguration;
use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, PostParams};
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, SanType,
};
use svcplane_runtime::error_chain;
use svcplane_runtime::tls::rustls::pki_types::{DnsName, InvalidDnsNameError};
use svcplane_runtime::tls::{self, CertStore, verify_server_cert};
use tokio::sync::watch;
use tracing::Instrument;

/// The CA's subject common name.
pub const CA_COMMON_NAME: &str = "svcplane-allocator-ca";
/// The serving certificate's subject common name; clients check the SANs, not this.
const SERVING_COMMON_NAME: &str = "svcplane-allocator";
/// The CA lives this many serving validities. Rotated with a third of its life left, it always
/// outlives the serving certificates it issues.
pub const CA_VALIDITY_FACTOR: u32 = 3;
/// Certificates start this much (at most a tenth of their validity) before they are issued,
/// for API servers whose clock runs a little behind ours.
const CLOCK_SKEW: Duration = Duration::from_secs(300);
/// Conflicting writes retried within one round before leaving it to the next.
const CONFLICT_RETRIES: usize = 3;

pub const TLS_CRT: &str = "tls.crt";
pub const TLS_KEY: &str = "tls.key";
/// The CA bundle: the current CA first, then retired CAs that have not expired yet.
pub const CA_CRT: &str = "ca.crt";
/// The current CA's key.
pub const CA_KEY: &str = "ca.key";

pub const CA_NOT_BEFORE: &str = "svcplane.dev/ca-not-before";
pub const CA_NOT_AFTER: &str = "svcplane.dev/ca-not-after";
/// Comma-separated expiry of each retired CA, in bundle order after the current one.
pub const RETIRED_CA_NOT_AFTER: &str = "svcplane.dev/retired-ca-not-after";
pub const SERVING_NOT_BEFORE: &str = "svcplane.dev/serving-not-before";
pub const SERVING_NOT_AFTER: &str = "svcplane.dev/serving-not-after";
/// Comma-separated, sorted SANs of the serving certificate.
pub const SERVING_SANS: &str = "svcplane.dev/serving-sans";
const MANAGED_BY: (&str, &str) = ("app.kubernetes.io/managed-by", "svcplane-allocator");

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("generating a key or certificate")]
    Generate(#[source] rcgen::Error),
    #[error("{name:?} cannot be a DNS name in a certificate")]
    InvalidDnsName {
        name: String,
        #[source]
        source: InvalidDnsNameError,
    },
    #[error("a serving certificate needs at least one DNS name or IP address")]
    NoNames,
    #[error("the CA key cannot sign")]
    CaKey(#[source] rcgen::Error),
    #[error("the CA certificate and key are not a usable pair")]
    CaUnusable(#[source] tls::Error),
    #[error("the Secret has no {key}")]
    MissingKey { key: &'static str },
    #[error("the Secret's {key} is not UTF-8 PEM")]
    NotUtf8 { key: &'static str },
    #[error("the Secret's {key} holds no certificate")]
    NoCertificate { key: &'static str },
    #[error("annotation {key} is missing or not an RFC 3339 time")]
    BadTime { key: &'static str },
    #[error("reading the Secret")]
    SecretRead(#[source] kube::Error),
    #[error("writing the Secret")]
    SecretWrite(#[source] kube::Error),
    #[error("reading the MutatingWebhookConfiguration")]
    WebhookConfigurationRead(#[source] kube::Error),
    #[error("writing the MutatingWebhookConfiguration")]
    WebhookConfigurationWrite(#[source] kube::Error),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// What the serving certificate must cover, and for how long each one is issued.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Wanted {
    pub dns_names: Vec<String>,
    pub ip_sans: Vec<IpAddr>,
    pub validity: Duration,
}

impl Wanted {
    /// The SANs as recorded in [`SERVING_SANS`]: DNS names and addresses, sorted, no repeats.
    pub fn sans(&self) -> Vec<String> {
        canonical_sans(&self.dns_names, &self.ip_sans)
    }

    pub fn ca_validity(&self) -> Duration {
        self.validity.saturating_mul(CA_VALIDITY_FACTOR)
    }
}

fn canonical_sans(dns_names: &[String], ip_sans: &[IpAddr]) -> Vec<String> {
    let mut sans: Vec<String> = dns_names
        .iter()
        .cloned()
        .chain(ip_sans.iter().map(IpAddr::to_string))
        .collect();
    sans.sort();
    sans.dedup();
    sans
}

/// The CA that issues serving certificates now.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Ca {
    pub cert_pem: String,
    pub key_pem: String,
    pub not_before: SystemTime,
    pub not_after: SystemTime,
}

/// A CA replaced by a newer one, still in the bundle until it expires.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RetiredCa {
    pub cert_pem: String,
    pub not_after: SystemTime,
}

/// The webhook's serving certificate (leaf only: the bundle holds its CA).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Serving {
    pub cert_pem: String,
    pub key_pem: String,
    pub not_before: SystemTime,
    pub not_after: SystemTime,
    /// As [`Wanted::sans`] spells them.
    pub sans: Vec<String>,
}

/// Everything the Secret holds.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Material {
    pub ca: Ca,
    pub retired: Vec<RetiredCa>,
    /// `None` when the Secret has no usable serving certificate.
    pub serving: Option<Serving>,
}

/// Why a serving certificate is reissued.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Reason {
    /// There is none.
    Missing,
    /// It cannot serve at all: bad PEM, a key that does not match, expired, or trusted by no
    /// CA in the bundle for any wanted name.
    Unusable,
    /// It was issued by a CA other than the current one.
    WrongIssuer,
    /// Its SANs are not the wanted ones.
    SansChanged,
    /// Less than a third of its lifetime is left.
    Expiring,
}

impl Reason {
    pub fn as_str(self) -> &'static str {
        match self {
            Reason::Missing => "missing",
            Reason::Unusable => "unusable",
            Reason::WrongIssuer => "wrong_issuer",
            Reason::SansChanged => "sans_changed",
            Reason::Expiring => "expiring",
        }
    }
}

/// What the leader does with the material this round.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Decision {
    Keep,
    /// A new CA heads the bundle; the old one is retired (kept until it expires). The serving
    /// certificate stays unless it is unusable.
    RotateCa,
    /// Drop retired CAs that have expired from the bundle.
    PruneRetired,
    /// Issue a new serving certificate from the current CA.
    Reissue(Reason),
    /// The serving certificate should be reissued, but the webhook configuration does not carry
    /// the current bundle yet: an API server could not trust a certificate from the current CA.
    WaitForBundle(Reason),
}

/// Whole seconds, as X.509 and the annotations keep time.
fn whole_seconds(t: SystemTime) -> SystemTime {
    let secs = t.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
    UNIX_EPOCH + Duration::from_secs(secs)
}

/// `[not_before, not_after]` for a certificate issued at `now`.
fn window(now: SystemTime, validity: Duration) -> (SystemTime, SystemTime) {
    let now = whole_seconds(now);
    let skew = Duration::from_secs((validity / 10).min(CLOCK_SKEW).as_secs());
    let validity = Duration::from_secs(validity.as_secs().max(1));
    (now - skew, now + validity)
}

/// True when less than a third of `[not_before, not_after]` is left at `now`.
fn nearly_expired(not_before: SystemTime, not_after: SystemTime, now: SystemTime) -> bool {
    let Ok(lifetime) = not_after.duration_since(not_before) else {
        return true;
    };
    now + lifetime / 3 >= not_after
}

/// The CA's parameters. Also rebuilds the issuer from a stored CA key: certificates name their
/// issuer by this subject, and the key identifiers are derived from the key.
fn ca_params(not_before: SystemTime, not_after: SystemTime) -> CertificateParams {
    let mut params = CertificateParams::default();
    params.distinguished_name = DistinguishedName::new();
    params
        .distinguished_name
        .push(DnType::CommonName, CA_COMMON_NAME);
    // Path length 0: this CA signs serving certificates, never other CAs.
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    params.not_before = not_before.into();
    params.not_after = not_after.into();
    params
}

/// A new self-signed CA (ECDSA P-256) valid for `validity` from `now`.
pub fn generate_ca(validity: Duration, now: SystemTime) -> Result<Ca> {
    let key = KeyPair::generate().map_err(Error::Generate)?;
    let (not_before, not_after) = window(now, validity);
    let cert = ca_params(not_before, not_after)
        .self_signed(&key)
        .map_err(Error::Generate)?;
    Ok(Ca {
        cert_pem: cert.pem(),
        key_pem: key.serialize_pem(),
        not_before,
        not_after,
    })
}

/// A serving certificate (ECDSA P-256) from `ca` for `dns_names` and `ip_sans`, valid for
/// `validity` from `now` but never beyond the CA.
pub fn issue_serving(
    ca: &Ca,
    dns_names: &[String],
    ip_sans: &[IpAddr],
    validity: Duration,
    now: SystemTime,
) -> Result<Serving> {
    if dns_names.is_empty() && ip_sans.is_empty() {
        return Err(Error::NoNames);
    }
    let ca_key = KeyPair::from_pem(&ca.key_pem).map_err(Error::CaKey)?;
    let issuer = Issuer::new(ca_params(ca.not_before, ca.not_after), ca_key);

    let (not_before, not_after) = window(now, validity);
    let not_after = not_after.min(ca.not_after);
    let mut params = CertificateParams::default();
    params.distinguished_name = DistinguishedName::new();
    params
        .distinguished_name
        .push(DnType::CommonName, SERVING_COMMON_NAME);
    for name in dns_names {
        // rcgen takes any IA5 string; a name no TLS client could match is refused here.
        DnsName::try_from(name.as_str()).map_err(|source| Error::InvalidDnsName {
            name: name.clone(),
            source,
        })?;
        let dns = name.clone().try_into().map_err(Error::Generate)?;
        params.subject_alt_names.push(SanType::DnsName(dns));
    }
    params
        .subject_alt_names
        .extend(ip_sans.iter().copied().map(SanType::IpAddress));
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    params.use_authority_key_identifier_extension = true;
    params.not_before = not_before.into();
    params.not_after = not_after.into();

    let key = KeyPair::generate().map_err(Error::Generate)?;
    let cert = params.signed_by(&key, &issuer).map_err(Error::Generate)?;
    Ok(Serving {
        cert_pem: cert.pem(),
        key_pem: key.serialize_pem(),
        not_before,
        not_after,
        sans: canonical_sans(dns_names, ip_sans),
    })
}

/// Whether `serving` can serve at `now` to a client trusting `trusted_pem`: its key matches and
/// it verifies for at least one wanted name.
fn verifies(serving: &Serving, trusted_pem: &str, want: &Wanted, now: SystemTime) -> bool {
    CertStore::from_pem(serving.cert_pem.as_bytes(), serving.key_pem.as_bytes()).is_ok()
        && want.sans().iter().any(|name| {
            verify_server_cert(
                trusted_pem.as_bytes(),
                serving.cert_pem.as_bytes(),
                name,
                now,
            )
            .is_ok()
        })
}

/// What to do with `material` at `now`. `bundle_published`: every webhook in the configuration
/// already carries `material`'s bundle (or there is no configuration to update).
pub fn decide(
    material: &Material,
    want: &Wanted,
    now: SystemTime,
    bundle_published: bool,
) -> Decision {
    if nearly_expired(material.ca.not_before, material.ca.not_after, now) {
        return Decision::RotateCa;
    }
    let Some(serving) = &material.serving else {
        return Decision::Reissue(Reason::Missing);
    };
    // Nothing to lose by replacing a certificate no client can use: no waiting for the bundle.
    if !verifies(serving, &material.bundle_pem(), want, now) {
        return Decision::Reissue(Reason::Unusable);
    }
    if material.retired.iter().any(|ca| ca.not_after <= now) {
        return Decision::PruneRetired;
    }
    let reason = if !verifies(serving, &material.ca.cert_pem, want, now) {
        Reason::WrongIssuer
    } else if serving.sans != want.sans() {
        Reason::SansChanged
    } else if nearly_expired(serving.not_before, serving.not_after, now) {
        Reason::Expiring
    } else {
        return Decision::Keep;
    };
    if bundle_published {
        Decision::Reissue(reason)
    } else {
        Decision::WaitForBundle(reason)
    }
}

impl Material {
    /// A new CA and a serving certificate from it.
    pub fn generate(want: &Wanted, now: SystemTime) -> Result<Self> {
        let ca = generate_ca(want.ca_validity(), now)?;
        let serving = issue_serving(&ca, &want.dns_names, &want.ip_sans, want.validity, now)?;
        Ok(Self {
            ca,
            retired: Vec::new(),
            serving: Some(serving),
        })
    }

    /// The PEM bundle API servers trust: the current CA, then the retired ones.
    pub fn bundle_pem(&self) -> String {
        let mut bundle = self.ca.cert_pem.clone();
        for ca in &self.retired {
            bundle.push_str(&ca.cert_pem);
        }
        bundle
    }

    /// The material after `decision`, or `None` when the decision changes nothing.
    pub fn apply(
        &self,
        decision: Decision,
        want: &Wanted,
        now: SystemTime,
    ) -> Result<Option<Self>> {
        match decision {
            Decision::Keep | Decision::WaitForBundle(_) => Ok(None),
            Decision::RotateCa => self.rotate_ca(want, now).map(Some),
            Decision::PruneRetired => {
                let mut next = self.clone();
                next.retired.retain(|ca| ca.not_after > now);
                Ok(Some(next))
            }
            Decision::Reissue(_) => {
                let serving =
                    issue_serving(&self.ca, &want.dns_names, &want.ip_sans, want.validity, now)?;
                Ok(Some(Self {
                    serving: Some(serving),
                    ..self.clone()
                }))
            }
        }
    }

    fn rotate_ca(&self, want: &Wanted, now: SystemTime) -> Result<Self> {
        let ca = generate_ca(want.ca_validity(), now)?;
        let old = RetiredCa {
            cert_pem: self.ca.cert_pem.clone(),
            not_after: self.ca.not_after,
        };
        let retired = std::iter::once(old)
            .chain(self.retired.iter().cloned())
            .filter(|ca| ca.not_after > now)
            .collect();
        let mut next = Self {
            ca,
            retired,
            serving: self.serving.clone(),
        };
        // The old CA's certificate keeps serving until API servers trust the new CA, unless it
        // cannot serve anyway.
        let bundle = next.bundle_pem();
        if !next
            .serving
            .as_ref()
            .is_some_and(|s| verifies(s, &bundle, want, now))
        {
            next.serving = Some(issue_serving(
                &next.ca,
                &want.dns_names,
                &want.ip_sans,
                want.validity,
                now,
            )?);
        }
        Ok(next)
    }

    /// Reads what [`Material::write_to`] wrote. Fails when the CA part is missing or unusable;
    /// a missing or incomplete serving part is `serving: None`.
    pub fn from_secret(secret: &Secret) -> Result<Self> {
        let data = secret.data.as_ref();
        let text = |key: &'static str| -> Result<String> {
            let bytes = data
                .and_then(|d| d.get(key))
                .ok_or(Error::MissingKey { key })?;
            String::from_utf8(bytes.0.clone()).map_err(|_| Error::NotUtf8 { key })
        };
        let annotations = secret.metadata.annotations.as_ref();
        let annotation = |key: &str| annotations.and_then(|a| a.get(key)).map(String::as_str);
        let time = |key: &'static str| -> Result<SystemTime> {
            annotation(key)
                .and_then(parse_time)
                .ok_or(Error::BadTime { key })
        };

        let bundle = pem_certificates(&text(CA_CRT)?);
        let (current, rest) = bundle
            .split_first()
            .ok_or(Error::NoCertificate { key: CA_CRT })?;
        let ca = Ca {
            cert_pem: current.clone(),
            key_pem: text(CA_KEY)?,
            not_before: time(CA_NOT_BEFORE)?,
            not_after: time(CA_NOT_AFTER)?,
        };
        CertStore::from_pem(ca.cert_pem.as_bytes(), ca.key_pem.as_bytes())
            .map_err(Error::CaUnusable)?;
        KeyPair::from_pem(&ca.key_pem).map_err(Error::CaKey)?;

        let retired_not_after = annotation(RETIRED_CA_NOT_AFTER)
            .unwrap_or_default()
            .split(',')
            .filter(|s| !s.is_empty())
            .map(|s| {
                parse_time(s).ok_or(Error::BadTime {
                    key: RETIRED_CA_NOT_AFTER,
                })
            })
            .collect::<Result<Vec<_>>>()?;
        // A retired CA without a recorded expiry cannot be pruned in time; it is dropped.
        let retired = rest
            .iter()
            .zip(retired_not_after)
            .map(|(cert_pem, not_after)| RetiredCa {
                cert_pem: cert_pem.clone(),
                not_after,
            })
            .collect();

        let serving = (|| {
            Some(Serving {
                cert_pem: text(TLS_CRT).ok()?,
                key_pem: text(TLS_KEY).ok()?,
                not_before: time(SERVING_NOT_BEFORE).ok()?,
                not_after: time(SERVING_NOT_AFTER).ok()?,
                sans: annotation(SERVING_SANS)?
                    .split(',')
                    .filter(|s| !s.is_empty())
                    .map(str::to_owned)
                    .collect(),
            })
        })();
        Ok(Self {
            ca,
            retired,
            serving,
        })
    }

    /// Writes the material into `secret`'s data and annotations; other keys, annotations and
    /// labels stay as they are.
    pub fn write_to(&self, secret: &mut Secret) {
        let data = secret.data.get_or_insert_with(BTreeMap::new);
        data.insert(CA_CRT.into(), ByteString(self.bundle_pem().into_bytes()));
        data.insert(
            CA_KEY.into(),
            ByteString(self.ca.key_pem.clone().into_bytes()),
        );
        if let Some(serving) = &self.serving {
            data.insert(
                TLS_CRT.into(),
                ByteString(serving.cert_pem.clone().into_bytes()),
            );
            data.insert(
                TLS_KEY.into(),
                ByteString(serving.key_pem.clone().into_bytes()),
            );
        }

        let annotations = secret
            .metadata
            .annotations
            .get_or_insert_with(BTreeMap::new);
        let mut set = |key: &str, value: String| annotations.insert(key.to_owned(), value);
        set(CA_NOT_BEFORE, format_time(self.ca.not_before));
        set(CA_NOT_AFTER, format_time(self.ca.not_after));
        let retired: Vec<String> = self
            .retired
            .iter()
            .map(|ca| format_time(ca.not_after))
            .collect();
        set(RETIRED_CA_NOT_AFTER, retired.join(","));
        if let Some(serving) = &self.serving {
            set(SERVING_NOT_BEFORE, format_time(serving.not_before));
            set(SERVING_NOT_AFTER, format_time(serving.not_after));
            set(SERVING_SANS, serving.sans.join(","));
        }

        secret
            .metadata
            .labels
            .get_or_insert_with(BTreeMap::new)
            .insert(MANAGED_BY.0.into(), MANAGED_BY.1.into());
    }

    /// A new `kubernetes.io/tls` Secret holding the material.
    pub fn to_secret(&self, namespace: &str, name: &str) -> Secret {
        let mut secret = Secret {
            metadata: ObjectMeta {
                name: Some(name.to_owned()),
                namespace: Some(namespace.to_owned()),
                ..Default::default()
            },
            type_: Some("kubernetes.io/tls".to_owned()),
            ..Default::default()
        };
        self.write_to(&mut secret);
        secret
    }
}

fn format_time(t: SystemTime) -> String {
    Timestamp::try_from(t).map_or_else(|_| String::new(), |ts| ts.to_string())
}

fn parse_time(s: &str) -> Option<SystemTime> {
    s.parse::<Timestamp>().ok().map(SystemTime::from)
}

/// The CERTIFICATE blocks of `pem`, each with its END line and a newline.
fn pem_certificates(pem: &str) -> Vec<String> {
    const BEGIN: &str = "-----BEGIN CERTIFICATE-----";
    const END: &str = "-----END CERTIFICATE-----";
    let mut blocks = Vec::new();
    let mut rest = pem;
    while let Some(start) = rest.find(BEGIN) {
        let Some(len) = rest[start..].find(END) else {
            break;
        };
        let end = start + len + END.len();
        blocks.push(format!("{}\n", &rest[start..end]));
        rest = &rest[end..];
    }
    blocks
}

/// A throwaway self-signed certificate, so the webhook's listener can start before the Secret
/// exists; [`run`] replaces it once it has read the Secret.
pub fn bootstrap_store() -> CertStore {
    // Key generation and self-signing with ring fail only if the system RNG does, and then the
    // process has no business serving TLS anyway.
    let key = KeyPair::generate().expect("generating a P-256 key");
    let mut params = CertificateParams::new(vec!["svcplane-allocator-bootstrap".to_owned()])
        .expect("a valid DNS name");
    params.distinguished_name = DistinguishedName::new();
    params
        .distinguished_name
        .push(DnType::CommonName, "svcplane-allocator-bootstrap");
    let cert = params.self_signed(&key).expect("self-signing");
    CertStore::from_pem(cert.pem().as_bytes(), key.serialize_pem().as_bytes())
        .expect("a freshly generated pair")
}

/// Where the self-managed certificates live and what they must cover.
#[derive(Clone, Debug)]
pub struct SelfManaged {
    pub namespace: String,
    pub secret_name: String,
    /// The MutatingWebhookConfiguration whose webhooks get the CA bundle.
    pub webhook_configuration: String,
    pub dns_names: Vec<String>,
    pub ip_sans: Vec<IpAddr>,
    /// Of each serving certificate; the CA gets [`CA_VALIDITY_FACTOR`] times as long.
    pub validity: Duration,
}

impl SelfManaged {
    pub fn wanted(&self) -> Wanted {
        Wanted {
            dns_names: self.dns_names.clone(),
            ip_sans: self.ip_sans.clone(),
            validity: self.validity,
        }
    }

    /// How often the Secret is read: a tenth of the validity, between 1 s and 30 s.
    pub fn poll_interval(&self) -> Duration {
        (self.validity / 10).clamp(Duration::from_secs(1), Duration::from_secs(30))
    }
}

/// Keeps `store` serving the Secret's certificate until `shutdown` resolves. While `leading`
/// is true this replica also creates and rotates the Secret and publishes the CA bundle in the
/// webhook configuration. Errors are logged and retried next round, never fatal.
pub async fn run(
    client: kube::Client,
    cfg: SelfManaged,
    store: CertStore,
    mut leading: watch::Receiver<bool>,
    shutdown: impl Future<Output = ()>,
) {
    let span = tracing::info_span!(
        "certs",
        secret.ns = %cfg.namespace,
        secret.name = %cfg.secret_name,
    );
    async move {
        if cfg.dns_names.is_empty() && cfg.ip_sans.is_empty() {
            tracing::error!("no DNS names or IP addresses for the serving certificate");
            return;
        }
        let every = cfg.poll_interval();
        let mut worker = Worker {
            secrets: Api::namespaced(client.clone(), &cfg.namespace),
            webhooks: Api::all(client),
            want: cfg.wanted(),
            cfg,
            store,
            loaded: None,
            webhooks_missing: false,
        };
        tokio::pin!(shutdown);
        let mut leading_open = true;
        loop {
            let lead = *leading.borrow_and_update();
            tokio::select! {
                _ = &mut shutdown => return,
                _ = worker.round(lead) => {}
            }
            tokio::select! {
                _ = &mut shutdown => return,
                _ = tokio::time::sleep(every) => {}
                changed = leading.changed(), if leading_open => {
                    // A dropped sender leaves the last word standing.
                    leading_open = changed.is_ok();
                }
            }
        }
    }
    .instrument(span)
    .await
}

struct Worker {
    secrets: Api<Secret>,
    webhooks: Api<MutatingWebhookConfiguration>,
    cfg: SelfManaged,
    want: Wanted,
    store: CertStore,
    /// The `tls.crt`/`tls.key` last tried, good or bad, so each pair is loaded (or reported)
    /// once.
    loaded: Option<(Vec<u8>, Vec<u8>)>,
    /// Said once that the webhook configuration is missing, not every round.
    webhooks_missing: bool,
}

impl Worker {
    async fn round(&mut self, leading: bool) {
        let secret = if leading {
            self.lead().await
        } else {
            self.secrets
                .get_opt(&self.cfg.secret_name)
                .await
                .map_err(Error::SecretRead)
        };
        match secret {
            Ok(Some(secret)) => self.load(&secret),
            Ok(None) => tracing::debug!("no Secret yet"),
            Err(error) => tracing::warn!(
                error = %error_chain(&error),
                leading,
                "certificate round failed; retrying next round"
            ),
        }
    }

    /// Serves the Secret's pair if it is new.
    fn load(&mut self, secret: &Secret) {
        let data = secret.data.as_ref();
        let get = |key: &str| data.and_then(|d| d.get(key)).map(|b| b.0.clone());
        let (Some(cert), Some(key)) = (get(TLS_CRT), get(TLS_KEY)) else {
            tracing::debug!("the Secret has no serving certificate yet");
            return;
        };
        let pair = (cert, key);
        if self.loaded.as_ref() == Some(&pair) {
            return;
        }
        match self.store.replace_pem(&pair.0, &pair.1) {
            Ok(()) => tracing::info!("serving the Secret's certificate"),
            Err(error) => tracing::warn!(
                error = %error_chain(&error),
                "the Secret's certificate is unusable; keeping the current one"
            ),
        }
        self.loaded = Some(pair);
    }

    /// Creates or rotates the Secret as needed and publishes its bundle; returns the Secret as
    /// written (or read, when nothing changed). `None` after conflicts on every try.
    async fn lead(&mut self) -> Result<Option<Secret>> {
        let name = self.cfg.secret_name.clone();
        for _ in 0..CONFLICT_RETRIES {
            let now = SystemTime::now();
            let current = self
                .secrets
                .get_opt(&name)
                .await
                .map_err(Error::SecretRead)?;
            let webhooks = self
                .webhooks
                .get_opt(&self.cfg.webhook_configuration)
                .await
                .map_err(Error::WebhookConfigurationRead)?;

            let (secret, material) = match current {
                None => {
                    let material = Material::generate(&self.want, now)?;
                    let secret = material.to_secret(&self.cfg.namespace, &name);
                    match self.secrets.create(&PostParams::default(), &secret).await {
                        Ok(created) => {
                            tracing::info!("created the Secret with a new CA and certificate");
                            (created, material)
                        }
                        Err(kube::Error::Api(s)) if s.code == 409 => {
                            tracing::debug!("the Secret appeared meanwhile; reading it again");
                            continue;
                        }
                        Err(error) => return Err(Error::SecretWrite(error)),
                    }
                }
                Some(secret) => {
                    let (next, reason) = match Material::from_secret(&secret) {
                        Ok(material) => {
                            let bundle = material.bundle_pem();
                            let published = webhooks
                                .as_ref()
                                .is_none_or(|w| carries_bundle(w, bundle.as_bytes()));
                            let decision = decide(&material, &self.want, now, published);
                            match material.apply(decision, &self.want, now)? {
                                Some(next) => (next, describe(decision)),
                                None => {
                                    if let Decision::WaitForBundle(reason) = decision {
                                        tracing::info!(
                                            reason = reason.as_str(),
                                            "serving certificate due for reissue once the \
                                             webhook configuration trusts the current CA"
                                        );
                                    }
                                    self.publish(webhooks, &bundle).await?;
                                    return Ok(Some(secret));
                                }
                            }
                        }
                        Err(error) => {
                            tracing::warn!(
                                error = %error_chain(&error),
                                "the Secret's CA is unusable; starting over with a new one"
                            );
                            (Material::generate(&self.want, now)?, "ca_unusable")
                        }
                    };
                    let mut updated = secret;
                    next.write_to(&mut updated);
                    // `updated` still carries the resourceVersion read above.
                    match self
                        .secrets
                        .replace(&name, &PostParams::default(), &updated)
                        .await
                    {
                        Ok(written) => {
                            tracing::info!(reason, "rotated the Secret's certificates");
                            (written, next)
                        }
                        Err(kube::Error::Api(s)) if s.code == 409 => {
                            tracing::debug!("the Secret changed meanwhile; reading it again");
                            continue;
                        }
                        Err(error) => return Err(Error::SecretWrite(error)),
                    }
                }
            };
            self.publish(webhooks, &material.bundle_pem()).await?;
            return Ok(Some(secret));
        }
        tracing::info!("the Secret kept changing under us; trying again next round");
        Ok(None)
    }

    /// Sets every webhook's `clientConfig.caBundle` to `bundle`, writing only when one differs.
    async fn publish(
        &mut self,
        webhooks: Option<MutatingWebhookConfiguration>,
        bundle: &str,
    ) -> Result<()> {
        let name = &self.cfg.webhook_configuration;
        let Some(mut config) = webhooks else {
            if !self.webhooks_missing {
                tracing::info!(
                    webhook_configuration = %name,
                    "MutatingWebhookConfiguration not found; publishing the CA bundle once it exists"
                );
            }
            self.webhooks_missing = true;
            return Ok(());
        };
        self.webhooks_missing = false;
        if carries_bundle(&config, bundle.as_bytes()) {
            return Ok(());
        }
        let bundle = ByteString(bundle.as_bytes().to_vec());
        for webhook in config.webhooks.iter_mut().flatten() {
            webhook.client_config.ca_bundle = Some(bundle.clone());
        }
        match self
            .webhooks
            .replace(name, &PostParams::default(), &config)
            .await
        {
            Ok(_) => {
                tracing::info!(webhook_configuration = %name, "published the CA bundle");
                Ok(())
            }
            Err(kube::Error::Api(s)) if s.code == 409 => {
                tracing::debug!(
                    webhook_configuration = %name,
                    "the webhook configuration changed meanwhile; publishing next round"
                );
                Ok(())
            }
            Err(error) => Err(Error::WebhookConfigurationWrite(error)),
        }
    }
}

/// Whether every webhook in `config` already trusts exactly `bundle`.
fn carries_bundle(config: &MutatingWebhookConfiguration, bundle: &[u8]) -> bool {
    config
        .webhooks
        .iter()
        .flatten()
        .all(|w| w.client_config.ca_bundle.as_ref().map(|b| b.0.as_slice()) == Some(bundle))
}

fn describe(decision: Decision) -> &'static str {
    match decision {
        Decision::Keep => "keep",
        Decision::RotateCa => "ca_expiring",
        Decision::PruneRetired => "retired_ca_expired",
        Decision::Reissue(reason) | Decision::WaitForBundle(reason) => reason.as_str(),
    }
}

#[cfg(test)]
mod tests;
