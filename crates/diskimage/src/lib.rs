//! Disk image files as operators hand them to Nereid, and as compute nodes unpack them.
//!
//! A disk image file is a raw or qcow2 disk, possibly compressed with gzip, bzip2, xz or
//! zstd. [`inspect`] reads one in a single pass and reports what IMGAPI's manifest needs:
//! the compression, the disk format, the virtual size (→ `image_size`), and the SHA-1 and
//! size of the file as it will be stored. [`decompress`] unpacks one into any writer.

use std::fs::File;
use std::io::{self, BufRead, BufReader, Read, Write};
use std::path::Path;

use sha1::{Digest, Sha1};

pub mod zfs;
pub mod zfs_qcow2;

/// How a file is compressed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Compression {
    None,
    Gzip,
    Bzip2,
    Xz,
    Zstd,
}

impl Compression {
    /// The IMGAPI name (`none`, `gzip`, `bzip2`, `xz`, `zstd`).
    pub fn as_str(self) -> &'static str {
        match self {
            Compression::None => "none",
            Compression::Gzip => "gzip",
            Compression::Bzip2 => "bzip2",
            Compression::Xz => "xz",
            Compression::Zstd => "zstd",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "none" => Compression::None,
            "gzip" => Compression::Gzip,
            "bzip2" => Compression::Bzip2,
            "xz" => Compression::Xz,
            "zstd" => Compression::Zstd,
            _ => return None,
        })
    }

    /// From a file's first bytes.
    pub fn sniff(head: &[u8]) -> Self {
        Self::parse(nereid_types::image::sniff_compression(head)).unwrap_or(Compression::None)
    }
}

/// The disk format inside the (decompressed) file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    Raw,
    Qcow2,
}

impl Format {
    pub fn as_str(self) -> &'static str {
        match self {
            Format::Raw => "raw",
            Format::Qcow2 => "qcow2",
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{0}")]
    Io(#[from] io::Error),
    #[error("the {0} stream is damaged: {1}")]
    Corrupt(&'static str, String),
    #[error("{0}")]
    Unsupported(String),
}

/// What [`inspect`] found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Inspection {
    pub compression: Compression,
    pub format: Format,
    /// Size of the disk the guest sees, in bytes.
    pub virtual_size: u64,
    /// Size of the file as stored (compressed), in bytes.
    pub file_size: u64,
    /// SHA-1 of the file as stored, hex.
    pub sha1: String,
}

impl Inspection {
    /// IMGAPI's `image_size`: the virtual size in MiB, rounded up.
    pub fn image_size_mib(&self) -> u64 {
        self.virtual_size.div_ceil(1 << 20)
    }
}

/// What a qcow2 header says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Qcow2 {
    pub version: u32,
    pub virtual_size: u64,
}

const QCOW2_MAGIC: &[u8] = b"QFI\xfb";

/// Reads a qcow2 header; `Ok(None)` when `head` is not qcow2, an error for qcow2 files
/// Nereid cannot use as a self-contained image.
pub fn qcow2_header(head: &[u8]) -> Result<Option<Qcow2>, Error> {
    if !head.starts_with(QCOW2_MAGIC) {
        return Ok(None);
    }
    if head.len() < 48 {
        return Err(Error::Corrupt("qcow2", "the header is truncated".into()));
    }
    let be32 = |o: usize| u32::from_be_bytes([head[o], head[o + 1], head[o + 2], head[o + 3]]);
    let be64 = |o: usize| (u64::from(be32(o)) << 32) | u64::from(be32(o + 4));
    let version = be32(4);
    if version != 2 && version != 3 {
        return Err(Error::Unsupported(format!("qcow2 version {version} is not supported (only 2 and 3)")));
    }
    if be64(8) != 0 {
        return Err(Error::Unsupported(
            "this qcow2 has a backing file, so it is not a complete disk: flatten it first (qemu-img convert -O qcow2 IN OUT)".into(),
        ));
    }
    if be32(32) != 0 {
        return Err(Error::Unsupported("this qcow2 is encrypted; images must not be".into()));
    }
    Ok(Some(Qcow2 { version, virtual_size: be64(24) }))
}

/// Refuses disk formats that look like something other than raw or qcow2.
fn check_not_other_format(head: &[u8]) -> Result<(), Error> {
    let other = if head.starts_with(b"KDMV") || head.starts_with(b"# Disk DescriptorFile") {
        Some("VMDK")
    } else if head.starts_with(b"vhdxfile") {
        Some("VHDX")
    } else if head.starts_with(b"conectix") {
        Some("VHD")
    } else if head.len() >= 0x44 && head[0x40..0x44] == [0x7f, 0x10, 0xda, 0xbe] {
        Some("VDI")
    } else if head.len() >= 0x8006 && &head[0x8001..0x8006] == b"CD001" {
        Some("ISO 9660 (an installer, not a disk: attach it as a cdrom disk instead)")
    } else {
        None
    };
    match other {
        Some(f) => Err(Error::Unsupported(format!(
            "this looks like a {f} image; images must be raw or qcow2 disks (convert with qemu-img convert -O qcow2)"
        ))),
        None => Ok(()),
    }
}

/// Decompresses `r` into `w`; returns the number of bytes written.
pub fn decompress<R: Read, W: Write>(c: Compression, r: R, w: &mut W) -> Result<u64, Error> {
    let mut r = BufReader::with_capacity(256 * 1024, r);
    match c {
        Compression::None => Ok(io::copy(&mut r, w)?),
        Compression::Gzip => copy_decoded(flate2::bufread::MultiGzDecoder::new(r), w, "gzip"),
        Compression::Bzip2 => copy_decoded(bzip2::bufread::MultiBzDecoder::new(r), w, "bzip2"),
        Compression::Zstd => zstd_frames(r, w),
        Compression::Xz => {
            let mut counter = Counting { inner: w, n: 0 };
            lzma_rs::xz_decompress(&mut r, &mut counter).map_err(|e| match e {
                lzma_rs::error::Error::IoError(io) => Error::Io(io),
                other => Error::Corrupt("xz", other.to_string()),
            })?;
            Ok(counter.n)
        }
    }
}

fn copy_decoded<D: Read, W: Write>(mut d: D, w: &mut W, what: &'static str) -> Result<u64, Error> {
    let mut buf = vec![0u8; 256 * 1024];
    let mut n = 0u64;
    loop {
        let got = match d.read(&mut buf) {
            Ok(0) => return Ok(n),
            Ok(got) => got,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e)
                if e.kind() == io::ErrorKind::InvalidInput
                    || e.kind() == io::ErrorKind::InvalidData
                    || e.kind() == io::ErrorKind::UnexpectedEof =>
            {
                return Err(Error::Corrupt(what, e.to_string()));
            }
            Err(e) => return Err(Error::Io(e)),
        };
        w.write_all(&buf[..got])?;
        n += got as u64;
    }
}

