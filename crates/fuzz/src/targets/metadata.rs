//! The SmartOS metadata protocol as a guest writes it to its serial port (agent
//! metadata/lines.rs and codec.rs): the byte stream is split into lines with a bound, each
//! line sorted into a request, V2 frames parsed and checked.
//!
//! The first input byte picks how the stream is chopped into reads (a guest's writes reach
//! the agent in arbitrary pieces). Invariants: no panic; the splitter never holds more than
//! its bound; chopping does not change the lines; a parsed frame re-encoded parses to the
//! same frame; a PUT payload re-encoded decodes to the same key and value.

use nereid_agent::metadata::codec::{self, Frame, Op, Request};
use nereid_agent::metadata::lines::{HEAD, Line, LineSplitter};

/// A small bound, so that over-long lines are easy for the fuzzer to reach.
const MAX: usize = 512;

pub const DICTIONARY: &[&[u8]] = &[
    b"V2 ",
    b"NEGOTIATE V2\n",
    b"GET ",
    b"KEYS\n",
    b" PUT ",
    b" GET ",
    b" DELETE ",
    b" KEYS",
    b"dc4fae17",
    b"265ae1d8",
    b"V2 21 265ae1d8 dc4fae17 SUCCESS W10=\n",
    b"c2RjOnV1aWQ=",
    b"\r\n",
    b"\n",
    b"\x1b[2J",
    b"==",
];

fn lines(data: &[u8], chunk: usize) -> Vec<Line> {
    let mut s = LineSplitter::new(MAX);
    let mut out = Vec::new();
    for piece in data.chunks(chunk.max(1)) {
        out.extend(s.feed(piece));
        assert!(s.buffered() <= MAX.max(HEAD), "the splitter holds {} bytes (bound {MAX})", s.buffered());
    }
    out
}

fn check_frame_round_trip(line: &[u8]) {
    let Ok(text) = std::str::from_utf8(line) else { return };
    if let Ok(frame) = Frame::parse(text) {
        let encoded = frame.to_line();
        let again = Frame::parse(encoded.trim_end_matches('\n')).unwrap_or_else(|e| panic!("{encoded:?} does not parse: {e}"));
        assert_eq!(again, frame);
    }
}

pub fn run(data: &[u8]) {
    let Some((&pick, stream)) = data.split_first() else { return };
    let chunk = [1, 2, 3, 7, 16, 64, 4096][usize::from(pick) % 7];
    let got = lines(stream, chunk);
    assert_eq!(got, lines(stream, stream.len()), "chopping the stream changed its lines");
    for line in got {
        let request = match &line {
            Line::Complete(raw) => {
                assert!(raw.len() <= MAX);
                check_frame_round_trip(raw);
                codec::parse_line(raw)
            }
            Line::TooLong { head } => {
                assert!(head.len() <= HEAD);
                codec::parse_overlong(head, MAX)
            }
        };
        match request {
            Request::V2 { reqid, op } => {
                crate::note_accepted();
                assert!(!reqid.is_empty() && reqid.bytes().all(|b| b.is_ascii_hexdigit()));
                let _ = codec::v2_reply(&reqid, codec::Code::Success, "x");
                match op {
                    Op::Put { key, value } => {
                        assert!(!key.is_empty() && key == key.trim());
                        let (k, v) = codec::decode_put(&codec::encode_put(&key, &value)).expect("encode_put → decode_put");
                        assert_eq!((k, v), (key, value));
                    }
                    Op::Get(key) | Op::Delete(key) => assert!(!key.is_empty() && key == key.trim()),
                    Op::Keys => {}
                }
            }
            Request::V1Get(key) => {
                let _ = codec::v1_success(&key);
            }
            Request::BadFrame { reqid, problem } => {
                let _ = codec::v2_reply(&reqid, codec::Code::Failure, &problem.to_string());
            }
            _ => {}
        }
    }
}
