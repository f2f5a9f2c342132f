use base64::Engine;
use k8s_openapi::api::admissionregistration::v1::{MutatingWebhook, WebhookClientConfig};

use super::*;

const SVC: &str = "svcplane-allocator.kube-system.svc";
const SVC_LOCAL: &str = "svcplane-allocator.kube-system.svc.cluster.local";

fn want() -> Wanted {
    Wanted {
        dns_names: vec![SVC.to_owned(), SVC_LOCAL.to_owned()],
        ip_sans: vec![IpAddr::from([10, 96, 0, 20])],
        validity: Duration::from_secs(300),
    }
}

/// A fixed, whole-second start so every window below is exact.
fn t0() -> SystemTime {
    whole_seconds(SystemTime::now())
}

fn secs(n: u64) -> Duration {
    Duration::from_secs(n)
}

fn verify(trusted: &str, cert: &str, name: &str, at: SystemTime) -> bool {
    verify_server_cert(trusted.as_bytes(), cert.as_bytes(), name, at).is_ok()
}

/// The DER inside the first PEM block.
fn der(pem: &str) -> Vec<u8> {
    let body: String = pem.lines().filter(|l| !l.starts_with("-----")).collect();
    base64::engine::general_purpose::STANDARD
        .decode(body)
        .expect("base64")
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

#[test]
fn the_serving_certificate_verifies_for_every_wanted_name_within_its_window() {
    let now = t0();
    let ca = generate_ca(secs(900), now).expect("CA");
    let want = want();
    let serving =
        issue_serving(&ca, &want.dns_names, &want.ip_sans, want.validity, now).expect("serving");

    assert_eq!(
        (ca.not_before, ca.not_after),
        (now - secs(90), now + secs(900))
    );
    assert_eq!(
        (serving.not_before, serving.not_after),
        (now - secs(30), now + secs(300)),
        "backdated by a tenth of the validity"
    );
    assert_eq!(serving.sans, vec!["10.96.0.20", SVC, SVC_LOCAL]);
    for name in [SVC, SVC_LOCAL, "10.96.0.20"] {
        assert!(verify(&ca.cert_pem, &serving.cert_pem, name, now), "{name}");
    }
    assert!(!verify(
        &ca.cert_pem,
        &serving.cert_pem,
        "other.kube-system.svc",
        now
    ));
    assert!(!verify(&ca.cert_pem, &serving.cert_pem, "10.96.0.21", now));
    assert!(verify(
        &ca.cert_pem,
        &serving.cert_pem,
        SVC,
        now + secs(299)
    ));
    assert!(!verify(
        &ca.cert_pem,
        &serving.cert_pem,
        SVC,
        now + secs(301)
    ));
    let other = generate_ca(secs(900), now).expect("CA");
    assert!(!verify(&other.cert_pem, &serving.cert_pem, SVC, now));

    // ECDSA P-256 keys, the CA named as asked.
    for key in [&ca.key_pem, &serving.key_pem] {
        let key = KeyPair::from_pem(key).expect("key");
        assert_eq!(key.algorithm(), &rcgen::PKCS_ECDSA_P256_SHA256);
    }
    assert!(contains(&der(&ca.cert_pem), CA_COMMON_NAME.as_bytes()));
}

#[test]
fn a_serving_certificate_never_outlives_its_ca() {
    let now = t0();
    let ca = generate_ca(secs(100), now).expect("CA");
    let serving = issue_serving(&ca, &[SVC.to_owned()], &[], secs(1000), now).expect("serving");
    assert_eq!(serving.not_after, ca.not_after);
}

#[test]
fn issuing_refuses_no_names_and_bad_names() {
    let now = t0();
    let ca = generate_ca(secs(100), now).expect("CA");
    assert!(matches!(
        issue_serving(&ca, &[], &[], secs(10), now),
        Err(Error::NoNames)
    ));
    let bad = issue_serving(&ca, &["not a name!".to_owned()], &[], secs(10), now);
    assert!(matches!(bad, Err(Error::InvalidDnsName { .. })), "{bad:?}");
    // An IP address alone is enough.
    issue_serving(&ca, &[], &[IpAddr::from([127, 0, 0, 1])], secs(10), now).expect("IP only");
}

#[test]
fn windows_and_lifetimes() {
    let now = t0();
    assert_eq!(
        window(now, secs(6)),
        (now, now + secs(6)),
        "under 10 s: no backdating"
    );
    assert_eq!(window(now, secs(100)), (now - secs(10), now + secs(100)));
    assert_eq!(
        window(now, secs(365 * 86400)),
        (now - CLOCK_SKEW, now + secs(365 * 86400)),
        "backdating is capped"
    );
    assert_eq!(window(now + Duration::from_millis(700), secs(6)).0, now);

    // Lifetime 30 s: rotated once less than 10 s is left.
    let (nb, na) = (now, now + secs(30));
    assert!(!nearly_expired(nb, na, now + secs(19)));
    assert!(nearly_expired(nb, na, now + secs(20)));
    assert!(nearly_expired(nb, na, now + secs(40)));
    assert!(
        nearly_expired(na, nb, now),
        "an inverted window is never fresh"
    );
}

#[test]
fn decisions_over_a_lifetime() {
    let want = want();
    let start = t0();
    // Serving: [start-30, start+300], rotated from start+190 on.
    // CA: [start-90, start+900], rotated from start+570 on.
    let fresh = Material::generate(&want, start).expect("material");
    let at = |offset: u64| start + secs(offset);
    assert_eq!(decide(&fresh, &want, at(0), true), Decision::Keep);
    assert_eq!(decide(&fresh, &want, at(189), true), Decision::Keep);
    assert_eq!(
        decide(&fresh, &want, at(190), true),
        Decision::Reissue(Reason::Expiring)
    );
    assert_eq!(
        decide(&fresh, &want, at(190), false),
        Decision::WaitForBundle(Reason::Expiring)
    );
    assert_eq!(
        decide(&fresh, &want, at(301), false),
        Decision::Reissue(Reason::Unusable),
        "an expired certificate is replaced without waiting for the bundle"
    );

    // Renewed late in the CA's life: then the CA rotates.
    let renewed = fresh
        .apply(Decision::Reissue(Reason::Expiring), &want, at(560))
        .expect("apply")
        .expect("changed");
    assert_eq!(renewed.ca, fresh.ca);
    assert_ne!(renewed.serving, fresh.serving);
    assert_eq!(decide(&renewed, &want, at(560), true), Decision::Keep);
    assert_eq!(decide(&renewed, &want, at(570), true), Decision::RotateCa);

    // The new CA heads the bundle, the old one follows, the serving certificate stays.
    let rotated = renewed
        .apply(Decision::RotateCa, &want, at(570))
        .expect("apply")
        .expect("changed");
    assert_ne!(rotated.ca, renewed.ca);
    assert_eq!(
        rotated.retired,
        vec![RetiredCa {
            cert_pem: renewed.ca.cert_pem.clone(),
            not_after: renewed.ca.not_after,
        }]
    );
    assert_eq!(rotated.serving, renewed.serving);
    assert_eq!(
        rotated.bundle_pem(),
        format!("{}{}", rotated.ca.cert_pem, renewed.ca.cert_pem)
    );
    assert_eq!(rotated.ca.not_after, at(570 + 900));
    // Until the bundle is out, the old CA's certificate keeps serving.
    assert_eq!(
        decide(&rotated, &want, at(571), false),
        Decision::WaitForBundle(Reason::WrongIssuer)
    );
    assert_eq!(
        decide(&rotated, &want, at(571), true),
        Decision::Reissue(Reason::WrongIssuer)
    );
    let reissued = rotated
        .apply(Decision::Reissue(Reason::WrongIssuer), &want, at(571))
        .expect("apply")
        .expect("changed");
    let cert = &reissued.serving.as_ref().expect("serving").cert_pem;
    assert!(verify(&reissued.ca.cert_pem, cert, SVC, at(571)));
    assert!(!verify(&renewed.ca.cert_pem, cert, SVC, at(571)));
    assert!(verify(&reissued.bundle_pem(), cert, SVC, at(571)));
    assert_eq!(decide(&reissued, &want, at(571), true), Decision::Keep);

    // The old CA leaves the bundle once it has expired.
    assert_eq!(
        decide(&reissued, &want, at(761), true),
        Decision::Reissue(Reason::Expiring)
    );
    let later = reissued
        .apply(Decision::Reissue(Reason::Expiring), &want, at(761))
        .expect("apply")
        .expect("changed");
    assert_eq!(decide(&later, &want, at(899), true), Decision::Keep);
    assert_eq!(decide(&later, &want, at(900), true), Decision::PruneRetired);
    let pruned = later
        .apply(Decision::PruneRetired, &want, at(900))
        .expect("apply")
        .expect("changed");
    assert!(pruned.retired.is_empty());
    assert_eq!(pruned.bundle_pem(), later.ca.cert_pem);
    assert_eq!(decide(&pruned, &want, at(900), true), Decision::Keep);

    for keep in [Decision::Keep, Decision::WaitForBundle(Reason::Expiring)] {
        assert_eq!(pruned.apply(keep, &want, at(900)).expect("apply"), None);
    }
}

#[test]
fn a_ca_rotation_replaces_an_unusable_serving_certificate_at_once() {
    let want = want();
    let start = t0();
    let fresh = Material::generate(&want, start).expect("material");
    // At +600 the serving certificate (to +300) has expired and the CA is due.
    let at = start + secs(600);
    assert_eq!(decide(&fresh, &want, at, false), Decision::RotateCa);
    let rotated = fresh
        .apply(Decision::RotateCa, &want, at)
        .expect("apply")
        .expect("changed");
    let cert = &rotated.serving.as_ref().expect("serving").cert_pem;
    assert!(verify(&rotated.ca.cert_pem, cert, SVC, at));

    let without = Material {
        serving: None,
        ..fresh.clone()
    };
    let rotated = without
        .apply(Decision::RotateCa, &want, at)
        .expect("apply")
        .expect("changed");
    assert!(rotated.serving.is_some());

    // A CA that expired altogether is not kept in the bundle.
    let long_after = start + secs(2000);
    let rotated = fresh
        .apply(Decision::RotateCa, &want, long_after)
        .expect("apply")
        .expect("changed");
    assert!(rotated.retired.is_empty());
}

#[test]
fn serving_certificate_checks() {
    let want = want();
    let now = t0();
    let fresh = Material::generate(&want, now).expect("material");

    let missing = Material {
        serving: None,
        ..fresh.clone()
    };
    assert_eq!(
        decide(&missing, &want, now, false),
        Decision::Reissue(Reason::Missing)
    );

    let mut more = want.clone();
    more.dns_names.push("svcplane-allocator".to_owned());
    assert_eq!(
        decide(&fresh, &more, now, true),
        Decision::Reissue(Reason::SansChanged)
    );
    let mut fewer = want.clone();
    fewer.ip_sans.clear();
    assert_eq!(
        decide(&fresh, &fewer, now, false),
        Decision::WaitForBundle(Reason::SansChanged)
    );
    let elsewhere = Wanted {
        dns_names: vec!["webhook.other.svc".to_owned()],
        ip_sans: vec![],
        validity: want.validity,
    };
    assert_eq!(
        decide(&fresh, &elsewhere, now, false),
        Decision::Reissue(Reason::Unusable),
        "covers none of the wanted names"
    );

    let other = Material::generate(&want, now).expect("material");
    let mut mismatched = fresh.clone();
    if let (Some(s), Some(o)) = (&mut mismatched.serving, &other.serving) {
        s.key_pem = o.key_pem.clone();
    }
    assert_eq!(
        decide(&mismatched, &want, now, false),
        Decision::Reissue(Reason::Unusable)
    );

    let foreign = Material {
        serving: other.serving.clone(),
        ..fresh.clone()
    };
    assert_eq!(
        decide(&foreign, &want, now, true),
        Decision::Reissue(Reason::Unusable),
        "signed by a CA outside the bundle"
    );
}

#[test]
fn the_secret_round_trips() {
    let want = want();
    let start = t0();
    let rotated = Material::generate(&want, start)
        .and_then(|m| m.apply(Decision::RotateCa, &want, start + secs(1)))
        .expect("apply")
        .expect("changed");
    assert_eq!(rotated.retired.len(), 1);

    let secret = rotated.to_secret("kube-system", "svcplane-allocator-tls");
    assert_eq!(secret.type_.as_deref(), Some("kubernetes.io/tls"));
    assert_eq!(secret.metadata.namespace.as_deref(), Some("kube-system"));
    let data = secret.data.as_ref().expect("data");
    let keys: Vec<&str> = data.keys().map(String::as_str).collect();
    assert_eq!(keys, vec![CA_CRT, CA_KEY, TLS_CRT, TLS_KEY]);
    assert_eq!(data[CA_CRT].0, rotated.bundle_pem().into_bytes());
    let annotations = secret.metadata.annotations.as_ref().expect("annotations");
    assert_eq!(
        annotations[SERVING_SANS],
        "10.96.0.20,svcplane-allocator.kube-system.svc,svcplane-allocator.kube-system.svc.cluster.local"
    );
    assert_eq!(
        parse_time(&annotations[CA_NOT_AFTER]),
        Some(rotated.ca.not_after)
    );
    assert!(annotations[CA_NOT_AFTER].ends_with('Z'), "RFC 3339 UTC");
    assert_eq!(
        secret.metadata.labels.as_ref().expect("labels")[MANAGED_BY.0],
        MANAGED_BY.1
    );

    assert_eq!(Material::from_secret(&secret).expect("parse"), rotated);

    // Rewriting leaves foreign keys and annotations alone and drops a pruned CA's entry.
    let mut edited = secret.clone();
    edited
        .data
        .get_or_insert_default()
        .insert("extra".into(), ByteString(b"x".to_vec()));
    edited
        .metadata
        .annotations
        .get_or_insert_default()
        .insert("example.com/note".into(), "kept".into());
    let pruned = Material {
        retired: vec![],
        ..rotated.clone()
    };
    pruned.write_to(&mut edited);
    assert_eq!(edited.data.as_ref().expect("data")["extra"].0, b"x");
    let annotations = edited.metadata.annotations.as_ref().expect("annotations");
    assert_eq!(annotations["example.com/note"], "kept");
    assert_eq!(annotations[RETIRED_CA_NOT_AFTER], "");
    assert_eq!(Material::from_secret(&edited).expect("parse"), pruned);
}

#[test]
fn a_secret_with_a_broken_ca_is_refused() {
    let want = want();
    let now = t0();
    let material = Material::generate(&want, now).expect("material");
    let secret = material.to_secret("ns", "tls");
    let edit = |f: &dyn Fn(&mut Secret)| {
        let mut s = secret.clone();
        f(&mut s);
        Material::from_secret(&s)
    };

    let no_key = edit(&|s| {
        s.data.get_or_insert_default().remove(CA_KEY);
    });
    assert!(
        matches!(no_key, Err(Error::MissingKey { key: CA_KEY })),
        "{no_key:?}"
    );

    let other = Material::generate(&want, now).expect("material");
    let wrong_key = edit(&|s| {
        s.data.get_or_insert_default().insert(
            CA_KEY.into(),
            ByteString(other.ca.key_pem.clone().into_bytes()),
        );
    });
    assert!(
        matches!(wrong_key, Err(Error::CaUnusable(_))),
        "{wrong_key:?}"
    );

    let empty_bundle = edit(&|s| {
        s.data
            .get_or_insert_default()
            .insert(CA_CRT.into(), ByteString(b"nothing here".to_vec()));
    });
    assert!(
        matches!(empty_bundle, Err(Error::NoCertificate { key: CA_CRT })),
        "{empty_bundle:?}"
    );

    let bad_time = edit(&|s| {
        s.metadata
            .annotations
            .get_or_insert_default()
            .insert(CA_NOT_AFTER.into(), "tomorrow".into());
    });
    assert!(
        matches!(bad_time, Err(Error::BadTime { key: CA_NOT_AFTER })),
        "{bad_time:?}"
    );

    // A serving part without its annotations is no serving part: reissued, not trusted.
    let unannotated = edit(&|s| {
        s.metadata
            .annotations
            .get_or_insert_default()
            .remove(SERVING_NOT_AFTER);
    })
    .expect("the CA part is fine");
    assert_eq!(unannotated.serving, None);
    assert_eq!(unannotated.ca, material.ca);
}

#[test]
fn bundles_split_into_certificates() {
    let now = t0();
    let (a, b) = (
        generate_ca(secs(10), now).expect("CA"),
        generate_ca(secs(10), now).expect("CA"),
    );
    let bundle = format!("{}\n{}", a.cert_pem, b.cert_pem.replace('\n', "\r\n"));
    let blocks = pem_certificates(&bundle);
    assert_eq!(blocks.len(), 2);
    assert_eq!(blocks[0], a.cert_pem);
    assert_eq!(blocks[1].replace("\r\n", "\n"), b.cert_pem);
    assert!(pem_certificates("-----BEGIN CERTIFICATE-----\nAAAA\n").is_empty());
}

fn webhook(name: &str, bundle: Option<&[u8]>) -> MutatingWebhook {
    MutatingWebhook {
        name: name.to_owned(),
        admission_review_versions: vec!["v1".to_owned()],
        side_effects: "None".to_owned(),
        client_config: WebhookClientConfig {
            ca_bundle: bundle.map(|b| ByteString(b.to_vec())),
            url: Some("https://127.0.0.1:1/x".to_owned()),
            service: None,
        },
        ..Default::default()
    }
}

#[test]
fn a_bundle_is_published_when_every_webhook_carries_it() {
    let config = |hooks: Vec<MutatingWebhook>| MutatingWebhookConfiguration {
        webhooks: Some(hooks),
        ..Default::default()
    };
    let both = config(vec![
        webhook("a.svcplane.dev", Some(b"B")),
        webhook("b.svcplane.dev", Some(b"B")),
    ]);
    assert!(carries_bundle(&both, b"B"));
    assert!(!carries_bundle(&both, b"C"));
    let one = config(vec![
        webhook("a.svcplane.dev", Some(b"B")),
        webhook("b.svcplane.dev", None),
    ]);
    assert!(!carries_bundle(&one, b"B"));
    assert!(carries_bundle(&config(vec![]), b"B"));
}

#[test]
fn wanted_sans_and_poll_interval() {
    let mut want = want();
    want.dns_names.push(SVC.to_owned());
    assert_eq!(want.sans(), vec!["10.96.0.20", SVC, SVC_LOCAL]);
    assert_eq!(want.ca_validity(), secs(900));

    let cfg = |validity| SelfManaged {
        namespace: "kube-system".into(),
        secret_name: "svcplane-allocator-tls".into(),
        webhook_configuration: "svcplane-allocator".into(),
        dns_names: vec![SVC.into()],
        ip_sans: vec![],
        validity,
    };
    assert_eq!(cfg(secs(6)).poll_interval(), secs(1));
    assert_eq!(cfg(secs(100)).poll_interval(), secs(10));
    assert_eq!(cfg(secs(365 * 86400)).poll_interval(), secs(30));
}

#[test]
fn the_bootstrap_store_serves_a_self_signed_certificate() {
    let store = bootstrap_store();
    assert_eq!(store.current().cert.len(), 1);
}
