use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

use super::*;
use crate::PodMode;

/// The environment the tests see: `{$UPSTREAM}`, `{%ZONE%}`, and a value spanning lines.
fn env(name: &str) -> Option<String> {
    match name {
        "UPSTREAM" => Some("10.0.0.1".into()),
        "ZONE" => Some("Example.ORG".into()),
        "MULTI" => Some("a\nb".into()),
        _ => None,
    }
}

fn ok(text: &str) -> Corefile {
    match parse_with_env(text, &env) {
        Ok(c) => c,
        Err(e) => panic!("{text:?} should parse, got: {e}"),
    }
}

fn strings(v: &[&str]) -> Vec<String> {
    v.iter().map(|s| s.to_string()).collect()
}

fn root() -> Vec<String> {
    strings(&["."])
}

fn sa(s: &str) -> SocketAddr {
    s.parse().expect("socket address")
}

fn ip(s: &str) -> IpAddr {
    s.parse().expect("IP address")
}

fn secs(n: u64) -> Duration {
    Duration::from_secs(n)
}

fn up(s: &str) -> Upstream {
    Upstream::Addr(sa(s))
}

fn server(line: usize, zones: &[&str], port: u16, plugins: Plugins) -> ServerBlock {
    ServerBlock {
        line,
        zones: strings(zones),
        port,
        bind: Vec::new(),
        plugins,
    }
}

/// kubeadm's Corefile as `kubeadm init` writes it.
const KUBEADM: &str = include_str!("../../testdata/kubeadm.Corefile");

/// kubeadm's plugins, with `cache` as given.
fn kubeadm_plugins(cache: Cache) -> Plugins {
    Plugins {
        errors: true,
        health: Some(HealthPlugin {
            addr: sa("0.0.0.0:8080"),
            lameduck: secs(5),
        }),
        ready: Some(sa("0.0.0.0:8181")),
        kubernetes: Some(Kubernetes {
            zones: strings(&["cluster.local.", "in-addr.arpa.", "ip6.arpa."]),
            pods: PodMode::Insecure,
            ttl: 30,
            fallthrough: Some(strings(&["in-addr.arpa.", "ip6.arpa."])),
            endpoint_pod_names: false,
            noendpoints: false,
            kubeconfig: None,
        }),
        prometheus: Some(sa("0.0.0.0:9153")),
        forward: vec![Forward {
            from: ".".into(),
            to: vec![Upstream::ResolvConf(PathBuf::from("/etc/resolv.conf"))],
            except: Vec::new(),
            policy: Policy::Random,
            max_concurrent: Some(1000),
        }],
        cache: Some(cache),
        loop_detect: true,
        reload: Some(Reload {
            interval: secs(30),
            jitter: secs(15),
        }),
        loadbalance: true,
        hosts: None,
        rewrite: Vec::new(),
        log: false,
        autopath: None,
    }
}

#[test]
fn kubeadm_default() {
    let cache = Cache {
        zones: root(),
        success: CacheSide {
            capacity: 9984,
            max_ttl: 30,
            min_ttl: 5,
            disabled: false,
        },
        denial: CacheSide {
            capacity: 9984,
            max_ttl: 30,
            min_ttl: 5,
            disabled: false,
        },
        serve_stale: None,
        prefetch: None,
        disable_success: strings(&["cluster.local."]),
        disable_denial: strings(&["cluster.local."]),
    };
    let want = Corefile {
        servers: vec![server(1, &["."], 53, kubeadm_plugins(cache))],
    };
    assert_eq!(ok(KUBEADM), want);
}

