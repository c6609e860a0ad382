//! ZFS send streams of zvols, turned into raw disks.
//!
//! Triton's HVM images (`type: zvol`) are `zfs send` streams of a zvol's snapshot. Nereid
//! runs raw or qcow2 disks, so an imported stream is replayed here into a raw disk of the
//! zvol's `volsize`: only the zvol's data object matters (object 1, `DMU_OT_ZVOL`), plus
//! its properties ZAP (object 2) whose `size` entry is the volsize.
//!
//! A stream is a sequence of fixed 312-byte records (`dmu_replay_record_t`), some followed
//! by a payload; an incremental stream (`zfs send -i`) carries only what changed since
//! its origin snapshot and applies on top of the origin's disk. `zfs send -I` and `-R`
//! wrap several substreams, each applied on the one before, in a compound stream.
//!
//! ```text
//!   [ BEGIN (compound, nvlist) END ]                 zfs send -I / -R only
//!   BEGIN (magic, features, toguid, fromguid)      fromguid 0 = full, else = origin's toguid
//!   { OBJECT | FREEOBJECTS | WRITE | WRITE_BYREF | WRITE_EMBEDDED | FREE | SPILL
//!     | OBJECT_RANGE }*
//!   END (checksum of everything before it, toguid)
//!   [ BEGIN … END ]*                                 more substreams, each from the last
//!   [ END (all zero) ]                               closes a compound stream
//! ```
//!
//! Every record carries a running fletcher-4 checksum of the stream up to it (zero in
//! streams from before OpenZFS 0.7, then only END's is checked). Streams are written in
//! the sender's byte order; a byteswapped BEGIN magic means the other one. Compressed
//! WRITE records (`zfs send -c`) and embedded blocks (`-e`) are decoded (lz4, zstd, gzip,
//! zle, lzjb); encrypted (`-w`) and redacted streams are refused.
//!
//! Every error names the byte offset in the (decompressed) stream where the problem is.
//! The output disk is written sparsely: zero blocks are never written over zeros.
//! [`check_stream`] replays into memory with a size cap, for fuzzing and quick checks.

use std::fmt;
use std::fs::File;
use std::io::{self, Read};
use std::os::unix::fs::FileExt;

/// `DMU_BACKUP_MAGIC`, the first field of a BEGIN record.
pub const MAGIC: u64 = 0x0002_f5ba_cbac;
/// Size of one record header.
pub const RECORD_SIZE: usize = 312;
/// Offset of the trailing checksum in a record header.
const CKSUM_AT: usize = RECORD_SIZE - 32;
/// ZFS's largest block (`SPA_MAXBLOCKSIZE`): no payload is larger.
const MAX_BLOCK: u64 = 16 << 20;
/// The largest BEGIN payload (a packed nvlist) accepted.
const MAX_BEGIN_PAYLOAD: u64 = 1 << 20;
/// `DMU_OST_ZVOL`.
const OST_ZVOL: u32 = 3;
/// The zvol's data object and its properties ZAP.
const ZVOL_OBJ: u64 = 1;
const ZVOL_ZAP_OBJ: u64 = 2;
/// The largest disk a stream may describe (16 TiB): beyond it a WRITE is refused before
/// anything is written, so a hostile stream cannot make a file of absurd size.
pub const MAX_DISK: u64 = 16 << 40;
/// The largest ZAP block kept in memory.
const MAX_ZAP: u64 = 128 << 10;
/// The largest bonus buffer an OBJECT record may carry (ZFS's is at most 16 KiB, with
/// large dnodes): a larger one is refused before it is read.
const MAX_BONUS: u64 = 64 << 10;

// Record types (`drr_type`).
const DRR_BEGIN: u32 = 0;
const DRR_OBJECT: u32 = 1;
const DRR_FREEOBJECTS: u32 = 2;
const DRR_WRITE: u32 = 3;
const DRR_FREE: u32 = 4;
const DRR_END: u32 = 5;
const DRR_WRITE_BYREF: u32 = 6;
const DRR_SPILL: u32 = 7;
const DRR_WRITE_EMBEDDED: u32 = 8;
const DRR_OBJECT_RANGE: u32 = 9;
const DRR_REDACT: u32 = 10;

// Feature flags (`DMU_GET_FEATUREFLAGS(drr_versioninfo)`).
const FEATURE_REDACTED: u64 = 1 << 21;
const FEATURE_RAW: u64 = 1 << 24;
// Stream header types (`DMU_GET_STREAM_HDRTYPE`).
const COMPOUNDSTREAM: u64 = 2;

fn type_name(t: u32) -> &'static str {
    match t {
        DRR_BEGIN => "BEGIN",
        DRR_OBJECT => "OBJECT",
        DRR_FREEOBJECTS => "FREEOBJECTS",
        DRR_WRITE => "WRITE",
        DRR_FREE => "FREE",
        DRR_END => "END",
        DRR_WRITE_BYREF => "WRITE_BYREF",
        DRR_SPILL => "SPILL",
        DRR_WRITE_EMBEDDED => "WRITE_EMBEDDED",
        DRR_OBJECT_RANGE => "OBJECT_RANGE",
        DRR_REDACT => "REDACT",
        _ => "unknown",
    }
}

/// Why a stream cannot be turned into a disk.
#[derive(Debug, thiserror::Error)]
pub enum ZfsError {
    /// Something wrong in the stream, at this byte offset of the decompressed stream.
    #[error("ZFS send stream, byte {offset}: {message}")]
    Stream { offset: u64, message: String },
    /// Reading the stream or writing the disk failed.
    #[error("{0}")]
    Io(#[from] io::Error),
}

impl ZfsError {
    fn at(offset: u64, message: impl Into<String>) -> Self {
        ZfsError::Stream { offset, message: message.into() }
    }

    /// The stream offset the error names, if it is about the stream.
    pub fn offset(&self) -> Option<u64> {
        match self {
            ZfsError::Stream { offset, .. } => Some(*offset),
            ZfsError::Io(_) => None,
        }
    }
}

/// The origin an incremental stream applies to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Origin {
    /// The origin snapshot's guid (its stream's `toguid`).
    pub guid: u64,
    /// The origin's volsize in bytes.
    pub volsize: u64,
}

