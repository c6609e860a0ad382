//! The wire format of the SmartOS metadata protocol: one request line in, one typed
//! [`Request`] out; one reply in, the exact bytes to write out. Pure: no I/O, no VM.
//!
//! ```text
//!   v1:        GET <key>\n | KEYS\n          → SUCCESS\n<value, "." lines doubled>\n.\n | NOTFOUND\n | FAILURE\n
//!   handshake: \n                           → invalid command\n
//!              NEGOTIATE V2\n               → V2_OK\n   (any other version: FAILURE\n)
//!   v2:        V2 <len> <crc32> <body>\n     body = <reqid> <CODE>[ <base64 payload>]
//!              len = bytes of body, crc32 = 8 lowercase hex digits of body (IEEE, as zlib)
//! ```
//!
//! A V2 request's payload is base64 of the key (`GET`, `DELETE`), nothing (`KEYS`), or for
//! `PUT` base64 of `base64(key) + " " + base64(value)`. A reply echoes the reqid; its payload is
//! omitted entirely (no trailing space) when empty.
//!
//! # What gets an answer
//!
//! The metadata port is a serial port, and UEFI firmware prints its console (CR/LF line ends,
//! ANSI escape sequences) to every serial port until the OS takes over. Answering that text
//! would type into the firmware, so [`parse_line`] sorts each line into one of:
//!
//! | Line | Answer |
//! |---|---|
//! | a request (V1, `NEGOTIATE`, a well-formed V2 frame); a single trailing CR is tolerated | the reply |
//! | a V2 frame whose reqid can be found but whose length, checksum, payload or command is wrong | V2 `FAILURE` echoing the reqid, with a message naming the problem |
//! | any other line of printable ASCII, including the empty line clients send first | `invalid command` |
//! | anything else: other control bytes, escape sequences, non-ASCII, a CR-ended non-request | nothing ([`Request::Ignore`]) |
//!
//! SmartOS drops bad V2 frames silently, which leaves the client waiting 45 s; answering with
//! `FAILURE` lets it retry at once. Lines longer than [`MAX_LINE`] are never buffered whole
//! (see `lines`); [`parse_overlong`] decides what their first bytes deserve.

use base64::Engine as _;
use base64::engine::general_purpose::{GeneralPurpose, GeneralPurposeConfig, STANDARD};
use base64::engine::{DecodePaddingMode, general_purpose};

/// The longest request line the server accepts (bytes, without the LF). A PUT of a 2 MiB
/// value is about 3.6 MiB once base64-encoded twice.
pub const MAX_LINE: usize = 4 * 1024 * 1024;

/// The answer to an empty or unparseable line.
pub const INVALID_COMMAND: &str = "invalid command\n";
/// The answer to `NEGOTIATE V2`.
pub const V2_OK: &str = "V2_OK\n";
/// The v1 failure reply (also the answer to `NEGOTIATE` of any version but V2).
pub const V1_FAILURE: &str = "FAILURE\n";
/// The v1 reply for a missing key.
pub const V1_NOTFOUND: &str = "NOTFOUND\n";

/// Decodes the base64 clients send: standard alphabet, padding optional.
const LENIENT: GeneralPurpose =
    GeneralPurpose::new(&base64::alphabet::STANDARD, GeneralPurposeConfig::new().with_decode_padding_mode(DecodePaddingMode::Indifferent));

/// The CRC-32 of a V2 frame body, as the frame carries it: 8 lowercase hex digits.
pub fn crc32_hex(body: &[u8]) -> String {
    format!("{:08x}", crc32fast::hash(body))
}

/// The result code of a V2 reply.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Code {
    Success,
    NotFound,
    Failure,
}

impl Code {
    pub fn as_str(self) -> &'static str {
        match self {
            Code::Success => "SUCCESS",
            Code::NotFound => "NOTFOUND",
            Code::Failure => "FAILURE",
        }
    }
}