#[test]
fn older_kubeadm_and_stub_domains() {
    let older = KUBEADM.replace(
        "cache 30 {\n       disable success cluster.local\n       disable denial cluster.local\n    }",
        "cache 30",
    );
    let mut cache = Cache::new(root());
    cache.success.max_ttl = 30;
    cache.denial.max_ttl = 30;
    let want = Corefile {
        servers: vec![server(1, &["."], 53, kubeadm_plugins(cache.clone()))],
    };
    assert_eq!(ok(&older), want);

    // kube-dns stubDomains as the migration writes them: one block per domain, then the rest.
    let stub = format!(
        "example.org:53 {{\n    errors\n    cache 30\n    forward . 127.0.0.1:5301\n}}\n{older}"
    );
    let stub_plugins = Plugins {
        errors: true,
        cache: Some(Cache {
            zones: strings(&["example.org."]),
            ..cache.clone()
        }),
        forward: vec![Forward::new(".", vec![up("127.0.0.1:5301")])],
        ..Plugins::default()
    };
    let got = ok(&stub);
    assert_eq!(got.servers.len(), 2);
    assert_eq!(
        got.servers[0],
        server(1, &["example.org."], 53, stub_plugins)
    );
    assert_eq!(
        got.servers[1],
        server(6, &["."], 53, kubeadm_plugins(cache))
    );
}

