//! Lexer and recursive-descent parser for Triton's firewall rule language (sdc-fwrule's
//! grammar, language version 4), with its validations and its error messages.
//!
//! ```text
//!   rule     := FROM side TO side (ALLOW|BLOCK) proto [PRIORITY n]
//!   side     := any | all vms | target | ( any ) | ( all vms ) | ( target OR target … )
//!   target   := ip A.B.C.D | subnet A.B.C.D/N | vm UUID | tag S [= S]     S: "string" | word
//!   proto    := (tcp|udp) ports | (icmp|icmp6) types
//!   ports    := PORT n | PORT all | ( PORT n AND PORT n … ) | ( PORT all ) | PORTS r, r, …
//!               (r: n | n - m | n-m; `all ports` is read as `PORT all`)
//!   types    := TYPE t [CODE c] | TYPE all | ( TYPE t [CODE c] AND … ) | ( TYPE all )
//! ```
//!
//! Keywords are case-insensitive (sdc-fwrule takes all-lower or all-upper). Messages follow
//! sdc-fwrule's: `Error at character 4: 'foo', expected: '(', 'all', 'any', 'ip', 'subnet',
//! 'vm', 'tag', found: word` (the character is where the last good token ended),
//! `Error at character 19: '.254 TO tag smartdc_', found: unexpected text`, `Port number
//! "0" is invalid`, `rule does not affect VMs`, ….
//!
//! Refused where Triton would accept: IPv6 addresses and subnets (Nereid's firewall is
//! IPv4 only) and the `ah`/`esp` protocols, each with its own message.

use std::fmt;
use std::net::Ipv4Addr;

use uuid::Uuid;

use super::ast::{Action, IcmpType, IcmpTypes, Port, Ports, ProtocolSpec, Rule, Target, Targets};

/// sdc-fwrule's limit of targets on each side.
pub const MAX_TARGETS_PER_SIDE: usize = 24;
/// sdc-fwrule's limit of ports or ICMP types (language version 4).
pub const MAX_PORTS: usize = 24;

/// Why rule text was refused, and where.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParseError {
    /// Character offset (0-based): for a syntax error, where the last good token ended (as
    /// Triton counts); for unreadable text, where it starts; for a bad value, where the
    /// value starts; 0 for a rule-wide problem.
    pub position: usize,
    pub kind: ParseErrorKind,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ParseErrorKind {
    /// A token the grammar does not allow here.
    Unexpected {
        /// The token as written (`''` at the end of the text).
        text: String,
        /// What could have come instead, in Triton's names (`'FROM'`, `'all'`, `'WORD'`).
        expected: Vec<&'static str>,
        /// What came (`word`, `OR`, `EOF`, …).
        found: &'static str,
    },
    /// Text that is no token at all (a stray character, an unterminated string, a bad escape).
    UnexpectedText {
        /// Up to 20 characters from there.
        upcoming: String,
    },
    /// Well-formed but invalid: a port out of range, a bad UUID, no VM-side target, ….
    Invalid(String),
}

impl fmt::Display for ParseError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.kind {
            ParseErrorKind::Unexpected { text, expected, found } => {
                let expected: Vec<String> = expected.iter().map(|e| format!("'{e}'")).collect();
                write!(f, "Error at character {}: '{text}', expected: {}, found: {found}", self.position, expected.join(", "))
            }
            ParseErrorKind::UnexpectedText { upcoming } => {
                write!(f, "Error at character {}: '{upcoming}', found: unexpected text", self.position)
            }
            ParseErrorKind::Invalid(m) => f.write_str(m),
        }
    }
}

impl std::error::Error for ParseError {}

// --- Lexer --------------------------------------------------------------------------------

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kw {
    From,
    To,
    Ip,
    Subnet,
    Any,
    All,
    Tag,
    Vm,
    Vms,
    Or,
    And,
    Block,
    Allow,
    Port,
    Ports,
    Tcp,
    Udp,
    Icmp,
    Icmp6,
    Ah,
    Esp,
    Type,
    Code,
    Priority,
}