/// What a stream held.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StreamInfo {
    /// Guid of the snapshot the stream recreates (of the last substream).
    pub toguid: u64,
    /// Guid of the snapshot it is incremental from (of the first substream); 0 = full.
    pub fromguid: u64,
    /// The snapshot's name as the sender knew it (`pool/vol@snap`).
    pub toname: String,
    /// The zvol's size in bytes: the disk's size.
    pub volsize: u64,
    /// The zvol's block size, if the stream carried the data object's OBJECT record.
    pub volblocksize: Option<u32>,
    /// Whether the stream was written on a host of the other byte order.
    pub byteswapped: bool,
    /// Number of substreams (more than one for `zfs send -I`).
    pub substreams: u32,
    /// Bytes in the stream.
    pub stream_size: u64,
}

impl StreamInfo {
    /// Whether the stream needs an origin.
    pub fn is_incremental(&self) -> bool {
        self.fromguid != 0
    }
}

/// Where a stream's zvol data goes.
pub trait Disk {
    fn write_at(&mut self, offset: u64, data: &[u8]) -> io::Result<()>;
    fn read_at(&mut self, offset: u64, buf: &mut [u8]) -> io::Result<()>;
    fn size(&mut self) -> io::Result<u64>;
    fn set_len(&mut self, len: u64) -> io::Result<()>;
    /// Zeroes a range, writing only where the disk is not already zero (keeps holes).
    fn zero(&mut self, offset: u64, len: u64) -> io::Result<()> {
        let end = offset.saturating_add(len).min(self.size()?);
        let mut at = offset;
        let mut buf = vec![0u8; 1 << 20];
        while at < end {
            let n = (end - at).min(buf.len() as u64) as usize;
            self.read_at(at, &mut buf[..n])?;
            if buf[..n].iter().any(|b| *b != 0) {
                buf[..n].fill(0);
                self.write_at(at, &buf[..n])?;
            }
            at += n as u64;
        }
        Ok(())
    }
}

impl Disk for File {
    fn write_at(&mut self, offset: u64, data: &[u8]) -> io::Result<()> {
        FileExt::write_all_at(self, data, offset)
    }
    fn read_at(&mut self, offset: u64, buf: &mut [u8]) -> io::Result<()> {
        buf.fill(0);
        let mut done = 0;
        while done < buf.len() {
            match FileExt::read_at(self, &mut buf[done..], offset + done as u64) {
                Ok(0) => break, // past the end reads as zeros
                Ok(n) => done += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }
    fn size(&mut self) -> io::Result<u64> {
        Ok(self.metadata()?.len())
    }
    fn set_len(&mut self, len: u64) -> io::Result<()> {
        File::set_len(self, len)
    }
    /// Punches a hole (its cost is bounded by what is allocated in the range, not by its
    /// length); where the filesystem cannot, rewrites only the allocated ranges.
    fn zero(&mut self, offset: u64, len: u64) -> io::Result<()> {
        let end = offset.saturating_add(len).min(File::metadata(self)?.len());
        if offset >= end {
            return Ok(());
        }
        use rustix::fs::{FallocateFlags, fallocate};
        match fallocate(&*self, FallocateFlags::PUNCH_HOLE | FallocateFlags::KEEP_SIZE, offset, end - offset) {
            Ok(()) => return Ok(()),
            Err(e) if e == rustix::io::Errno::OPNOTSUPP || e == rustix::io::Errno::NOSYS => {}
            Err(e) => return Err(e.into()),
        }
        let mut buf = vec![0u8; 1 << 20];
        let mut at = offset;
        while let Some((start, stop)) = next_data(self, at, end)? {
            let mut p = start;
            while p < stop {
                let n = (stop - p).min(buf.len() as u64) as usize;
                Disk::read_at(self, p, &mut buf[..n])?;
                if buf[..n].iter().any(|b| *b != 0) {
                    buf[..n].fill(0);
                    FileExt::write_all_at(self, &buf[..n], p)?;
                }
                p += n as u64;
            }
            at = stop;
        }
        Ok(())
    }
}

/// The next range of `f` at or after `at` (and before `end`) that may hold data, as
/// `(start, stop)`; `None` when only holes are left. Filesystems without SEEK_DATA
/// report everything as data.
pub(crate) fn next_data(f: &File, at: u64, end: u64) -> io::Result<Option<(u64, u64)>> {
    use rustix::fs::{SeekFrom, seek};
    if at >= end {
        return Ok(None);
    }
    let start = match seek(f, SeekFrom::Data(at)) {
        Ok(s) => s,
        Err(rustix::io::Errno::NXIO) => return Ok(None),
        Err(rustix::io::Errno::INVAL) | Err(rustix::io::Errno::OPNOTSUPP) => return Ok(Some((at, end))),
        Err(e) => return Err(e.into()),
    };
    if start >= end {
        return Ok(None);
    }
    let stop = match seek(f, SeekFrom::Hole(start)) {
        Ok(s) => s.min(end),
        Err(_) => end,
    };
    Ok(Some((start, stop.max(start + 1).min(end))))
}

/// A disk in memory, refusing to grow beyond `cap` bytes (for [`check_stream`]).
#[derive(Debug, Default)]
pub struct MemDisk {
    pub data: Vec<u8>,
    pub cap: u64,
}

impl Disk for MemDisk {
    fn write_at(&mut self, offset: u64, data: &[u8]) -> io::Result<()> {
        let end = offset
            .checked_add(data.len() as u64)
            .filter(|e| *e <= self.cap)
            .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, format!("the disk would exceed the {}-byte limit", self.cap)))?;
        if self.data.len() < end as usize {
            self.data.resize(end as usize, 0);
        }
        self.data[offset as usize..end as usize].copy_from_slice(data);
        Ok(())
    }
    fn read_at(&mut self, offset: u64, buf: &mut [u8]) -> io::Result<()> {
        buf.fill(0);
        let len = self.data.len() as u64;
        if offset < len {
            let n = (len - offset).min(buf.len() as u64) as usize;
            buf[..n].copy_from_slice(&self.data[offset as usize..offset as usize + n]);
        }
        Ok(())
    }
    fn size(&mut self) -> io::Result<u64> {
        Ok(self.data.len() as u64)
    }
    fn set_len(&mut self, len: u64) -> io::Result<()> {
        if len > self.cap {
            return Err(io::Error::new(io::ErrorKind::InvalidInput, format!("{len} bytes exceed the {}-byte limit", self.cap)));
        }
        self.data.resize(len as usize, 0);
        Ok(())
    }
}