/// zstd files may hold several frames back to back (`zstd` does so for large or appended inputs).
fn zstd_frames<R: BufRead, W: Write>(mut r: R, w: &mut W) -> Result<u64, Error> {
    let mut n = 0;
    loop {
        if r.fill_buf()?.is_empty() {
            return Ok(n);
        }
        let dec = ruzstd::decoding::StreamingDecoder::new(&mut r).map_err(|e| Error::Corrupt("zstd", e.to_string()))?;
        n += copy_decoded(dec, w, "zstd")?;
    }
}

/// A writer that counts and forwards.
struct Counting<'a, W: Write> {
    inner: &'a mut W,
    n: u64,
}

impl<W: Write> Write for Counting<'_, W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.n += n as u64;
        Ok(n)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

/// A reader that hashes, counts and reports what passes through it.
struct Hashing<'a, R: Read> {
    inner: R,
    sha1: Sha1,
    n: u64,
    progress: &'a mut dyn FnMut(u64),
}

impl<R: Read> Read for Hashing<'_, R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let got = self.inner.read(buf)?;
        self.sha1.update(&buf[..got]);
        self.n += got as u64;
        (self.progress)(self.n);
        Ok(got)
    }
}

/// Keeps the first bytes of the decompressed disk and counts the rest; stops the
/// decompressor (with [`Enough`]) once a qcow2 header shows the size is known.
struct Sink {
    head: Vec<u8>,
    n: u64,
}

const HEAD: usize = 0x8006;

#[derive(Debug)]
struct Enough;
impl std::fmt::Display for Enough {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "header read")
    }
}
impl std::error::Error for Enough {}