/// One row per supported form: the directives (inside `.:53 { … }`) and every plugin's settings.
#[test]
fn plugin_options() {
    let d = Plugins::default;
    let kube = |f: &dyn Fn(&mut Kubernetes)| {
        let mut k = Kubernetes::new(root());
        f(&mut k);
        Plugins {
            kubernetes: Some(k),
            ..d()
        }
    };
    let fwd = |f: Forward| Plugins {
        forward: vec![f],
        ..d()
    };
    let one = |to: &str| Forward::new(".", vec![up(to)]);
    let cache = |f: &dyn Fn(&mut Cache)| {
        let mut c = Cache::new(root());
        f(&mut c);
        Plugins {
            cache: Some(c),
            ..d()
        }
    };
    let hosts = |f: &dyn Fn(&mut Hosts)| {
        let mut h = Hosts::new(root());
        f(&mut h);
        Plugins {
            hosts: Some(h),
            ..d()
        }
    };
    let reload = |i, j| Plugins {
        reload: Some(Reload {
            interval: secs(i),
            jitter: secs(j),
        }),
        ..d()
    };
    let rw = |continues, kind, from: &str, to: &str, answer_auto| Plugins {
        rewrite: vec![Rewrite {
            line: 2,
            continues,
            kind,
            from: from.into(),
            to: to.into(),
            regex: None,
            answer_auto,
        }],
        ..d()
    };
    let health = |addr: &str, lameduck| Plugins {
        health: Some(HealthPlugin {
            addr: sa(addr),
            lameduck,
        }),
        ..d()
    };
    let verified = |zones: &[&str]| Plugins {
        kubernetes: Some(Kubernetes {
            pods: PodMode::Verified,
            ..Kubernetes::new(root())
        }),
        autopath: Some(strings(zones)),
        ..d()
    };
    #[rustfmt::skip]
    let rows: Vec<(&str, Plugins)> = vec![
        ("errors", Plugins { errors: true, ..d() }),
        ("health", health("0.0.0.0:8080", Duration::ZERO)),
        ("health 127.0.0.1:8081", health("127.0.0.1:8081", Duration::ZERO)),
        ("health [::1]:8080", health("[::1]:8080", Duration::ZERO)),
        ("health localhost:8080", health("127.0.0.1:8080", Duration::ZERO)),
        ("health {\n lameduck 500ms\n}", health("0.0.0.0:8080", Duration::from_millis(500))),
        ("health :8090 { lameduck 1h30m }", health("0.0.0.0:8090", secs(5400))),
        ("ready", Plugins { ready: Some(sa("0.0.0.0:8181")), ..d() }),
        ("ready 127.0.0.1:8182", Plugins { ready: Some(sa("127.0.0.1:8182")), ..d() }),
        ("prometheus", Plugins { prometheus: Some(sa("127.0.0.1:9153")), ..d() }),
        ("prometheus :9153", Plugins { prometheus: Some(sa("0.0.0.0:9153")), ..d() }),
        ("kubernetes", kube(&|_| {})),
        ("kubernetes Cluster.Local {\n pods verified\n}", kube(&|k| { k.zones = strings(&["cluster.local."]); k.pods = PodMode::Verified; })),
        ("kubernetes {\n pods disabled\n ttl 0\n}", kube(&|k| k.ttl = 0)),
        ("kubernetes {\n ttl 3600\n}", kube(&|k| k.ttl = 3600)),
        ("kubernetes {\n fallthrough\n}", kube(&|k| k.fallthrough = Some(Vec::new()))),
        ("kubernetes {\n endpoint_pod_names\n noendpoints\n}", kube(&|k| { k.endpoint_pod_names = true; k.noendpoints = true; })),
        ("kubernetes {\n kubeconfig /etc/kube.conf\n}", kube(&|k| k.kubeconfig = Some(PathBuf::from("/etc/kube.conf")))),
        ("forward . 1.1.1.1 8.8.8.8:5353 [2001:db8::1]:54 dns://9.9.9.9 dns://9.9.9.10:55 ::1", fwd(Forward::new(".", vec![
            up("1.1.1.1:53"), up("8.8.8.8:5353"), up("[2001:db8::1]:54"), up("9.9.9.9:53"), up("9.9.9.10:55"), up("[::1]:53"),
        ]))),
        ("forward Example.org ./resolv.conf", fwd(Forward::new("example.org.", vec![Upstream::ResolvConf("./resolv.conf".into())]))),
        ("forward . 1.1.1.1 {\n except Example.com internal.\n policy round_robin\n max_concurrent 10\n}", fwd(Forward {
            except: strings(&["example.com.", "internal."]), policy: Policy::RoundRobin, max_concurrent: Some(10), ..one("1.1.1.1:53")
        })),
        ("forward . 1.1.1.1 {\n policy sequential\n}", fwd(Forward { policy: Policy::Sequential, ..one("1.1.1.1:53") })),
        ("forward . 1.1.1.1\nforward example.org 2.2.2.2", Plugins {
            forward: vec![one("1.1.1.1:53"), Forward::new("example.org.", vec![up("2.2.2.2:53")])], ..d()
        }),
        ("cache", cache(&|_| {})),
        ("cache 30 example.org", cache(&|c| { c.zones = strings(&["example.org."]); c.success.max_ttl = 30; c.denial.max_ttl = 30; })),
        ("cache {\n success 5000 600 10\n denial 100\n}", cache(&|c| {
            c.success = CacheSide { capacity: 5000, max_ttl: 600, min_ttl: 10, disabled: false };
            c.denial.capacity = 100;
        })),
        ("cache {\n prefetch 5\n}", cache(&|c| c.prefetch = Some(Prefetch { amount: 5, duration: secs(60), percentage: 10 }))),
        ("cache {\n prefetch 2 10m 20%\n}", cache(&|c| c.prefetch = Some(Prefetch { amount: 2, duration: secs(600), percentage: 20 }))),
        ("cache {\n serve_stale\n}", cache(&|c| c.serve_stale = Some((secs(3600), StaleMode::Immediate)))),
        ("cache {\n serve_stale 10m verify\n}", cache(&|c| c.serve_stale = Some((secs(600), StaleMode::Verify)))),
        ("cache {\n disable success\n disable denial example.org\n}", cache(&|c| {
            c.success.disabled = true;
            c.disable_denial = strings(&["example.org."]);
        })),
        ("loop", Plugins { loop_detect: true, ..d() }),
        ("reload", reload(30, 15)),
        ("reload 10s", reload(10, 5)),
        ("reload 1m 20s", reload(60, 20)),
        ("loadbalance", Plugins { loadbalance: true, ..d() }),
        ("loadbalance round_robin", Plugins { loadbalance: true, ..d() }),
        ("hosts", hosts(&|_| {})),
        ("hosts custom/hosts", hosts(&|h| h.file = "custom/hosts".into())),
        ("hosts /etc/custom example.org {\n 10.0.0.1 A.example.org b\n ::1 v6.example.org\n ttl 60\n no_reverse\n reload 0s\n fallthrough internal\n}", hosts(&|h| {
            h.file = "/etc/custom".into();
            h.zones = strings(&["example.org."]);
            h.inline = vec![(ip("10.0.0.1"), strings(&["a.example.org.", "b."])), (ip("::1"), strings(&["v6.example.org."]))];
            h.ttl = 60;
            h.no_reverse = true;
            h.reload = Duration::ZERO;
            h.fallthrough = Some(strings(&["internal."]));
        })),
        ("rewrite name Foo.Example.com bar.svc.cluster.local", rw(false, NameMatch::Exact, "foo.example.com.", "bar.svc.cluster.local.", false)),
        ("rewrite stop name exact a b", rw(false, NameMatch::Exact, "a.", "b.", false)),
        ("rewrite continue name prefix Foo bar", rw(true, NameMatch::Prefix, "foo.", "bar.", false)),
        ("rewrite name suffix .example.org .svc.cluster.local answer auto", rw(false, NameMatch::Suffix, ".example.org.", ".svc.cluster.local.", true)),
        ("rewrite name substring x y", rw(false, NameMatch::Substring, "x.", "y.", false)),
        (r"rewrite name regex (.*)\.Example\.org {1}.svc.cluster.local answer auto", rw(false, NameMatch::Regex, r"(.*)\.Example\.org", "{1}.svc.cluster.local.", true)),
        ("log", Plugins { log: true, ..d() }),
        ("log .", Plugins { log: true, ..d() }),
        ("kubernetes {\n pods verified\n}\nautopath @kubernetes", verified(&["."])),
        ("kubernetes {\n pods verified\n}\nautopath Cluster.local @kubernetes", verified(&["cluster.local."])),
    ];
    for (directives, want) in rows {
        let text = format!(".:53 {{\n{directives}\n}}\n");
        let got = ok(&text);
        assert_eq!(got.servers.len(), 1, "{directives}");
        assert_eq!(got.servers[0].plugins, want, "{directives}");
    }
}