/// Replays a stream into memory (at most `cap` bytes of disk) and returns what it held.
/// The entry point for fuzzing: any input either converts or is refused with an offset.
pub fn check_stream(stream: &[u8], origin: Option<Origin>, cap: u64) -> Result<(StreamInfo, Vec<u8>), ZfsError> {
    let mut disk = MemDisk { data: Vec::new(), cap };
    let info = replay(stream, origin, &mut disk)?;
    Ok((info, disk.data))
}

/// Turns a full stream into a raw disk file at `out` (created), or an incremental one
/// into the disk of its origin (`base`, the origin's raw disk, copied sparsely). A stream
/// longer than `max_stream` bytes is refused where it passes that length.
pub fn stream_to_raw<R: Read>(
    stream: R,
    base: Option<(&std::path::Path, Origin)>,
    out: &std::path::Path,
    max_stream: u64,
) -> Result<StreamInfo, ZfsError> {
    let mut disk = File::options().read(true).write(true).create_new(true).open(out)?;
    let origin = match base {
        Some((path, origin)) => {
            copy_sparse(&mut File::open(path)?, &mut disk)?;
            Some(origin)
        }
        None => None,
    };
    let info = replay_capped(io::BufReader::with_capacity(1 << 20, stream), origin, &mut disk, max_stream)?;
    disk.sync_all()?;
    Ok(info)
}

/// Copies `from` into `to`, skipping (leaving holes for) all-zero MiB.
fn copy_sparse(from: &mut File, to: &mut File) -> io::Result<()> {
    let len = from.metadata()?.len();
    let mut buf = vec![0u8; 1 << 20];
    let mut next = 0;
    while let Some((start, stop)) = next_data(from, next, len)? {
        let mut at = start;
        while at < stop {
            let n = (stop - at).min(buf.len() as u64) as usize;
            Disk::read_at(from, at, &mut buf[..n])?;
            if buf[..n].iter().any(|b| *b != 0) {
                FileExt::write_all_at(to, &buf[..n], at)?;
            }
            at += n as u64;
        }
        next = stop;
    }
    File::set_len(to, len)
}

/// fletcher-4 over 32-bit words, in the stream's byte order.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
struct Fletcher4 {
    s: [u64; 4],
}

impl Fletcher4 {
    fn update(&mut self, data: &[u8], big: bool) {
        let [mut a, mut b, mut c, mut d] = self.s;
        for w in data.chunks_exact(4) {
            let w = [w[0], w[1], w[2], w[3]];
            let v = if big { u32::from_be_bytes(w) } else { u32::from_le_bytes(w) } as u64;
            a = a.wrapping_add(v);
            b = b.wrapping_add(a);
            c = c.wrapping_add(b);
            d = d.wrapping_add(c);
        }
        self.s = [a, b, c, d];
    }
}

impl fmt::Display for Fletcher4 {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:x}/{:x}/{:x}/{:x}", self.s[0], self.s[1], self.s[2], self.s[3])
    }
}

/// Reads the stream, keeping the offset and the running checksum.
struct Input<R> {
    r: R,
    offset: u64,
    cksum: Fletcher4,
    big: bool,
    /// The longest stream accepted.
    limit: u64,
}

impl<R: Read> Input<R> {
    /// Fills `buf`; `Ok(false)` at a clean end of stream (nothing read).
    fn fill(&mut self, buf: &mut [u8], what: impl Fn() -> String) -> Result<bool, ZfsError> {
        let mut done = 0;
        while done < buf.len() {
            match self.r.read(&mut buf[done..]) {
                Ok(0) if done == 0 => return Ok(false),
                Ok(0) => {
                    return Err(ZfsError::at(
                        self.offset + done as u64,
                        format!("the stream is truncated: it ends {} bytes into {}", done, what()),
                    ));
                }
                Ok(n) => {
                    if done == 0 {
                        // There is more: it must fit (a clean end of stream always does).
                        self.within(buf.len() as u64)?;
                    }
                    done += n;
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(ZfsError::Io(e)),
            }
        }
        Ok(true)
    }

    /// Refuses to read `len` more bytes if the stream would pass its limit.
    fn within(&self, len: u64) -> Result<(), ZfsError> {
        if self.offset.saturating_add(len) > self.limit {
            return Err(ZfsError::at(
                self.offset,
                format!("the stream goes on beyond {} bytes, longer than any stream of a zvol it may hold", self.limit),
            ));
        }
        Ok(())
    }

    /// Reads a payload of `len` bytes (checksummed).
    fn payload(&mut self, len: u64, rec: &Rec) -> Result<Vec<u8>, ZfsError> {
        self.within(len)?;
        // Grown as bytes arrive, so a header claiming a large payload costs nothing unless
        // the payload is really there.
        let mut buf = Vec::new();
        (&mut self.r).take(len).read_to_end(&mut buf)?;
        if (buf.len() as u64) < len {
            return Err(ZfsError::at(
                self.offset + buf.len() as u64,
                format!(
                    "the stream is truncated: it ends {} bytes into the {len}-byte payload of the {} record at byte {}",
                    buf.len(),
                    rec.name(),
                    rec.at
                ),
            ));
        }
        self.cksum.update(&buf, self.big);
        self.offset += len;
        Ok(buf)
    }
}

/// One record header, decoded in the stream's byte order.
struct Rec {
    at: u64,
    kind: u32,
    payloadlen: u32,
    raw: [u8; RECORD_SIZE],
    big: bool,
}

impl Rec {
    fn name(&self) -> &'static str {
        type_name(self.kind)
    }
    /// A u64 at byte `i` of the record's body (`drr_u`).
    fn u64(&self, i: usize) -> u64 {
        let b = [
            self.raw[8 + i],
            self.raw[9 + i],
            self.raw[10 + i],
            self.raw[11 + i],
            self.raw[12 + i],
            self.raw[13 + i],
            self.raw[14 + i],
            self.raw[15 + i],
        ];
        if self.big { u64::from_be_bytes(b) } else { u64::from_le_bytes(b) }
    }
    fn u32(&self, i: usize) -> u32 {
        let b = [self.raw[8 + i], self.raw[9 + i], self.raw[10 + i], self.raw[11 + i]];
        if self.big { u32::from_be_bytes(b) } else { u32::from_le_bytes(b) }
    }
    fn u8(&self, i: usize) -> u8 {
        self.raw[8 + i]
    }
    fn cksum_at(&self, i: usize) -> [u64; 4] {
        [self.u64(i), self.u64(i + 8), self.u64(i + 16), self.u64(i + 24)]
    }
    /// The byte offset in the stream of body field `i`.
    fn field(&self, i: usize) -> u64 {
        self.at + 8 + i as u64
    }
}

