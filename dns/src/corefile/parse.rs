//! Reading a Corefile in four steps: environment substitution (keeping every character's
//! line), a lexer (words, quoted words, standalone `{` and `}`), a structural pass (server
//! blocks of directives, each with an optional one-level block of option lines), and one
//! function per plugin that turns its directive into typed settings.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::str::FromStr;
use std::time::Duration;

use super::{
    Cache, CacheSide, Corefile, Error, Forward, HealthPlugin, Hosts, Kubernetes, NameMatch,
    PROMETHEUS_DEFAULT_ADDR, Plugins, Policy, Prefetch, READY_DEFAULT_ADDR, Reload, Rewrite,
    ServerBlock, StaleMode, Upstream,
};
use crate::PodMode;

type Result<T> = std::result::Result<T, Error>;

fn err<T>(line: usize, message: impl Into<String>) -> Result<T> {
    Err(Error {
        line,
        message: message.into(),
    })
}

/// Reads a Corefile, substituting `{$NAME}` and `{%NAME%}` from the process environment.
pub fn parse(text: &str) -> Result<Corefile> {
    parse_with_env(text, &|name| std::env::var(name).ok())
}

/// Reads a Corefile, substituting `{$NAME}` and `{%NAME%}` with `env(NAME)` (the empty string
/// when it is `None`, as CoreDNS does).
pub fn parse_with_env(text: &str, env: &dyn Fn(&str) -> Option<String>) -> Result<Corefile> {
    let chars = substitute(text, env);
    let tokens = lex(&chars)?;
    let blocks = structure(tokens)?;
    build(blocks)
}

// ---------------------------------------------------------------------------------------------
// Environment substitution and lexing.

/// The text with environment references replaced, each character paired with the line (1-based)
/// it came from in `text`; a substituted value takes the line of its reference.
fn substitute(text: &str, env: &dyn Fn(&str) -> Option<String>) -> Vec<(char, usize)> {
    let mut out = Vec::with_capacity(text.len());
    let mut line = 1;
    let mut rest = text;
    while let Some(c) = rest.chars().next() {
        if let Some((name, len)) = env_reference(rest) {
            out.extend(env(name).unwrap_or_default().chars().map(|c| (c, line)));
            rest = &rest[len..];
            continue;
        }
        out.push((c, line));
        if c == '\n' {
            line += 1;
        }
        rest = &rest[c.len_utf8()..];
    }
    out
}

/// A `{$NAME}` or `{%NAME%}` at the start of `s`: the name, and the reference's length in bytes.
fn env_reference(s: &str) -> Option<(&str, usize)> {
    let (body, close) = if let Some(body) = s.strip_prefix("{$") {
        (body, "}")
    } else if let Some(body) = s.strip_prefix("{%") {
        (body, "%}")
    } else {
        return None;
    };
    let end = body.find(close)?;
    let name = &body[..end];
    let plain = !name.is_empty()
        && name
            .chars()
            .all(|c| !c.is_whitespace() && c != '{' && c != '}');
    plain.then_some((name, 2 + end + close.len()))
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Word,
    /// A standalone, unquoted `{`.
    Open,
    /// A standalone, unquoted `}`.
    Close,
}

#[derive(Debug, Clone)]
struct Tok {
    text: String,
    line: usize,
    kind: Kind,
}

/// Splits into tokens: whitespace separates them, `#` starts a comment that runs to the end of
/// the line, a `"` at the start of a token quotes up to the next unescaped `"` (`\"` is a
/// quote; the quoted text may span lines).
fn lex(chars: &[(char, usize)]) -> Result<Vec<Tok>> {
    let mut tokens = Vec::new();
    let mut i = 0;
    while let Some(&(c, line)) = chars.get(i) {
        if c.is_whitespace() {
            i += 1;
        } else if c == '#' {
            while chars.get(i).is_some_and(|&(_, l)| l == line) {
                i += 1;
            }
        } else if c == '"' {
            i += 1;
            let mut text = String::new();
            loop {
                let Some(&(c, _)) = chars.get(i) else {
                    return err(line, "unterminated quoted string (a \" is never closed)");
                };
                i += 1;
                match c {
                    '"' => break,
                    '\\' if chars.get(i).is_some_and(|&(n, _)| n == '"') => {
                        text.push('"');
                        i += 1;
                    }
                    c => text.push(c),
                }
            }
            tokens.push(Tok {
                text,
                line,
                kind: Kind::Word,
            });
        } else {
            let mut text = String::new();
            while let Some(&(c, _)) = chars.get(i)
                && !c.is_whitespace()
                && c != '#'
            {
                text.push(c);
                i += 1;
            }
            let kind = match text.as_str() {
                "{" => Kind::Open,
                "}" => Kind::Close,
                _ => Kind::Word,
            };
            tokens.push(Tok { text, line, kind });
        }
    }
    Ok(tokens)
}

// ---------------------------------------------------------------------------------------------
// Structure: server blocks, directives, option lines.

/// `NAME ARGS…` on one line.
#[derive(Debug)]
struct Line {
    name: Tok,
    args: Vec<Tok>,
}

/// `{ LINES }` after a directive; `line` is that of the `{`.
#[derive(Debug)]
struct Block {
    line: usize,
    lines: Vec<Line>,
}

/// `NAME ARGS… [{ … }]` in a server block.
#[derive(Debug)]
struct Directive {
    name: Tok,
    args: Vec<Tok>,
    block: Option<Block>,
}

#[derive(Debug)]
struct RawServer {
    keys: Vec<Tok>,
    directives: Vec<Directive>,
}

struct Cursor {
    tokens: std::iter::Peekable<std::vec::IntoIter<Tok>>,
}

impl Cursor {
    fn next(&mut self) -> Option<Tok> {
        self.tokens.next()
    }

