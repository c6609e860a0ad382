//! ZFS send streams as operators upload them for `type: zvol` images
//! (`nereid_diskimage::zfs`): every record type, checksums, compressed and embedded
//! blocks, incremental streams on an origin.
//!
//! Invariants: no panic and bounded memory (the disk is capped); a stream either becomes
//! a disk of exactly its volsize, or is refused naming an offset inside the input.
//!
//! corpus/zfs_stream holds the real OpenZFS streams of crates/diskimage/tests/fixtures/zfs,
//! decompressed and cut to the driver's 64 KiB input limit (only `incr-ce` fits whole).

use nereid_diskimage::zfs::{self, Origin, ZfsError};

pub const DICTIONARY: &[&[u8]] = &[
    b"\xac\xcb\xba\xf5\x02\x00\x00\x00",
    b"\x00\x00\x00\x02\xf5\xba\xcb\xac",
    b"\x00\x00\x00\x00",
    b"\x01\x00\x00\x00",
    b"\x03\x00\x00\x00",
    b"\x04\x00\x00\x00",
    b"\x05\x00\x00\x00",
    b"\x08\x00\x00\x00",
    b"\x00\x20\x00\x00",
    b"\x0f",
    b"\xff\xff\xff\xff\xff\xff\xff\xff",
    b"size\x00",
    b"\x03\x00\x00\x00\x00\x00\x00\x80",
];

/// The largest disk a fuzz input may describe.
const CAP: u64 = 16 << 20;

fn check(data: &[u8], origin: Option<Origin>) {
    match zfs::check_stream(data, origin, CAP) {
        Ok((info, disk)) => {
            assert_eq!(disk.len() as u64, info.volsize, "the disk has the stream's volsize");
            assert!(info.stream_size <= data.len() as u64);
            crate::note_accepted();
        }
        Err(ZfsError::Stream { offset, message }) => {
            assert!(offset <= data.len() as u64, "offset {offset} is past the input's {} bytes: {message}", data.len());
            assert!(!message.is_empty());
        }
        Err(ZfsError::Io(e)) => panic!("an in-memory replay failed with I/O: {e}"),
    }
}

pub fn run(data: &[u8]) {
    check(data, None);
    // As an incremental on an origin with the guid the stream names.
    if let Some(from) = data.get(48..56) {
        let guid = u64::from_le_bytes(from.try_into().expect("8 bytes"));
        check(data, Some(Origin { guid, volsize: 4 << 20 }));
    }
}
