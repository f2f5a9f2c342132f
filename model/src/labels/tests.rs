use super::*;

type Pairs = &'static [(&'static str, &'static str)];

fn labels(pairs: Pairs) -> Labels {
    pairs.iter().copied().collect()
}

#[test]
fn selector_matching_table() {
    let cases: &[(Pairs, Pairs, bool)] = &[
        (&[("app", "web")], &[("app", "web")], true),
        (&[("app", "web")], &[("tier", "fe"), ("app", "web")], true),
        (&[("app", "web"), ("tier", "fe")], &[("app", "web")], false),
        (&[("app", "web")], &[("app", "db")], false),
        (&[("app", "web")], &[], false),
        (&[("app", "")], &[("app", "")], true),
        (&[("app", "")], &[], false),
    ];
    for (sel, have, want) in cases {
        let sel = Selector::new(labels(sel)).expect("non-empty selector");
        assert_eq!(sel.matches(&labels(have)), *want, "{sel:?} vs {have:?}");
    }
}

#[test]
fn empty_selector_is_none() {
    assert_eq!(Selector::new(Labels::default()), None);
}

#[test]
fn lookups_order_and_duplicates() {
    let l = labels(&[("b", "2"), ("a", "1"), ("c", "3"), ("a", "9")]);
    assert_eq!(l.len(), 3);
    assert_eq!(
        l.get("a"),
        Some("9"),
        "the last value of a repeated key wins"
    );
    assert_eq!(l.get("b"), Some("2"));
    assert_eq!(l.get("zz"), None);
    let keys: Vec<_> = l.iter().map(|(k, _)| k).collect();
    assert_eq!(keys, ["a", "b", "c"]);
    let map = BTreeMap::from([
        ("x".to_owned(), "1".to_owned()),
        ("w".to_owned(), "2".to_owned()),
    ]);
    assert_eq!(Labels::from(&map).to_map(), map);
}