    fn peek(&mut self) -> Option<&Tok> {
        self.tokens.peek()
    }

    /// The words that follow on `line`.
    fn args(&mut self, line: usize) -> Vec<Tok> {
        let mut args = Vec::new();
        while let Some(t) = self
            .tokens
            .next_if(|t| t.kind == Kind::Word && t.line == line)
        {
            args.push(t);
        }
        args
    }

    /// A `{` on `line`, if that is what comes next.
    fn open(&mut self, line: usize) -> Option<usize> {
        self.tokens
            .next_if(|t| t.kind == Kind::Open && t.line == line)
            .map(|t| t.line)
    }
}

fn never_closed(open: usize) -> Error {
    Error {
        line: open,
        message: format!("unexpected end of file: the \"{{\" on line {open} is never closed"),
    }
}

const SNIPPETS: &str = "snippets/import are not supported";

fn structure(tokens: Vec<Tok>) -> Result<Vec<RawServer>> {
    let mut cur = Cursor {
        tokens: tokens.into_iter().peekable(),
    };
    let mut servers = Vec::new();
    while let Some(first) = cur.next() {
        match first.kind {
            Kind::Open => return err(first.line, "\"{\" without server block keys before it"),
            Kind::Close => return err(first.line, "unexpected \"}\": no block is open"),
            Kind::Word => {}
        }
        if first.text == "import" || (first.text.starts_with('(') && first.text.ends_with(')')) {
            return err(first.line, SNIPPETS);
        }
        // Keys run on one line, or on to the next after a trailing comma.
        let mut keys = vec![first];
        let open = loop {
            let last = keys
                .last()
                .map_or((0, false), |k| (k.line, k.text.ends_with(',')));
            match cur.peek().map(|t| (t.kind, t.line)) {
                None => {
                    return err(
                        last.0,
                        "unexpected end of file: expected \"{\" after the server block keys",
                    );
                }
                Some((Kind::Open, line)) => {
                    cur.next();
                    break line;
                }
                Some((Kind::Word, line)) if line == last.0 || last.1 => {
                    keys.extend(cur.next());
                }
                Some(_) => return err(last.0, "expected \"{\" after the server block keys"),
            }
        };
        let mut directives = Vec::new();
        loop {
            let Some(name) = cur.next() else {
                return Err(never_closed(open));
            };
            match name.kind {
                Kind::Close => break,
                Kind::Open => {
                    return err(
                        name.line,
                        "unexpected \"{\": a block opens at the end of its directive's line",
                    );
                }
                Kind::Word => {}
            }
            let args = cur.args(name.line);
            let end = args.last().map_or(name.line, |a| a.line);
            let block = match cur.open(end) {
                Some(line) => Some(Block {
                    line,
                    lines: option_lines(&mut cur, line)?,
                }),
                None => None,
            };
            directives.push(Directive { name, args, block });
        }
        servers.push(RawServer { keys, directives });
    }
    Ok(servers)
}

/// The lines of a directive's block, up to and including its `}`.
fn option_lines(cur: &mut Cursor, open: usize) -> Result<Vec<Line>> {
    let mut lines = Vec::new();
    loop {
        let Some(name) = cur.next() else {
            return Err(never_closed(open));
        };
        match name.kind {
            Kind::Close => return Ok(lines),
            Kind::Open => {
                return err(
                    name.line,
                    "unexpected \"{\": blocks nest only one level (directive { options })",
                );
            }
            Kind::Word => {}
        }
        let args = cur.args(name.line);
        lines.push(Line { name, args });
    }
}

// ---------------------------------------------------------------------------------------------
// Server blocks.

/// The plugins svcplane-dns reads.
const SUPPORTED: &[&str] = &[
    "errors",
    "health",
    "ready",
    "kubernetes",
    "prometheus",
    "forward",
    "cache",
    "loop",
    "reload",
    "loadbalance",
    "hosts",
    "rewrite",
    "log",
    "autopath",
    "bind",
];

/// Other plugins CoreDNS has (so a name outside both lists is likely a typo).
const COREDNS_ONLY: &[&str] = &[
    "acl",
    "any",
    "auto",
    "azure",
    "bufsize",
    "cancel",
    "chaos",
    "clouddns",
    "debug",
    "dns64",
    "dnssec",
    "dnstap",
    "erratic",
    "etcd",
    "federation",
    "file",
    "geoip",
    "grpc",
    "grpc_server",
    "header",
    "https",
    "https3",
    "import",
    "k8s_external",
    "local",
    "metadata",
    "minimal",
    "multisocket",
    "nomad",
    "nsid",
    "on",
    "pprof",
    "proxy",
    "quic",
    "root",
    "route53",
    "secondary",
    "sign",
    "template",
    "timeouts",
    "tls",
    "trace",
    "transfer",
    "tsig",
    "view",
    "whoami",
];

fn unsupported_plugin(name: &Tok) -> Error {
    let n = &name.text;
    let message = if n == "import" {
        format!("plugin \"import\" is not supported by svcplane-dns: {SNIPPETS}")
    } else if COREDNS_ONLY.contains(&n.as_str()) {
        format!("plugin \"{n}\" is not supported by svcplane-dns")
    } else {
        format!(
            "plugin \"{n}\" is not supported by svcplane-dns (nor known to CoreDNS; supported: {})",
            SUPPORTED.join(", ")
        )
    };
    Error {
        line: name.line,
        message,
    }
}

