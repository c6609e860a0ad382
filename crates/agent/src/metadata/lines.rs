//! Splits the bytes a guest writes to its metadata port into LF-terminated lines, never
//! holding more than a bounded amount of any one line.
//!
//! ```text
//!   collecting ──LF──► Complete(line) ──► collecting
//!       │ line passes `max` bytes
//!       ▼
//!   discarding (only the first HEAD bytes kept) ──LF──► TooLong { head } ──► collecting
//! ```
//!
//! A guest can write without ever sending an LF; without the bound the agent would buffer
//! it all. Past `max` bytes the line's memory is released and the rest of it, up to the
//! next LF, is thrown away; the first [`HEAD`] bytes are kept so that a V2 frame's reqid can
//! still be found and answered with a `FAILURE`.

/// How many bytes of an over-long line are kept: enough for `V2 <len> <crc32> <reqid> `.
pub const HEAD: usize = 128;

/// One line taken from the stream (without its LF).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Line {
    Complete(Vec<u8>),
    /// A line longer than the limit; only its first [`HEAD`] bytes.
    TooLong {
        head: Vec<u8>,
    },
}

/// The line splitter of one connection.
#[derive(Debug)]
pub struct LineSplitter {
    max: usize,
    /// The line being collected.
    pending: Vec<u8>,
    /// Set while discarding an over-long line: its first bytes.
    overflow: Option<Vec<u8>>,
}

impl LineSplitter {
    /// A splitter that holds at most `max` bytes of a line.
    pub fn new(max: usize) -> Self {
        LineSplitter { max, pending: Vec::new(), overflow: None }
    }

    /// Takes the next bytes read; returns the lines they complete, in order.
    pub fn feed(&mut self, mut bytes: &[u8]) -> Vec<Line> {
        let mut lines = Vec::new();
        while let Some(lf) = bytes.iter().position(|&b| b == b'\n') {
            self.append(&bytes[..lf]);
            lines.push(self.finish());
            bytes = &bytes[lf + 1..];
        }
        self.append(bytes);
        lines
    }

    /// Bytes held for the unfinished line (never more than the limit, or [`HEAD`] while
    /// discarding).
    pub fn buffered(&self) -> usize {
        self.pending.len() + self.overflow.as_ref().map_or(0, Vec::len)
    }

    fn append(&mut self, part: &[u8]) {
        if self.overflow.is_some() {
            return;
        }
        if self.pending.len() + part.len() <= self.max {
            self.pending.extend_from_slice(part);
            return;
        }
        let mut head = std::mem::take(&mut self.pending);
        head.truncate(HEAD);
        let missing = HEAD - head.len();
        head.extend_from_slice(&part[..missing.min(part.len())]);
        head.shrink_to_fit();
        self.overflow = Some(head);
    }

    fn finish(&mut self) -> Line {
        match self.overflow.take() {
            Some(head) => Line::TooLong { head },
            None => Line::Complete(std::mem::take(&mut self.pending)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn complete(s: &str) -> Line {
        Line::Complete(s.as_bytes().to_vec())
    }

    #[test]
    fn splits_on_lf_across_reads() {
        let mut s = LineSplitter::new(1024);
        assert_eq!(s.feed(b"\nNEGOTIATE"), vec![complete("")]);
        assert_eq!(s.feed(b" V2"), vec![]);
        assert_eq!(s.feed(b"\nKEYS\nGET a\r\nGET"), vec![complete("NEGOTIATE V2"), complete("KEYS"), complete("GET a\r")]);
        assert_eq!(s.buffered(), 3);
        assert_eq!(s.feed(b" b\n"), vec![complete("GET b")]);
        assert_eq!(s.buffered(), 0);
    }

    #[test]
    fn a_line_of_exactly_the_limit_is_kept() {
        let mut s = LineSplitter::new(8);
        assert_eq!(s.feed(b"12345678\n"), vec![complete("12345678")]);
        assert_eq!(s.feed(b"123456789\nok\n"), vec![Line::TooLong { head: b"123456789".to_vec() }, complete("ok")]);
    }

    #[test]
    fn over_long_lines_are_bounded_and_discarded() {
        let max = 4 * 1024 * 1024;
        let mut s = LineSplitter::new(max);
        assert!(s.feed(b"V2 5242880 0badc0de 1234abcd PUT ").is_empty());
        let chunk = vec![b'A'; 64 * 1024];
        for _ in 0..80 {
            assert!(s.feed(&chunk).is_empty());
            assert!(s.buffered() <= max);
            assert!(s.pending.capacity() <= 2 * max);
        }
        assert_eq!(s.buffered(), HEAD);
        assert_eq!(s.pending.capacity(), 0, "the over-long line's memory is released");
        let lines = s.feed(b"AAAA\nKEYS\n");
        assert_eq!(lines.len(), 2);
        let Line::TooLong { head } = &lines[0] else { panic!("{lines:?}") };
        assert_eq!(head.len(), HEAD);
        assert!(head.starts_with(b"V2 5242880 0badc0de 1234abcd PUT AAAA"));
        assert_eq!(lines[1], complete("KEYS"));
        assert_eq!(s.buffered(), 0);
    }

    #[test]
    fn one_huge_read_is_bounded_too() {
        let mut s = LineSplitter::new(16);
        let mut bytes = vec![b'x'; 1000];
        bytes.extend_from_slice(b"\nKEYS\n");
        assert_eq!(s.feed(&bytes), vec![Line::TooLong { head: vec![b'x'; HEAD] }, complete("KEYS")]);
    }
}
