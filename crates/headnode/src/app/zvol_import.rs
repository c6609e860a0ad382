//! Triton's zvol images: a `zfs send` stream uploaded as an image file becomes the disk
//! Nereid runs.
//!
//! Triton publishes HVM images (`type: zvol`) as ZFS send streams of a zvol snapshot,
//! compressed with gzip, bzip2 or xz; an incremental image's stream applies on top of its
//! origin's. Compute nodes here run raw or qcow2 disks, so AddImageFile converts such a
//! stream once, on import, and keeps the disk instead of the stream, as a compact qcow2
//! (only the zvol's data: a 10 GiB zvol holding 1 GiB costs 1 GiB to store and to send to
//! each compute node):
//!
//! ```text
//!  AddImageFile of a type: zvol image ──► upload verified (size, sha1)
//!     │ its first decompressed bytes a ZFS BEGIN record? ── no ──► attached as uploaded
//!     ▼ yes
//!  decompressed as it is replayed onto a copy of the origin's disk ──► tmp/<id>.raw
//!     │ (no decompressed copy is kept: a stream longer than any of its zvol's is refused)
//!     │ refused: 422 ValidationFailed "ZFS send stream, byte N: …" (tmp files removed)
//!     ▼  ──► tmp/<id>.qcow2 (the non-zero clusters)
//!  files[0] = { sha1/size/contentMD5 of the qcow2 disk, compression: none,
//!               dataset_guid: the snapshot's guid (decimal, as `zfs get guid` prints it) }
//! ```
//!
//! `dataset_guid` is Triton's own field for the snapshot's guid: an incremental image's
//! stream must start from its origin's (`fromguid`), and applies on the origin's disk
//! (expanded from its qcow2; the origin's volsize is that disk's size). Only an origin
//! whose files[0] really was converted here (it has `source_sha1`) counts: a declared
//! `dataset_guid` on an uploaded file proves nothing. A declared `dataset_guid` or
//! `image_size` that the stream contradicts is refused. files[0] describes the stored
//! disk; the stream as uploaded is remembered by `source_sha1`/`source_size`.

use std::fs::File;
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};

use nereid_diskimage::zfs::{self, Origin, StreamInfo, ZfsError};
use nereid_diskimage::zfs_qcow2::{qcow2_to_raw, raw_to_qcow2};
use nereid_diskimage::{Compression, decompress};
use nereid_types::image::{self, Image};
use nereid_types::{ApiError, FieldError};
use uuid::Uuid;

use super::App;
use super::image_files::Received;
use super::images::AddFile;

/// A converted upload: what `attach_file` stores instead of the stream. Its temporary
/// file is removed when dropped unless it was committed (moved) first.
pub(crate) struct Converted {
    pub add: AddFile,
    pub received: Received,
}

impl Drop for Converted {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.received.tmp);
    }
}

/// 422 for a file that is not a usable stream, naming the field `file`.
fn refused(message: String) -> ApiError {
    ApiError::new(422, "ValidationFailed", message.clone()).with_errors(vec![FieldError::invalid("file", message)])
}