const KEYWORDS: &[(&str, Kw)] = &[
    ("from", Kw::From),
    ("to", Kw::To),
    ("ip", Kw::Ip),
    ("subnet", Kw::Subnet),
    ("any", Kw::Any),
    ("all", Kw::All),
    ("tag", Kw::Tag),
    ("vm", Kw::Vm),
    ("vms", Kw::Vms),
    ("or", Kw::Or),
    ("and", Kw::And),
    ("block", Kw::Block),
    ("allow", Kw::Allow),
    ("port", Kw::Port),
    ("ports", Kw::Ports),
    ("tcp", Kw::Tcp),
    ("udp", Kw::Udp),
    ("icmp", Kw::Icmp),
    ("icmp6", Kw::Icmp6),
    ("ah", Kw::Ah),
    ("esp", Kw::Esp),
    ("type", Kw::Type),
    ("code", Kw::Code),
    ("priority", Kw::Priority),
];

#[derive(Debug, Clone, PartialEq, Eq)]
enum Tok {
    Kw(Kw),
    Word,
    /// A quoted string, unescaped.
    Str(String),
    Ipv4,
    Ipv6,
    /// `/N` after a subnet's address.
    Cidr,
    LParen,
    RParen,
    Comma,
    Eq,
    Dash,
    Eof,
    /// Text that is no token: the parser reports it when it gets there, as Triton's lazy lexer does.
    Junk,
}

#[derive(Debug, Clone)]
struct Token {
    tok: Tok,
    /// As written.
    text: String,
    start: usize,
    end: usize,
}

/// sdc-fwrule's terminal numbering: the order its messages list expected tokens in.
fn terminal_order(name: &str) -> u8 {
    const ORDER: &[&str] = &[
        "FROM",
        "TO",
        "EOF",
        "PRIORITY",
        "WORD",
        "(",
        ")",
        "OR",
        "all",
        "VMS",
        "any",
        "ip",
        "IPV4ADDR",
        "subnet",
        "CIDRSUFFIX",
        "IPV6ADDR",
        "vm",
        "tag",
        "=",
        "STRING",
        "BLOCK",
        "ALLOW",
        "TCP",
        "UDP",
        "ICMP",
        "ICMP6",
        "AH",
        "ESP",
        "AND",
        "PORT",
        "PORTS",
        "-",
        ",",
        "TYPE",
        "CODE",
    ];
    ORDER.iter().position(|n| *n == name).map_or(u8::MAX, |p| p as u8)
}

/// Name of a token as sdc-fwrule's messages show what was found.
fn found_name(t: &Tok) -> &'static str {
    match t {
        Tok::Kw(k) => match k {
            Kw::From => "FROM",
            Kw::To => "TO",
            Kw::Ip => "IP",
            Kw::Subnet => "SUBNET",
            Kw::Any => "ANY",
            Kw::All => "ALL",
            Kw::Tag => "TAG",
            Kw::Vm => "VM",
            Kw::Vms => "VMS",
            Kw::Or => "OR",
            Kw::And => "AND",
            Kw::Block => "BLOCK",
            Kw::Allow => "ALLOW",
            Kw::Port => "PORT",
            Kw::Ports => "PORTS",
            Kw::Tcp => "TCP",
            Kw::Udp => "UDP",
            Kw::Icmp => "ICMP",
            Kw::Icmp6 => "ICMP6",
            Kw::Ah => "AH",
            Kw::Esp => "ESP",
            Kw::Type => "TYPE",
            Kw::Code => "CODE",
            Kw::Priority => "PRIORITY",
        },
        Tok::Word => "word",
        Tok::Str(_) => "STRING",
        Tok::Ipv4 => "IPV4ADDR",
        Tok::Ipv6 => "IPV6ADDR",
        Tok::Cidr => "CIDRSUFFIX",
        Tok::LParen => "(",
        Tok::RParen => ")",
        Tok::Comma => ",",
        Tok::Eq => "=",
        Tok::Dash => "-",
        Tok::Eof => "EOF",
        Tok::Junk => "unexpected text",
    }
}

