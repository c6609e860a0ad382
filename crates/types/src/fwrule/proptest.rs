//! Property tests of the rule language, from a small seeded generator (no proptest crate):
//!
//! * random valid rules (every target and protocol form, lists, ranges, ICMP codes,
//!   priorities, tag strings with spaces, quotes, escapes, control and Unicode characters):
//!   `parse(print(rule)) == rule.normalized()`, and canonical text is a fixed point;
//! * the same rules written the many ways people write them (keyword case, spacing,
//!   bare words, `PORTS` for single ports, `( any )`, `all ports`, `PRIORITY 0`) parse to
//!   the same rule;
//! * random mutations of valid text never panic, and whatever still parses round-trips.
//!
//! A failure prints the seed and case number; `FWRULE_SEED=<n>` replays another seed.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::net::Ipv4Addr;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use uuid::Uuid;

use super::ast::{Action, IcmpType, quote};
use super::*;

const CASES: usize = 5000;

fn seed() -> u64 {
    std::env::var("FWRULE_SEED").ok().and_then(|s| s.parse().ok()).unwrap_or(0x005e_edf1_u64)
}

/// Characters tag strings are drawn from: plain, the ones the grammar escapes, controls,
/// Unicode spaces and others.
const ALPHABET: &[char] = &[
    'a', 'b', 'z', 'A', 'Z', '0', '9', '_', '-', ' ', ' ', '"', '\\', '(', ')', '/', '=', ',', '.', '\'', '\n', '\t', '\r', '\u{0}',
    '\u{8}', '\u{c}', '\u{1b}', '\u{7f}', '\u{85}', '\u{a0}', '\u{2028}', '\u{3000}', '\u{feff}', 'é', 'ß', '漢', '😀', '\u{e000}',
];

const WORDS: &[&str] = &["role", "web", "db", "syslog", "10", "2", "www-1", "a_b", "VM", "x"];

fn tag_string(rng: &mut StdRng) -> String {
    if rng.random_bool(0.4) {
        return WORDS[rng.random_range(0..WORDS.len())].to_string();
    }
    let len = rng.random_range(0..12);
    (0..len).map(|_| ALPHABET[rng.random_range(0..ALPHABET.len())]).collect()
}

fn target(rng: &mut StdRng, addresses: bool) -> Target {
    match rng.random_range(0..if addresses { 4 } else { 2 }) {
        0 => Target::Vm(Uuid::from_u128(rng.random())),
        1 => Target::Tag { name: tag_string(rng), value: if rng.random_bool(0.5) { Some(tag_string(rng)) } else { None } },
        2 => loop {
            let ip = Ipv4Addr::from(rng.random::<u32>());
            if !ip.is_unspecified() && !ip.is_broadcast() {
                break Target::Ip(ip);
            }
        },
        _ => {
            let prefix: u8 = rng.random_range(0..=32);
            let mask = if prefix == 0 { 0 } else { u32::MAX << (32 - u32::from(prefix)) };
            Target::Subnet { addr: Ipv4Addr::from(rng.random::<u32>() & mask), prefix }
        }
    }
}

fn side(rng: &mut StdRng, addresses: bool) -> Targets {
    match rng.random_range(0..10) {
        0 => Targets::Any,
        1 => Targets::AllVms,
        _ => {
            let n = if rng.random_bool(0.5) { 1 } else { rng.random_range(1..=6) };
            Targets::List((0..n).map(|_| target(rng, addresses)).collect())
        }
    }
}

fn port(rng: &mut StdRng) -> u16 {
    if rng.random_bool(0.2) { [1, 65535, 22, 80, 443][rng.random_range(0..5)] } else { rng.random_range(1..=65535) }
}

fn protocol(rng: &mut StdRng) -> ProtocolSpec {
    let ports = |rng: &mut StdRng| {
        if rng.random_bool(0.15) {
            return Ports::All;
        }
        let n = rng.random_range(1..=8);
        Ports::List(
            (0..n)
                .map(|_| {
                    if rng.random_bool(0.3) {
                        let (a, b) = (port(rng), port(rng));
                        Port::Range(a.min(b), a.max(b))
                    } else {
                        Port::Single(port(rng))
                    }
                })
                .collect(),
        )
    };
    let types = |rng: &mut StdRng| {
        if rng.random_bool(0.15) {
            return IcmpTypes::All;
        }
        let n = rng.random_range(1..=8);
        IcmpTypes::List(
            (0..n)
                .map(|_| IcmpType { icmp_type: rng.random(), code: if rng.random_bool(0.5) { Some(rng.random()) } else { None } })
                .collect(),
        )
    };
    match rng.random_range(0..4) {
        0 => ProtocolSpec::Tcp(ports(rng)),
        1 => ProtocolSpec::Udp(ports(rng)),
        2 => ProtocolSpec::Icmp(types(rng)),
        _ => ProtocolSpec::Icmp6(types(rng)),
    }
}