/// One V2 frame, request or reply, with its payload decoded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Frame {
    pub reqid: String,
    pub code: String,
    pub payload: Vec<u8>,
}

/// Why a line is not a usable V2 frame.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    /// Not even a reqid could be found: the line is not a V2 frame at all.
    #[error("not a V2 frame")]
    NotAFrame,
    /// A frame with this reqid, broken in the way `problem` says.
    #[error("frame {reqid}: {problem}")]
    Bad { reqid: String, problem: Problem },
}

/// What is wrong with a V2 frame whose reqid is known; the text goes back in the `FAILURE`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Problem {
    #[error("length mismatch: header says {declared}, body is {actual} bytes")]
    Length { declared: String, actual: usize },
    #[error("checksum mismatch: got {got}, computed {computed}")]
    Checksum { got: String, computed: String },
    #[error("frame has no command")]
    NoCommand,
    #[error("payload is not valid base64")]
    Base64,
    #[error("Unknown command {0}")]
    UnknownCommand(String),
    #[error("{0} needs a key")]
    MissingKey(&'static str),
    #[error("{0} key is not UTF-8")]
    KeyNotUtf8(&'static str),
    #[error("invalid PUT payload: {0}")]
    Put(&'static str),
    #[error("request longer than {0} bytes")]
    TooLong(usize),
}

impl Frame {
    /// A reply frame; `payload` is sent base64-encoded, or omitted when empty.
    pub fn reply(reqid: &str, code: Code, payload: &[u8]) -> Frame {
        Frame { reqid: reqid.to_string(), code: code.as_str().to_string(), payload: payload.to_vec() }
    }

    /// `<reqid> <CODE>[ <base64 payload>]`, what the length and CRC cover.
    pub fn body(&self) -> String {
        if self.payload.is_empty() {
            format!("{} {}", self.reqid, self.code)
        } else {
            format!("{} {} {}", self.reqid, self.code, STANDARD.encode(&self.payload))
        }
    }

    /// The whole line, LF included: `V2 <len> <crc32> <body>\n`.
    pub fn to_line(&self) -> String {
        let body = self.body();
        format!("V2 {} {} {}\n", body.len(), crc32_hex(body.as_bytes()), body)
    }

    /// Parses one line (without its LF; trailing whitespace is ignored, as SmartOS does)
    /// and checks its length and CRC.
    pub fn parse(line: &str) -> Result<Frame, FrameError> {
        let line = line.trim_end();
        let header = line.strip_prefix("V2 ").and_then(|rest| Header::split(rest, true)).ok_or(FrameError::NotAFrame)?;
        let bad = |problem| FrameError::Bad { reqid: header.reqid.to_string(), problem };
        // SmartOS rebuilds the body from the reqid and the rest, one space between them.
        let body = format!("{} {}", header.reqid, header.rest);
        if header.len.parse::<usize>().ok() != Some(body.len()) {
            return Err(bad(Problem::Length { declared: header.len.to_string(), actual: body.len() }));
        }
        let computed = crc32_hex(body.as_bytes());
        if header.crc != computed {
            return Err(bad(Problem::Checksum { got: header.crc.to_string(), computed }));
        }
        let (code, payload) = match header.rest.split_once(' ') {
            Some((code, payload)) => (code, payload.trim_start()),
            None => (header.rest, ""),
        };
        if code.is_empty() {
            return Err(bad(Problem::NoCommand));
        }
        let payload = LENIENT.decode(payload).map_err(|_| bad(Problem::Base64))?;
        Ok(Frame { reqid: header.reqid.to_string(), code: code.to_string(), payload })
    }
}

/// The fields of a V2 header, split on runs of spaces as SmartOS's
/// `\s*([0-9]+)\s+([0-9a-f]+)\s+([0-9a-f]+)\s+(.*)` does. Only the reqid's form is checked
/// here (lowercase hex, so that it can be echoed); a wrong length or CRC is reported against it.
struct Header<'a> {
    len: &'a str,
    crc: &'a str,
    reqid: &'a str,
    rest: &'a str,
}

impl<'a> Header<'a> {
    /// `s` is what follows `V2 `. With `reqid_may_end` false the reqid must be followed by a
    /// space (for a truncated line, whose last token may be cut short).
    fn split(s: &'a str, reqid_may_end: bool) -> Option<Header<'a>> {
        let (len, s) = s.trim_start().split_once(' ')?;
        let (crc, s) = s.trim_start().split_once(' ')?;
        let s = s.trim_start();
        let (reqid, rest) = match s.split_once(' ') {
            Some((reqid, rest)) => (reqid, rest.trim_start()),
            None if reqid_may_end => (s, ""),
            None => return None,
        };
        let is_reqid = !reqid.is_empty() && reqid.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'));
        is_reqid.then_some(Header { len, crc, reqid, rest })
    }
}

/// A V2 operation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Op {
    Get(String),
    Keys,
    Put { key: String, value: String },
    Delete(String),
}

/// What one line asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Request {
    /// Noise (firmware output, binary): say nothing.
    Ignore,
    /// A clean line that is no request: answer [`INVALID_COMMAND`].
    Invalid,
    /// `NEGOTIATE <version>`.
    Negotiate(String),
    /// v1 `GET <key>`.
    V1Get(String),
    /// v1 `KEYS`.
    V1Keys,
    /// A well-formed V2 request.
    V2 { reqid: String, op: Op },
    /// A V2 frame that cannot be served: answer `FAILURE` with the problem.
    BadFrame { reqid: String, problem: Problem },
}