fn is_word_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || c == '_' || c == '-'
}

/// Length (in chars) of `1-3 digits . 1-3 digits . 1-3 digits . 1-3 digits` at the start.
fn ipv4_len(s: &[char]) -> Option<usize> {
    let mut i = 0;
    for part in 0..4 {
        let digits = s[i..].iter().take(3).take_while(|c| c.is_ascii_digit()).count();
        if digits == 0 {
            return None;
        }
        i += digits;
        if part < 3 {
            if s.get(i) != Some(&'.') {
                return None;
            }
            i += 1;
        }
    }
    Some(i)
}

/// Length of `hex* : hex* : [:hex]*` (lower-case hex) at the start: sdc-fwrule's IPv6 token.
fn ipv6_len(s: &[char]) -> Option<usize> {
    let hex = |c: &char| c.is_ascii_digit() || ('a'..='f').contains(c);
    let mut i = s.iter().take_while(|c| hex(c)).count();
    if s.get(i) != Some(&':') {
        return None;
    }
    i += 1;
    i += s[i..].iter().take_while(|c| hex(c)).count();
    if s.get(i) != Some(&':') {
        return None;
    }
    i += 1;
    i += s[i..].iter().take_while(|c| hex(c) || **c == ':').count();
    Some(i)
}

/// The unescaped contents of the string starting at `s[0] == '"'`, and its length with the
/// quotes; `None` if it is unterminated or has an escape the language does not know.
fn string_at(s: &[char]) -> Option<(String, usize)> {
    let mut out = String::new();
    let mut i = 1;
    loop {
        let c = *s.get(i)?;
        match c {
            '"' => return Some((out, i + 1)),
            '\\' => {
                let e = *s.get(i + 1)?;
                i += 2;
                match e {
                    '"' | '/' | '(' | ')' | '\\' => out.push(e),
                    'b' => out.push('\u{8}'),
                    'f' => out.push('\u{c}'),
                    'n' => out.push('\n'),
                    'r' => out.push('\r'),
                    't' => out.push('\t'),
                    'u' => {
                        let unit = hex4(s.get(i..i + 4)?)?;
                        i += 4;
                        if (0xd800..0xdc00).contains(&unit) {
                            // A surrogate pair, written as two escapes.
                            if s.get(i) != Some(&'\\') || s.get(i + 1) != Some(&'u') {
                                return None;
                            }
                            let low = hex4(s.get(i + 2..i + 6)?)?;
                            if !(0xdc00..0xe000).contains(&low) {
                                return None;
                            }
                            i += 6;
                            out.push(char::from_u32(0x10000 + ((unit - 0xd800) << 10) + (low - 0xdc00))?);
                        } else {
                            out.push(char::from_u32(unit)?);
                        }
                    }
                    _ => return None,
                }
            }
            c => {
                out.push(c);
                i += 1;
            }
        }
    }
}

fn hex4(s: &[char]) -> Option<u32> {
    s.iter().try_fold(0u32, |acc, c| Some(acc * 16 + c.to_digit(16)?))
}

