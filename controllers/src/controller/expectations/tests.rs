use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

use super::*;

fn slice(uid: &str, generation: i64) -> EndpointSlice {
    EndpointSlice {
        metadata: ObjectMeta {
            uid: Some(uid.into()),
            generation: Some(generation),
            ..Default::default()
        },
        address_type: "IPv4".into(),
        endpoints: None,
        ports: None,
    }
}

fn web() -> ObjectKey {
    ObjectKey::new("ns", "web")
}

#[test]
fn staleness_follows_our_own_writes() {
    let mut e = Expectations::default();
    // Nothing written: never stale.
    assert!(!e.is_stale(&web(), [&slice("a", 1)]));
    e.written(&web(), &slice("a", 3));
    // (cache, stale?)
    let cases: &[(&[EndpointSlice], bool)] = &[
        (&[], true),               // our write not seen yet
        (&[slice("a", 2)], true),  // an older generation
        (&[slice("a", 3)], false), // exactly ours
        (&[slice("a", 4)], false), // someone wrote after us
        (&[slice("a", 3), slice("b", 1)], false),
    ];
    for (cache, stale) in cases {
        assert_eq!(e.is_stale(&web(), cache.iter()), *stale, "{cache:?}");
    }
    e.deleted(&web(), "b");
    assert!(e.is_stale(&web(), [&slice("a", 3), &slice("b", 1)]));
    assert!(!e.is_stale(&web(), [&slice("a", 3)]));
    e.forget(&web());
    assert!(!e.is_stale(&web(), []));
}

#[test]
fn own_echoes_are_recognised_and_foreign_changes_are_not() {
    let mut e = Expectations::default();
    e.written(&web(), &slice("a", 3));
    e.deleted(&web(), "gone");
    let a2 = slice("a", 2);
    let a3 = slice("a", 3);
    let a4 = slice("a", 4);
    let gone = slice("gone", 1);
    let other = slice("x", 1);
    let cases: &[(Option<&EndpointSlice>, Option<&EndpointSlice>, bool)] = &[
        (Some(&a3), Some(&a2), true),  // our write coming back
        (Some(&a2), None, true),       // an earlier write of ours, late
        (Some(&a4), Some(&a3), false), // someone edited our slice
        (None, Some(&gone), true),     // our deletion
        (None, Some(&a3), false),      // someone deleted our slice
        (Some(&other), None, false),   // unknown slice
        (None, None, false),
    ];
    for (now, before, own) in cases {
        assert_eq!(
            e.is_own_echo(&web(), *now, *before),
            *own,
            "{now:?} {before:?}"
        );
    }
}

#[test]
fn a_slice_someone_else_deleted_is_no_longer_expected() {
    // Regression (fault suite, differential test): the garbage collector deleted a slice we
    // had written (its Service was re-created under the same name), and the Service stayed
    // stale for good because "one we wrote is missing".
    let mut e = Expectations::default();
    e.written(&web(), &slice("a", 3));
    e.written(&web(), &slice("b", 1));
    assert!(e.is_stale(&web(), [&slice("b", 1)]), "a is missing");
    e.gone(&web(), "a");
    assert!(!e.is_stale(&web(), [&slice("b", 1)]));
    // Our own deletion's event clears its entry the same way.
    e.deleted(&web(), "b");
    assert!(e.is_stale(&web(), [&slice("b", 1)]));
    e.gone(&web(), "b");
    assert!(!e.is_stale(&web(), []));
    // Unknown slices and Services change nothing.
    e.gone(&ObjectKey::new("ns", "other"), "z");
    e.gone(&web(), "z");
    assert!(!e.is_stale(&web(), []));
}