/// Is this byte printable ASCII (space to `~`)?
fn printable(b: &u8) -> bool {
    (0x20..=0x7e).contains(b)
}

/// Sorts one line (without its LF) into a [`Request`]; see the module documentation.
pub fn parse_line(raw: &[u8]) -> Request {
    let (raw, had_cr) = match raw.strip_suffix(b"\r") {
        Some(raw) => (raw, true),
        None => (raw, false),
    };
    if !raw.iter().all(printable) {
        return Request::Ignore;
    }
    let Ok(line) = std::str::from_utf8(raw) else { return Request::Ignore };
    let line = line.trim_end();
    // A CR-ended line that is no request is far more likely firmware console output than a
    // client: stay quiet rather than type `invalid command` into the firmware.
    let not_a_request = if had_cr { Request::Ignore } else { Request::Invalid };
    let (command, argument) = line.split_once(' ').map_or((line, ""), |(c, a)| (c, a.trim()));
    match command {
        "V2" => match Frame::parse(line) {
            Ok(frame) => match operation(&frame) {
                Ok(op) => Request::V2 { reqid: frame.reqid, op },
                Err(problem) => Request::BadFrame { reqid: frame.reqid, problem },
            },
            Err(FrameError::Bad { reqid, problem }) => Request::BadFrame { reqid, problem },
            Err(FrameError::NotAFrame) => not_a_request,
        },
        "NEGOTIATE" if !argument.is_empty() => Request::Negotiate(argument.to_string()),
        "GET" if !argument.is_empty() => Request::V1Get(argument.to_string()),
        "KEYS" => Request::V1Keys,
        _ => not_a_request,
    }
}

/// What a line longer than `max` deserves, judged by its first bytes: a `FAILURE` when they
/// hold a V2 header with a complete reqid, otherwise nothing.
pub fn parse_overlong(head: &[u8], max: usize) -> Request {
    let clean = head.iter().position(|b| !printable(b)).unwrap_or(head.len());
    let Ok(text) = std::str::from_utf8(&head[..clean]) else { return Request::Ignore };
    match text.strip_prefix("V2 ").and_then(|rest| Header::split(rest, false)) {
        Some(header) => Request::BadFrame { reqid: header.reqid.to_string(), problem: Problem::TooLong(max) },
        None => Request::Ignore,
    }
}