#[test]
fn rewrite_details() {
    let got =
        ok(".:53 {\n  rewrite name exact a b\n  rewrite name regex (.*)\\.A\\.org {1}.b.org\n}");
    let rules = &got.servers[0].plugins.rewrite;
    assert_eq!((rules[0].line, rules[1].line), (2, 3));
    assert!(rules[0].regex.is_none());
    let re = rules[1].regex.as_ref().expect("regex compiled");
    let caps = re.captures("www.a.ORG.").expect("case-insensitive match");
    assert_eq!(caps.get(1).map(|m| m.as_str()), Some("www"));
}

/// Keys: schemes, ports, commas, spaces, `bind`.
#[test]
fn server_keys() {
    #[rustfmt::skip]
    let rows: &[(&str, &[&str], u16, &[&str])] = &[
        (".:53 {\n}", &["."], 53, &[]),
        ("example.org {\n}", &["example.org."], 53, &[]),
        ("dns://.:1053 {\n}", &["."], 1053, &[]),
        ("DNS://Example.ORG. {\n}", &["example.org."], 53, &[]),
        (":53 {\n}", &["."], 53, &[]),
        ("a.org:53, b.org:53 c.org {\n}", &["a.org.", "b.org.", "c.org."], 53, &[]),
        ("a.org,\n  b.org {\n}", &["a.org.", "b.org."], 53, &[]),
        (".:53 {\n  bind 127.0.0.1 ::1\n}", &["."], 53, &["127.0.0.1", "::1"]),
    ];
    for &(text, zones, port, bind) in rows {
        let got = ok(text);
        let s = &got.servers[0];
        let want = (
            1,
            strings(zones),
            port,
            bind.iter().map(|b| ip(b)).collect(),
        );
        assert_eq!(
            (s.line, s.zones.clone(), s.port, s.bind.clone()),
            want,
            "{text}"
        );
    }
}