/// Converts the upload `r` of image `uuid` if it is a ZFS send stream of a zvol image;
/// `Ok(None)` leaves every other upload as it is.
pub(crate) async fn convert(app: &App, uuid: Uuid, add: &AddFile, r: &Received) -> Result<Option<Converted>, ApiError> {
    let (img, _) = app.get_image(uuid, None).await?;
    if img.kind != "zvol" || image::check_compression(&add.compression, &r.head).is_err() {
        // Not a zvol image, or a compression attach_file refuses anyway.
        return Ok(None);
    }
    let Some(compression) = Compression::parse(&add.compression) else { return Ok(None) };
    let upload = r.tmp.clone();
    let begin = tokio::task::spawn_blocking(move || starts_with_begin(compression, &upload))
        .await
        .map_err(|e| ApiError::internal(format!("reading the upload: {e}")))?
        .map_err(|e| ApiError::new(503, "StorageIsDown", format!("could not read the uploaded file: {e}")))?;
    let Some(begin) = begin else { return Ok(None) };
    // A full stream needs no origin even when the manifest names one.
    let base = match img.origin() {
        Some(origin) if begin.needs_origin => Some(origin_disk(app, origin).await?),
        _ => None,
    };
    let id = Uuid::new_v4();
    let dir = app.files.tmp_dir();
    let max_stream = max_stream(img.image_size());
    let work = Work { base: dir.join(format!("{id}.base")), raw: dir.join(format!("{id}.raw")), qcow2: dir.join(format!("{id}.qcow2")) };
    let upload = r.tmp.clone();
    let converted = tokio::task::spawn_blocking(move || {
        let result = to_disk(compression, &upload, &work, base, max_stream);
        for tmp in [&work.base, &work.raw] {
            let _ = std::fs::remove_file(tmp);
        }
        if result.is_err() {
            let _ = std::fs::remove_file(&work.qcow2);
        }
        result
    })
    .await
    .map_err(|e| ApiError::internal(format!("converting the ZFS stream: {e}")))?;
    let (info, received) = match converted {
        Ok(v) => v,
        Err(Failure::Refused(m)) => return Err(refused(m)),
        Err(Failure::Io(e)) => {
            tracing::error!(error = %e, image = %uuid, "converting a ZFS send stream");
            return Err(ApiError::new(503, "StorageIsDown", format!("could not convert the file: {e}")));
        }
    };
    let converted = Converted {
        add: AddFile { compression: "none".into(), sha1: None, dataset_guid: Some(info.toguid.to_string()), content_length: None },
        received,
    };
    check_manifest(&img, add, &info)?;
    // The stream itself is not kept: the disk replaces it.
    let _ = tokio::fs::remove_file(&r.tmp).await;
    tracing::info!(image = %uuid, toguid = info.toguid, volsize = info.volsize, "converted a ZFS send stream into a raw disk");
    Ok(Some(converted))
}

/// What the manifest declares must match the stream: `dataset_guid` (if given) is the
/// snapshot's guid, `image_size` (if given) its volsize in MiB.
fn check_manifest(img: &Image, add: &AddFile, info: &StreamInfo) -> Result<(), ApiError> {
    if let Some(declared) = add.dataset_guid.as_deref().filter(|g| !g.is_empty())
        && declared != info.toguid.to_string()
    {
        return Err(ApiError::invalid_parameter(vec![FieldError::invalid(
            "dataset_guid",
            format!("is {declared}, but the stream is of the snapshot with guid {}", info.toguid),
        )]));
    }
    let mib = info.volsize.div_ceil(1 << 20);
    if let Some(size) = img.image_size()
        && size != mib
    {
        return Err(refused(format!(
            "the manifest's image_size is {size} MiB, but the zvol in the stream has a volsize of {} bytes ({mib} MiB)",
            info.volsize
        )));
    }
    Ok(())
}

/// The stored disk and snapshot guid of an incremental image's origin.
async fn origin_disk(app: &App, origin: &str) -> Result<(PathBuf, u64), ApiError> {
    let id = Uuid::parse_str(origin).map_err(|_| ApiError::validation_422(vec![FieldError::invalid("origin", "must be a UUID")]))?;
    let (o, _) = app.get_image(id, None).await?;
    let not_zfs = || {
        refused(format!(
            "the stream is applied on its origin image {id}, but that image was not imported from a ZFS send stream (its files[0] was not converted from one here)"
        ))
    };
    let file = o.files.first().filter(|f| is_converted(f)).ok_or_else(not_zfs)?;
    let guid = file.dataset_guid.as_deref().and_then(|g| g.parse::<u64>().ok()).ok_or_else(not_zfs)?;
    if file.compression != "none" {
        return Err(not_zfs());
    }
    Ok((app.files.path_of(&file.sha1), guid))
}

/// Whether an image file is a disk this headnode converted from a ZFS send stream (a
/// declared `dataset_guid` alone is not: a remote manifest or an operator can set it on
/// any upload).
fn is_converted(f: &image::ImageFile) -> bool {
    f.source_sha1.is_some() && f.compression == "none" && f.dataset_guid.as_deref().is_some_and(|g| g.parse::<u64>().is_ok())
}

/// The longest decompressed stream accepted for a zvol of `image_size` MiB (if the manifest
/// says): four times the volsize (room for record headers on small blocks and for the
/// snapshots of a `zfs send -I`) plus 64 MiB; else four times the largest disk.
fn max_stream(image_size_mib: Option<u64>) -> u64 {
    let volsize = image_size_mib.map_or(zfs::MAX_DISK, |m| m.saturating_mul(1 << 20).min(zfs::MAX_DISK));
    volsize.saturating_mul(4).saturating_add(64 << 20)
}