/// The operation a well-formed V2 request frame asks for.
fn operation(frame: &Frame) -> Result<Op, Problem> {
    match frame.code.as_str() {
        "GET" => Ok(Op::Get(key(&frame.payload, "GET")?)),
        "KEYS" => Ok(Op::Keys),
        "DELETE" => Ok(Op::Delete(key(&frame.payload, "DELETE")?)),
        "PUT" => {
            let (key, value) = decode_put(&frame.payload)?;
            Ok(Op::Put { key, value })
        }
        other => Err(Problem::UnknownCommand(other.to_string())),
    }
}

/// A key carried as a (decoded) payload; surrounding whitespace is dropped, as SmartOS does.
fn key(payload: &[u8], command: &'static str) -> Result<String, Problem> {
    let key = std::str::from_utf8(payload).map_err(|_| Problem::KeyNotUtf8(command))?.trim();
    if key.is_empty() {
        return Err(Problem::MissingKey(command));
    }
    Ok(key.to_string())
}

/// Decodes a PUT payload (already base64-decoded once): `base64(key) + " " + base64(value)`.
/// The value may be empty.
pub fn decode_put(payload: &[u8]) -> Result<(String, String), Problem> {
    let text = std::str::from_utf8(payload).map_err(|_| Problem::Put("not text"))?;
    let (key, value) = text.split_once(' ').ok_or(Problem::Put("expected base64(key), a space, base64(value)"))?;
    let key = LENIENT.decode(key).map_err(|_| Problem::Put("the key is not valid base64"))?;
    let key = String::from_utf8(key).map_err(|_| Problem::KeyNotUtf8("PUT"))?;
    let key = key.trim();
    if key.is_empty() {
        return Err(Problem::MissingKey("PUT"));
    }
    let value = LENIENT.decode(value.trim()).map_err(|_| Problem::Put("the value is not valid base64"))?;
    let value = String::from_utf8(value).map_err(|_| Problem::Put("the value is not UTF-8"))?;
    Ok((key.to_string(), value))
}

/// The inverse of [`decode_put`] (what a client puts in a PUT frame's payload).
pub fn encode_put(key: &str, value: &str) -> Vec<u8> {
    format!("{} {}", general_purpose::STANDARD.encode(key), general_purpose::STANDARD.encode(value)).into_bytes()
}

/// A v1 `SUCCESS` reply: the value, every line starting with `.` given a second one, then
/// a line holding a single `.`.
pub fn v1_success(value: &str) -> String {
    let mut out = String::with_capacity(value.len() + 16);
    out.push_str("SUCCESS\n");
    for (i, line) in value.split('\n').enumerate() {
        if i > 0 {
            out.push('\n');
        }
        if line.starts_with('.') {
            out.push('.');
        }
        out.push_str(line);
    }
    out.push_str("\n.\n");
    out
}

/// A V2 reply line (LF included) echoing `reqid`.
pub fn v2_reply(reqid: &str, code: Code, payload: &str) -> String {
    Frame::reply(reqid, code, payload.as_bytes()).to_line()
}

#[cfg(test)]
mod tests {
    use super::*;

    const VECTOR: &str = "V2 21 265ae1d8 dc4fae17 SUCCESS W10=";

    /// A request line, as a client builds it.
    fn request(reqid: &str, code: &str, payload: &[u8]) -> String {
        Frame { reqid: reqid.into(), code: code.into(), payload: payload.to_vec() }.to_line()
    }

    fn parse(line: &str) -> Request {
        parse_line(line.strip_suffix('\n').unwrap_or(line).as_bytes())
    }

    fn bad(reqid: &str, problem: Problem) -> Request {
        Request::BadFrame { reqid: reqid.into(), problem }
    }

    #[test]
    fn crc32_is_eight_lowercase_hex_digits() {
        assert_eq!(crc32_hex(b""), "00000000");
        assert_eq!(crc32_hex(b"dc4fae17 SUCCESS W10="), "265ae1d8");
        assert_eq!(crc32_hex(b"123456789"), "cbf43926");
    }