fn build(raw: Vec<RawServer>) -> Result<Corefile> {
    let mut servers = Vec::with_capacity(raw.len());
    let mut served: HashMap<(String, u16), usize> = HashMap::new();
    let mut kubernetes_at: Option<usize> = None;
    for r in raw {
        let (zones, port) = server_keys(&r.keys)?;
        for (i, (zone, line)) in zones.iter().enumerate() {
            if zones[..i].iter().any(|(z, _)| z == zone) {
                return err(
                    *line,
                    format!("zone \"{zone}\" given twice in the keys of one server block"),
                );
            }
            if let Some(first) = served.insert((zone.clone(), port), *line) {
                return err(
                    *line,
                    format!(
                        "zone \"{zone}\" on port {port} is already served by the server block on line {first}"
                    ),
                );
            }
        }
        let line = r.keys.first().map_or(0, |k| k.line);
        let zones: Vec<String> = zones.into_iter().map(|(z, _)| z).collect();
        let (server, kubernetes) = server_block(&r.directives, line, zones, port)?;
        if let Some(at) = kubernetes {
            if let Some(first) = kubernetes_at {
                return err(
                    at,
                    format!(
                        "kubernetes given in two server blocks (lines {first} and {at}): svcplane-dns runs one cluster index"
                    ),
                );
            }
            kubernetes_at = Some(at);
        }
        servers.push(server);
    }
    Ok(Corefile { servers })
}

/// The zones (with their lines) and the one port of a block's keys.
fn server_keys(keys: &[Tok]) -> Result<(Vec<(String, usize)>, u16)> {
    let mut zones = Vec::new();
    let mut port = None;
    for key in keys {
        for part in key.text.split(',').filter(|p| !p.is_empty()) {
            let (zone, p) = server_key(part, key.line)?;
            match port {
                Some(q) if q != p => {
                    return err(
                        key.line,
                        format!("all zones of a server block must share a port (here {q} and {p})"),
                    );
                }
                _ => port = Some(p),
            }
            zones.push((zone, key.line));
        }
    }
    match port {
        Some(port) => Ok((zones, port)),
        None => err(
            keys.first().map_or(0, |k| k.line),
            "server block without a zone",
        ),
    }
}

/// `[dns://]ZONE[:PORT]`.
fn server_key(key: &str, line: usize) -> Result<(String, u16)> {
    let mut rest = key;
    if let Some((scheme, after)) = key.split_once("://") {
        if !scheme.eq_ignore_ascii_case("dns") {
            return err(
                line,
                format!(
                    "scheme \"{}://\" is not supported by svcplane-dns (only dns://)",
                    scheme.to_ascii_lowercase()
                ),
            );
        }
        rest = after;
    }
    if rest.contains('/') {
        return err(
            line,
            format!(
                "CIDR key \"{key}\" is not supported by svcplane-dns; write the in-addr.arpa or ip6.arpa zone"
            ),
        );
    }
    let (host, port) = match rest.rsplit_once(':') {
        Some((host, port)) => match port.parse::<u16>() {
            Ok(port) => (host, port),
            Err(_) => {
                return err(
                    line,
                    format!("server block key \"{key}\": bad port \"{port}\""),
                );
            }
        },
        None => (rest, 53),
    };
    if host.is_empty() {
        return Ok((".".to_string(), port));
    }
    match normalize_name(host) {
        Some(zone) => Ok((zone, port)),
        None => err(
            line,
            format!("server block key \"{key}\": \"{host}\" is not a valid zone"),
        ),
    }
}

/// Lower case and absolute; `None` when not a plain DNS name (letters, digits, `-`, `_`).
fn normalize_name(name: &str) -> Option<String> {
    if name == "." {
        return Some(".".to_string());
    }
    let lower = name.to_ascii_lowercase();
    let body = lower.strip_suffix('.').unwrap_or(&lower);
    let valid = !body.is_empty()
        && body.len() < 254
        && body.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && label
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
        });
    valid.then(|| format!("{body}."))
}

fn server_block(
    directives: &[Directive],
    line: usize,
    zones: Vec<String>,
    port: u16,
) -> Result<(ServerBlock, Option<usize>)> {
    let mut p = Plugins::default();
    let mut bind = Vec::new();
    let mut seen: HashMap<&str, usize> = HashMap::new();
    let mut kubernetes_at = None;
    let mut autopath_at = None;
    for d in directives {
        let name = d.name.text.as_str();
        if !SUPPORTED.contains(&name) {
            return Err(unsupported_plugin(&d.name));
        }
        if name != "forward"
            && name != "rewrite"
            && let Some(first) = seen.insert(name, d.name.line)
        {
            return err(
                d.name.line,
                format!("{name} given twice in one server block (first on line {first})"),
            );
        }
        match name {
            "errors" => {
                errors(d)?;
                p.errors = true;
            }
            "health" => p.health = Some(health(d)?),
            "ready" => p.ready = Some(address_plugin(d, READY_DEFAULT_ADDR)?),
            "prometheus" => p.prometheus = Some(address_plugin(d, PROMETHEUS_DEFAULT_ADDR)?),
            "kubernetes" => {
                p.kubernetes = Some(kubernetes(d, &zones)?);
                kubernetes_at = Some(d.name.line);
            }
            "forward" => p.forward.push(forward(d)?),
            "cache" => p.cache = Some(cache(d, &zones)?),
            "loop" => {
                bare(d)?;
                p.loop_detect = true;
            }
            "reload" => p.reload = Some(reload(d)?),
            "loadbalance" => {
                loadbalance(d)?;
                p.loadbalance = true;
            }
            "hosts" => p.hosts = Some(hosts(d, &zones)?),
            "rewrite" => p.rewrite.push(rewrite(d)?),
            "log" => {
                log(d)?;
                p.log = true;
            }
            "autopath" => {
                p.autopath = Some(autopath(d, &zones)?);
                autopath_at = Some(d.name.line);
            }
            "bind" => bind = bind_addresses(d)?,
            _ => return Err(unsupported_plugin(&d.name)),
        }
    }
    if let Some(at) = autopath_at {
        let verified = p
            .kubernetes
            .as_ref()
            .is_some_and(|k| k.pods == PodMode::Verified);
        if !verified {
            return err(
                at,
                "autopath: @kubernetes needs a kubernetes plugin with \"pods verified\" in the same server block",
            );
        }
    }
    let server = ServerBlock {
        line,
        zones,
        port,
        bind,
        plugins: p,
    };
    Ok((server, kubernetes_at))
}