/// A random valid rule (not necessarily in canonical order).
fn rule(rng: &mut StdRng) -> Rule {
    let protocol = protocol(rng);
    // icmp6 rules cannot name IPv4 addresses.
    let addresses = !matches!(protocol, ProtocolSpec::Icmp6(_));
    let mut from = side(rng, addresses);
    let to = side(rng, addresses);
    if !from.names_vms() && !to.names_vms() {
        from = if rng.random_bool(0.5) { Targets::AllVms } else { Targets::List(vec![target(rng, false)]) };
    }
    let priority = if rng.random_bool(0.5) { 0 } else { rng.random_range(0..=100) };
    Rule { from, to, action: if rng.random_bool(0.5) { Action::Allow } else { Action::Block }, protocol, priority }
}

// --- Writing a rule the many ways people do ------------------------------------------------

fn kw(rng: &mut StdRng, word: &str) -> String {
    match rng.random_range(0..4) {
        0 => word.to_lowercase(),
        1 => word.to_uppercase(),
        2 => word.chars().enumerate().map(|(i, c)| if i % 2 == 0 { c.to_ascii_uppercase() } else { c.to_ascii_lowercase() }).collect(),
        _ => word.to_string(),
    }
}

fn space(rng: &mut StdRng) -> &'static str {
    [" ", " ", "  ", "\t", "\n ", " \r\n"][rng.random_range(0..6)]
}

fn is_bare_word(s: &str) -> bool {
    const KEYWORDS: &[&str] = &[
        "from", "to", "ip", "subnet", "any", "all", "tag", "vm", "vms", "or", "and", "block", "allow", "port", "ports", "tcp", "udp",
        "icmp", "icmp6", "ah", "esp", "type", "code", "priority",
    ];
    !s.is_empty()
        && s.chars().all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
        && !s.starts_with('-')
        && !KEYWORDS.contains(&s.to_ascii_lowercase().as_str())
}