fn lex(text: &str) -> Vec<Token> {
    let s: Vec<char> = text.chars().collect();
    let mut out = Vec::new();
    let mut i = 0;
    let token = |tok: Tok, start: usize, end: usize| Token { tok, text: s[start..end].iter().collect(), start, end };
    while i < s.len() {
        let c = s[i];
        // JavaScript's \s, which sdc-fwrule's lexer skips, includes the byte order mark.
        if c.is_whitespace() || c == '\u{feff}' {
            i += 1;
            continue;
        }
        let single = match c {
            '(' => Some(Tok::LParen),
            ')' => Some(Tok::RParen),
            ',' => Some(Tok::Comma),
            '=' => Some(Tok::Eq),
            '-' => Some(Tok::Dash),
            _ => None,
        };
        if let Some(tok) = single {
            out.push(token(tok, i, i + 1));
            i += 1;
            continue;
        }
        let (tok, len) = if c == '"' {
            match string_at(&s[i..]) {
                Some((v, len)) => (Tok::Str(v), len),
                None => (Tok::Junk, 0),
            }
        } else if c == '/' {
            let digits = s[i + 1..].iter().take(3).take_while(|c| c.is_ascii_digit()).count();
            if digits > 0 { (Tok::Cidr, digits + 1) } else { (Tok::Junk, 0) }
        } else if let Some(len) = ipv4_len(&s[i..]) {
            (Tok::Ipv4, len)
        } else if let Some(len) = ipv6_len(&s[i..]) {
            (Tok::Ipv6, len)
        } else if is_word_char(c) {
            let len = s[i..].iter().take_while(|c| is_word_char(**c)).count();
            let word: String = s[i..i + len].iter().collect::<String>().to_ascii_lowercase();
            match KEYWORDS.iter().find(|(k, _)| *k == word) {
                Some((_, kw)) => (Tok::Kw(*kw), len),
                None => (Tok::Word, len),
            }
        } else {
            (Tok::Junk, 0)
        };
        if tok == Tok::Junk {
            out.push(Token { tok, text: s[i..].iter().take(20).collect(), start: i, end: i });
            return out;
        }
        out.push(token(tok, i, i + len));
        i += len;
    }
    out.push(Token { tok: Tok::Eof, text: String::new(), start: s.len(), end: s.len() });
    out
}

// --- Parser -------------------------------------------------------------------------------

struct Parser {
    toks: Vec<Token>,
    pos: usize,
    /// Where the last consumed token ended (Triton's "character").
    last_end: usize,
    /// What else could follow the protocol part just read (e.g. `,` after `PORTS 80`).
    after_protocol: &'static [&'static str],
}

type PResult<T> = Result<T, ParseError>;

fn invalid(position: usize, message: String) -> ParseError {
    ParseError { position, kind: ParseErrorKind::Invalid(message) }
}

impl Parser {
    fn peek(&self) -> &Token {
        &self.toks[self.pos.min(self.toks.len() - 1)]
    }

    fn bump(&mut self) -> Token {
        let t = self.peek().clone();
        if self.pos < self.toks.len() - 1 {
            self.pos += 1;
        }
        self.last_end = t.end;
        t
    }

    fn at_kw(&self, kw: Kw) -> bool {
        self.peek().tok == Tok::Kw(kw)
    }

    fn eat_kw(&mut self, kw: Kw) -> bool {
        let yes = self.at_kw(kw);
        if yes {
            self.bump();
        }
        yes
    }