// ---------------------------------------------------------------------------------------------
// Helpers shared by the plugins.

fn no_block(d: &Directive) -> Result<()> {
    match &d.block {
        Some(b) => err(b.line, format!("{}: takes no {{ }} block", d.name.text)),
        None => Ok(()),
    }
}

/// No arguments and no block.
fn bare(d: &Directive) -> Result<()> {
    no_block(d)?;
    match d.args.first() {
        Some(a) => err(
            a.line,
            format!("{}: takes no arguments, not \"{}\"", d.name.text, a.text),
        ),
        None => Ok(()),
    }
}

fn options(d: &Directive) -> &[Line] {
    d.block.as_ref().map_or(&[], |b| &b.lines)
}

/// An option the plugin does not take: "not supported" when CoreDNS has it, "unknown" otherwise.
fn bad_option(plugin: &str, option: &Tok, coredns_only: &[&str]) -> Error {
    let o = &option.text;
    let message = if coredns_only.contains(&o.as_str()) {
        format!("{plugin}: option \"{o}\" is not supported by svcplane-dns")
    } else {
        format!("{plugin}: unknown option \"{o}\"")
    };
    Error {
        line: option.line,
        message,
    }
}

/// Checks an option line's argument count.
fn arity(plugin: &str, o: &Line, ok: bool, usage: &str) -> Result<()> {
    if ok {
        Ok(())
    } else {
        err(
            o.name.line,
            format!("{plugin}: \"{}\" wants {usage}", o.name.text),
        )
    }
}

fn number<T: FromStr>(plugin: &str, what: &str, t: &Tok) -> Result<T> {
    t.text.parse().or_else(|_| {
        err(
            t.line,
            format!(
                "{plugin}: {what} must be a whole number, not \"{}\"",
                t.text
            ),
        )
    })
}

fn number_in(plugin: &str, what: &str, t: &Tok, low: u32, high: u32) -> Result<u32> {
    match t.text.parse::<u32>() {
        Ok(n) if (low..=high).contains(&n) => Ok(n),
        _ => err(
            t.line,
            format!(
                "{plugin}: {what} must be a whole number from {low} to {high}, not \"{}\"",
                t.text
            ),
        ),
    }
}

fn duration(plugin: &str, what: &str, t: &Tok) -> Result<Duration> {
    match go_duration(&t.text) {
        Some(d) => Ok(d),
        None => err(
            t.line,
            format!(
                "{plugin}: {what}: bad duration \"{}\" (write it like 5s, 1m30s or 500ms)",
                t.text
            ),
        ),
    }
}

/// Go's `time.ParseDuration` syntax, negatives excepted: `0`, or numbers (with an optional
/// fraction) each followed by a unit: `ns`, `us`/`µs`, `ms`, `s`, `m`, `h`.
fn go_duration(s: &str) -> Option<Duration> {
    if s == "0" || s == "+0" {
        return Some(Duration::ZERO);
    }
    let mut rest = s.strip_prefix('+').unwrap_or(s);
    if rest.is_empty() {
        return None;
    }
    let digits = |s: &str| s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let mut total: u128 = 0;
    while !rest.is_empty() {
        let (whole, r) = rest.split_at(digits(rest));
        let (fraction, r) = match r.strip_prefix('.') {
            Some(r) => r.split_at(digits(r)),
            None => ("", r),
        };
        if whole.is_empty() && fraction.is_empty() {
            return None;
        }
        let unit_end = r
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(r.len());
        let (unit, r) = r.split_at(unit_end);
        let scale: u128 = match unit {
            "ns" => 1,
            "us" | "µs" | "μs" => 1_000,
            "ms" => 1_000_000,
            "s" => 1_000_000_000,
            "m" => 60_000_000_000,
            "h" => 3_600_000_000_000,
            _ => return None,
        };
        let whole: u128 = if whole.is_empty() {
            0
        } else {
            whole.parse().ok()?
        };
        total = total.checked_add(whole.checked_mul(scale)?)?;
        let fraction = &fraction[..fraction.len().min(18)];
        if !fraction.is_empty() {
            let f: u128 = fraction.parse().ok()?;
            let exp = u32::try_from(fraction.len()).ok()?;
            total = total.checked_add(f * scale / 10u128.pow(exp))?;
        }
        rest = r;
    }
    // Go durations are signed 64-bit nanoseconds.
    if total > i64::MAX as u128 {
        return None;
    }
    Some(Duration::from_nanos(u64::try_from(total).ok()?))
}

fn zone(plugin: &str, t: &Tok) -> Result<String> {
    if t.text.contains('/') {
        return err(
            t.line,
            format!(
                "{plugin}: CIDR zone \"{}\" is not supported by svcplane-dns; write the in-addr.arpa or ip6.arpa zone",
                t.text
            ),
        );
    }
    match normalize_name(&t.text) {
        Some(z) => Ok(z),
        None => err(
            t.line,
            format!("{plugin}: \"{}\" is not a valid zone", t.text),
        ),
    }
}

fn zones(plugin: &str, ts: &[Tok]) -> Result<Vec<String>> {
    ts.iter().map(|t| zone(plugin, t)).collect()
}

/// The given zones, or the block's when none are.
fn zones_or(plugin: &str, ts: &[Tok], block: &[String]) -> Result<Vec<String>> {
    if ts.is_empty() {
        Ok(block.to_vec())
    } else {
        zones(plugin, ts)
    }
}

