#![allow(clippy::unwrap_used, clippy::expect_used)]
//! ZFS send streams made by real OpenZFS (scripts/zfs-fixtures/generate, see its README)
//! replayed into raw disks: full and incremental, every compression, `-c -e` streams, and
//! damaged streams refused with the offset of the damage.

use std::fs;
use std::path::{Path, PathBuf};

use nereid_diskimage::zfs::{self, Origin, StreamInfo, ZfsError};
use nereid_diskimage::{Compression, decompress};
use sha1::{Digest, Sha1};

const CAP: u64 = 64 << 20;
const VOLSIZE: u64 = 4 << 20;

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/zfs").join(name)
}

/// The decompressed stream of a fixture.
fn stream(name: &str) -> Vec<u8> {
    let c = match name.rsplit('.').next() {
        Some("gz") => Compression::Gzip,
        Some("bz2") => Compression::Bzip2,
        Some("xz") => Compression::Xz,
        _ => Compression::None,
    };
    let mut out = Vec::new();
    decompress(c, fs::File::open(fixture(name)).unwrap(), &mut out).unwrap();
    out
}

fn sha1(data: &[u8]) -> String {
    hex::encode(Sha1::digest(data))
}

/// The SHA-1 of the zvol's contents at snapshot `a` or `b`, read back from /dev/zd0 by the generator.
fn disk_sha1(snap: &str) -> String {
    fs::read_to_string(fixture(&format!("disk-{snap}.img.sha1"))).unwrap().trim().to_string()
}

fn origin_of(info: &StreamInfo) -> Origin {
    Origin { guid: info.toguid, volsize: info.volsize }
}

fn stream_error(r: Result<(StreamInfo, Vec<u8>), ZfsError>) -> (u64, String) {
    match r {
        Err(e @ ZfsError::Stream { offset, .. }) => (offset, e.to_string()),
        Err(other) => panic!("not a stream error: {other}"),
        Ok((info, _)) => panic!("the damaged stream was accepted: {info:?}"),
    }
}

/// A snapshot's guid as `zfs get guid` printed it in the generator's info.txt.
fn snapshot_guid(snap: &str) -> u64 {
    snapshot_guid_of(&format!("nereid/vol@{snap}"))
}

fn snapshot_guid_of(name: &str) -> u64 {
    let info = fs::read_to_string(fixture("info.txt")).unwrap();
    let prefix = format!("{name}\tguid\t");
    info.lines().find_map(|l| l.strip_prefix(&prefix)).unwrap().parse().unwrap()
}

#[test]
fn guids_are_the_snapshots_guids() {
    let (full, _) = zfs::check_stream(&stream("full.zfs.gz"), None, CAP).unwrap();
    assert_eq!(full.toguid, snapshot_guid("a"));
    let incr = stream("incr.zfs.gz");
    let (info, _) = zfs::check_stream(&incr, Some(origin_of(&full)), CAP).unwrap();
    assert_eq!((info.fromguid, info.toguid), (snapshot_guid("a"), snapshot_guid("b")));
}

#[test]
fn full_stream_becomes_the_zvols_disk() {
    let (info, disk) = zfs::check_stream(&stream("full.zfs.gz"), None, CAP).unwrap();
    assert_eq!(info.fromguid, 0);
    assert!(!info.is_incremental());
    assert_ne!(info.toguid, 0);
    assert_eq!(info.toname, "nereid/vol@a");
    assert_eq!(info.volsize, VOLSIZE, "volsize comes from the zvol's ZAP");
    assert_eq!(info.volblocksize, Some(8192));
    assert!(!info.byteswapped);
    assert_eq!(info.substreams, 1);
    assert_eq!(disk.len() as u64, VOLSIZE);
    assert_eq!(sha1(&disk), disk_sha1("a"));
    // The boot sector and the line it prints.
    assert_eq!(&disk[510..512], &[0x55, 0xaa]);
    assert!(disk[512..].starts_with(b"nereid-zvol: snapshot a\r\n"));
}

