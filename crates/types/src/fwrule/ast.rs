//! The typed form of a firewall rule, its canonical order, and its printer.
//!
//! [`Rule`]'s `Display` prints the text FWAPI stores and CloudAPI echoes back (sdc-fwrule's
//! `FwRule.text()`): `FROM`, `TO`, the action, `PORT(S)`, `TYPE`, `CODE` and `PRIORITY` in
//! capitals; targets, protocol and `all` in lower case; tag names and values always quoted
//! and escaped; targets grouped ip, subnet, tag, vm and sorted within each group; ports and
//! ICMP types sorted; `PORTS a, b - c` only when there is a range; `PRIORITY` only when it
//! is not 0:
//!
//! ```text
//!   FROM (ip 10.0.0.1 OR tag "role" = "db") TO all vms ALLOW tcp PORTS 22, 8000 - 8100 PRIORITY 5
//! ```
//!
//! The parser ([`super::parse()`]) returns rules already in canonical order
//! ([`Rule::normalized`]), so `parse(rule.to_string()) == rule` for every rule it returns.

use std::fmt;
use std::net::Ipv4Addr;

use uuid::Uuid;

pub use crate::netpolicy::{Action, IcmpType};

/// A parsed firewall rule.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Rule {
    pub from: Targets,
    pub to: Targets,
    pub action: Action,
    pub protocol: ProtocolSpec,
    /// 0 (the default, lowest) to 100: higher priorities apply first.
    pub priority: u8,
}

/// One side of a rule.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Targets {
    /// `any`: every address.
    Any,
    /// `all vms`: every VM of the rule's owner (of every owner for a global rule).
    AllVms,
    /// One target, or `( a OR b OR … )`; never empty.
    List(Vec<Target>),
}

/// One target in a list.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Target {
    Ip(Ipv4Addr),
    /// An IPv4 block, its host bits clear.
    Subnet {
        addr: Ipv4Addr,
        prefix: u8,
    },
    Vm(Uuid),
    /// `tag "name"` (any value) or `tag "name" = "value"`.
    Tag {
        name: String,
        value: Option<String>,
    },
}

/// The protocol and what of it the rule matches.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum ProtocolSpec {
    Tcp(Ports),
    Udp(Ports),
    Icmp(IcmpTypes),
    Icmp6(IcmpTypes),
}

/// TCP/UDP ports: `PORT all`, or a non-empty list.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Ports {
    All,
    List(Vec<Port>),
}

/// A port or an inclusive range (`PORTS 1000 - 2000`), start ≤ end, both 1–65535.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Port {
    Single(u16),
    Range(u16, u16),
}

/// ICMP types: `TYPE all`, or a non-empty list (each with or without a code).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum IcmpTypes {
    All,
    List(Vec<IcmpType>),
}

impl Port {
    pub fn start(self) -> u16 {
        match self {
            Port::Single(p) | Port::Range(p, _) => p,
        }
    }

    pub fn end(self) -> u16 {
        match self {
            Port::Single(p) | Port::Range(_, p) => p,
        }
    }
}

impl Target {
    /// Whether this target names VMs (a vm or a tag) rather than addresses.
    pub fn is_vm_side(&self) -> bool {
        matches!(self, Target::Vm(_) | Target::Tag { .. })
    }

    /// Triton's grouping order (ip, subnet, tag, vm) and the text sorted within a group.
    fn sort_key(&self) -> (u8, String, Option<String>) {
        match self {
            Target::Ip(ip) => (0, ip.to_string(), None),
            Target::Subnet { addr, prefix } => (1, format!("{addr}/{prefix}"), None),
            Target::Tag { name, value } => (2, name.clone(), value.clone()),
            Target::Vm(u) => (3, u.to_string(), None),
        }
    }
}

impl Targets {
    /// Whether this side names VMs (`all vms`, a vm or a tag).
    pub fn names_vms(&self) -> bool {
        match self {
            Targets::Any => false,
            Targets::AllVms => true,
            Targets::List(l) => l.iter().any(Target::is_vm_side),
        }
    }

    fn normalized(self) -> Targets {
        match self {
            Targets::List(mut l) => {
                l.sort_by_cached_key(Target::sort_key);
                l.dedup();
                // A bare `tag "k"` already covers every `tag "k" = "v"` (sdc-fwrule keeps the bare one).
                let bare: Vec<String> =
                    l.iter().filter_map(|t| if let Target::Tag { name, value: None } = t { Some(name.clone()) } else { None }).collect();
                l.retain(|t| !matches!(t, Target::Tag { name, value: Some(_) } if bare.contains(name)));
                Targets::List(l)
            }
            other => other,
        }
    }
}

impl ProtocolSpec {
    pub fn protocol(&self) -> crate::netpolicy::Protocol {
        use crate::netpolicy::Protocol;
        match self {
            ProtocolSpec::Tcp(_) => Protocol::Tcp,
            ProtocolSpec::Udp(_) => Protocol::Udp,
            ProtocolSpec::Icmp(_) => Protocol::Icmp,
            ProtocolSpec::Icmp6(_) => Protocol::Icmp6,
        }
    }

    fn normalized(self) -> ProtocolSpec {
        fn ports(p: Ports) -> Ports {
            match p {
                Ports::List(mut l) => {
                    l.sort_by_key(|p| (p.start(), p.end(), matches!(p, Port::Range(..))));
                    l.dedup();
                    Ports::List(l)
                }
                Ports::All => Ports::All,
            }
        }
        fn types(t: IcmpTypes) -> IcmpTypes {
            match t {
                IcmpTypes::List(mut l) => {
                    l.sort_by_key(|t| (t.icmp_type, t.code));
                    l.dedup();
                    IcmpTypes::List(l)
                }
                IcmpTypes::All => IcmpTypes::All,
            }
        }
        match self {
            ProtocolSpec::Tcp(p) => ProtocolSpec::Tcp(ports(p)),
            ProtocolSpec::Udp(p) => ProtocolSpec::Udp(ports(p)),
            ProtocolSpec::Icmp(t) => ProtocolSpec::Icmp(types(t)),
            ProtocolSpec::Icmp6(t) => ProtocolSpec::Icmp6(types(t)),
        }
    }
}