/// `:PORT` (every address), `IP:PORT`, `[IPv6]:PORT` or `localhost:PORT`.
fn listen_address(plugin: &str, t: &Tok) -> Result<SocketAddr> {
    let s = t.text.as_str();
    if let Ok(addr) = s.parse::<SocketAddr>() {
        return Ok(addr);
    }
    if let Some((host, port)) = s.rsplit_once(':')
        && let Ok(port) = port.parse::<u16>()
    {
        if host.is_empty() {
            return Ok(SocketAddr::new(Ipv4Addr::UNSPECIFIED.into(), port));
        }
        if host.eq_ignore_ascii_case("localhost") {
            return Ok(SocketAddr::new(Ipv4Addr::LOCALHOST.into(), port));
        }
    }
    err(
        t.line,
        format!(
            "{plugin}: address \"{s}\" must be [HOST]:PORT with HOST an IP address or localhost"
        ),
    )
}

// ---------------------------------------------------------------------------------------------
// The plugins.

/// `errors`.
fn errors(d: &Directive) -> Result<()> {
    const COREDNS_ONLY: &[&str] = &["consolidate", "stacktrace", "stdout"];
    if let Some(a) = d.args.first() {
        return Err(bad_option("errors", a, COREDNS_ONLY));
    }
    match options(d).first() {
        Some(o) => Err(bad_option("errors", &o.name, COREDNS_ONLY)),
        None => Ok(()),
    }
}

/// `health [ADDRESS] { lameduck DURATION }`.
fn health(d: &Directive) -> Result<HealthPlugin> {
    let mut h = HealthPlugin::default();
    match d.args.as_slice() {
        [] => {}
        [a] => h.addr = listen_address("health", a)?,
        [_, extra, ..] => {
            return err(
                extra.line,
                "health: wants at most one ADDRESS: health [ADDRESS] { lameduck DURATION }",
            );
        }
    }
    for o in options(d) {
        match o.name.text.as_str() {
            "lameduck" => {
                arity("health", o, o.args.len() == 1, "DURATION")?;
                h.lameduck = duration("health", "lameduck", &o.args[0])?;
            }
            _ => return Err(bad_option("health", &o.name, &[])),
        }
    }
    Ok(h)
}

/// `ready [ADDRESS]`, `prometheus [ADDRESS]`.
fn address_plugin(d: &Directive, default: SocketAddr) -> Result<SocketAddr> {
    let plugin = d.name.text.as_str();
    no_block(d)?;
    match d.args.as_slice() {
        [] => Ok(default),
        [a] => listen_address(plugin, a),
        [_, extra, ..] => err(extra.line, format!("{plugin}: wants at most one ADDRESS")),
    }
}

/// `kubernetes [ZONES…] { … }`.
fn kubernetes(d: &Directive, block_zones: &[String]) -> Result<Kubernetes> {
    const P: &str = "kubernetes";
    const COREDNS_ONLY: &[&str] = &[
        "namespaces",
        "labels",
        "namespace_labels",
        "endpoint",
        "tls",
        "ignore",
        "multicluster",
        "startup_timeout",
        "apiserver",
        "resyncperiod",
        "upstream",
        "transfer",
    ];
    let mut k = Kubernetes::new(zones_or(P, &d.args, block_zones)?);
    for o in options(d) {
        match o.name.text.as_str() {
            "pods" => {
                arity(P, o, o.args.len() == 1, "disabled|insecure|verified")?;
                let a = &o.args[0];
                k.pods = match a.text.to_ascii_lowercase().as_str() {
                    "disabled" => PodMode::Disabled,
                    "insecure" => PodMode::Insecure,
                    "verified" => PodMode::Verified,
                    _ => {
                        return err(
                            a.line,
                            format!(
                                "kubernetes: \"pods\" wants disabled, insecure or verified, not \"{}\"",
                                a.text
                            ),
                        );
                    }
                };
            }
            "ttl" => {
                arity(P, o, o.args.len() == 1, "N (0 to 3600)")?;
                k.ttl = number_in(P, "ttl", &o.args[0], 0, 3600)?;
            }
            "fallthrough" => k.fallthrough = Some(zones(P, &o.args)?),
            "endpoint_pod_names" => {
                arity(P, o, o.args.is_empty(), "no arguments")?;
                k.endpoint_pod_names = true;
            }
            "noendpoints" => {
                arity(P, o, o.args.is_empty(), "no arguments")?;
                k.noendpoints = true;
            }
            "kubeconfig" => match o.args.as_slice() {
                [path] => k.kubeconfig = Some(PathBuf::from(&path.text)),
                [_, context] => {
                    return err(
                        context.line,
                        format!(
                            "kubernetes: kubeconfig CONTEXT (\"{}\") is not supported by svcplane-dns; the file's current context is used",
                            context.text
                        ),
                    );
                }
                _ => arity(P, o, false, "PATH")?,
            },
            _ => return Err(bad_option(P, &o.name, COREDNS_ONLY)),
        }
    }
    Ok(k)
}

