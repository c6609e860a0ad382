//! Disk image files as operators upload them (crates/diskimage): the compression sniffer,
//! the qcow2 header reader, the decompressors, and [`inspect`], which reads a whole file
//! and reports format and virtual size.
//!
//! Invariants: no panic; a header accepted as qcow2 is version 2 or 3 with no backing file
//! and no encryption; an uncompressed file with such a header inspects as qcow2 of that
//! size, any other uncompressed file that inspects does so as raw of its own length.
//! Decompressed output is capped (a bomb is the uploader's problem, not a crash).

use std::cell::RefCell;
use std::io::{self, Write};

use nereid_diskimage::{Compression, Error, Format, decompress, inspect, qcow2_header};

pub const DICTIONARY: &[&[u8]] = &[
    b"QFI\xfb",
    b"QFI\xfb\x00\x00\x00\x03",
    b"QFI\xfb\x00\x00\x00\x02",
    b"\x1f\x8b\x08",
    b"BZh9",
    b"\xfd7zXZ\x00",
    b"\x28\xb5\x2f\xfd",
    b"KDMV",
    b"vhdxfile",
    b"conectix",
    b"CD001",
    b"\x00\x00\x00\x00\x00\x00\x00\x00",
    b"\x00\x00\x00\x10",
    b"\x00\x00\x00\x00\x40\x00\x00\x00",
];

/// Decompressed bytes a single input may produce before the sink refuses more.
const OUTPUT_CAP: u64 = 8 << 20;

struct Capped(u64);

impl Write for Capped {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.0 += buf.len() as u64;
        if self.0 > OUTPUT_CAP {
            return Err(io::Error::other("output cap"));
        }
        Ok(buf.len())
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

thread_local! {
    static DIR: RefCell<Option<tempfile::TempDir>> = const { RefCell::new(None) };
}

/// Runs `inspect` on `data` written to a file (reused per thread).
fn inspect_bytes(data: &[u8]) -> Result<nereid_diskimage::Inspection, Error> {
    DIR.with(|d| {
        let mut d = d.borrow_mut();
        if d.is_none() {
            *d = Some(tempfile::tempdir().expect("a temporary directory"));
        }
        let path = d.as_ref().map(|d| d.path().join("disk")).expect("just made");
        std::fs::write(&path, data).expect("writing the input file");
        inspect(&path, &mut |_| {})
    })
}

pub fn run(data: &[u8]) {
    let header = qcow2_header(data);
    if let Ok(Some(q)) = &header {
        assert!(data.starts_with(b"QFI\xfb") && data.len() >= 48);
        assert!(q.version == 2 || q.version == 3);
    }
    let compression = Compression::sniff(data);
    let _ = decompress(compression, data, &mut Capped(0));
    // Compressed inputs can expand without bound; inspect only what stays small.
    if compression != Compression::None {
        return;
    }
    let inspected = inspect_bytes(data);
    if inspected.is_ok() {
        crate::note_accepted();
    }
    match (inspected, header) {
        (Ok(i), Ok(Some(q))) => {
            assert_eq!((i.format, i.virtual_size), (Format::Qcow2, q.virtual_size));
            assert_eq!(i.file_size, data.len() as u64);
        }
        (Ok(i), Ok(None)) => {
            assert_eq!((i.format, i.virtual_size), (Format::Raw, data.len() as u64));
            assert!(i.image_size_mib() >= 1);
        }
        (Ok(i), Err(e)) => panic!("inspect accepted {i:?} but the header reader says {e}"),
        (Err(_), _) => {}
    }
}