    #[test]
    fn test_vector_formats() {
        assert_eq!(v2_reply("dc4fae17", Code::Success, "[]"), format!("{VECTOR}\n"));
        let frame = Frame::reply("dc4fae17", Code::Success, b"[]");
        assert_eq!(frame.body(), "dc4fae17 SUCCESS W10=");
        assert_eq!(frame.body().len(), 21);
    }

    #[test]
    fn test_vector_parses() {
        let frame = Frame::parse(VECTOR).unwrap();
        assert_eq!(frame, Frame { reqid: "dc4fae17".into(), code: "SUCCESS".into(), payload: b"[]".to_vec() });
        assert_eq!(frame.body(), "dc4fae17 SUCCESS W10=");
        // A stray CR or trailing blanks do not matter (SmartOS trims them).
        assert_eq!(Frame::parse(&format!("{VECTOR}\r")).unwrap(), frame);
        assert_eq!(Frame::parse(&format!("{VECTOR}  ")).unwrap(), frame);
    }

    #[test]
    fn empty_payload_is_omitted() {
        let line = v2_reply("0000abcd", Code::NotFound, "");
        let body = "0000abcd NOTFOUND";
        assert_eq!(line, format!("V2 {} {} {body}\n", body.len(), crc32_hex(body.as_bytes())));
        assert_eq!(Frame::parse(line.trim_end()).unwrap().payload, b"");
    }

    #[test]
    fn failure_carries_a_base64_message() {
        let line = v2_reply("12345678", Code::Failure, "checksum mismatch");
        let frame = Frame::parse(line.trim_end()).unwrap();
        assert_eq!(frame.code, "FAILURE");
        assert_eq!(frame.payload, b"checksum mismatch");
        assert!(line.contains(&STANDARD.encode("checksum mismatch")));
    }

    #[test]
    fn v1_replies() {
        assert_eq!(v1_success("hello"), "SUCCESS\nhello\n.\n");
        assert_eq!(v1_success(""), "SUCCESS\n\n.\n");
        assert_eq!(v1_success(".a\nb\n.\n..c"), "SUCCESS\n..a\nb\n..\n...c\n.\n");
        assert_eq!(V1_NOTFOUND, "NOTFOUND\n");
        assert_eq!(V1_FAILURE, "FAILURE\n");
    }

    #[test]
    fn handshake_lines() {
        assert_eq!(parse("\n"), Request::Invalid);
        assert_eq!(parse("NEGOTIATE V2\n"), Request::Negotiate("V2".into()));
        assert_eq!(parse("NEGOTIATE V3\n"), Request::Negotiate("V3".into()));
        assert_eq!(parse("NEGOTIATE V2\r\n"), Request::Negotiate("V2".into()));
        assert_eq!(parse("NEGOTIATE\n"), Request::Invalid);
    }

    #[test]
    fn v1_requests() {
        assert_eq!(parse("GET sdc:uuid\n"), Request::V1Get("sdc:uuid".into()));
        assert_eq!(parse("GET  user-script  \n"), Request::V1Get("user-script".into()));
        assert_eq!(parse("KEYS\n"), Request::V1Keys);
        assert_eq!(parse("GET\n"), Request::Invalid);
        assert_eq!(parse("GET \n"), Request::Invalid);
        assert_eq!(parse("PUT foo bar\n"), Request::Invalid);
        assert_eq!(parse("hello world\n"), Request::Invalid);
        assert_eq!(parse(" GET foo\n"), Request::Invalid);
    }