/// `forward FROM TO… { … }`.
fn forward(d: &Directive) -> Result<Forward> {
    const P: &str = "forward";
    const COREDNS_ONLY: &[&str] = &[
        "force_tcp",
        "prefer_udp",
        "expire",
        "max_fails",
        "health_check",
        "tls",
        "tls_servername",
        "next",
        "failfast_all_unhealthy_upstreams",
        "max_idle_conns",
    ];
    /// CoreDNS's limit on upstreams per `forward`.
    const MAX_TO: usize = 15;
    let Some((from, to)) = d.args.split_first().filter(|(_, to)| !to.is_empty()) else {
        return err(
            d.name.line,
            "forward: wants FROM TO… (a zone and at least one upstream)",
        );
    };
    if to.len() > MAX_TO {
        return err(
            d.name.line,
            format!("forward: more than {MAX_TO} upstreams ({})", to.len()),
        );
    }
    let to = to.iter().map(upstream).collect::<Result<Vec<_>>>()?;
    let mut f = Forward::new(zone(P, from)?, to);
    for o in options(d) {
        match o.name.text.as_str() {
            "except" => {
                arity(P, o, !o.args.is_empty(), "ZONES…")?;
                f.except.extend(zones(P, &o.args)?);
            }
            "policy" => {
                arity(P, o, o.args.len() == 1, "random|round_robin|sequential")?;
                let a = &o.args[0];
                f.policy = match a.text.as_str() {
                    "random" => Policy::Random,
                    "round_robin" => Policy::RoundRobin,
                    "sequential" => Policy::Sequential,
                    _ => {
                        return err(
                            a.line,
                            format!(
                                "forward: \"policy\" wants random, round_robin or sequential, not \"{}\"",
                                a.text
                            ),
                        );
                    }
                };
            }
            "max_concurrent" => {
                arity(P, o, o.args.len() == 1, "N (more than 0)")?;
                let n: usize = number(P, "max_concurrent", &o.args[0])?;
                if n == 0 {
                    return err(o.name.line, "forward: max_concurrent must be more than 0");
                }
                f.max_concurrent = Some(n);
            }
            _ => return Err(bad_option(P, &o.name, COREDNS_ONLY)),
        }
    }
    Ok(f)
}

/// `IP`, `IP:PORT`, `[IPv6]:PORT`, `dns://…`, or a resolv.conf path (starting `/` or `.`).
fn upstream(t: &Tok) -> Result<Upstream> {
    let mut s = t.text.as_str();
    if s.starts_with('/') || s.starts_with('.') {
        return Ok(Upstream::ResolvConf(PathBuf::from(s)));
    }
    if let Some((scheme, rest)) = s.split_once("://") {
        if !scheme.eq_ignore_ascii_case("dns") {
            return err(
                t.line,
                format!(
                    "forward: scheme \"{}://\" is not supported by svcplane-dns (only dns://)",
                    scheme.to_ascii_lowercase()
                ),
            );
        }
        s = rest;
    }
    if let Ok(addr) = s.parse::<SocketAddr>() {
        return Ok(Upstream::Addr(addr));
    }
    let bare = s
        .strip_prefix('[')
        .and_then(|s| s.strip_suffix(']'))
        .unwrap_or(s);
    match bare.parse::<IpAddr>() {
        Ok(ip) => Ok(Upstream::Addr(SocketAddr::new(ip, 53))),
        Err(_) => err(
            t.line,
            format!(
                "forward: \"{}\" is neither IP[:PORT] nor a file path (host names are not supported)",
                t.text
            ),
        ),
    }
}

/// `cache [TTL] [ZONES…] { … }`.
fn cache(d: &Directive, block_zones: &[String]) -> Result<Cache> {
    const P: &str = "cache";
    const COREDNS_ONLY: &[&str] = &["servfail", "keepttl"];
    let mut args = d.args.as_slice();
    let mut ttl = None;
    if let Some((first, rest)) = args.split_first()
        && let Ok(n) = first.text.parse::<i64>()
    {
        match u32::try_from(n) {
            Ok(n) if n > 0 => ttl = Some(n),
            _ => {
                return err(
                    first.line,
                    format!("cache: TTL must be a positive number of seconds, not \"{n}\""),
                );
            }
        }
        args = rest;
    }
    let mut c = Cache::new(zones_or(P, args, block_zones)?);
    if let Some(ttl) = ttl {
        c.success.max_ttl = ttl;
        c.denial.max_ttl = ttl;
    }
    for o in options(d) {
        let name = o.name.text.as_str();
        match name {
            "success" | "denial" => {
                arity(
                    P,
                    o,
                    (1..=3).contains(&o.args.len()),
                    "CAPACITY [TTL [MINTTL]]",
                )?;
                let side: &mut CacheSide = if name == "success" {
                    &mut c.success
                } else {
                    &mut c.denial
                };
                side.capacity = number(P, &format!("{name} CAPACITY"), &o.args[0])?;
                if let Some(t) = o.args.get(1) {
                    side.max_ttl = number_in(P, &format!("{name} TTL"), t, 1, u32::MAX)?;
                }
                if let Some(t) = o.args.get(2) {
                    side.min_ttl = number(P, &format!("{name} MINTTL"), t)?;
                }
            }
            "prefetch" => {
                const USAGE: &str = "AMOUNT [DURATION [PERCENTAGE%]]";
                arity(P, o, (1..=3).contains(&o.args.len()), USAGE)?;
                let mut pf = Prefetch {
                    amount: number_in(P, "prefetch AMOUNT", &o.args[0], 1, u32::MAX)?,
                    duration: Duration::from_secs(60),
                    percentage: 10,
                };
                if let Some(t) = o.args.get(1) {
                    pf.duration = duration(P, "prefetch DURATION", t)?;
                }
                if let Some(t) = o.args.get(2) {
                    let pct = t.text.strip_suffix('%').map(str::parse::<u8>);
                    pf.percentage = match pct {
                        Some(Ok(n)) if (10..=100).contains(&n) => n,
                        _ => {
                            return err(
                                t.line,
                                format!(
                                    "cache: \"prefetch\" wants {USAGE} with PERCENTAGE 10% to 100%, not \"{}\"",
                                    t.text
                                ),
                            );
                        }
                    };
                }
                c.prefetch = Some(pf);
            }
            "serve_stale" => {
                arity(P, o, o.args.len() <= 2, "[DURATION [immediate|verify]]")?;
                let mut stale = (Duration::from_secs(3600), StaleMode::Immediate);
                if let Some(t) = o.args.first() {
                    stale.0 = duration(P, "serve_stale DURATION", t)?;
                }
                if let Some(t) = o.args.get(1) {
                    stale.1 = match t.text.to_ascii_lowercase().as_str() {
                        "immediate" => StaleMode::Immediate,
                        "verify" => StaleMode::Verify,
                        _ => {
                            return err(
                                t.line,
                                format!(
                                    "cache: \"serve_stale\" mode must be immediate or verify, not \"{}\"",
                                    t.text
                                ),
                            );
                        }
                    };
                }
                c.serve_stale = Some(stale);
            }
            "disable" => {
                arity(P, o, !o.args.is_empty(), "success|denial [ZONES…]")?;
                let (which, zs) = (&o.args[0], &o.args[1..]);
                let zs = zones(P, zs)?;
                let (side, list) = match which.text.as_str() {
                    "success" => (&mut c.success, &mut c.disable_success),
                    "denial" => (&mut c.denial, &mut c.disable_denial),
                    _ => {
                        return err(
                            which.line,
                            format!(
                                "cache: \"disable\" wants success or denial, not \"{}\"",
                                which.text
                            ),
                        );
                    }
                };
                if zs.is_empty() {
                    side.disabled = true;
                } else {
                    list.extend(zs);
                }
            }
            _ => return Err(bad_option(P, &o.name, COREDNS_ONLY)),
        }
    }
    Ok(c)
}

