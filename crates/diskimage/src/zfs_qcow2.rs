//! Converted zvol disks as compact qcow2 files, and back.
//!
//! A zvol image's raw disk is mostly holes (a 10 GiB Ubuntu zvol holds ~1 GiB of data),
//! and a raw file sends every zero over HTTP to each compute node. [`raw_to_qcow2`] keeps
//! only the non-zero 64 KiB clusters in a plain qcow2 v3 file (no compression, no backing
//! file, 16-bit refcounts), which compute nodes use as a disk base directly;
//! [`qcow2_to_raw`] expands such a file again (an incremental image's origin).
//!
//! ```text
//!   cluster 0      header (104 bytes, no extensions)
//!   L1 table       one entry per 512 MiB of disk: L2 offset | COPIED, or 0
//!   refcount table entries point at the refcount blocks
//!   refcount blocks 16-bit count 1 for every cluster of the file
//!   L2 tables      one per 512 MiB that holds data: data offset | COPIED, or 0 (a hole)
//!   data clusters  the non-zero clusters, in disk order
//! ```

use std::fs::File;
use std::io::{self, BufWriter, Seek, SeekFrom, Write};
use std::os::unix::fs::FileExt;
use std::path::Path;

const CLUSTER_BITS: u32 = 16;
const CLUSTER: u64 = 1 << CLUSTER_BITS;
/// L2 entries per table (one cluster of u64).
const L2_ENTRIES: u64 = CLUSTER / 8;
/// Clusters one refcount block counts (one cluster of u16).
const REFS_PER_BLOCK: u64 = CLUSTER / 2;
const COPIED: u64 = 1 << 63;
const OFFSET_MASK: u64 = 0x00ff_ffff_ffff_fe00;
const HEADER_LEN: u32 = 104;