fn u32_at(raw: &[u8], i: usize, big: bool) -> u32 {
    let b = [raw[i], raw[i + 1], raw[i + 2], raw[i + 3]];
    if big { u32::from_be_bytes(b) } else { u32::from_le_bytes(b) }
}

/// State of the replay.
struct Replay<'d, D: Disk> {
    disk: &'d mut D,
    /// The volsize the disk starts with (the origin's), if any.
    base_volsize: Option<u64>,
    /// Whether the disk started empty (a full stream): FREE beyond what was written is a no-op.
    started_empty: bool,
    /// End of the furthest data written so far, and the WRITE record that reached it.
    written_end: u64,
    furthest_write: u64,
    /// Object 2's contents, as far as the stream carried them.
    zap: Vec<u8>,
    zap_seen: bool,
    volblocksize: Option<u32>,
}

/// Replays the stream onto `disk`, which holds the origin's disk for an incremental stream.
pub fn replay<R: Read, D: Disk>(stream: R, origin: Option<Origin>, disk: &mut D) -> Result<StreamInfo, ZfsError> {
    replay_capped(stream, origin, disk, u64::MAX)
}

/// [`replay`], refusing a stream longer than `max_stream` bytes where it passes that length.
pub fn replay_capped<R: Read, D: Disk>(stream: R, origin: Option<Origin>, disk: &mut D, max_stream: u64) -> Result<StreamInfo, ZfsError> {
    let mut input = Input { r: stream, offset: 0, cksum: Fletcher4::default(), big: false, limit: max_stream };
    let mut st = Replay {
        base_volsize: origin.map(|o| o.volsize),
        started_empty: origin.is_none(),
        disk,
        written_end: 0,
        furthest_write: 0,
        zap: Vec::new(),
        zap_seen: false,
        volblocksize: None,
    };
    let mut info = StreamInfo {
        toguid: 0,
        fromguid: 0,
        toname: String::new(),
        volsize: 0,
        volblocksize: None,
        byteswapped: false,
        substreams: 0,
        stream_size: 0,
    };
    // The guid the next substream must start from.
    let mut want_from = origin.map(|o| o.guid);
    // Inside a compound stream (zfs send -I / -R): it must end with its closing END.
    let mut compound = false;
    loop {
        // ---- BEGIN ----
        let mut raw = [0u8; RECORD_SIZE];
        let at = input.offset;
        if !input.fill(&mut raw, || format!("the record at byte {at}"))? {
            if info.substreams == 0 && !compound {
                return Err(ZfsError::at(0, "the stream is empty"));
            }
            if compound {
                return Err(ZfsError::at(
                    at,
                    "the stream is truncated: the compound stream (zfs send -I or -R) ends without its closing END record",
                ));
            }
            break;
        }
        if compound && u32_at(&raw, 0, input.big) == DRR_END {
            // The closing END of a compound stream (written all zero): nothing may follow.
            input.offset += RECORD_SIZE as u64;
            if info.substreams == 0 {
                return Err(ZfsError::at(at, "the compound stream holds no snapshot"));
            }
            let mut more = [0u8; 1];
            if input.fill(&mut more, String::new)? {
                return Err(ZfsError::at(input.offset, "unexpected data after the end of the compound stream"));
            }
            break;
        }
        let magic_le = u64::from_le_bytes(raw[8..16].try_into().unwrap_or([0; 8]));
        let big = if magic_le == MAGIC {
            false
        } else if magic_le == MAGIC.swap_bytes() {
            true
        } else {
            let what = if info.substreams == 0 { "this is not a ZFS send stream" } else { "unexpected data after the END record" };
            return Err(ZfsError::at(at + 8, format!("{what}: the BEGIN magic is {magic_le:#x}, ZFS's is {MAGIC:#x}")));
        };
        input.big = big;
        info.byteswapped = big;
        let rec = Rec { at, kind: u32_at(&raw, 0, big), payloadlen: u32_at(&raw, 4, big), raw, big };
        if rec.kind != DRR_BEGIN {
            return Err(ZfsError::at(at, format!("a stream starts with a BEGIN record, not {} (type {})", rec.name(), rec.kind)));
        }
        input.cksum = Fletcher4::default();
        input.cksum.update(&rec.raw, big);
        input.offset += RECORD_SIZE as u64;
        let versioninfo = rec.u64(8);
        let features = (versioninfo >> 2) & 0x3fff_ffff;
        if versioninfo & 3 == COMPOUNDSTREAM {
            if compound || info.substreams > 0 {
                return Err(ZfsError::at(rec.field(8), "a compound stream header inside the stream"));
            }
            compound = true;
            if rec.payloadlen as u64 > MAX_BEGIN_PAYLOAD {
                return Err(ZfsError::at(rec.at + 4, format!("the BEGIN payload of {} bytes is implausibly large", rec.payloadlen)));
            }
            input.payload(rec.payloadlen as u64, &rec)?;
            let at = input.offset;
            let (end, before) = next_record(&mut input)?
                .ok_or_else(|| ZfsError::at(at, "the stream is truncated: the compound stream's header has no END record"))?;
            if end.kind != DRR_END {
                return Err(ZfsError::at(end.at, format!("the compound stream's header is followed by {}, not END", end.name())));
            }
            check_end(&end, before, 0)?;
            continue;
        }
        if features & FEATURE_RAW != 0 {
            return Err(ZfsError::at(
                rec.field(8),
                "this is a raw stream of an encrypted dataset (zfs send -w); send it without -w so the data is readable",
            ));
        }
        if features & FEATURE_REDACTED != 0 {
            return Err(ZfsError::at(rec.field(8), "this is a redacted stream: it lacks some of the zvol's data"));
        }
        let ost = rec.u32(24);
        if ost != OST_ZVOL {
            let what = match ost {
                2 => "a filesystem".to_string(),
                other => format!("an objset of type {other}"),
            };
            return Err(ZfsError::at(rec.field(24), format!("the stream is of {what}, not of a zvol")));
        }
        let toguid = rec.u64(32);
        let fromguid = rec.u64(40);
        let name = &rec.raw[8 + 48..8 + 48 + 256];
        let name = String::from_utf8_lossy(&name[..name.iter().position(|b| *b == 0).unwrap_or(name.len())]).into_owned();
        match want_from {
            None if fromguid != 0 => {
                return Err(ZfsError::at(
                    rec.field(40),
                    format!(
                        "this is an incremental stream (from snapshot guid {fromguid}) but no origin was given: import its origin image first and name it as the image's origin"
                    ),
                ));
            }
            Some(want) if fromguid != want && !(fromguid == 0 && info.substreams == 0) => {
                let msg = if info.substreams == 0 {
                    format!("the stream is incremental from snapshot guid {fromguid}, but the origin's snapshot guid is {want}")
                } else {
                    format!("substream {} starts from snapshot guid {fromguid}, not from the previous one's {want}", info.substreams + 1)
                };
                return Err(ZfsError::at(rec.field(40), msg));
            }
            _ => {}
        }
        if fromguid == 0 && info.substreams == 0 && origin.is_some() {
            // A full stream given an origin: it replaces the disk entirely.
            st.disk.set_len(0)?;
            st.base_volsize = None;
            st.started_empty = true;
        }
        if rec.payloadlen as u64 > MAX_BEGIN_PAYLOAD {
            return Err(ZfsError::at(rec.at + 4, format!("the BEGIN payload of {} bytes is implausibly large", rec.payloadlen)));
        }
        input.payload(rec.payloadlen as u64, &rec)?;
        if info.substreams == 0 {
            info.fromguid = fromguid;
        }
        info.toguid = toguid;
        info.toname = name;
        info.substreams += 1;

        // ---- records up to END ----
        loop {
            let at = input.offset;
            let (rec, before) =
                next_record(&mut input)?.ok_or_else(|| ZfsError::at(at, "the stream is truncated: it ends without an END record"))?;
            if rec.kind == DRR_END {
                check_end(&rec, before, toguid)?;
                break;
            }
            st.record(&mut input, &rec)?;
        }
        want_from = Some(toguid);
    }
    info.stream_size = input.offset;
    info.volblocksize = st.volblocksize;
    info.volsize = st.finish(input.offset)?;
    Ok(info)
}