#[derive(Debug)]
enum Failure {
    Refused(String),
    Io(io::Error),
}

impl From<io::Error> for Failure {
    fn from(e: io::Error) -> Self {
        Failure::Io(e)
    }
}

/// What the first BEGIN record of a stream says.
#[derive(Debug, PartialEq, Eq)]
struct Begin {
    /// Applies on an origin: an incremental stream, or a compound one (`zfs send -I/-R`,
    /// whose substreams may be incremental).
    needs_origin: bool,
}

/// The decompressed file's BEGIN record (either byte order), if it starts with one.
fn starts_with_begin(c: Compression, path: &Path) -> io::Result<Option<Begin>> {
    let mut head = Head(Vec::new());
    // Stops with an error once HEAD bytes are in: only the head matters.
    let _ = decompress(c, File::open(path)?, &mut head);
    let h = &head.0;
    if h.len() < HEAD || h[..4] != [0; 4] {
        return Ok(None);
    }
    let word = |i: usize, big: bool| {
        let b = [h[i], h[i + 1], h[i + 2], h[i + 3], h[i + 4], h[i + 5], h[i + 6], h[i + 7]];
        if big { u64::from_be_bytes(b) } else { u64::from_le_bytes(b) }
    };
    let big = match word(8, false) {
        m if m == zfs::MAGIC => false,
        m if m == zfs::MAGIC.swap_bytes() => true,
        _ => return Ok(None),
    };
    // drr_versioninfo's header type (2 = compound) and drr_fromguid.
    let compound = word(16, big) & 3 == 2;
    Ok(Some(Begin { needs_origin: compound || word(48, big) != 0 }))
}

/// How much of the decompressed file [`starts_with_begin`] reads.
const HEAD: usize = 56;

/// Collects the first [`HEAD`] bytes written, then refuses more.
struct Head(Vec<u8>);

impl Write for Head {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let room = HEAD - self.0.len();
        if room == 0 {
            return Err(io::Error::other("enough"));
        }
        let n = room.min(buf.len());
        self.0.extend_from_slice(&buf[..n]);
        Ok(n)
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// The temporary files of one conversion (all but `qcow2` removed when it ends).
struct Work {
    /// The origin's disk expanded to raw (an incremental stream on a qcow2 origin).
    base: PathBuf,
    /// The replayed disk.
    raw: PathBuf,
    /// The result: the disk as compact qcow2.
    qcow2: PathBuf,
}

/// Decompresses the upload as it replays it (on the origin's disk, `base` = its stored file
/// and snapshot guid; at most `max_stream` decompressed bytes), and stores the disk as
/// qcow2; describes the qcow2 file.
fn to_disk(
    c: Compression,
    upload: &Path,
    work: &Work,
    base: Option<(PathBuf, u64)>,
    max_stream: u64,
) -> Result<(StreamInfo, Received), Failure> {
    let base = match base {
        None => None,
        Some((stored, guid)) => {
            let mut magic = [0u8; 4];
            let n = File::open(&stored)?.read(&mut magic)?;
            // Origins converted before disks were kept as qcow2 are raw.
            let raw = if n == 4 && &magic == b"QFI\xfb" {
                qcow2_to_raw(&stored, &work.base)?;
                work.base.clone()
            } else {
                stored
            };
            let volsize = std::fs::metadata(&raw)?.len();
            Some((raw, Origin { guid, volsize }))
        }
    };
    let info = replay_upload(c, File::open(upload)?, |stream| {
        zfs::stream_to_raw(stream, base.as_ref().map(|(p, o)| (p.as_path(), *o)), &work.raw, max_stream)
    })?;
    raw_to_qcow2(&work.raw, &work.qcow2)?;
    let received = super::image_files::describe_file(&work.qcow2)?;
    Ok((info, received))
}

/// Runs `replay` on the decompressed `upload`, decompressed on another thread through a
/// pipe (never written out). A decompression error is the reason if there is one (the
/// replay then saw a truncated stream), unless the replay stopped reading first.
fn replay_upload<U: Read + Send + 'static>(
    c: Compression,
    upload: U,
    replay: impl FnOnce(io::PipeReader) -> Result<StreamInfo, ZfsError>,
) -> Result<StreamInfo, Failure> {
    let (reader, writer) = io::pipe()?;
    let decompressing = std::thread::Builder::new().name("zvol-decompress".into()).spawn(move || {
        let mut out = Pipe { w: writer, broken: false };
        let r = decompress(c, upload, &mut out).map(|_| ());
        (r, out.broken)
    })?;
    // The reader is dropped when the replay ends, so a decompressor still writing stops.
    let replayed = replay(reader);
    let (decompressed, replay_stopped_first) =
        decompressing.join().map_err(|_| Failure::Io(io::Error::other("the decompressor panicked")))?;
    match (decompressed, replayed) {
        (_, Err(e)) if replay_stopped_first => Err(zfs_failure(e)),
        (Err(nereid_diskimage::Error::Io(e)), _) => Err(Failure::Io(e)),
        (Err(other), _) => Err(Failure::Refused(format!("the file does not decompress as {}: {other}", c.as_str()))),
        (Ok(()), r) => r.map_err(zfs_failure),
    }
}