fn read_full(f: &File, off: u64, buf: &mut [u8]) -> io::Result<()> {
    buf.fill(0);
    let mut done = 0;
    while done < buf.len() {
        match f.read_at(&mut buf[done..], off + done as u64) {
            Ok(0) => break,
            Ok(n) => done += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// Writes `raw` (a disk of its file's length) as a qcow2 file at `out` (created).
pub fn raw_to_qcow2(raw: &Path, out: &Path) -> io::Result<()> {
    let src = File::open(raw)?;
    let size = src.metadata()?.len();
    let clusters = size.div_ceil(CLUSTER);
    // Which clusters hold data (holes are skipped, not read).
    let mut buf = vec![0u8; CLUSTER as usize];
    let mut data: Vec<u64> = Vec::new();
    let mut next = 0;
    while let Some((start, stop)) = crate::zfs::next_data(&src, next, size)? {
        for c in start / CLUSTER..stop.div_ceil(CLUSTER) {
            if data.last().is_some_and(|l| *l >= c) {
                continue;
            }
            read_full(&src, c * CLUSTER, &mut buf)?;
            if buf.iter().any(|b| *b != 0) {
                data.push(c);
            }
        }
        next = stop;
    }
    let l1_size = clusters.div_ceil(L2_ENTRIES).max(1);
    let l1_clusters = (l1_size * 8).div_ceil(CLUSTER);
    let mut l2_tables: Vec<u64> = data.iter().map(|c| c / L2_ENTRIES).collect();
    l2_tables.dedup();
    let fixed = 1 + l1_clusters + l2_tables.len() as u64 + data.len() as u64;
    // The refcount structures count themselves too: grow until they fit.
    let (mut rt_clusters, mut rb_clusters) = (1u64, 1u64);
    loop {
        let total = fixed + rt_clusters + rb_clusters;
        let rb = total.div_ceil(REFS_PER_BLOCK);
        let rt = (rb * 8).div_ceil(CLUSTER);
        if rb == rb_clusters && rt == rt_clusters {
            break;
        }
        (rb_clusters, rt_clusters) = (rb, rt);
    }
    let total = fixed + rt_clusters + rb_clusters;
    let l1_at = CLUSTER;
    let rt_at = l1_at + l1_clusters * CLUSTER;
    let rb_at = rt_at + rt_clusters * CLUSTER;
    let l2_at = rb_at + rb_clusters * CLUSTER;
    let data_at = l2_at + l2_tables.len() as u64 * CLUSTER;

    let file = File::options().write(true).create_new(true).open(out)?;
    let mut w = BufWriter::with_capacity(1 << 20, file);
    // Header.
    let mut h = Vec::with_capacity(CLUSTER as usize);
    h.extend_from_slice(b"QFI\xfb");
    h.extend_from_slice(&3u32.to_be_bytes());
    h.extend_from_slice(&0u64.to_be_bytes()); // backing file offset
    h.extend_from_slice(&0u32.to_be_bytes()); // backing file size
    h.extend_from_slice(&CLUSTER_BITS.to_be_bytes());
    h.extend_from_slice(&size.to_be_bytes());
    h.extend_from_slice(&0u32.to_be_bytes()); // no encryption
    h.extend_from_slice(&(l1_size as u32).to_be_bytes());
    h.extend_from_slice(&l1_at.to_be_bytes());
    h.extend_from_slice(&rt_at.to_be_bytes());
    h.extend_from_slice(&(rt_clusters as u32).to_be_bytes());
    h.extend_from_slice(&0u32.to_be_bytes()); // snapshots
    h.extend_from_slice(&0u64.to_be_bytes());
    h.extend_from_slice(&0u64.to_be_bytes()); // incompatible features
    h.extend_from_slice(&0u64.to_be_bytes()); // compatible features
    h.extend_from_slice(&0u64.to_be_bytes()); // autoclear features
    h.extend_from_slice(&4u32.to_be_bytes()); // refcount order: 16 bits
    h.extend_from_slice(&HEADER_LEN.to_be_bytes());
    h.resize(CLUSTER as usize, 0); // then the end-of-extensions marker (zeros)
    w.write_all(&h)?;
    // L1.
    let mut l1 = vec![0u8; (l1_clusters * CLUSTER) as usize];
    for (i, t) in l2_tables.iter().enumerate() {
        let e = (l2_at + i as u64 * CLUSTER) | COPIED;
        l1[*t as usize * 8..*t as usize * 8 + 8].copy_from_slice(&e.to_be_bytes());
    }
    w.write_all(&l1)?;
    // Refcount table and blocks: every cluster of the file is used once.
    let mut rt = vec![0u8; (rt_clusters * CLUSTER) as usize];
    for i in 0..rb_clusters {
        rt[i as usize * 8..i as usize * 8 + 8].copy_from_slice(&(rb_at + i * CLUSTER).to_be_bytes());
    }
    w.write_all(&rt)?;
    let mut rb = vec![0u8; (rb_clusters * CLUSTER) as usize];
    for c in 0..total {
        rb[c as usize * 2..c as usize * 2 + 2].copy_from_slice(&1u16.to_be_bytes());
    }
    w.write_all(&rb)?;
    // L2 tables.
    let mut next = 0usize;
    for t in &l2_tables {
        let mut l2 = vec![0u8; CLUSTER as usize];
        while next < data.len() && data[next] / L2_ENTRIES == *t {
            let i = (data[next] % L2_ENTRIES) as usize;
            let e = (data_at + next as u64 * CLUSTER) | COPIED;
            l2[i * 8..i * 8 + 8].copy_from_slice(&e.to_be_bytes());
            next += 1;
        }
        w.write_all(&l2)?;
    }
    // Data.
    for c in &data {
        read_full(&src, c * CLUSTER, &mut buf)?;
        w.write_all(&buf)?;
    }
    let file = w.into_inner().map_err(|e| e.into_error())?;
    file.sync_all()
}

/// Expands a qcow2 file written by [`raw_to_qcow2`] (or any v2/v3 qcow2 without backing
/// file, compression or encryption whose data clusters are stored once each, in disk
/// order) into a raw disk at `out` (created), sparsely. What it costs is bounded by the
/// file's length and the 16 TiB a disk may have, whatever the header says.
pub fn qcow2_to_raw(qcow2: &Path, out: &Path) -> io::Result<()> {
    let bad = |m: &str| io::Error::new(io::ErrorKind::InvalidData, format!("{}: {m}", qcow2.display()));
    let src = File::open(qcow2)?;
    let mut h = [0u8; 104];
    read_full(&src, 0, &mut h)?;
    let be32 = |i: usize| u32::from_be_bytes([h[i], h[i + 1], h[i + 2], h[i + 3]]);
    let be64 = |i: usize| u64::from_be_bytes([h[i], h[i + 1], h[i + 2], h[i + 3], h[i + 4], h[i + 5], h[i + 6], h[i + 7]]);
    if &h[..4] != b"QFI\xfb" || !(2..=3).contains(&be32(4)) {
        return Err(bad("not a qcow2 file"));
    }
    if be64(8) != 0 || be32(32) != 0 {
        return Err(bad("has a backing file or encryption"));
    }
    let bits = be32(20);
    if !(9..=21).contains(&bits) {
        return Err(bad("implausible cluster size"));
    }
    let cluster = 1u64 << bits;
    let size = be64(24);
    let l1_size = be32(36) as u64;
    let l1_at = be64(40);
    if size > crate::zfs::MAX_DISK {
        return Err(bad("a disk larger than 16 TiB"));
    }
    let l2_entries = cluster / 8;
    if l1_size > size.div_ceil(cluster * l2_entries) + 1 {
        return Err(bad("L1 table larger than the disk needs"));
    }
    // The L1 table must be in the file: its size cannot ask for more memory than that.
    let file_len = src.metadata()?.len();
    if l1_at.checked_add(l1_size * 8).is_none_or(|end| end > file_len) {
        return Err(bad("L1 table beyond the end of the file"));
    }
    let mut dst = File::options().write(true).create_new(true).open(out)?;
    let mut l1 = vec![0u8; (l1_size * 8) as usize];
    read_full(&src, l1_at, &mut l1)?;
    let mut l2 = vec![0u8; cluster as usize];
    let mut buf = vec![0u8; cluster as usize];
    // Data clusters must follow each other in the file: a crafted file cannot make one
    // cluster fill the whole disk.
    let mut last_data = 0u64;
    // So must L2 tables: each is read once, at most as many as the file has clusters.
    let mut last_l2 = 0u64;
    for (i, e) in l1.chunks_exact(8).enumerate() {
        let l2_at = u64::from_be_bytes(e.try_into().map_err(|_| bad("L1"))?) & OFFSET_MASK;
        if l2_at == 0 {
            continue;
        }
        if l2_at <= last_l2 || l2_at >= file_len {
            return Err(bad("an L2 table out of order, shared or beyond the end of the file"));
        }
        last_l2 = l2_at;
        read_full(&src, l2_at, &mut l2)?;
        for (j, e) in l2.chunks_exact(8).enumerate() {
            let entry = u64::from_be_bytes(e.try_into().map_err(|_| bad("L2"))?);
            if entry & (1 << 62) != 0 {
                return Err(bad("has compressed clusters"));
            }
            let at = entry & OFFSET_MASK;
            if at == 0 {
                continue;
            }
            let disk_at = (i as u64)
                .checked_mul(l2_entries)
                .and_then(|c| c.checked_add(j as u64))
                .and_then(|c| c.checked_mul(cluster))
                .filter(|d| *d < size)
                .ok_or_else(|| bad("a cluster beyond the disk's size"))?;
            if at <= last_data || at >= file_len {
                return Err(bad("a data cluster out of order, shared or beyond the end of the file"));
            }
            last_data = at;
            let n = (size - disk_at).min(cluster) as usize;
            read_full(&src, at, &mut buf[..n])?;
            if buf[..n].iter().any(|b| *b != 0) {
                dst.seek(SeekFrom::Start(disk_at))?;
                dst.write_all(&buf[..n])?;
            }
        }
    }
    dst.set_len(size)?;
    dst.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_keeps_the_disk_and_only_its_data() {
        let dir = tempfile::tempdir().unwrap();
        let raw = dir.path().join("disk.raw");
        // 1.5 GiB + a partial cluster: three L2 tables' worth, data in two of them.
        let size = (3u64 << 29) + 4096;
        let f = File::create(&raw).unwrap();
        f.set_len(size).unwrap();
        f.write_all_at(b"boot", 510).unwrap();
        f.write_all_at(&[7u8; 100_000], 5 << 20).unwrap();
        f.write_all_at(b"tail", size - 4).unwrap();
        drop(f);
        let q = dir.path().join("disk.qcow2");
        raw_to_qcow2(&raw, &q).unwrap();
        let qlen = std::fs::metadata(&q).unwrap().len();
        assert!(qlen < 16 * CLUSTER, "only data clusters are stored: {qlen} bytes");
        let back = dir.path().join("back.raw");
        qcow2_to_raw(&q, &back).unwrap();
        assert_eq!(std::fs::metadata(&back).unwrap().len(), size);
        let (a, b) = (File::open(&raw).unwrap(), File::open(&back).unwrap());
        let mut x = vec![0u8; 1 << 20];
        let mut y = vec![0u8; 1 << 20];
        for at in [0, 5 << 20, size - (1 << 20)] {
            read_full(&a, at, &mut x).unwrap();
            read_full(&b, at, &mut y).unwrap();
            assert!(x == y, "differs at {at}");
        }
        assert!(raw_to_qcow2(&raw, &q).is_err(), "an existing file is not overwritten");
    }

    #[test]
    fn a_huge_sparse_disk_converts_without_reading_its_holes() {
        let dir = tempfile::tempdir().unwrap();
        let raw = dir.path().join("disk.raw");
        // 8 TiB of holes: read cluster by cluster, this would not end in any test run.
        let size = 8u64 << 40;
        let f = File::create(&raw).unwrap();
        if f.set_len(size).is_err() {
            return; // a filesystem without such sparse files
        }
        f.write_all_at(b"boot", 510).unwrap();
        f.write_all_at(b"tail", size - 4).unwrap();
        drop(f);
        let q = dir.path().join("disk.qcow2");
        raw_to_qcow2(&raw, &q).unwrap();
        let qlen = std::fs::metadata(&q).unwrap().len();
        assert!(qlen < (1 << 20) + 16 * CLUSTER, "{qlen} bytes");
    }

    #[test]
    fn a_huge_l1_table_is_refused_before_it_is_allocated() {
        let dir = tempfile::tempdir().unwrap();
        let q = dir.path().join("evil.qcow2");
        let mut h = vec![0u8; 512];
        h[..4].copy_from_slice(b"QFI\xfb");
        h[4..8].copy_from_slice(&3u32.to_be_bytes());
        h[20..24].copy_from_slice(&9u32.to_be_bytes()); // 512-byte clusters
        h[24..32].copy_from_slice(&(16u64 << 40).to_be_bytes()); // virtual size
        h[36..40].copy_from_slice(&(1u32 << 29).to_be_bytes()); // l1_size: a 4 GiB table
        h[40..48].copy_from_slice(&512u64.to_be_bytes());
        std::fs::write(&q, &h).unwrap();
        let e = qcow2_to_raw(&q, &dir.path().join("out.raw")).unwrap_err();
        assert!(e.to_string().contains("L1 table beyond the end of the file"), "{e}");
        assert!(!dir.path().join("out.raw").exists());
    }

    #[test]
    fn shared_tables_and_clusters_are_refused() {
        // A 1 MiB disk stored with one data cluster: then its L2 entries all pointing at
        // that cluster (one cluster would fill the disk), and two L1 entries sharing an L2.
        let dir = tempfile::tempdir().unwrap();
        let raw = dir.path().join("disk.raw");
        std::fs::write(&raw, [&[9u8; 100][..], &vec![0u8; (1 << 20) - 100]].concat()).unwrap();
        let q = dir.path().join("disk.qcow2");
        raw_to_qcow2(&raw, &q).unwrap();
        let f = File::options().read(true).write(true).open(&q).unwrap();
        let mut h = [0u8; 104];
        read_full(&f, 0, &mut h).unwrap();
        let l1_at = u64::from_be_bytes(h[40..48].try_into().unwrap());
        let mut e = [0u8; 8];
        read_full(&f, l1_at, &mut e).unwrap();
        let l2_at = u64::from_be_bytes(e) & OFFSET_MASK;
        let mut d = [0u8; 8];
        read_full(&f, l2_at, &mut d).unwrap();
        for j in 1..16u64 {
            f.write_all_at(&d, l2_at + j * 8).unwrap();
        }
        let err = qcow2_to_raw(&q, &dir.path().join("a.raw")).unwrap_err();
        assert!(err.to_string().contains("data cluster out of order, shared"), "{err}");
        // Two L1 entries sharing the L2 table (the virtual size made to need two).
        f.write_all_at(&[0u8; 15 * 8], l2_at + 8).unwrap();
        f.write_all_at(&(2u64 << 29).to_be_bytes(), 24).unwrap();
        f.write_all_at(&2u32.to_be_bytes(), 36).unwrap();
        f.write_all_at(&e, l1_at + 8).unwrap();
        let err = qcow2_to_raw(&q, &dir.path().join("b.raw")).unwrap_err();
        assert!(err.to_string().contains("L2 table out of order, shared"), "{err}");
    }
}