    #[test]
    fn v2_requests() {
        let get = request("0a0b0c0d", "GET", b"sdc:uuid");
        assert_eq!(parse(&get), Request::V2 { reqid: "0a0b0c0d".into(), op: Op::Get("sdc:uuid".into()) });
        assert_eq!(parse(&request("0000abcd", "KEYS", b"")), Request::V2 { reqid: "0000abcd".into(), op: Op::Keys });
        assert_eq!(parse(&request("0000abcd", "DELETE", b"foo")), Request::V2 { reqid: "0000abcd".into(), op: Op::Delete("foo".into()) });
        let put = request("00000001", "PUT", &encode_put("user-script", "#!/bin/sh\necho hi\n"));
        assert_eq!(
            parse(&put),
            Request::V2 { reqid: "00000001".into(), op: Op::Put { key: "user-script".into(), value: "#!/bin/sh\necho hi\n".into() } }
        );
        // Tolerated: a trailing CR, and base64 without padding.
        assert_eq!(parse(&format!("{}\r\n", get.trim_end())), parse(&get));
        let unpadded = Frame::parse(&request("0000abcd", "GET", b"ab")).unwrap();
        let body = format!("0000abcd GET {}", STANDARD.encode("ab").trim_end_matches('='));
        let line = format!("V2 {} {} {body}", body.len(), crc32_hex(body.as_bytes()));
        assert_eq!(Frame::parse(&line).unwrap(), unpadded);
    }

    #[test]
    fn put_payloads() {
        assert_eq!(decode_put(&encode_put("k", "v")), Ok(("k".into(), "v".into())));
        assert_eq!(decode_put(&encode_put("k", "")), Ok(("k".into(), String::new())));
        assert_eq!(decode_put(b"a2V5"), Err(Problem::Put("expected base64(key), a space, base64(value)")));
        assert_eq!(decode_put(b"!!! dmFs"), Err(Problem::Put("the key is not valid base64")));
        assert_eq!(decode_put(b"a2V5 !!!"), Err(Problem::Put("the value is not valid base64")));
        assert_eq!(decode_put(b" dmFs"), Err(Problem::MissingKey("PUT")));
        assert_eq!(decode_put(&encode_put("  ", "v")), Err(Problem::MissingKey("PUT")));
        assert_eq!(decode_put(&encode_put(" k ", "v")), Ok(("k".into(), "v".into())));
        assert_eq!(decode_put(b"/w== dmFs"), Err(Problem::KeyNotUtf8("PUT")));
        assert_eq!(decode_put(b"a2V5 /w=="), Err(Problem::Put("the value is not UTF-8")));
        assert_eq!(decode_put(&[0xff, b' ', b'a']), Err(Problem::Put("not text")));
    }

    #[test]
    fn bad_length_gets_failure() {
        let line = VECTOR.replace("V2 21 ", "V2 22 ");
        assert_eq!(parse(&line), bad("dc4fae17", Problem::Length { declared: "22".into(), actual: 21 }));
        let line = VECTOR.replace("V2 21 ", "V2 xx ");
        assert_eq!(parse(&line), bad("dc4fae17", Problem::Length { declared: "xx".into(), actual: 21 }));
        let line = VECTOR.replace("V2 21 ", "V2 99999999999999999999999 ");
        assert!(matches!(parse(&line), Request::BadFrame { problem: Problem::Length { .. }, .. }));
    }

    #[test]
    fn bad_checksum_gets_failure() {
        let line = VECTOR.replace("265ae1d8", "265ae1d9");
        let expected = bad("dc4fae17", Problem::Checksum { got: "265ae1d9".into(), computed: "265ae1d8".into() });
        assert_eq!(parse(&line), expected);
        let Request::BadFrame { problem, .. } = expected else { unreachable!() };
        assert_eq!(problem.to_string(), "checksum mismatch: got 265ae1d9, computed 265ae1d8");
        // Upper-case digits are not what SmartOS computes either.
        assert!(matches!(parse(&VECTOR.replace("265ae1d8", "265AE1D8")), Request::BadFrame { problem: Problem::Checksum { .. }, .. }));
    }