fn zfs_failure(e: ZfsError) -> Failure {
    match e {
        ZfsError::Stream { .. } => Failure::Refused(e.to_string()),
        ZfsError::Io(e) => Failure::Io(e),
    }
}

/// The decompressor's end of the pipe, remembering whether the reader went away.
struct Pipe {
    w: io::PipeWriter,
    broken: bool,
}

impl Write for Pipe {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let r = self.w.write(buf);
        if r.as_ref().is_err_and(|e| e.kind() != io::ErrorKind::Interrupted) {
            self.broken = true;
        }
        r
    }
    fn flush(&mut self) -> io::Result<()> {
        self.w.flush()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn head_sniffing_needs_the_begin_magic() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("s");
        let full = Some(Begin { needs_origin: false });
        let incremental = Some(Begin { needs_origin: true });
        let mut begin = vec![0u8; 312];
        begin[8..16].copy_from_slice(&zfs::MAGIC.to_le_bytes());
        begin[16] = 1; // a substream
        std::fs::write(&p, &begin).unwrap();
        assert_eq!(starts_with_begin(Compression::None, &p).unwrap(), full);
        begin[48] = 7; // fromguid
        std::fs::write(&p, &begin).unwrap();
        assert_eq!(starts_with_begin(Compression::None, &p).unwrap(), incremental);
        begin[48] = 0;
        begin[16] = 2; // compound (zfs send -I)
        std::fs::write(&p, &begin).unwrap();
        assert_eq!(starts_with_begin(Compression::None, &p).unwrap(), incremental);
        begin[8..16].copy_from_slice(&zfs::MAGIC.to_be_bytes());
        begin[16] = 0;
        begin[23] = 1;
        std::fs::write(&p, &begin).unwrap();
        assert_eq!(starts_with_begin(Compression::None, &p).unwrap(), full, "byteswapped");
        std::fs::write(&p, vec![0u8; 4096]).unwrap();
        assert_eq!(starts_with_begin(Compression::None, &p).unwrap(), None, "a raw disk of zeros");
        std::fs::write(&p, b"QFI\xfb").unwrap();
        assert_eq!(starts_with_begin(Compression::None, &p).unwrap(), None);
    }

    fn fixture(name: &str) -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../diskimage/tests/fixtures/zfs").join(name)
    }

    fn refusal(r: Result<(StreamInfo, Received), Failure>) -> String {
        match r {
            Err(Failure::Refused(m)) => m,
            Err(Failure::Io(e)) => panic!("not a refusal: {e}"),
            Ok((info, _)) => panic!("accepted: {info:?}"),
        }
    }

    fn work(dir: &Path) -> Work {
        Work { base: dir.join("w.base"), raw: dir.join("w.raw"), qcow2: dir.join("w.qcow2") }
    }

    #[test]
    fn the_stream_is_replayed_as_it_decompresses_and_never_written_out() {
        let dir = tempfile::tempdir().unwrap();
        let w = work(dir.path());
        let (info, received) = to_disk(Compression::Gzip, &fixture("full.zfs.gz"), &w, None, max_stream(Some(4))).unwrap();
        assert_eq!(info.volsize, 4 << 20);
        assert_eq!(received.tmp, w.qcow2);
        let mut left: Vec<_> = std::fs::read_dir(dir.path()).unwrap().map(|e| e.unwrap().file_name()).collect();
        left.sort();
        // Only the replayed raw disk and its qcow2 (convert removes the raw one): no stream.
        assert_eq!(left, ["w.qcow2", "w.raw"]);
    }

    #[test]
    fn a_stream_longer_than_its_zvol_allows_is_refused_where_it_passes_the_cap() {
        let dir = tempfile::tempdir().unwrap();
        let m = refusal(to_disk(Compression::Gzip, &fixture("full.zfs.gz"), &work(dir.path()), None, 100_000));
        assert!(m.contains("beyond 100000 bytes"), "{m}");
        assert!(m.starts_with("ZFS send stream, byte "), "{m}");
    }

    #[test]
    fn a_bomb_after_the_stream_stops_decompressing_and_damage_is_named() {
        let dir = tempfile::tempdir().unwrap();
        let mut stream = Vec::new();
        decompress(Compression::Gzip, File::open(fixture("full.zfs.gz")).unwrap(), &mut stream).unwrap();
        // The stream, then zeros without end: refused once the END record is past, and the
        // rest is neither decompressed nor stored (else this would never return).
        let endless = io::Cursor::new(stream).chain(io::repeat(0));
        let raw = dir.path().join("w.raw");
        let r = replay_upload(Compression::None, endless, |s| zfs::stream_to_raw(s, None, &raw, u64::MAX));
        let m = refusal(r.map(|i| (i, super::super::image_files::describe_file(&fixture("info.txt")).unwrap())));
        assert!(m.contains("unexpected data after the END record"), "{m}");
        // A damaged compression is named as such, not as a truncated stream.
        let cut = dir.path().join("cut.gz");
        let whole = std::fs::read(fixture("full.zfs.gz")).unwrap();
        std::fs::write(&cut, &whole[..whole.len() / 2]).unwrap();
        std::fs::create_dir(dir.path().join("x")).unwrap();
        let m = refusal(to_disk(Compression::Gzip, &cut, &work(&dir.path().join("x")), None, u64::MAX));
        assert!(m.contains("does not decompress as gzip"), "{m}");
    }

    #[test]
    fn stream_caps_follow_the_declared_size() {
        assert_eq!(max_stream(Some(4)), (16 << 20) + (64 << 20));
        assert_eq!(max_stream(None), 4 * zfs::MAX_DISK + (64 << 20));
        assert_eq!(max_stream(Some(u64::MAX)), 4 * zfs::MAX_DISK + (64 << 20));
    }

    #[test]
    fn only_a_file_converted_here_is_an_origin_disk() {
        let mut f: image::ImageFile = serde_json::from_value(serde_json::json!({
            "sha1": "0000000000000000000000000000000000000000", "size": 1, "compression": "none", "dataset_guid": "42"
        }))
        .unwrap();
        assert!(!is_converted(&f), "a declared dataset_guid on an uploaded qcow2 is not enough");
        f.source_sha1 = Some("1111111111111111111111111111111111111111".into());
        assert!(is_converted(&f));
        f.compression = "gzip".into();
        assert!(!is_converted(&f));
    }

    #[test]
    fn manifest_must_agree_with_the_stream() {
        let img: Image = serde_json::from_value(serde_json::json!({
            "v": 2, "uuid": Uuid::nil(), "owner": Uuid::nil(), "name": "n", "version": "1", "state": "unactivated",
            "disabled": false, "public": false, "type": "zvol", "os": "linux", "files": [], "image_size": 4
        }))
        .unwrap();
        let info = StreamInfo {
            toguid: 42,
            fromguid: 0,
            toname: "p/v@a".into(),
            volsize: 4 << 20,
            volblocksize: Some(8192),
            byteswapped: false,
            substreams: 1,
            stream_size: 1000,
        };
        let add =
            |g: Option<&str>| AddFile { compression: "gzip".into(), sha1: None, dataset_guid: g.map(String::from), content_length: None };
        assert!(check_manifest(&img, &add(None), &info).is_ok());
        assert!(check_manifest(&img, &add(Some("42")), &info).is_ok());
        let e = check_manifest(&img, &add(Some("43")), &info).unwrap_err();
        assert_eq!((e.status, e.errors[0].field.as_str()), (422, "dataset_guid"));
        let e = check_manifest(&img, &add(None), &StreamInfo { volsize: 8 << 20, ..info }).unwrap_err();
        assert!(e.message.contains("image_size is 4 MiB"), "{}", e.message);
    }
}