/// Reads the next record header after BEGIN and checks its checksum; `None` at a clean
/// end of the stream. Also returns the stream's checksum before the record (END's).
fn next_record<R: Read>(input: &mut Input<R>) -> Result<Option<(Rec, Fletcher4)>, ZfsError> {
    let at = input.offset;
    let big = input.big;
    let mut raw = [0u8; RECORD_SIZE];
    if !input.fill(&mut raw, || format!("the record at byte {at}"))? {
        return Ok(None);
    }
    let rec = Rec { at, kind: u32_at(&raw, 0, big), payloadlen: u32_at(&raw, 4, big), raw, big };
    let before = input.cksum;
    input.cksum.update(&rec.raw[..CKSUM_AT], big);
    let stored = rec.cksum_at(CKSUM_AT - 8);
    if stored != [0; 4] && stored != input.cksum.s {
        return Err(ZfsError::at(
            at,
            format!(
                "checksum mismatch in the {} record: the stream says {}, the bytes up to it sum to {} (the stream is damaged)",
                rec.name(),
                Fletcher4 { s: stored },
                input.cksum
            ),
        ));
    }
    input.cksum.update(&rec.raw[CKSUM_AT..], big);
    input.offset += RECORD_SIZE as u64;
    Ok(Some((rec, before)))
}

/// An END record carries the checksum of the stream before it and the snapshot's guid.
fn check_end(rec: &Rec, before: Fletcher4, toguid: u64) -> Result<(), ZfsError> {
    let end_sum = rec.cksum_at(0);
    if end_sum != [0; 4] && end_sum != before.s {
        return Err(ZfsError::at(
            rec.field(0),
            format!(
                "the END record's stream checksum {} does not match the stream's {} (the stream is damaged)",
                Fletcher4 { s: end_sum },
                before
            ),
        ));
    }
    if rec.u64(32) != toguid {
        return Err(ZfsError::at(
            rec.field(32),
            format!("the END record is for snapshot guid {}, the BEGIN record for {toguid}", rec.u64(32)),
        ));
    }
    Ok(())
}