#[test]
fn every_compression_and_send_flag_gives_the_same_disk() {
    let (gz, disk_gz) = zfs::check_stream(&stream("full.zfs.gz"), None, CAP).unwrap();
    let (xz, disk_xz) = zfs::check_stream(&stream("full.zfs.xz"), None, CAP).unwrap();
    // zfs send -c -e: lz4-compressed WRITE records and embedded blocks (incl. the ZAP's).
    let (ce, disk_ce) = zfs::check_stream(&stream("full-ce.zfs"), None, CAP).unwrap();
    assert_eq!(gz, xz);
    assert_eq!((ce.toguid, ce.volsize), (gz.toguid, gz.volsize));
    assert!(ce.stream_size < gz.stream_size, "the -c stream carries compressed blocks");
    assert_eq!(disk_gz, disk_xz);
    assert_eq!(sha1(&disk_ce), disk_sha1("a"));
}

#[test]
fn incremental_stream_applies_on_its_origin() {
    let (full, base) = zfs::check_stream(&stream("full.zfs.gz"), None, CAP).unwrap();
    let incr = stream("incr.zfs.gz");
    let mut disk = zfs::MemDisk { data: base.clone(), cap: CAP };
    let info = zfs::replay(&incr[..], Some(origin_of(&full)), &mut disk).unwrap();
    assert!(info.is_incremental());
    assert_eq!(info.fromguid, full.toguid);
    assert_eq!(info.toname, "nereid/vol@b");
    assert_eq!(info.volsize, VOLSIZE, "the origin's volsize (the incremental does not resend the ZAP)");
    assert_eq!(sha1(&disk.data), disk_sha1("b"));
    assert!(disk.data[512..].starts_with(b"nereid-zvol: snapshot b\r\n"));
    // The discarded blocks 100..119 are zeros again, the rewritten 20..29 are new text.
    assert!(base[100 * 8192..120 * 8192].iter().any(|b| *b != 0));
    assert!(disk.data[100 * 8192..120 * 8192].iter().all(|b| *b == 0));
    assert!(disk.data[20 * 8192..].starts_with(b"nereid zvol fixture b block 000020"));

    // The -c -e incremental (bzip2) on the -c -e full gives the same disk.
    let (full_ce, base_ce) = zfs::check_stream(&stream("full-ce.zfs"), None, CAP).unwrap();
    let mut disk_ce = zfs::MemDisk { data: base_ce, cap: CAP };
    zfs::replay(&stream("incr-ce.zfs.bz2")[..], Some(origin_of(&full_ce)), &mut disk_ce).unwrap();
    assert_eq!(sha1(&disk_ce.data), disk_sha1("b"));
}

#[test]
fn streams_to_sparse_raw_files() {
    let dir = tempfile::tempdir().unwrap();
    let (a, b) = (dir.path().join("a.raw"), dir.path().join("b.raw"));
    let full = zfs::stream_to_raw(&stream("full.zfs.gz")[..], None, &a, u64::MAX).unwrap();
    assert_eq!(fs::metadata(&a).unwrap().len(), VOLSIZE);
    assert_eq!(sha1(&fs::read(&a).unwrap()), disk_sha1("a"));
    let incr = zfs::stream_to_raw(&stream("incr.zfs.gz")[..], Some((&a, origin_of(&full))), &b, u64::MAX).unwrap();
    assert_eq!(incr.fromguid, full.toguid);
    assert_eq!(sha1(&fs::read(&b).unwrap()), disk_sha1("b"));
    assert_eq!(sha1(&fs::read(&a).unwrap()), disk_sha1("a"), "the origin's disk is left as it was");
    // Holes stay holes: far fewer blocks allocated than the 4 MiB volsize.
    use std::os::unix::fs::MetadataExt;
    assert!(fs::metadata(&a).unwrap().blocks() * 512 < VOLSIZE / 2, "the disk is written sparsely");
    // An existing output is never overwritten.
    assert!(zfs::stream_to_raw(&stream("full.zfs.gz")[..], None, &a, u64::MAX).is_err());
}