/// Comments, quotes, one-line blocks, and environment substitution.
#[test]
fn lexing_and_env() {
    let fwd = |to: &[&str]| Plugins {
        forward: vec![Forward::new(".", to.iter().map(|t| up(t)).collect())],
        ..Plugins::default()
    };
    let hosts = |h: Hosts| Plugins {
        hosts: Some(h),
        ..Plugins::default()
    };
    #[rustfmt::skip]
    let rows: &[(&str, Plugins)] = &[
        ("# leading comment\n.:53 { # after the brace\n  forward . \"1.1.1.1\" # trailing\n# forward . 2.2.2.2\n}", fwd(&["1.1.1.1:53"])),
        ("example.org:53 { forward . 127.0.0.1:5301 }", fwd(&["127.0.0.1:5301"])),
        (".:53 {\n  hosts \"/etc/my hosts\" {\n    10.0.0.1 \"x.org\"\n  }\n}", hosts(Hosts {
            file: "/etc/my hosts".into(), inline: vec![(ip("10.0.0.1"), strings(&["x.org."]))], ..Hosts::new(root())
        })),
        (".:53 {\n  hosts \"/etc/h\\\"#x\"\n}", hosts(Hosts { file: "/etc/h\"#x".into(), ..Hosts::new(root()) })),
        (".:53 {\n  forward . {$UPSTREAM}{$UNSET}:5353 {%UPSTREAM%}\n}", fwd(&["10.0.0.1:5353", "10.0.0.1:53"])),
        // A value with a newline keeps the line of its reference: both words are arguments.
        (".:53 {\n  hosts {$MULTI}\n}", hosts(Hosts { file: "a".into(), ..Hosts::new(strings(&["b."])) })),
    ];
    for (text, want) in rows {
        assert_eq!(&ok(text).servers[0].plugins, want, "{text}");
    }
    let got = ok("{%ZONE%}:{$UNSET}53 {\n}");
    assert_eq!(
        (got.servers[0].zones.clone(), got.servers[0].port),
        (strings(&["example.org."]), 53)
    );
    assert_eq!(ok("  # nothing\n").servers, Vec::new());
}