impl<D: Disk> Replay<'_, D> {
    fn record<R: Read>(&mut self, input: &mut Input<R>, rec: &Rec) -> Result<(), ZfsError> {
        match rec.kind {
            DRR_OBJECT => {
                let object = rec.u64(0);
                let blksz = rec.u32(16);
                let bonuslen = rec.u32(20) as u64;
                if bonuslen > MAX_BONUS {
                    return Err(ZfsError::at(
                        rec.field(20),
                        format!("an OBJECT record's bonus buffer of {bonuslen} bytes is larger than ZFS allows"),
                    ));
                }
                input.payload(bonuslen.div_ceil(8) * 8, rec)?;
                if object == ZVOL_OBJ {
                    if blksz == 0 || blksz as u64 > MAX_BLOCK || !blksz.is_power_of_two() {
                        return Err(ZfsError::at(
                            rec.field(16),
                            format!("the zvol's block size {blksz} is not a power of two up to 16 MiB"),
                        ));
                    }
                    self.volblocksize = Some(blksz);
                }
            }
            DRR_FREEOBJECTS => {
                let first = rec.u64(0);
                let num = rec.u64(8);
                if first <= ZVOL_ZAP_OBJ && first.saturating_add(num) > ZVOL_OBJ && !self.started_empty {
                    // The zvol's objects were freed (and are recreated by OBJECT records).
                    let len = self.disk.size()?;
                    self.disk.zero(0, len)?;
                }
            }
            DRR_WRITE => {
                let object = rec.u64(0);
                let offset = rec.u64(16);
                let lsize = rec.u64(24);
                let compression = rec.u8(42);
                let psize = if compression != 0 { rec.u64(88) } else { lsize };
                if lsize > MAX_BLOCK || psize > MAX_BLOCK {
                    return Err(ZfsError::at(
                        rec.field(24),
                        format!("a {lsize}-byte block ({psize} bytes in the stream) is larger than ZFS's 16 MiB limit"),
                    ));
                }
                let payload = input.payload(psize, rec)?;
                if object != ZVOL_OBJ && object != ZVOL_ZAP_OBJ {
                    return Ok(());
                }
                let data = if compression != 0 {
                    decompress_block(compression, &payload, lsize as usize).map_err(|m| ZfsError::at(rec.at + RECORD_SIZE as u64, m))?
                } else {
                    payload
                };
                self.put(object, offset, &data, rec)?;
            }
            DRR_WRITE_EMBEDDED => {
                let object = rec.u64(0);
                let offset = rec.u64(8);
                let length = rec.u64(16);
                let compression = rec.u8(32);
                let etype = rec.u8(33);
                let lsize = rec.u32(40) as u64;
                let psize = rec.u32(44) as u64;
                if psize > 112 || lsize > MAX_BLOCK || length > MAX_BLOCK {
                    return Err(ZfsError::at(
                        rec.field(40),
                        format!("an embedded block of {psize} bytes ({lsize} decoded) is larger than ZFS allows"),
                    ));
                }
                let payload = input.payload(psize.div_ceil(8) * 8, rec)?;
                if object != ZVOL_OBJ && object != ZVOL_ZAP_OBJ {
                    return Ok(());
                }
                if etype != 0 {
                    return Err(ZfsError::at(rec.field(33), format!("embedded block type {etype} is not data")));
                }
                let mut data = decompress_block(compression, &payload[..psize as usize], lsize as usize)
                    .map_err(|m| ZfsError::at(rec.at + RECORD_SIZE as u64, m))?;
                data.resize(length.max(lsize) as usize, 0);
                self.put(object, offset, &data, rec)?;
            }
            DRR_WRITE_BYREF => {
                let object = rec.u64(0);
                let offset = rec.u64(8);
                let length = rec.u64(16);
                let refobject = rec.u64(40);
                let refoffset = rec.u64(48);
                if object != ZVOL_OBJ {
                    return Ok(());
                }
                if refobject != ZVOL_OBJ || length > MAX_BLOCK {
                    return Err(ZfsError::at(
                        rec.field(40),
                        format!("a deduplicated block refers to object {refobject}, not to the zvol's data"),
                    ));
                }
                if refoffset.saturating_add(length) > self.written_end && self.started_empty {
                    return Err(ZfsError::at(
                        rec.field(48),
                        format!("a deduplicated block refers to byte {refoffset}, which the stream has not written"),
                    ));
                }
                let mut buf = vec![0u8; length as usize];
                self.disk.read_at(refoffset, &mut buf)?;
                self.put(object, offset, &buf, rec)?;
            }
            DRR_FREE => {
                let object = rec.u64(0);
                let offset = rec.u64(8);
                let length = rec.u64(16);
                if object == ZVOL_OBJ {
                    let end = if self.started_empty { self.written_end } else { u64::MAX };
                    if offset < end {
                        let len = length.min(end - offset);
                        self.disk.zero(offset, len)?;
                    }
                }
            }
            DRR_SPILL => {
                let length = rec.u64(8);
                if length > MAX_BLOCK {
                    return Err(ZfsError::at(rec.field(8), format!("a {length}-byte spill block is larger than ZFS's 16 MiB limit")));
                }
                input.payload(length, rec)?;
            }
            DRR_OBJECT_RANGE => {}
            DRR_REDACT => {
                if rec.u64(0) == ZVOL_OBJ {
                    return Err(ZfsError::at(rec.at, "the stream is redacted: it lacks some of the zvol's data"));
                }
            }
            DRR_BEGIN => {
                return Err(ZfsError::at(rec.at, "a BEGIN record inside a stream (a replication stream?)"));
            }
            other => {
                return Err(ZfsError::at(rec.at, format!("unknown record type {other}: the stream is damaged or from a newer ZFS")));
            }
        }
        Ok(())
    }

    /// Puts a block of object 1 (the disk) or 2 (the properties ZAP).
    fn put(&mut self, object: u64, offset: u64, data: &[u8], rec: &Rec) -> Result<(), ZfsError> {
        let end = offset
            .checked_add(data.len() as u64)
            .ok_or_else(|| ZfsError::at(rec.field(8), format!("block offset {offset} is out of range")))?;
        if object == ZVOL_ZAP_OBJ {
            if end > MAX_ZAP {
                return Ok(());
            }
            if self.zap.len() < end as usize {
                self.zap.resize(end as usize, 0);
            }
            self.zap[offset as usize..end as usize].copy_from_slice(data);
            self.zap_seen = true;
            return Ok(());
        }
        if end > MAX_DISK {
            return Err(ZfsError::at(rec.at, format!("a WRITE at disk byte {offset} is beyond the 16 TiB a zvol image may have")));
        }
        if data.iter().all(|b| *b == 0) {
            if !self.started_empty || offset < self.written_end {
                self.disk.zero(offset, data.len() as u64)?;
            }
        } else {
            self.disk.write_at(offset, data).map_err(|e| {
                if e.kind() == io::ErrorKind::InvalidInput {
                    ZfsError::at(rec.at, format!("a WRITE at disk byte {offset}: {e}"))
                } else {
                    ZfsError::Io(e)
                }
            })?;
        }
        if end > self.written_end {
            self.written_end = end;
            self.furthest_write = rec.at;
        }
        Ok(())
    }

    /// Settles the disk's size: the ZAP's `size`, else the origin's, else the written data
    /// rounded up to the block size. Data beyond it is an error.
    fn finish(&mut self, stream_end: u64) -> Result<u64, ZfsError> {
        let zap = if self.zap_seen { zap_size(&self.zap) } else { None };
        let volsize = match (zap, self.base_volsize) {
            (Some(s), _) => s,
            (None, Some(s)) => s,
            (None, None) => {
                let bs = self.volblocksize.unwrap_or(512) as u64;
                self.written_end.div_ceil(bs) * bs
            }
        };
        if volsize == 0 {
            return Err(ZfsError::at(stream_end, "the stream holds no zvol data and no volsize"));
        }
        if volsize > MAX_DISK {
            return Err(ZfsError::at(
                stream_end,
                format!("the zvol's volsize of {volsize} bytes is beyond the 16 TiB a zvol image may have"),
            ));
        }
        if self.written_end > volsize {
            return Err(ZfsError::at(
                self.furthest_write,
                format!("this WRITE reaches disk byte {}, beyond the zvol's volsize of {volsize} bytes", self.written_end),
            ));
        }
        self.disk.set_len(volsize).map_err(|e| {
            if e.kind() == io::ErrorKind::InvalidInput {
                ZfsError::at(stream_end, format!("volsize {volsize}: {e}"))
            } else {
                ZfsError::Io(e)
            }
        })?;
        Ok(volsize)
    }
}