#[test]
fn truncated_streams_are_refused_at_the_point_they_end() {
    let full = stream("full.zfs.gz");
    let (offset, msg) = stream_error(zfs::check_stream(&[], None, CAP));
    assert_eq!(offset, 0);
    assert!(msg.contains("empty"), "{msg}");
    // Inside BEGIN, at a record boundary, inside a WRITE's payload, inside END, without END.
    for cut in [100, 312, 312 * 2 + 10, full.len() / 2, full.len() - 1, full.len() - 312] {
        let (offset, msg) = stream_error(zfs::check_stream(&full[..cut], None, CAP));
        assert_eq!(offset, cut as u64, "cut at {cut}: {msg}");
        assert!(msg.contains("truncated"), "{msg}");
        assert!(msg.contains(&format!("byte {cut}")), "the message names the offset: {msg}");
    }
}

#[test]
fn a_flipped_byte_fails_the_checksum_at_the_next_record() {
    let full = stream("full.zfs.gz");
    // In the second record's header: its own checksum catches it.
    let mut bad = full.clone();
    bad[312 + 40] ^= 1;
    let (offset, msg) = stream_error(zfs::check_stream(&bad, None, CAP));
    assert_eq!(offset, 312, "{msg}");
    assert!(msg.contains("checksum mismatch"), "{msg}");
    // In the middle of the stream (data): the next record's checksum catches it.
    for p in [full.len() / 3, full.len() / 2] {
        let mut bad = full.clone();
        bad[p] ^= 0x40;
        let (offset, msg) = stream_error(zfs::check_stream(&bad, None, CAP));
        assert!(msg.contains("checksum"), "{msg}");
        assert!(offset > p as u64 - 312 && offset <= (p + 312 + 8192) as u64, "flipped {p}, error at {offset}: {msg}");
        assert!(msg.contains(&format!("byte {offset}")), "{msg}");
    }
    // In END's checksum of the whole stream.
    let mut bad = full.clone();
    let end = full.len() - 312;
    bad[end + 8] ^= 1;
    let (offset, msg) = stream_error(zfs::check_stream(&bad, None, CAP));
    assert!(offset == end as u64 || offset == end as u64 + 8, "{msg}");
}

#[test]
fn bad_magic_unknown_records_and_other_snapshots_are_named() {
    let full = stream("full.zfs.gz");
    let mut bad = full.clone();
    bad[8] ^= 0xff;
    let (offset, msg) = stream_error(zfs::check_stream(&bad, None, CAP));
    assert_eq!(offset, 8);
    assert!(msg.contains("not a ZFS send stream"), "{msg}");

    // A record of an unknown type (its checksum cleared, as in pre-0.7 streams).
    let mut bad = full.clone();
    bad[312..316].copy_from_slice(&99u32.to_le_bytes());
    bad[312 + 280..312 + 312].fill(0);
    let (offset, msg) = stream_error(zfs::check_stream(&bad, None, CAP));
    assert_eq!(offset, 312);
    assert!(msg.contains("unknown record type 99"), "{msg}");

    // An incremental on the wrong origin, and without one.
    let (info, _) = zfs::check_stream(&full, None, CAP).unwrap();
    let incr = stream("incr.zfs.gz");
    let wrong = Origin { guid: info.toguid ^ 1, volsize: VOLSIZE };
    let (offset, msg) = stream_error(zfs::check_stream(&incr, Some(wrong), CAP));
    assert_eq!(offset, 48, "the BEGIN record's fromguid");
    assert!(msg.contains(&info.toguid.to_string()) && msg.contains(&wrong.guid.to_string()), "{msg}");
    let (offset, msg) = stream_error(zfs::check_stream(&incr, None, CAP));
    assert_eq!(offset, 48);
    assert!(msg.contains("incremental"), "{msg}");
}