impl Rule {
    /// The same rule in canonical order, as FWAPI stores it: targets grouped and sorted
    /// (duplicates dropped, a valued tag dropped beside the bare tag of the same name),
    /// ports and ICMP types sorted and deduplicated. Meaning is unchanged.
    pub fn normalized(self) -> Rule {
        Rule {
            from: self.from.normalized(),
            to: self.to.normalized(),
            action: self.action,
            protocol: self.protocol.normalized(),
            priority: self.priority,
        }
    }
}

/// Characters printed as escapes inside a quoted tag string (sdc-fwrule's `tagEscape`):
/// the four the grammar needs, control characters, and Unicode spaces that would
/// otherwise be mistaken for an ASCII space or not be seen at all.
fn escape(c: char) -> Option<&'static str> {
    Some(match c {
        '"' => "\\\"",
        '(' => "\\(",
        ')' => "\\)",
        '\\' => "\\\\",
        '\u{8}' => "\\b",
        '\t' => "\\t",
        '\n' => "\\n",
        '\u{c}' => "\\f",
        '\r' => "\\r",
        _ => return None,
    })
}

fn needs_unicode_escape(c: char) -> bool {
    matches!(c,
        '\u{0}'..='\u{1f}' | '\u{7f}' | '\u{85}' | '\u{a0}' | '\u{1680}' | '\u{180e}' | '\u{2000}'..='\u{200d}'
        | '\u{2028}' | '\u{2029}' | '\u{202f}' | '\u{205f}' | '\u{2060}' | '\u{3000}' | '\u{feff}')
}

/// `"text"`, escaped so the parser reads back exactly `text`.
pub fn quote(text: &str) -> String {
    let mut out = String::with_capacity(text.len() + 2);
    out.push('"');
    for c in text.chars() {
        if let Some(e) = escape(c) {
            out.push_str(e);
        } else if needs_unicode_escape(c) {
            out.push_str(&format!("\\u{:04X}", c as u32));
        } else {
            out.push(c);
        }
    }
    out.push('"');
    out
}

impl fmt::Display for Target {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Target::Ip(ip) => write!(f, "ip {ip}"),
            Target::Subnet { addr, prefix } => write!(f, "subnet {addr}/{prefix}"),
            Target::Vm(u) => write!(f, "vm {u}"),
            Target::Tag { name, value: None } => write!(f, "tag {}", quote(name)),
            Target::Tag { name, value: Some(v) } => write!(f, "tag {} = {}", quote(name), quote(v)),
        }
    }
}

impl fmt::Display for Targets {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Targets::Any => f.write_str("any"),
            Targets::AllVms => f.write_str("all vms"),
            Targets::List(l) if l.len() == 1 => write!(f, "{}", l[0]),
            Targets::List(l) => {
                f.write_str("(")?;
                for (i, t) in l.iter().enumerate() {
                    if i > 0 {
                        f.write_str(" OR ")?;
                    }
                    write!(f, "{t}")?;
                }
                f.write_str(")")
            }
        }
    }
}

impl fmt::Display for Ports {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let l = match self {
            Ports::All => return f.write_str("PORT all"),
            Ports::List(l) => l,
        };
        if l.iter().any(|p| matches!(p, Port::Range(..))) {
            // sdc-fwrule prints PORTS only when there is a range: a list of single ports
            // reads the same either way.
            f.write_str("PORTS ")?;
            for (i, p) in l.iter().enumerate() {
                if i > 0 {
                    f.write_str(", ")?;
                }
                match p {
                    Port::Single(p) => write!(f, "{p}")?,
                    Port::Range(a, b) => write!(f, "{a} - {b}")?,
                }
            }
            return Ok(());
        }
        let ports: Vec<String> = l.iter().map(|p| p.start().to_string()).collect();
        if ports.len() == 1 { write!(f, "PORT {}", ports[0]) } else { write!(f, "(PORT {})", ports.join(" AND PORT ")) }
    }
}

impl fmt::Display for IcmpTypes {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let l = match self {
            IcmpTypes::All => return f.write_str("TYPE all"),
            IcmpTypes::List(l) => l,
        };
        let types: Vec<String> = l
            .iter()
            .map(|t| match t.code {
                Some(c) => format!("{} CODE {c}", t.icmp_type),
                None => t.icmp_type.to_string(),
            })
            .collect();
        if types.len() == 1 { write!(f, "TYPE {}", types[0]) } else { write!(f, "(TYPE {})", types.join(" AND TYPE ")) }
    }
}

impl fmt::Display for ProtocolSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ProtocolSpec::Tcp(p) => write!(f, "tcp {p}"),
            ProtocolSpec::Udp(p) => write!(f, "udp {p}"),
            ProtocolSpec::Icmp(t) => write!(f, "icmp {t}"),
            ProtocolSpec::Icmp6(t) => write!(f, "icmp6 {t}"),
        }
    }
}

impl fmt::Display for Rule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let action = match self.action {
            Action::Allow => "ALLOW",
            Action::Block => "BLOCK",
        };
        write!(f, "FROM {} TO {} {action} {}", self.from, self.to, self.protocol)?;
        if self.priority > 0 {
            write!(f, " PRIORITY {}", self.priority)?;
        }
        Ok(())
    }
}