/// Each error: the Corefile, the line, and words the message must contain.
#[test]
fn errors() {
    let k = ".:53 {\n  kubernetes {\n    pods verified\n  }\n";
    #[rustfmt::skip]
    let rows: Vec<(String, usize, &[&str])> = vec![
        // Plugins.
        (".:53 {\n  template ANY\n}".into(), 2, &["\"template\"", "not supported by svcplane-dns"]),
        (".:53 {\n  errors\n  frobnicate\n}".into(), 3, &["\"frobnicate\"", "not supported by svcplane-dns"]),
        (".:53 {\n  proxy . /etc/resolv.conf\n}".into(), 2, &["\"proxy\""]),
        (".:53 {\n  import common\n}".into(), 2, &["import", "snippets/import are not supported"]),
        (".:53 {\n  cache\n  errors\n  cache 30\n}".into(), 4, &["cache given twice in one server block", "line 2"]),
        (".:53 {\n  errors consolidate\n}".into(), 2, &["errors", "\"consolidate\"", "not supported"]),
        (".:53 {\n  errors {\n    stacktrace\n  }\n}".into(), 3, &["errors", "\"stacktrace\""]),
        (".:53 {\n  loop 1\n}".into(), 2, &["loop", "no arguments"]),
        (".:53 {\n  loop {\n  }\n}".into(), 2, &["loop", "no { } block"]),
        // health, ready, prometheus.
        (".:53 {\n  health {\n    lameduck 5s\n    probe\n  }\n}".into(), 4, &["health", "unknown option \"probe\""]),
        (".:53 {\n  health {\n    lameduck 5\n  }\n}".into(), 3, &["health", "lameduck", "bad duration \"5\""]),
        (".:53 {\n  health {\n    lameduck\n  }\n}".into(), 3, &["health", "\"lameduck\" wants DURATION"]),
        (".:53 {\n  health 8080\n}".into(), 2, &["health", "\"8080\""]),
        (".:53 {\n  ready example.com:8181\n}".into(), 2, &["ready", "\"example.com:8181\""]),
        (".:53 {\n  prometheus :9153 :9154\n}".into(), 2, &["prometheus", "at most one"]),
        // kubernetes.
        (".:53 {\n  kubernetes {\n    namespaces default\n  }\n}".into(), 3, &["kubernetes", "\"namespaces\"", "not supported by svcplane-dns"]),
        (".:53 {\n  kubernetes {\n    endpoint https://x\n  }\n}".into(), 3, &["kubernetes", "\"endpoint\""]),
        (".:53 {\n  kubernetes {\n    podz verified\n  }\n}".into(), 3, &["kubernetes", "unknown option \"podz\""]),
        (".:53 {\n  kubernetes {\n    pods sometimes\n  }\n}".into(), 3, &["kubernetes", "pods", "\"sometimes\""]),
        (".:53 {\n  kubernetes {\n    ttl 3601\n  }\n}".into(), 3, &["kubernetes", "ttl", "0 to 3600", "\"3601\""]),
        (".:53 {\n  kubernetes {\n    ttl -1\n  }\n}".into(), 3, &["kubernetes", "ttl", "\"-1\""]),
        (".:53 {\n  kubernetes {\n    kubeconfig /k.conf admin\n  }\n}".into(), 3, &["kubernetes", "kubeconfig CONTEXT", "\"admin\""]),
        (".:53 {\n  kubernetes 10.0.0.0/8\n}".into(), 2, &["kubernetes", "CIDR", "10.0.0.0/8"]),
        // forward.
        (".:53 {\n  forward . 1.1.1.1 {\n    force_tcp\n  }\n}".into(), 3, &["forward", "\"force_tcp\"", "not supported by svcplane-dns"]),
        (".:53 {\n  forward . 1.1.1.1 {\n    bogus\n  }\n}".into(), 3, &["forward", "unknown option \"bogus\""]),
        (".:53 {\n  forward . tls://1.1.1.1\n}".into(), 2, &["forward", "\"tls://\"", "not supported"]),
        (".:53 {\n  forward .\n}".into(), 2, &["forward", "FROM TO"]),
        (".:53 {\n  forward . dns.google\n}".into(), 2, &["forward", "\"dns.google\""]),
        (".:53 {\n  forward . 1.1.1.1 {\n    max_concurrent 0\n  }\n}".into(), 3, &["forward", "max_concurrent"]),
        (".:53 {\n  forward . 1.1.1.1 {\n    policy fastest\n  }\n}".into(), 3, &["forward", "policy", "\"fastest\""]),
        // cache.
        (".:53 {\n  cache {\n    prefetch\n  }\n}".into(), 3, &["cache: \"prefetch\" wants AMOUNT [DURATION [PERCENTAGE%]]"]),
        (".:53 {\n  cache {\n    prefetch 1 1m 5%\n  }\n}".into(), 3, &["cache", "prefetch", "\"5%\""]),
        (".:53 {\n  cache {\n    prefetch 1 1m 20\n  }\n}".into(), 3, &["cache", "prefetch", "\"20\""]),
        (".:53 {\n  cache {\n    serve_stale 1x\n  }\n}".into(), 3, &["cache", "serve_stale", "bad duration \"1x\""]),
        (".:53 {\n  cache {\n    serve_stale 1h lazily\n  }\n}".into(), 3, &["cache", "serve_stale", "\"lazily\""]),
        (".:53 {\n  cache {\n    servfail 10 5s\n  }\n}".into(), 3, &["cache", "\"servfail\"", "not supported"]),
        (".:53 {\n  cache {\n    keepttl\n  }\n}".into(), 3, &["cache", "\"keepttl\""]),
        (".:53 {\n  cache {\n    disable everything\n  }\n}".into(), 3, &["cache", "disable", "\"everything\""]),
        (".:53 {\n  cache {\n    success many\n  }\n}".into(), 3, &["cache", "success CAPACITY", "\"many\""]),
        (".:53 {\n  cache 0\n}".into(), 2, &["cache", "TTL", "\"0\""]),
        // reload, loadbalance, log.
        (".:53 {\n  reload 1s\n}".into(), 2, &["reload", "at least 2s"]),
        (".:53 {\n  reload 10s 10s\n}".into(), 2, &["reload", "JITTER"]),
        (".:53 {\n  reload 30\n}".into(), 2, &["reload", "bad duration \"30\""]),
        (".:53 {\n  loadbalance weighted /etc/w\n}".into(), 2, &["loadbalance", "wants [round_robin]"]),
        (".:53 {\n  loadbalance weighted\n}".into(), 2, &["loadbalance", "\"weighted\"", "not supported"]),
        (".:53 {\n  log . \"{common}\"\n}".into(), 2, &["log", "\"{common}\"", "not supported"]),
        (".:53 {\n  log {\n    class denial\n  }\n}".into(), 2, &["log", "block", "not supported"]),
        // hosts.
        (".:53 {\n  hosts {\n    10.0.0.1\n  }\n}".into(), 3, &["hosts", "10.0.0.1", "without names"]),
        (".:53 {\n  hosts {\n    refresh 5s\n  }\n}".into(), 3, &["hosts", "unknown option \"refresh\""]),
        (".:53 {\n  hosts {\n    ttl 0\n  }\n}".into(), 3, &["hosts", "ttl", "\"0\""]),
        // rewrite.
        (".:53 {\n  rewrite name regex (.*\\.org x\n}".into(), 2, &["rewrite", "bad regex", "(.*\\.org"]),
        (".:53 {\n  rewrite name regex (.*) {2}.org\n}".into(), 2, &["rewrite", "{2}", "group"]),
        (".:53 {\n  rewrite type ANY HINFO\n}".into(), 2, &["rewrite", "type", "not supported"]),
        (".:53 {\n  rewrite stop edns0 local set 0xffee abc\n}".into(), 2, &["rewrite", "edns0"]),
        (".:53 {\n  rewrite name a b answer name b a\n}".into(), 2, &["rewrite", "\"answer name\"", "not supported"]),
        (".:53 {\n  rewrite name a b extra\n}".into(), 2, &["rewrite", "\"extra\""]),
        (".:53 {\n  rewrite name regex (.*) {1} answer question\n}".into(), 2, &["rewrite", "\"answer question\"", "not supported"]),
        (".:53 {\n  rewrite name a\n}".into(), 2, &["rewrite", "FROM TO"]),
        (".:53 {\n  rewrite stop {\n    name regex (.*) {1}\n  }\n}".into(), 2, &["rewrite", "block form", "not supported"]),
        // autopath, bind.
        (".:53 {\n  kubernetes\n  autopath @kubernetes\n}".into(), 3, &["autopath", "pods verified"]),
        (".:53 {\n  autopath @kubernetes\n}".into(), 2, &["autopath", "pods verified"]),
        (format!("{k}  autopath /etc/resolv.conf\n}}"), 5, &["autopath", "resolv.conf", "not supported"]),
        (format!("{k}  autopath @erratic\n}}"), 5, &["autopath", "\"@erratic\""]),
        (".:53 {\n  bind eth0\n}".into(), 2, &["bind", "\"eth0\"", "interface"]),
        (".:53 {\n  bind 127.0.0.1 {\n    except ::1\n  }\n}".into(), 2, &["bind", "block"]),
        // Across blocks.
        (format!("{k}}}\nexample.org {{\n  kubernetes\n}}"), 7, &["kubernetes given in two server blocks", "lines 2 and 7"]),
        (".:53 {\n}\nexample.org {\n}\n.:53 {\n}".into(), 5, &["\".\"", "port 53", "line 1"]),
        ("a.org:53 A.org {\n}".into(), 1, &["\"a.org.\"", "given twice"]),
        // Keys.
        ("a.org:53 b.org:54 {\n}".into(), 1, &["all zones of a server block must share a port"]),
        ("tls://.:853 {\n}".into(), 1, &["\"tls://\"", "not supported"]),
        ("https://.:443 {\n}".into(), 1, &["\"https://\""]),
        ("grpc://.:443 {\n}".into(), 1, &["\"grpc://\""]),
        ("10.0.0.0/8 {\n}".into(), 1, &["CIDR", "10.0.0.0/8", "not supported"]),
        ("example.org:dns {\n}".into(), 1, &["bad port \"dns\""]),
        ("exa$mple {\n}".into(), 1, &["\"exa$mple\"", "valid zone"]),
        ("(common) {\n  errors\n}".into(), 1, &["snippets/import are not supported"]),
        ("\nimport common.conf\n".into(), 2, &["snippets/import are not supported"]),
        // Structure.
        (".:53\n  errors\n}".into(), 1, &["expected \"{\""]),
        (".:53".into(), 1, &["end of file", "expected \"{\""]),
        (".:53 {\n  errors\n\n".into(), 1, &["end of file", "line 1", "never closed"]),
        (".:53 {\n  health {\n    lameduck 5s\n}".into(), 1, &["on line 1 is never closed"]),
        (".:53 {\n  health {\n    lameduck 5s\n".into(), 2, &["on line 2 is never closed"]),
        (".:53 {\n}\n}".into(), 3, &["unexpected \"}\""]),
        ("{\n}".into(), 1, &["without server block keys"]),
        (".:53 {\n  health\n  {\n  }\n}".into(), 3, &["unexpected \"{\""]),
        (".:53 {\n  health {\n    lameduck {\n    }\n  }\n}".into(), 3, &["unexpected \"{\"", "one level"]),
        (".:53 {\n  forward . \"1.1.1.1\n}\n".into(), 2, &["unterminated"]),
        // Line numbers survive a substituted value that spans lines.
        (".:53 {\n  hosts {$MULTI}\n  template\n}".into(), 3, &["\"template\""]),
        (".:53 {\n  # {$MULTI} template\n  whoami\n}".into(), 3, &["\"whoami\""]),
    ];
    for (text, line, words) in &rows {
        let e = match parse_with_env(text, &env) {
            Ok(c) => panic!("{text:?} should fail, parsed to {c:?}"),
            Err(e) => e,
        };
        assert_eq!(e.line, *line, "{text:?}: {e}");
        for w in *words {
            assert!(
                e.message.contains(w),
                "{text:?}: {:?} lacks {w:?}",
                e.message
            );
        }
    }
}