#[test]
fn a_write_beyond_the_volsize_is_refused() {
    let (info, base) = zfs::check_stream(&stream("full.zfs.gz"), None, CAP).unwrap();
    // The incremental writes the last 256 KiB of the 4 MiB zvol; claim the origin had 1 MiB.
    let small = Origin { guid: info.toguid, volsize: 1 << 20 };
    let mut disk = zfs::MemDisk { data: base, cap: CAP };
    let err = zfs::replay(&stream("incr.zfs.gz")[..], Some(small), &mut disk).unwrap_err();
    let msg = err.to_string();
    assert!(msg.contains("beyond the zvol's volsize of 1048576 bytes"), "{msg}");
    let offset = err.offset().unwrap();
    assert!(offset > 0 && offset.is_multiple_of(8), "the WRITE record's offset: {msg}");
}

#[test]
fn the_disk_size_cap_is_an_error_not_a_crash() {
    let (offset, msg) = stream_error(zfs::check_stream(&stream("full.zfs.gz"), None, 1 << 20));
    assert!(offset > 0, "{msg}");
    assert!(msg.contains("limit"), "{msg}");
}

#[test]
fn zfs_send_big_i_applies_every_snapshot_in_turn() {
    // zfs send -I @a vol@c: a compound stream of two substreams, a→b and b→c.
    let (full, base) = zfs::check_stream(&stream("full.zfs.gz"), None, CAP).unwrap();
    let compound = stream("incr-ac.zfs.gz");
    let mut disk = zfs::MemDisk { data: base, cap: CAP };
    let info = zfs::replay(&compound[..], Some(origin_of(&full)), &mut disk).unwrap();
    assert_eq!(info.substreams, 2);
    assert_eq!((info.fromguid, info.toguid), (snapshot_guid("a"), snapshot_guid("c")));
    assert_eq!(info.toname, "nereid/vol@c");
    assert_eq!(sha1(&disk.data), disk_sha1("c"));
    assert!(disk.data[512..].starts_with(b"nereid-zvol: snapshot c\r\n"));

    // Without its closing END record it is truncated; with data after it, refused.
    let cut = compound.len() - 312;
    let (offset, msg) = stream_error(zfs::check_stream(&compound[..cut], Some(origin_of(&full)), CAP));
    assert_eq!(offset, cut as u64);
    assert!(msg.contains("closing END"), "{msg}");
    let mut longer = compound.clone();
    longer.extend_from_slice(&[0; 8]);
    let (offset, msg) = stream_error(zfs::check_stream(&longer, Some(origin_of(&full)), CAP));
    assert_eq!(offset, compound.len() as u64, "{msg}");
}

#[test]
fn zstd_compressed_blocks_decode() {
    // zfs send -c of a compression=zstd zvol holding snapshot a's disk.
    let (info, disk) = zfs::check_stream(&stream("full-zstd.zfs.xz"), None, CAP).unwrap();
    assert_eq!(info.toname, "nereid/zstd@a");
    assert_eq!(info.toguid, snapshot_guid_of("nereid/zstd@a"));
    assert_eq!(info.volsize, VOLSIZE);
    assert_eq!(sha1(&disk), disk_sha1("a"));
}