/// `ZBT_MICRO`: the first word of a micro ZAP block.
const ZBT_MICRO: u64 = (1 << 63) + 3;

/// The `size` entry of the zvol's properties ZAP (a micro ZAP: a 64-byte header, then
/// 64-byte entries of value, cd, pad and a NUL-terminated name of up to 50 bytes).
fn zap_size(zap: &[u8]) -> Option<u64> {
    let word = |i: usize, big: bool| -> Option<u64> {
        let b: [u8; 8] = zap.get(i..i + 8)?.try_into().ok()?;
        Some(if big { u64::from_be_bytes(b) } else { u64::from_le_bytes(b) })
    };
    let big = match word(0, false)? {
        ZBT_MICRO => false,
        w if w.swap_bytes() == ZBT_MICRO => true,
        _ => return None,
    };
    zap.chunks_exact(64).skip(1).find_map(|e| {
        let name = &e[14..];
        let name = &name[..name.iter().position(|b| *b == 0).unwrap_or(name.len())];
        if name == b"size" {
            let b: [u8; 8] = e[..8].try_into().ok()?;
            Some(if big { u64::from_be_bytes(b) } else { u64::from_le_bytes(b) })
        } else {
            None
        }
    })
}

/// The zstd frame magic number, as it is stored.
const ZSTD_MAGIC: [u8; 4] = [0x28, 0xb5, 0x2f, 0xfd];

/// Decodes a block compressed with ZFS's algorithm number `c` to `lsize` bytes.
fn decompress_block(c: u8, src: &[u8], lsize: usize) -> Result<Vec<u8>, String> {
    let out = match c {
        // ZIO_COMPRESS_OFF / EMPTY: stored as is.
        2 | 4 => src.to_vec(),
        3 => lzjb(src, lsize)?,
        5..=13 => {
            let mut out = Vec::with_capacity(lsize);
            flate2::read::ZlibDecoder::new(src)
                .take(lsize as u64)
                .read_to_end(&mut out)
                .map_err(|e| format!("a gzip-compressed block does not decode: {e}"))?;
            out
        }
        14 => zle(src, lsize)?,
        15 => {
            // ZFS's lz4 blocks start with the compressed length, big-endian.
            let n = src
                .get(..4)
                .map(|b| u32::from_be_bytes([b[0], b[1], b[2], b[3]]) as usize)
                .ok_or("an lz4 block is shorter than its header")?;
            let body =
                src.get(4..4 + n).ok_or_else(|| format!("an lz4 block says it has {n} bytes but has {}", src.len().saturating_sub(4)))?;
            let mut out = vec![0u8; lsize];
            let got = lz4_flex::block::decompress_into(body, &mut out).map_err(|e| format!("an lz4 block does not decode: {e}"))?;
            out.truncate(got);
            out
        }
        16 => {
            // ZFS's zstd blocks: compressed length and version/level (big-endian), then a
            // zstd frame written without its magic number.
            let n = src
                .get(..4)
                .map(|b| u32::from_be_bytes([b[0], b[1], b[2], b[3]]) as usize)
                .ok_or("a zstd block is shorter than its header")?;
            let body =
                src.get(8..8 + n).ok_or_else(|| format!("a zstd block says it has {n} bytes but has {}", src.len().saturating_sub(8)))?;
            let frame: Vec<u8> = if body.starts_with(&ZSTD_MAGIC) { body.to_vec() } else { [&ZSTD_MAGIC[..], body].concat() };
            let mut out = Vec::with_capacity(lsize);
            ruzstd::decoding::StreamingDecoder::new(&frame[..])
                .map_err(|e| format!("a zstd block does not decode: {e}"))?
                .take(lsize as u64 + 1)
                .read_to_end(&mut out)
                .map_err(|e| format!("a zstd block does not decode: {e}"))?;
            out
        }
        other => return Err(format!("unknown ZFS compression algorithm {other}")),
    };
    if out.len() > lsize {
        return Err(format!("a compressed block decodes to {} bytes, more than its {lsize}", out.len()));
    }
    let mut out = out;
    out.resize(lsize, 0);
    Ok(out)
}