/// `reload [INTERVAL [JITTER]]`.
fn reload(d: &Directive) -> Result<Reload> {
    const P: &str = "reload";
    no_block(d)?;
    if let Some(extra) = d.args.get(2) {
        return err(extra.line, "reload: wants [INTERVAL [JITTER]]");
    }
    let mut r = Reload::default();
    if let Some(t) = d.args.first() {
        r.interval = duration(P, "INTERVAL", t)?;
        if r.interval < Duration::from_secs(2) {
            return err(
                t.line,
                format!("reload: INTERVAL must be at least 2s, not \"{}\"", t.text),
            );
        }
        r.jitter = r.jitter.min(r.interval / 2);
    }
    if let Some(t) = d.args.get(1) {
        r.jitter = duration(P, "JITTER", t)?;
        if r.jitter < Duration::from_secs(1) || r.jitter >= r.interval {
            return err(
                t.line,
                format!(
                    "reload: JITTER must be at least 1s and less than INTERVAL, not \"{}\"",
                    t.text
                ),
            );
        }
    }
    Ok(r)
}

/// `loadbalance [round_robin]`.
fn loadbalance(d: &Directive) -> Result<()> {
    no_block(d)?;
    match d.args.as_slice() {
        [] => Ok(()),
        [a] if a.text == "round_robin" => Ok(()),
        [a] => err(
            a.line,
            format!(
                "loadbalance: policy \"{}\" is not supported by svcplane-dns (only round_robin)",
                a.text
            ),
        ),
        [_, extra, ..] => err(extra.line, "loadbalance: wants [round_robin]"),
    }
}

/// `hosts [FILE [ZONES…]] { IP NAME…; ttl; no_reverse; reload; fallthrough }`.
fn hosts(d: &Directive, block_zones: &[String]) -> Result<Hosts> {
    const P: &str = "hosts";
    let (file, zs) = match d.args.split_first() {
        Some((file, zs)) => (Some(file), zs),
        None => (None, &[][..]),
    };
    let mut h = Hosts::new(zones_or(P, zs, block_zones)?);
    if let Some(file) = file {
        h.file = PathBuf::from(&file.text);
    }
    for o in options(d) {
        if let Ok(ip) = o.name.text.parse::<IpAddr>() {
            if o.args.is_empty() {
                return err(
                    o.name.line,
                    format!("hosts: entry for {ip} without names (wants IP NAME…)"),
                );
            }
            let names = o
                .args
                .iter()
                .map(|t| match normalize_name(&t.text) {
                    Some(n) => Ok(n),
                    None => err(t.line, format!("hosts: \"{}\" is not a valid name", t.text)),
                })
                .collect::<Result<Vec<_>>>()?;
            h.inline.push((ip, names));
            continue;
        }
        match o.name.text.as_str() {
            "ttl" => {
                arity(P, o, o.args.len() == 1, "N (1 to 65535)")?;
                h.ttl = number_in(P, "ttl", &o.args[0], 1, 65535)?;
            }
            "no_reverse" => {
                arity(P, o, o.args.is_empty(), "no arguments")?;
                h.no_reverse = true;
            }
            "reload" => {
                arity(P, o, o.args.len() == 1, "DURATION")?;
                h.reload = duration(P, "reload", &o.args[0])?;
            }
            "fallthrough" => h.fallthrough = Some(zones(P, &o.args)?),
            _ => return Err(bad_option(P, &o.name, &[])),
        }
    }
    Ok(h)
}