    /// The error for the next token, given what the grammar would have taken.
    fn unexpected(&self, expected: &[&'static str]) -> ParseError {
        let t = self.peek();
        if t.tok == Tok::Junk {
            return ParseError { position: t.start, kind: ParseErrorKind::UnexpectedText { upcoming: t.text.clone() } };
        }
        let mut expected = expected.to_vec();
        expected.sort_by_key(|e| terminal_order(e));
        expected.dedup();
        ParseError {
            position: self.last_end,
            kind: ParseErrorKind::Unexpected { text: t.text.clone(), expected, found: found_name(&t.tok) },
        }
    }

    fn expect_kw(&mut self, kw: Kw, name: &'static str) -> PResult<()> {
        if self.eat_kw(kw) { Ok(()) } else { Err(self.unexpected(&[name])) }
    }

    fn expect(&mut self, tok: Tok, name: &'static str) -> PResult<Token> {
        if self.peek().tok == tok { Ok(self.bump()) } else { Err(self.unexpected(&[name])) }
    }

    fn word(&mut self) -> PResult<Token> {
        self.expect(Tok::Word, "WORD")
    }

    fn rule(&mut self) -> PResult<Rule> {
        self.expect_kw(Kw::From, "FROM")?;
        let from = self.side()?;
        if !self.eat_kw(Kw::To) {
            return Err(self.unexpected(&self.after_side(&from, &["TO"])));
        }
        let to = self.side()?;
        let action = match self.peek().tok {
            Tok::Kw(Kw::Allow) => Action::Allow,
            Tok::Kw(Kw::Block) => Action::Block,
            _ => return Err(self.unexpected(&self.after_side(&to, &["BLOCK", "ALLOW"]))),
        };
        self.bump();
        let protocol = self.protocol()?;
        let mut priority = 0;
        if self.eat_kw(Kw::Priority) {
            let w = self.word()?;
            priority = match number(&w.text) {
                Some(n) if n <= 100 => n as u8,
                _ => return Err(invalid(w.start, format!("Priority level \"{}\" is invalid", w.text))),
            };
            if self.peek().tok != Tok::Eof {
                return Err(self.unexpected(&["EOF"]));
            }
        } else if self.peek().tok != Tok::Eof {
            let mut expected = vec!["EOF", "PRIORITY"];
            expected.extend(self.after_protocol.iter().copied());
            return Err(self.unexpected(&expected));
        }
        let rule = Rule { from, to, action, protocol, priority };
        check(&rule)?;
        Ok(rule.normalized())
    }

    /// What may follow a side: `extra`, plus `=` after a bare tag.
    fn after_side(&self, side: &Targets, extra: &[&'static str]) -> Vec<&'static str> {
        let mut e = extra.to_vec();
        if let Targets::List(l) = side
            && l.len() == 1
            && matches!(l[0], Target::Tag { value: None, .. })
            && self.toks.get(self.pos.wrapping_sub(1)).is_some_and(|t| t.tok != Tok::RParen)
        {
            e.push("=");
        }
        e
    }

    fn side(&mut self) -> PResult<Targets> {
        const START: &[&str] = &["(", "all", "any", "ip", "subnet", "vm", "tag"];
        match self.peek().tok {
            Tok::Kw(Kw::Any) => {
                self.bump();
                Ok(Targets::Any)
            }
            Tok::Kw(Kw::All) => {
                self.bump();
                self.expect_kw(Kw::Vms, "VMS")?;
                Ok(Targets::AllVms)
            }
            Tok::LParen => {
                self.bump();
                let side = match self.peek().tok {
                    Tok::Kw(Kw::Any) => {
                        self.bump();
                        Targets::Any
                    }
                    Tok::Kw(Kw::All) => {
                        self.bump();
                        self.expect_kw(Kw::Vms, "VMS")?;
                        Targets::AllVms
                    }
                    Tok::Kw(Kw::Ip | Kw::Subnet | Kw::Vm | Kw::Tag) => {
                        let mut list = vec![self.target()?];
                        while self.eat_kw(Kw::Or) {
                            if !matches!(self.peek().tok, Tok::Kw(Kw::Ip | Kw::Subnet | Kw::Vm | Kw::Tag)) {
                                return Err(self.unexpected(&["ip", "subnet", "vm", "tag"]));
                            }
                            list.push(self.target()?);
                        }
                        if self.peek().tok != Tok::RParen {
                            let mut e = vec![")", "OR"];
                            if matches!(list.last(), Some(Target::Tag { value: None, .. })) {
                                e.push("=");
                            }
                            return Err(self.unexpected(&e));
                        }
                        Targets::List(list)
                    }
                    _ => return Err(self.unexpected(&["all", "any", "ip", "subnet", "vm", "tag"])),
                };
                self.expect(Tok::RParen, ")")?;
                Ok(side)
            }
            Tok::Kw(Kw::Ip | Kw::Subnet | Kw::Vm | Kw::Tag) => Ok(Targets::List(vec![self.target()?])),
            _ => Err(self.unexpected(START)),
        }
    }

    fn target(&mut self) -> PResult<Target> {
        let kw = self.bump();
        match kw.tok {
            Tok::Kw(Kw::Ip) => {
                let a = self.address()?;
                match a.text.parse::<Ipv4Addr>() {
                    Ok(ip) if !ip.is_unspecified() && !ip.is_broadcast() => Ok(Target::Ip(ip)),
                    _ => Err(invalid(a.start, format!("IPv4 address \"{}\" is invalid", a.text))),
                }
            }
            Tok::Kw(Kw::Subnet) => {
                let a = self.address()?;
                let c = self.expect(Tok::Cidr, "CIDRSUFFIX")?;
                let text = format!("{}{}", a.text, c.text);
                let Ok(addr) = a.text.parse::<Ipv4Addr>() else {
                    return Err(invalid(a.start, format!("Subnet \"{text}\" is invalid (bad address component)")));
                };
                let prefix = match number(&c.text[1..]) {
                    Some(p) if p <= 32 => p as u8,
                    _ => return Err(invalid(a.start, format!("Subnet \"{text}\" is invalid (bad prefix length)"))),
                };
                let mask = if prefix == 0 { 0 } else { u32::MAX << (32 - u32::from(prefix)) };
                if u32::from(addr) & !mask != 0 {
                    return Err(invalid(a.start, format!("Subnet \"{text}\" is invalid (bits set to right of mask)")));
                }
                Ok(Target::Subnet { addr, prefix })
            }
            Tok::Kw(Kw::Vm) => {
                let w = self.word()?;
                match uuid_strict(&w.text) {
                    Some(u) => Ok(Target::Vm(u)),
                    None => Err(invalid(w.start, format!("UUID \"{}\" is invalid", w.text))),
                }
            }
            _ => {
                let name = self.tag_string()?;
                let value = if self.peek().tok == Tok::Eq {
                    self.bump();
                    Some(self.tag_string()?)
                } else {
                    None
                };
                Ok(Target::Tag { name, value })
            }
        }
    }

    /// The address after `ip` or `subnet`; IPv6 is refused here, with its own message.
    fn address(&mut self) -> PResult<Token> {
        match self.peek().tok {
            Tok::Ipv4 => Ok(self.bump()),
            Tok::Ipv6 => {
                let t = self.peek().clone();
                Err(invalid(
                    t.start,
                    format!("IPv6 address \"{}\" is not supported: Nereid's firewall rules take IPv4 addresses only", t.text),
                ))
            }
            _ => Err(self.unexpected(&["IPV4ADDR", "IPV6ADDR"])),
        }
    }

    fn tag_string(&mut self) -> PResult<String> {
        match &self.peek().tok {
            Tok::Str(s) => {
                let s = s.clone();
                self.bump();
                Ok(s)
            }
            Tok::Word => Ok(self.bump().text),
            _ => Err(self.unexpected(&["WORD", "STRING"])),
        }
    }

    fn protocol(&mut self) -> PResult<ProtocolSpec> {
        let t = self.peek().clone();
        match t.tok {
            Tok::Kw(Kw::Tcp) => {
                self.bump();
                Ok(ProtocolSpec::Tcp(self.ports()?))
            }
            Tok::Kw(Kw::Udp) => {
                self.bump();
                Ok(ProtocolSpec::Udp(self.ports()?))
            }
            Tok::Kw(Kw::Icmp) => {
                self.bump();
                Ok(ProtocolSpec::Icmp(self.types()?))
            }
            Tok::Kw(Kw::Icmp6) => {
                self.bump();
                Ok(ProtocolSpec::Icmp6(self.types()?))
            }
            Tok::Kw(Kw::Ah | Kw::Esp) => Err(invalid(
                t.start,
                format!("Protocol \"{}\" is not supported: Nereid's firewall rules take tcp, udp, icmp and icmp6", t.text.to_lowercase()),
            )),
            _ => Err(self.unexpected(&["TCP", "UDP", "ICMP", "ICMP6"])),
        }
    }

    fn ports(&mut self) -> PResult<Ports> {
        match self.peek().tok {
            Tok::Kw(Kw::Port) => {
                self.bump();
                if self.eat_kw(Kw::All) {
                    self.after_protocol = &[];
                    return Ok(Ports::All);
                }
                let p = self.port_number(false)?;
                self.after_protocol = &[];
                Ok(Ports::List(vec![Port::Single(p)]))
            }
            Tok::Kw(Kw::All) => {
                // `all ports`: how people say `PORT all`.
                self.bump();
                self.expect_kw(Kw::Ports, "PORTS")?;
                self.after_protocol = &[];
                Ok(Ports::All)
            }
            Tok::Kw(Kw::Ports) => {
                self.bump();
                let mut list = vec![self.port_range()?];
                while self.peek().tok == Tok::Comma {
                    self.bump();
                    list.push(self.port_range()?);
                }
                self.after_protocol = &[","];
                Ok(Ports::List(list))
            }
            Tok::LParen => {
                self.bump();
                self.expect_kw(Kw::Port, "PORT")?;
                if self.eat_kw(Kw::All) {
                    self.expect(Tok::RParen, ")")?;
                    self.after_protocol = &[];
                    return Ok(Ports::All);
                }
                let mut list = vec![Port::Single(self.port_number(false)?)];
                while self.eat_kw(Kw::And) {
                    self.expect_kw(Kw::Port, "PORT")?;
                    list.push(Port::Single(self.port_number(true)?));
                }
                if self.peek().tok != Tok::RParen {
                    return Err(self.unexpected(&[")", "AND"]));
                }
                self.bump();
                self.after_protocol = &[];
                Ok(Ports::List(list))
            }
            _ => Err(self.unexpected(&["(", "PORT", "PORTS"])),
        }
    }

    /// A port after `PORT`; `all` could have come instead unless `in_list`.
    fn port_number(&mut self, in_list: bool) -> PResult<u16> {
        if self.peek().tok != Tok::Word {
            return Err(self.unexpected(if in_list { &["WORD"] } else { &["WORD", "all"] }));
        }
        let w = self.bump();
        port_value(&w.text).ok_or_else(|| invalid(w.start, format!("Port number \"{}\" is invalid", w.text)))
    }

    /// `n`, `n-m` (one word) or `n - m`.
    fn port_range(&mut self) -> PResult<Port> {
        let w = self.word()?;
        let bad_port = |p: &str| invalid(w.start, format!("Port number \"{p}\" is invalid"));
        let parts: Vec<&str> = w.text.split('-').collect();
        let (start, end) = match parts.as_slice() {
            [one] if self.peek().tok == Tok::Dash => {
                let a = port_value(one).ok_or_else(|| bad_port(one))?;
                self.bump();
                let e = self.word()?;
                let b = port_value(&e.text).ok_or_else(|| invalid(e.start, format!("Port number \"{}\" is invalid", e.text)))?;
                (a, Some(b))
            }
            [one] => (port_value(one).ok_or_else(|| bad_port(one))?, None),
            [a, b] => (port_value(a).ok_or_else(|| bad_port(a))?, Some(port_value(b).ok_or_else(|| bad_port(b))?)),
            _ => return Err(invalid(w.start, format!("\"{}\" is not a valid port number or range", w.text))),
        };
        match end {
            None => Ok(Port::Single(start)),
            Some(end) if end < start => {
                Err(invalid(w.start, format!("The end of the range ({end}) cannot be less than the start ({start})")))
            }
            Some(end) => Ok(Port::Range(start, end)),
        }
    }

    fn types(&mut self) -> PResult<IcmpTypes> {
        self.after_protocol = &[];
        match self.peek().tok {
            Tok::Kw(Kw::Type) => {
                self.bump();
                if self.eat_kw(Kw::All) {
                    return Ok(IcmpTypes::All);
                }
                let t = self.icmp_type(false)?;
                if t.code.is_none() {
                    self.after_protocol = &["CODE"];
                }
                Ok(IcmpTypes::List(vec![t]))
            }
            Tok::LParen => {
                self.bump();
                self.expect_kw(Kw::Type, "TYPE")?;
                if self.eat_kw(Kw::All) {
                    self.expect(Tok::RParen, ")")?;
                    return Ok(IcmpTypes::All);
                }
                let mut list = vec![self.icmp_type(false)?];
                while self.eat_kw(Kw::And) {
                    self.expect_kw(Kw::Type, "TYPE")?;
                    list.push(self.icmp_type(true)?);
                }
                if self.peek().tok != Tok::RParen {
                    let mut e = vec![")", "AND"];
                    if list.last().is_some_and(|t| t.code.is_none()) {
                        e.push("CODE");
                    }
                    return Err(self.unexpected(&e));
                }
                self.bump();
                Ok(IcmpTypes::List(list))
            }
            _ => Err(self.unexpected(&["(", "TYPE"])),
        }
    }

    fn icmp_type(&mut self, in_list: bool) -> PResult<IcmpType> {
        if self.peek().tok != Tok::Word {
            return Err(self.unexpected(if in_list { &["WORD"] } else { &["WORD", "all"] }));
        }
        let w = self.bump();
        let icmp_type = byte(&w.text).ok_or_else(|| invalid(w.start, format!("ICMP type \"{}\" is invalid", w.text)))?;
        let code = if self.eat_kw(Kw::Code) {
            let c = self.word()?;
            Some(byte(&c.text).ok_or_else(|| invalid(c.start, format!("ICMP code \"{}\" is invalid", c.text)))?)
        } else {
            None
        };
        Ok(IcmpType { icmp_type, code })
    }
}

/// A decimal number (digits only; leading zeros allowed, as Triton's `Number()` reads them).
fn number(s: &str) -> Option<u32> {
    if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    Some(s.bytes().fold(0u32, |acc, b| acc.saturating_mul(10).saturating_add(u32::from(b - b'0'))))
}

fn port_value(s: &str) -> Option<u16> {
    number(s).filter(|n| (1..=65535).contains(n)).map(|n| n as u16)
}

fn byte(s: &str) -> Option<u8> {
    number(s).filter(|n| *n <= 255).map(|n| n as u8)
}

/// A UUID as sdc-fwrule takes it: hyphenated, lower-case hex.
fn uuid_strict(s: &str) -> Option<Uuid> {
    let shape = s.len() == 36
        && s.char_indices()
            .all(|(i, c)| if [8, 13, 18, 23].contains(&i) { c == '-' } else { c.is_ascii_digit() || ('a'..='f').contains(&c) });
    if shape { Uuid::parse_str(s).ok() } else { None }
}

/// The checks sdc-fwrule makes on the whole rule once it has parsed.
fn check(rule: &Rule) -> PResult<()> {
    let (count, what) = match &rule.protocol {
        ProtocolSpec::Tcp(Ports::List(l)) | ProtocolSpec::Udp(Ports::List(l)) => (l.len(), "ports"),
        ProtocolSpec::Icmp(IcmpTypes::List(l)) | ProtocolSpec::Icmp6(IcmpTypes::List(l)) => (l.len(), "types"),
        _ => (0, ""),
    };
    if count > MAX_PORTS {
        return Err(invalid(0, format!("maximum of {MAX_PORTS} {what} allowed")));
    }
    for side in [&rule.from, &rule.to] {
        if let Targets::List(l) = side
            && l.len() > MAX_TARGETS_PER_SIDE
        {
            return Err(invalid(0, format!("maximum of {MAX_TARGETS_PER_SIDE} targets allowed per side")));
        }
    }
    if let ProtocolSpec::Icmp6(_) = rule.protocol {
        for side in [&rule.from, &rule.to] {
            if let Targets::List(l) = side {
                if l.iter().any(|t| matches!(t, Target::Ip(_))) {
                    return Err(invalid(0, "rule affects ICMPv6 but contains a non-IPv6 address".into()));
                }
                if l.iter().any(|t| matches!(t, Target::Subnet { .. })) {
                    return Err(invalid(0, "rule affects ICMPv6 but contains a non-IPv6 subnet".into()));
                }
            }
        }
    }
    if !rule.from.names_vms() && !rule.to.names_vms() {
        return Err(invalid(0, "rule does not affect VMs".into()));
    }
    Ok(())
}

/// Parses and validates rule text; the rule comes back in canonical order (see
/// [`Rule::normalized`]), so printing it gives the text FWAPI would store.
pub fn parse(text: &str) -> Result<Rule, ParseError> {
    let mut p = Parser { toks: lex(text), pos: 0, last_end: 0, after_protocol: &[] };
    p.rule()
}