#[test]
fn durations() {
    #[rustfmt::skip]
    let rows: &[(&str, Option<Duration>)] = &[
        ("0", Some(Duration::ZERO)), ("0s", Some(Duration::ZERO)), ("5s", Some(secs(5))), ("1m", Some(secs(60))),
        ("1h30m", Some(secs(5400))), ("500ms", Some(Duration::from_millis(500))), ("1.5s", Some(Duration::from_millis(1500))),
        (".5m", Some(secs(30))), ("10us", Some(Duration::from_micros(10))), ("7ns", Some(Duration::from_nanos(7))),
        ("5", None), ("-5s", None), ("5d", None), ("s", None), ("", None), ("1h 2m", None), ("9999999999h", None),
    ];
    for &(text, want) in rows {
        let corefile = format!(".:53 {{\n  health {{\n    lameduck \"{text}\"\n  }}\n}}");
        let got = parse_with_env(&corefile, &env)
            .ok()
            .and_then(|c| c.servers[0].plugins.health.as_ref().map(|h| h.lameduck));
        assert_eq!(got, want, "{text:?}");
    }
}

/// Every prefix of kubeadm's Corefile and of an edited one, and each with one byte changed or
/// removed, parses or fails with an error; nothing panics and every error has a line in range.
#[test]
fn damaged_files_fail_cleanly() {
    let edited = format!(
        "{KUBEADM}corp.example:53 {{\n  forward . 10.0.0.1 {{\n    except a.corp.example\n  }}\n}}\n\
         .:5353 {{\n  hosts {{\n    192.0.2.1 a.example\n    fallthrough\n  }}\n  rewrite name regex (.*)\\.x\\. {{1}}.y answer auto\n  kubernetes cluster.local {{\n    pods verified\n  }}\n  autopath @kubernetes\n}}\n"
    );
    let mut checked = 0;
    for text in [KUBEADM, edited.as_str()] {
        let lines = text.lines().count() + 1;
        let bytes = text.as_bytes();
        let mut variants: Vec<Vec<u8>> = (0..bytes.len()).map(|n| bytes[..n].to_vec()).collect();
        for i in (0..bytes.len()).step_by(3) {
            let mut removed = bytes.to_vec();
            removed.remove(i);
            variants.push(removed);
            for replacement in [b'{', b'}', b'"', b'#', b' ', b'\n', b'x'] {
                let mut changed = bytes.to_vec();
                changed[i] = replacement;
                variants.push(changed);
            }
        }
        for variant in variants {
            let text = String::from_utf8_lossy(&variant);
            if let Err(e) = parse_with_env(&text, &env) {
                assert!(e.line <= lines, "{e} beyond the file's {lines} lines");
                assert!(!e.message.is_empty());
            }
            checked += 1;
        }
    }
    assert!(checked > 1000);
}