impl Write for Sink {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        if self.head.len() < HEAD {
            let take = buf.len().min(HEAD - self.head.len());
            self.head.extend_from_slice(&buf[..take]);
            if self.head.len() >= 48 && self.head.starts_with(QCOW2_MAGIC) {
                self.n += take as u64;
                return Err(io::Error::other(Enough));
            }
        }
        self.n += buf.len() as u64;
        Ok(buf.len())
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

fn is_enough(e: &Error) -> bool {
    match e {
        Error::Io(io) => io.get_ref().is_some_and(|inner| inner.is::<Enough>()),
        Error::Corrupt(_, m) => m.contains("header read"),
        Error::Unsupported(_) => false,
    }
}

/// Reads a disk image file once: compression (from its bytes), format, virtual size,
/// and the SHA-1 and size of the file itself. `progress` is called with bytes read so far.
pub fn inspect(path: &Path, progress: &mut dyn FnMut(u64)) -> Result<Inspection, Error> {
    let file = File::open(path)?;
    let file_size = file.metadata()?.len();
    if file_size == 0 {
        return Err(Error::Unsupported(format!("{} is empty", path.display())));
    }
    let mut hashing = Hashing { inner: BufReader::with_capacity(1 << 20, file), sha1: Sha1::new(), n: 0, progress };
    let mut first = [0u8; 16];
    let got = read_up_to(&mut hashing, &mut first)?;
    let compression = Compression::sniff(&first[..got]);
    let mut sink = Sink { head: Vec::new(), n: 0 };
    let result = decompress(compression, io::Cursor::new(first[..got].to_vec()).chain(&mut hashing), &mut sink);
    match result {
        Ok(_) => {}
        Err(e) if is_enough(&e) => {}
        Err(e) => return Err(e),
    }
    // Hash whatever the decompressor did not need to read.
    io::copy(&mut hashing, &mut io::sink())?;
    let sha1 = hex::encode(hashing.sha1.finalize_reset());
    let (format, virtual_size) = match qcow2_header(&sink.head)? {
        Some(q) => (Format::Qcow2, q.virtual_size),
        None => {
            check_not_other_format(&sink.head)?;
            (Format::Raw, sink.n)
        }
    };
    if virtual_size == 0 {
        return Err(Error::Unsupported("the disk is empty (virtual size 0)".into()));
    }
    Ok(Inspection { compression, format, virtual_size, file_size, sha1 })
}

fn read_up_to<R: Read>(r: &mut R, buf: &mut [u8]) -> io::Result<usize> {
    let mut got = 0;
    while got < buf.len() {
        match r.read(&mut buf[got..])? {
            0 => break,
            n => got += n,
        }
    }
    Ok(got)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn qcow2_bytes(size: u64) -> Vec<u8> {
        let mut h = vec![0u8; 512];
        h[..4].copy_from_slice(QCOW2_MAGIC);
        h[4..8].copy_from_slice(&3u32.to_be_bytes());
        h[24..32].copy_from_slice(&size.to_be_bytes());
        h.extend(std::iter::repeat_n(7u8, 100_000));
        h
    }

    fn raw_bytes(n: usize) -> Vec<u8> {
        (0..n).map(|i| (i * 31 % 251) as u8).collect()
    }

    fn compress(c: Compression, data: &[u8]) -> Vec<u8> {
        match c {
            Compression::None => data.to_vec(),
            Compression::Gzip => {
                let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
                e.write_all(data).unwrap();
                e.finish().unwrap()
            }
            Compression::Bzip2 => {
                let mut e = bzip2::write::BzEncoder::new(Vec::new(), bzip2::Compression::fast());
                e.write_all(data).unwrap();
                e.finish().unwrap()
            }
            Compression::Xz => {
                let mut out = Vec::new();
                lzma_rs::xz_compress(&mut io::Cursor::new(data), &mut out).unwrap();
                out
            }
            Compression::Zstd => ruzstd::encoding::compress_to_vec(data, ruzstd::encoding::CompressionLevel::Fastest),
        }
    }

    fn inspect_bytes(bytes: &[u8]) -> Result<Inspection, Error> {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("disk");
        std::fs::write(&p, bytes).unwrap();
        inspect(&p, &mut |_| {})
    }

    const ALL: [Compression; 5] = [Compression::None, Compression::Gzip, Compression::Bzip2, Compression::Xz, Compression::Zstd];

    #[test]
    fn raw_in_every_compression() {
        let raw = raw_bytes(3 << 20 | 17);
        for c in ALL {
            let file = compress(c, &raw);
            let i = inspect_bytes(&file).unwrap();
            assert_eq!((i.compression, i.format, i.virtual_size), (c, Format::Raw, raw.len() as u64), "{c:?}");
            assert_eq!(i.file_size, file.len() as u64);
            assert_eq!(i.sha1, hex::encode(Sha1::digest(&file)));
            assert_eq!(i.image_size_mib(), 4);
            let mut out = Vec::new();
            assert_eq!(decompress(c, io::Cursor::new(&file), &mut out).unwrap(), raw.len() as u64);
            assert!(out == raw, "{c:?} round trip");
        }
    }

    #[test]
    fn qcow2_in_every_compression_reads_the_header_size() {
        let q = qcow2_bytes(10 << 30);
        for c in ALL {
            let file = compress(c, &q);
            let i = inspect_bytes(&file).unwrap();
            assert_eq!((i.format, i.virtual_size, i.image_size_mib()), (Format::Qcow2, 10 << 30, 10240), "{c:?}");
            assert_eq!(i.sha1, hex::encode(Sha1::digest(&file)), "{c:?}: the whole file is hashed");
        }
    }

    #[test]
    fn refuses_unusable_inputs() {
        let mut backing = qcow2_bytes(1 << 30);
        backing[15] = 1;
        assert!(inspect_bytes(&backing).unwrap_err().to_string().contains("backing file"));
        let mut vmdk = b"KDMV".to_vec();
        vmdk.extend(raw_bytes(4096));
        assert!(inspect_bytes(&vmdk).unwrap_err().to_string().contains("VMDK"));
        assert!(inspect_bytes(b"").unwrap_err().to_string().contains("empty"));
        let mut broken = compress(Compression::Gzip, &raw_bytes(100_000));
        broken.truncate(broken.len() / 2);
        let e = inspect_bytes(&broken).unwrap_err();
        assert!(matches!(e, Error::Corrupt("gzip", _) | Error::Io(_)), "{e:?}");
    }

    #[test]
    fn zstd_multi_frame() {
        let a = raw_bytes(5000);
        let mut file = compress(Compression::Zstd, &a);
        file.extend(compress(Compression::Zstd, &a));
        let mut out = Vec::new();
        assert_eq!(decompress(Compression::Zstd, io::Cursor::new(file), &mut out).unwrap(), 10_000);
    }
}