    #[test]
    fn bad_payloads_and_commands_get_failure() {
        let frame = |body: &str| format!("V2 {} {} {body}", body.len(), crc32_hex(body.as_bytes()));
        assert_eq!(parse(&frame("0000abcd GET !!!")), bad("0000abcd", Problem::Base64));
        assert_eq!(parse(&frame("0000abcd ")), bad("0000abcd", Problem::NoCommand));
        assert_eq!(parse(&frame("0000abcd FROB")), bad("0000abcd", Problem::UnknownCommand("FROB".into())));
        assert_eq!(parse(&frame("0000abcd SUCCESS W10=")), bad("0000abcd", Problem::UnknownCommand("SUCCESS".into())));
        assert_eq!(parse(&frame("0000abcd NEGOTIATE VjI=")), bad("0000abcd", Problem::UnknownCommand("NEGOTIATE".into())));
        assert_eq!(parse(&frame("0000abcd GET")), bad("0000abcd", Problem::MissingKey("GET")));
        assert_eq!(parse(&frame("0000abcd GET ICA=")), bad("0000abcd", Problem::MissingKey("GET")));
        assert_eq!(parse(&frame("0000abcd DELETE")), bad("0000abcd", Problem::MissingKey("DELETE")));
        assert_eq!(parse(&frame("0000abcd GET /w==")), bad("0000abcd", Problem::KeyNotUtf8("GET")));
        let put = format!("0000abcd PUT {}", STANDARD.encode("a2V5"));
        assert_eq!(parse(&frame(&put)), bad("0000abcd", Problem::Put("expected base64(key), a space, base64(value)")));
        // Without a reqid there is no one to answer: the line is just not a request.
        assert_eq!(parse("V2\n"), Request::Invalid);
        assert_eq!(parse("V2 21 265ae1d8\n"), Request::Invalid);
        assert_eq!(parse("V2 21 265ae1d8 DC4FAE17 SUCCESS W10=\n"), Request::Invalid);
        assert_eq!(parse("V2 21 265ae1d8 xyz SUCCESS W10=\n"), Request::Invalid);
    }

    #[test]
    fn noise_is_ignored() {
        assert_eq!(parse_line(b"\x1b[2J\x1b[01;01H\r"), Request::Ignore);
        assert_eq!(parse_line(b"BdsDxe: loading Boot0001 \"UEFI QEMU HARDDISK\"...\r"), Request::Ignore);
        assert_eq!(parse_line(b"\r"), Request::Ignore);
        assert_eq!(parse_line(b"GET\r"), Request::Ignore);
        assert_eq!(parse_line(b"GET\tfoo"), Request::Ignore);
        assert_eq!(parse_line(b"GET foo\r\r"), Request::Ignore);
        assert_eq!(parse_line(b"\0"), Request::Ignore);
        assert_eq!(parse_line("GET caf\u{e9}".as_bytes()), Request::Ignore);
        assert_eq!(parse_line(&[0xff, 0xfe]), Request::Ignore);
        assert_eq!(parse_line(format!("{VECTOR}\x1b").as_bytes()), Request::Ignore);
    }

    #[test]
    fn overlong_lines() {
        let head = format!("V2 5000000 0badc0de 1234abcd PUT {}", "A".repeat(80));
        assert_eq!(parse_overlong(head.as_bytes(), MAX_LINE), bad("1234abcd", Problem::TooLong(MAX_LINE)));
        // A reqid that may have been cut short is not echoed.
        assert_eq!(parse_overlong(b"V2 5000000 0badc0de 1234ab", MAX_LINE), Request::Ignore);
        assert_eq!(parse_overlong("x".repeat(128).as_bytes(), MAX_LINE), Request::Ignore);
        assert_eq!(parse_overlong(b"\x1b[2JV2 5000000 0badc0de 1234abcd PUT", MAX_LINE), Request::Ignore);
        assert_eq!(parse_overlong(b"V2 5 0badc0de 1234abcd PUT \x1bAAAA", MAX_LINE), bad("1234abcd", Problem::TooLong(MAX_LINE)));
    }
}