#[test]
fn a_write_at_an_absurd_offset_is_refused_before_it_is_written() {
    // The first WRITE's offset (record body byte 16) set beyond 16 TiB, its checksum
    // cleared as pre-0.7 streams have it; the stream is refused at that record.
    let full = stream("full.zfs.gz");
    let mut at = 312;
    loop {
        let kind = u32::from_le_bytes(full[at..at + 4].try_into().unwrap());
        if kind == 3 {
            break;
        }
        assert!(kind == 1 || kind == 4 || kind == 2, "only OBJECT/FREE/FREEOBJECTS before the first WRITE here");
        at += 312;
    }
    let mut bad = full.clone();
    bad[at + 8 + 16..at + 8 + 24].copy_from_slice(&(1u64 << 50).to_le_bytes());
    bad[at + 280..at + 312].fill(0);
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("disk.raw");
    let err = zfs::stream_to_raw(&bad[..], None, &out, u64::MAX).unwrap_err();
    assert_eq!(err.offset(), Some(at as u64), "{err}");
    assert!(err.to_string().contains("beyond the 16 TiB"), "{err}");
    assert!(fs::metadata(&out).unwrap().len() < 1 << 30, "nothing absurd was written");
}

#[test]
fn converted_disks_are_stored_as_compact_qcow2_that_qemu_img_accepts() {
    use nereid_diskimage::zfs_qcow2::{qcow2_to_raw, raw_to_qcow2};
    let dir = tempfile::tempdir().unwrap();
    let (raw, q, back) = (dir.path().join("a.raw"), dir.path().join("a.qcow2"), dir.path().join("back.raw"));
    zfs::stream_to_raw(&stream("full.zfs.gz")[..], None, &raw, u64::MAX).unwrap();
    raw_to_qcow2(&raw, &q).unwrap();
    // Nereid's own inspection: qcow2 of the zvol's size, and far smaller than the raw disk.
    let facts = nereid_diskimage::inspect(&q, &mut |_| {}).unwrap();
    assert_eq!((facts.format.as_str(), facts.virtual_size), ("qcow2", VOLSIZE));
    assert!(facts.file_size < VOLSIZE / 2, "{facts:?}");
    // QEMU's: a consistent image with the same contents.
    let run = |args: &[&str]| {
        let o = std::process::Command::new("qemu-img").args(args).output().expect("qemu-img (qemu-utils) is installed");
        assert!(o.status.success(), "qemu-img {args:?}: {}{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr));
    };
    run(&["check", "-f", "qcow2", q.to_str().unwrap()]);
    run(&["compare", "-f", "raw", "-F", "qcow2", raw.to_str().unwrap(), q.to_str().unwrap()]);
    // And back, for an incremental image's origin.
    qcow2_to_raw(&q, &back).unwrap();
    assert_eq!(sha1(&fs::read(&back).unwrap()), disk_sha1("a"));
}

#[test]
fn a_stream_longer_than_its_cap_is_refused_where_it_passes_it() {
    let full = stream("full.zfs.gz");
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("disk.raw");
    let cap = full.len() as u64 / 2;
    let err = zfs::stream_to_raw(&full[..], None, &out, cap).unwrap_err();
    let at = err.offset().unwrap();
    assert!(at <= cap && at + (16 << 20) + 312 > cap, "{err}");
    assert!(err.to_string().contains(&format!("beyond {cap} bytes")), "{err}");
    // Exactly long enough is fine.
    let ok = dir.path().join("ok.raw");
    zfs::stream_to_raw(&full[..], None, &ok, full.len() as u64).unwrap();
}

#[test]
fn an_object_record_with_a_huge_bonus_buffer_is_refused_before_it_is_read() {
    let full = stream("full.zfs.gz");
    let mut at = 312;
    while u32::from_le_bytes(full[at..at + 4].try_into().unwrap()) != 1 {
        at += 312;
    }
    let mut bad = full[..at + 312].to_vec();
    bad[at + 8 + 20..at + 8 + 24].copy_from_slice(&u32::MAX.to_le_bytes());
    bad[at + 280..at + 312].fill(0);
    // No payload follows: were it read, the error would be a truncation further on.
    let (offset, msg) = stream_error(zfs::check_stream(&bad, None, CAP));
    assert_eq!(offset, (at + 8 + 20) as u64, "{msg}");
    assert!(msg.contains("bonus buffer of 4294967295 bytes"), "{msg}");
}