/// ZFS's zero-length encoding (level 64): a length byte, then literal bytes or zeros.
fn zle(src: &[u8], lsize: usize) -> Result<Vec<u8>, String> {
    let mut out = Vec::with_capacity(lsize);
    let mut i = 0;
    while i < src.len() && out.len() < lsize {
        let len = 1 + src[i] as usize;
        i += 1;
        if len <= 64 {
            let lit = src.get(i..i + len).ok_or("a zle block is truncated")?;
            out.extend_from_slice(lit);
            i += len;
        } else {
            out.resize(out.len() + len - 64, 0);
        }
    }
    if out.len() > lsize {
        return Err("a zle block decodes to more than its size".into());
    }
    Ok(out)
}

/// Solaris' LZJB: a copy-map byte governs 8 items, each a literal or a 2-byte back-reference.
fn lzjb(src: &[u8], lsize: usize) -> Result<Vec<u8>, String> {
    let mut out: Vec<u8> = Vec::with_capacity(lsize);
    let (mut i, mut copymap, mut mask) = (0usize, 0u8, 0u16);
    while out.len() < lsize {
        mask <<= 1;
        if mask == 256 || mask == 0 {
            mask = 1;
            copymap = *src.get(i).ok_or("an lzjb block is truncated")?;
            i += 1;
        }
        if copymap as u16 & mask != 0 {
            let b = src.get(i..i + 2).ok_or("an lzjb block is truncated")?;
            i += 2;
            let mlen = (b[0] >> 2) as usize + 3;
            let off = (((b[0] as usize) << 8) | b[1] as usize) & 0x3ff;
            let start = out.len().checked_sub(off).filter(|_| off > 0).ok_or("an lzjb block refers before its start")?;
            for k in 0..mlen {
                if out.len() >= lsize {
                    break;
                }
                let v = out[start + k];
                out.push(v);
            }
        } else {
            out.push(*src.get(i).ok_or("an lzjb block is truncated")?);
            i += 1;
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fletcher4_of_known_words() {
        let mut f = Fletcher4::default();
        f.update(&[1, 0, 0, 0, 2, 0, 0, 0], false);
        assert_eq!(f.s, [3, 4, 5, 6]);
        let mut g = Fletcher4::default();
        g.update(&[0, 0, 0, 1, 0, 0, 0, 2], true);
        assert_eq!(g, f);
    }

    #[test]
    fn zle_and_lzjb_decode() {
        // zle: 3 literals, then 70 zeros (70 + 64 - 1 = 133).
        assert_eq!(zle(&[2, b'a', b'b', b'c', 133], 73).unwrap(), [b"abc".as_slice(), &[0u8; 70]].concat());
        // lzjb: literals "abc", then a back-reference of 3 bytes at distance 3.
        let out = lzjb(&[0b1000, b'a', b'b', b'c', 0, 3], 6).unwrap();
        assert_eq!(out, b"abcabc");
        assert!(lzjb(&[0b1, 0, 9], 6).is_err());
    }

    #[test]
    fn a_volsize_beyond_16_tib_is_refused() {
        let mut disk = MemDisk { data: Vec::new(), cap: 1 << 20 };
        let mut zap = vec![0u8; 128];
        zap[..8].copy_from_slice(&ZBT_MICRO.to_le_bytes());
        zap[64..72].copy_from_slice(&(1u64 << 63).to_le_bytes());
        zap[78..82].copy_from_slice(b"size");
        let mut st = Replay {
            disk: &mut disk,
            base_volsize: None,
            started_empty: true,
            written_end: 0,
            furthest_write: 0,
            zap,
            zap_seen: true,
            volblocksize: None,
        };
        let e = st.finish(1000).unwrap_err();
        assert_eq!(e.offset(), Some(1000));
        assert!(e.to_string().contains("beyond the 16 TiB"), "{e}");
    }

    #[test]
    fn zeroing_a_file_punches_a_hole_and_costs_nothing_over_its_holes() {
        use std::os::unix::fs::MetadataExt;
        let dir = tempfile::tempdir().unwrap();
        let mut f = File::options().read(true).write(true).create_new(true).open(dir.path().join("d")).unwrap();
        // 8 TiB, 4 MiB of it data: a read-and-compare of the whole range would not end.
        if File::set_len(&f, 8 << 40).is_err() {
            return;
        }
        Disk::write_at(&mut f, 1 << 30, &vec![7u8; 4 << 20]).unwrap();
        Disk::write_at(&mut f, 8 << 30, b"keep").unwrap();
        let before = f.metadata().unwrap().blocks();
        // FREE records as a hostile stream sends them: to the end of the disk, many times.
        for _ in 0..100 {
            Disk::zero(&mut f, 1 << 30, (4 << 20) + 4096).unwrap();
        }
        let mut buf = vec![1u8; 4 << 20];
        Disk::read_at(&mut f, 1 << 30, &mut buf).unwrap();
        assert!(buf.iter().all(|b| *b == 0));
        let mut keep = [0u8; 4];
        Disk::read_at(&mut f, 8 << 30, &mut keep).unwrap();
        assert_eq!(&keep, b"keep");
        assert_eq!(f.metadata().unwrap().len(), 8 << 40, "the size is kept");
        assert!(f.metadata().unwrap().blocks() < before, "the zeroed range was deallocated, not written with zeros");
        Disk::zero(&mut f, 0, u64::MAX).unwrap();
        Disk::read_at(&mut f, 8 << 30, &mut keep).unwrap();
        assert_eq!(keep, [0; 4]);
    }

    #[test]
    fn micro_zap_size() {
        let mut zap = vec![0u8; 512];
        zap[..8].copy_from_slice(&ZBT_MICRO.to_le_bytes());
        zap[64..72].copy_from_slice(&(4u64 << 20).to_le_bytes());
        zap[78..82].copy_from_slice(b"size");
        assert_eq!(zap_size(&zap), Some(4 << 20));
        zap[78] = b'x';
        assert_eq!(zap_size(&zap), None);
    }
}