fn write_tag_string(rng: &mut StdRng, s: &str) -> String {
    if is_bare_word(s) && rng.random_bool(0.5) {
        return s.to_string();
    }
    if rng.random_bool(0.5) {
        return quote(s);
    }
    // Escape more than needed: every character the grammar allows escaping, some \u.
    let mut out = String::from("\"");
    for c in s.chars() {
        match c {
            '"' | '\\' => {
                out.push('\\');
                out.push(c);
            }
            '/' | '(' | ')' if rng.random_bool(0.5) => {
                out.push('\\');
                out.push(c);
            }
            '\n' => out.push_str("\\n"),
            c if (c as u32) < 0x10000 && (c.is_control() || rng.random_bool(0.2)) => out.push_str(&format!("\\u{:04x}", c as u32)),
            c if (c as u32) >= 0x10000 && rng.random_bool(0.5) => {
                let v = c as u32 - 0x10000;
                out.push_str(&format!("\\u{:04X}\\u{:04x}", 0xd800 + (v >> 10), 0xdc00 + (v & 0x3ff)));
            }
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

fn write_target(rng: &mut StdRng, t: &Target) -> String {
    match t {
        Target::Ip(ip) => format!("{}{}{ip}", kw(rng, "ip"), space(rng)),
        Target::Subnet { addr, prefix } => format!("{}{}{addr}/{prefix}", kw(rng, "subnet"), space(rng)),
        Target::Vm(u) => format!("{}{}{u}", kw(rng, "vm"), space(rng)),
        Target::Tag { name, value } => {
            let mut s = format!("{}{}{}", kw(rng, "tag"), space(rng), write_tag_string(rng, name));
            if let Some(v) = value {
                let eq = if rng.random_bool(0.5) { "=" } else { " = " };
                s.push_str(eq);
                s.push_str(&write_tag_string(rng, v));
            }
            s
        }
    }
}

fn write_side(rng: &mut StdRng, side: &Targets) -> String {
    let paren = |rng: &mut StdRng, s: String| if rng.random_bool(0.3) { format!("({s})") } else { format!("( {s} )") };
    match side {
        Targets::Any if rng.random_bool(0.3) => {
            let any = kw(rng, "any");
            paren(rng, any)
        }
        Targets::Any => kw(rng, "any"),
        Targets::AllVms => {
            let s = format!("{}{}{}", kw(rng, "all"), space(rng), kw(rng, "vms"));
            if rng.random_bool(0.3) { paren(rng, s) } else { s }
        }
        Targets::List(l) if l.len() == 1 && rng.random_bool(0.7) => write_target(rng, &l[0]),
        Targets::List(l) => {
            let parts: Vec<String> = l.iter().map(|t| write_target(rng, t)).collect();
            let or = format!("{}{}{}", space(rng), kw(rng, "or"), space(rng));
            paren(rng, parts.join(&or))
        }
    }
}

fn write_ports(rng: &mut StdRng, p: &Ports) -> String {
    match p {
        Ports::All => match rng.random_range(0..3) {
            0 => format!("{} all", kw(rng, "port")),
            1 => format!("({} {})", kw(rng, "port"), kw(rng, "all")),
            _ => format!("{} {}", kw(rng, "all"), kw(rng, "ports")),
        },
        Ports::List(l) if l.iter().all(|p| matches!(p, Port::Single(_))) && rng.random_bool(0.5) => {
            let parts: Vec<String> = l.iter().map(|p| format!("{} {}", kw(rng, "port"), p.start())).collect();
            if parts.len() == 1 && rng.random_bool(0.5) {
                parts[0].clone()
            } else {
                let and = format!(" {} ", kw(rng, "and"));
                format!("({})", parts.join(&and))
            }
        }
        Ports::List(l) => {
            let parts: Vec<String> = l
                .iter()
                .map(|p| match p {
                    Port::Single(p) => p.to_string(),
                    Port::Range(a, b) => [format!("{a}-{b}"), format!("{a} - {b}"), format!("{a} -{b}")][rng.random_range(0..3)].clone(),
                })
                .collect();
            format!("{} {}", kw(rng, "ports"), parts.join(if rng.random_bool(0.5) { ", " } else { " ," }))
        }
    }
}

fn write_types(rng: &mut StdRng, t: &IcmpTypes) -> String {
    match t {
        IcmpTypes::All if rng.random_bool(0.5) => format!("{} {}", kw(rng, "type"), kw(rng, "all")),
        IcmpTypes::All => format!("( {} {} )", kw(rng, "type"), kw(rng, "all")),
        IcmpTypes::List(l) => {
            let parts: Vec<String> = l
                .iter()
                .map(|t| match t.code {
                    Some(c) => format!("{} {} {} {c}", kw(rng, "type"), t.icmp_type, kw(rng, "code")),
                    None => format!("{} {}", kw(rng, "type"), t.icmp_type),
                })
                .collect();
            if parts.len() == 1 && rng.random_bool(0.5) { parts[0].clone() } else { format!("({})", parts.join(" AND ")) }
        }
    }
}

/// `rule` written with random keyword case, spacing, quoting and equivalent forms.
fn write(rng: &mut StdRng, rule: &Rule) -> String {
    let proto = match &rule.protocol {
        ProtocolSpec::Tcp(p) => format!("{} {}", kw(rng, "tcp"), write_ports(rng, p)),
        ProtocolSpec::Udp(p) => format!("{} {}", kw(rng, "udp"), write_ports(rng, p)),
        ProtocolSpec::Icmp(t) => format!("{} {}", kw(rng, "icmp"), write_types(rng, t)),
        ProtocolSpec::Icmp6(t) => format!("{} {}", kw(rng, "icmp6"), write_types(rng, t)),
    };
    let action = kw(rng, if rule.action == Action::Allow { "allow" } else { "block" });
    let mut s = format!(
        "{}{}{}{}{}{}{}{}{}{action}{}{proto}",
        space(rng),
        kw(rng, "from"),
        space(rng),
        write_side(rng, &rule.from),
        space(rng),
        kw(rng, "to"),
        space(rng),
        write_side(rng, &rule.to),
        space(rng),
        space(rng)
    );
    if rule.priority > 0 || rng.random_bool(0.2) {
        s.push_str(&format!(" {} {}", kw(rng, "priority"), rule.priority));
    }
    s.push_str(space(rng));
    s
}

#[test]
fn print_then_parse_gives_the_rule_back() {
    let seed = seed();
    let mut rng = StdRng::seed_from_u64(seed);
    for case in 0..CASES {
        let raw = rule(&mut rng);
        let want = raw.clone().normalized();
        let text = raw.to_string();
        let got = parse(&text).unwrap_or_else(|e| panic!("seed {seed} case {case}: {text:?} refused: {e}"));
        assert_eq!(got, want, "seed {seed} case {case}: {text:?}");
        let canonical_text = want.to_string();
        assert_eq!(parse(&canonical_text).as_ref(), Ok(&want), "seed {seed} case {case}: {canonical_text:?}");
        assert_eq!(super::canonical(&canonical_text).as_deref(), Ok(canonical_text.as_str()), "seed {seed} case {case}");
    }
}

#[test]
fn every_way_of_writing_a_rule_parses_to_it() {
    let seed = seed() ^ 0x77;
    let mut rng = StdRng::seed_from_u64(seed);
    for case in 0..CASES {
        let want = rule(&mut rng).normalized();
        let text = write(&mut rng, &want);
        let got = parse(&text).unwrap_or_else(|e| panic!("seed {seed} case {case}: {text:?} refused: {e}\n(rule {want})"));
        assert_eq!(got, want, "seed {seed} case {case}: {text:?}");
    }
}

const JUNK: &[&str] = &[
    "(",
    ")",
    "\"",
    "\\",
    "=",
    ",",
    "-",
    "/",
    ".",
    ":",
    "::",
    "OR",
    "AND",
    "all",
    "any",
    "vms",
    "tag",
    "PORT",
    "PORTS",
    "TYPE",
    "CODE",
    "PRIORITY",
    "0",
    "65536",
    "256",
    "101",
    "10.0.0.1",
    "1.2.3.4/8",
    "\\u",
    "\\uD800",
    "é",
    "\u{0}",
    " ",
    "\n",
];

fn mutate(rng: &mut StdRng, text: &str) -> String {
    let mut chars: Vec<char> = text.chars().collect();
    for _ in 0..rng.random_range(1..=4) {
        let len = chars.len();
        match rng.random_range(0..6) {
            0 if len > 0 => {
                let i = rng.random_range(0..len);
                let n = rng.random_range(1..=(len - i).min(8));
                chars.drain(i..i + n);
            }
            1 => {
                let i = rng.random_range(0..=len);
                let junk: Vec<char> = JUNK[rng.random_range(0..JUNK.len())].chars().collect();
                chars.splice(i..i, junk);
            }
            2 if len > 0 => {
                let i = rng.random_range(0..len);
                chars[i] = ALPHABET[rng.random_range(0..ALPHABET.len())];
            }
            3 if len > 1 => {
                let (a, b) = (rng.random_range(0..len), rng.random_range(0..len));
                chars.swap(a, b);
            }
            4 if len > 0 => {
                let i = rng.random_range(0..len);
                let n = rng.random_range(1..=(len - i).min(16));
                let run: Vec<char> = chars[i..i + n].to_vec();
                let at = rng.random_range(0..=len);
                chars.splice(at..at, run);
            }
            _ if len > 0 => chars.truncate(rng.random_range(0..len)),
            _ => {}
        }
    }
    chars.into_iter().collect()
}

#[test]
fn mutated_text_never_panics_and_what_parses_round_trips() {
    let seed = seed() ^ 0x3131;
    let mut rng = StdRng::seed_from_u64(seed);
    let mut accepted = 0;
    for case in 0..CASES * 2 {
        let base = if rng.random_bool(0.3) {
            super::tests::CORPUS[rng.random_range(0..super::tests::CORPUS.len())].to_string()
        } else {
            let r = rule(&mut rng);
            write(&mut rng, &r)
        };
        let text = mutate(&mut rng, &base);
        let outcome = std::panic::catch_unwind(|| parse(&text));
        let parsed = outcome.unwrap_or_else(|_| panic!("seed {seed} case {case}: parse panicked on {text:?}"));
        match parsed {
            Ok(rule) => {
                accepted += 1;
                let printed = rule.to_string();
                assert_eq!(parse(&printed).as_ref(), Ok(&rule), "seed {seed} case {case}: {text:?} printed as {printed:?}");
            }
            Err(e) => {
                let message = e.to_string();
                assert!(!message.is_empty(), "seed {seed} case {case}");
                assert!(e.position <= text.chars().count(), "seed {seed} case {case}: {e:?} beyond {text:?}");
            }
        }
    }
    assert!(accepted > 100, "mutants should still parse now and then (got {accepted})");
}