/// `rewrite [continue|stop] name [exact|prefix|suffix|substring|regex] FROM TO [answer auto]`.
fn rewrite(d: &Directive) -> Result<Rewrite> {
    const USAGE: &str = "rewrite: wants [continue|stop] name [exact|prefix|suffix|substring|regex] FROM TO [answer auto]";
    let line = d.name.line;
    if let Some(b) = &d.block {
        return err(
            b.line,
            "rewrite: the { … } block form is not supported by svcplane-dns",
        );
    }
    let mut args = d.args.as_slice();
    let mut continues = false;
    if let Some((first, rest)) = args.split_first() {
        match first.text.to_ascii_lowercase().as_str() {
            "continue" => {
                continues = true;
                args = rest;
            }
            "stop" => args = rest,
            _ => {}
        }
    }
    let Some((field, mut args)) = args.split_first() else {
        return err(line, USAGE);
    };
    match field.text.to_ascii_lowercase().as_str() {
        "name" => {}
        f @ ("type" | "class" | "edns0" | "ttl" | "cname" | "rcode") => {
            return err(
                field.line,
                format!(
                    "rewrite: rewriting the {f} field is not supported by svcplane-dns (only name)"
                ),
            );
        }
        _ => {
            return err(
                field.line,
                format!(
                    "rewrite: unknown field \"{}\" (svcplane-dns rewrites only name)",
                    field.text
                ),
            );
        }
    }
    let mut kind = NameMatch::Exact;
    if args.len() >= 3 {
        let explicit = match args[0].text.to_ascii_lowercase().as_str() {
            "exact" => Some(NameMatch::Exact),
            "prefix" => Some(NameMatch::Prefix),
            "suffix" => Some(NameMatch::Suffix),
            "substring" => Some(NameMatch::Substring),
            "regex" => Some(NameMatch::Regex),
            _ => None,
        };
        if let Some(k) = explicit {
            kind = k;
            args = &args[1..];
        }
    }
    let [from, to, tail @ ..] = args else {
        return err(line, USAGE);
    };
    let lower = |t: &Tok| t.text.to_ascii_lowercase();
    let answer_auto = match tail {
        [] => false,
        [a, b] if lower(a) == "answer" && lower(b) == "auto" => true,
        [a, b, ..]
            if lower(a) == "answer"
                && matches!(lower(b).as_str(), "name" | "value" | "question") =>
        {
            return err(
                b.line,
                format!(
                    "rewrite: \"answer {}\" is not supported by svcplane-dns (only answer auto)",
                    lower(b)
                ),
            );
        }
        [a, ..] => {
            return err(
                a.line,
                format!(
                    "rewrite: unexpected \"{}\" after FROM TO (only \"answer auto\" may follow)",
                    a.text
                ),
            );
        }
    };
    let name = |t: &Tok| match normalize_name(&t.text) {
        Some(n) => Ok(n),
        None => err(
            t.line,
            format!("rewrite: \"{}\" is not a valid name", t.text),
        ),
    };
    // As CoreDNS: lower case with a trailing dot, so prefixes and substrings end at a label
    // boundary; only exact names must be valid names.
    let fqdn = |t: &Tok| {
        let mut s = lower(t);
        if !s.ends_with('.') {
            s.push('.');
        }
        s
    };
    let (from_s, to_s, regex) = match kind {
        NameMatch::Exact => (name(from)?, name(to)?, None),
        NameMatch::Prefix | NameMatch::Suffix | NameMatch::Substring => {
            (fqdn(from), fqdn(to), None)
        }
        NameMatch::Regex => {
            let re = regex::RegexBuilder::new(&from.text)
                .case_insensitive(true)
                .build();
            let re = re.or_else(|e| {
                err(
                    from.line,
                    format!("rewrite: bad regex \"{}\": {e}", from.text),
                )
            })?;
            if let Some(group) = missing_group(&to.text, re.captures_len()) {
                return err(
                    to.line,
                    format!(
                        "rewrite: \"{{{group}}}\" in \"{}\" refers to a group the regex does not have",
                        to.text
                    ),
                );
            }
            (from.text.clone(), fqdn(to), Some(re))
        }
    };
    Ok(Rewrite {
        line,
        continues,
        kind,
        from: from_s,
        to: to_s,
        regex,
        answer_auto,
    })
}

/// The first `{N}` in `template` with no group N (`captures` counts group 0, the whole match).
fn missing_group(template: &str, captures: usize) -> Option<usize> {
    let mut rest = template;
    while let Some(start) = rest.find('{') {
        rest = &rest[start + 1..];
        if let Some(end) = rest.find('}')
            && let Ok(n) = rest[..end].parse::<usize>()
            && n >= captures
        {
            return Some(n);
        }
    }
    None
}

/// `log` or `log .`.
fn log(d: &Directive) -> Result<()> {
    if let Some(b) = &d.block {
        return err(
            b.line,
            "log: the { class … } block is not supported by svcplane-dns",
        );
    }
    match d.args.as_slice() {
        [] => Ok(()),
        [a] if a.text == "." => Ok(()),
        [first, rest @ ..] => {
            let bad = if first.text == "." { &rest[0] } else { first };
            err(
                bad.line,
                format!(
                    "log: argument \"{}\" is not supported by svcplane-dns (only \"log\" or \"log .\")",
                    bad.text
                ),
            )
        }
    }
}

/// `autopath [ZONES…] @kubernetes`.
fn autopath(d: &Directive, block_zones: &[String]) -> Result<Vec<String>> {
    const P: &str = "autopath";
    no_block(d)?;
    let Some((last, zs)) = d.args.split_last() else {
        return err(d.name.line, "autopath: wants [ZONES…] @kubernetes");
    };
    if last.text != "@kubernetes" {
        let message = if last.text.starts_with('@') {
            format!(
                "autopath: \"{}\" is not supported by svcplane-dns (only @kubernetes)",
                last.text
            )
        } else {
            format!(
                "autopath: a resolv.conf (\"{}\") is not supported by svcplane-dns (only @kubernetes)",
                last.text
            )
        };
        return err(last.line, message);
    }
    zones_or(P, zs, block_zones)
}

/// `bind ADDRESS…`.
fn bind_addresses(d: &Directive) -> Result<Vec<IpAddr>> {
    if let Some(b) = &d.block {
        return err(
            b.line,
            "bind: the { except … } block is not supported by svcplane-dns",
        );
    }
    if d.args.is_empty() {
        return err(d.name.line, "bind: wants ADDRESS…");
    }
    d.args
        .iter()
        .map(|t| {
            t.text.parse::<IpAddr>().or_else(|_| {
                err(
                    t.line,
                    format!(
                        "bind: \"{}\" is not an IP address (interface names are not supported by svcplane-dns)",
                        t.text
                    ),
                )
            })
        })
        .collect()
}
