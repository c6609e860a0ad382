//! Files that must survive a crash of the host: written whole to a spare file, flushed to
//! disk, swapped with the old one in one atomic rename, and the directory flushed — so
//! after a power cut the file holds either the old bytes or the new ones, never nothing.
//!
//! The spare (`.NAME.tmp` beside the file) is kept: the swap (`renameat2` with
//! `RENAME_EXCHANGE`) leaves the old bytes in it, and the next write overwrites them in
//! place. A file rewritten on every change of a VM's state thus costs no new inode per
//! write: creating one per write (write-new-then-rename) made ext4 without a journal scan
//! its recently deleted inodes on every create, a quarter of an agent's CPU time under a
//! burst of provisions. The spare holds stale bytes only; readers never look at it, and
//! [`remove`] deletes it with its file. Where the filesystem cannot swap, the spare is
//! renamed over the file as before.
//!
//! Writes of one path are serialized here (two at once would write the same spare). A
//! reader that keeps the file open across two writes may see the second land in what it
//! holds; the agent reads these files only when it starts.

use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

/// Replaces `path` with `bytes` durably (write the spare, fsync, swap, fsync the directory).
pub fn write_atomic(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    replace(path, bytes, 0o666, true)
}

/// [`write_atomic`] for a file only its owner may read (mode 0600 from the start).
pub fn write_atomic_private(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    replace(path, bytes, 0o600, true)
}

/// Replaces `path` with `bytes` without flushing anything to disk: whole after a crash of
/// the process, but a power cut may leave it old, new or damaged (the simulated
/// hypervisor's state, which need not survive one).
pub fn write_swapped(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    replace(path, bytes, 0o666, false)
}

/// Removes `path` and its spare (a missing file is not an error).
pub fn remove(path: &Path) -> std::io::Result<()> {
    let _one_at_a_time = stripe(path).lock().unwrap_or_else(|p| p.into_inner());
    let _ = std::fs::remove_file(spare(path));
    match std::fs::remove_file(path) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e),
        _ => Ok(()),
    }
}

/// The spare file kept beside `path`.
fn spare(path: &Path) -> PathBuf {
    let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    path.parent().unwrap_or(Path::new(".")).join(format!(".{name}.tmp"))
}

/// One lock per stripe of paths: writes of one path never overlap, writes of different
/// VMs' files (and their fsyncs) mostly do.
static STRIPES: [std::sync::Mutex<()>; 64] = [const { std::sync::Mutex::new(()) }; 64];

fn stripe(path: &Path) -> &'static std::sync::Mutex<()> {
    use std::hash::{BuildHasher, BuildHasherDefault, DefaultHasher};
    let h = BuildHasherDefault::<DefaultHasher>::default().hash_one(path);
    &STRIPES[(h % STRIPES.len() as u64) as usize]
}

fn replace(path: &Path, bytes: &[u8], mode: u32, durable: bool) -> std::io::Result<()> {
    use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
    let dir = path.parent().unwrap_or(Path::new("."));
    let tmp = spare(path);
    let _one_at_a_time = stripe(path).lock().unwrap_or_else(|p| p.into_inner());
    let result = (|| {
        // The spare is overwritten in place (created only when there is none).
        let f = std::fs::OpenOptions::new().write(true).create(true).truncate(false).mode(mode).open(&tmp)?;
        if mode & 0o077 == 0 {
            // A private file's spare stays private whatever made it.
            f.set_permissions(std::fs::Permissions::from_mode(mode))?;
        }
        f.write_all_at(bytes, 0)?;
        f.set_len(bytes.len() as u64)?;
        if durable {
            f.sync_all()?;
        }
        drop(f);
        swap_in(&tmp, path)?;
        if durable {
            std::fs::File::open(dir)?.sync_all()?;
        }
        Ok(())
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}

/// Puts `tmp` in `path`'s place atomically: swapped with the old file (which becomes the
/// spare), or renamed over it when there is none or the filesystem cannot swap.
fn swap_in(tmp: &Path, path: &Path) -> std::io::Result<()> {
    use rustix::fs::{CWD, RenameFlags, renameat_with};
    use rustix::io::Errno;
    match renameat_with(CWD, tmp, CWD, path, RenameFlags::EXCHANGE) {
        Ok(()) => Ok(()),
        // No file yet, or a filesystem or sandbox that cannot swap.
        Err(e) if [Errno::NOENT, Errno::INVAL, Errno::NOSYS, Errno::OPNOTSUPP, Errno::PERM].contains(&e) => std::fs::rename(tmp, path),
        Err(e) => Err(e.into()),
    }
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::MetadataExt;

    use super::*;

    fn names(d: &Path) -> Vec<String> {
        let mut n: Vec<String> =
            std::fs::read_dir(d).into_iter().flatten().flatten().map(|e| e.file_name().to_string_lossy().into_owned()).collect();
        n.sort();
        n
    }

    #[test]
    fn replaces_the_file_whole_and_keeps_only_its_spare() {
        let d = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let p = d.path().join("state.json");
        write_atomic(&p, b"first, the longest of them").unwrap_or_else(|e| panic!("{e}"));
        write_atomic(&p, b"second, longer").unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(std::fs::read(&p).unwrap_or_default(), b"second, longer", "no tail of the longer old bytes");
        assert_eq!(names(d.path()), [".state.json.tmp", "state.json"], "nothing but the spare is left");
        // A write that cannot happen leaves the old file as it was.
        let missing = d.path().join("no-such-dir").join("x");
        assert!(write_atomic(&missing, b"y").is_err());
        assert_eq!(std::fs::read(&p).unwrap_or_default(), b"second, longer");
        remove(&p).unwrap_or_else(|e| panic!("{e}"));
        assert!(names(d.path()).is_empty(), "{:?}", names(d.path()));
        remove(&p).unwrap_or_else(|e| panic!("removing what is gone: {e}"));
    }

    #[test]
    fn rewrites_reuse_two_inodes_instead_of_making_one_per_write() {
        let d = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let p = d.path().join("vm.json");
        let ino = |p: &Path| std::fs::metadata(p).map(|m| m.ino()).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
        write_swapped(&p, b"0").unwrap_or_else(|e| panic!("{e}"));
        write_swapped(&p, b"1").unwrap_or_else(|e| panic!("{e}"));
        let pair = [ino(&p), ino(&spare(&p))];
        for i in 2..6u8 {
            write_swapped(&p, &[b'0' + i]).unwrap_or_else(|e| panic!("{e}"));
            let now = [ino(&p), ino(&spare(&p))];
            assert!(now == pair || now == [pair[1], pair[0]], "write {i}: inodes {now:?}, not the pair {pair:?}");
            assert_eq!(std::fs::read(&p).unwrap_or_default(), [b'0' + i]);
        }
    }

    #[test]
    fn writes_of_one_path_from_many_threads_each_land_whole() {
        let d = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let p = d.path().join("vm.json");
        // Each thread writes its own byte, at its own length: a torn write mixes them.
        let payload = |t: u8| vec![b'a' + t; 100 + 37 * t as usize];
        std::thread::scope(|s| {
            for t in 0..8u8 {
                let p = &p;
                s.spawn(move || {
                    for _ in 0..50 {
                        write_swapped(p, &payload(t)).unwrap_or_else(|e| panic!("{e}"));
                    }
                });
            }
        });
        for f in [p.clone(), spare(&p)] {
            let got = std::fs::read(&f).unwrap_or_default();
            assert!((0..8).any(|t| got == payload(t)), "{} holds {} mixed bytes", f.display(), got.len());
        }
    }

    #[test]
    fn a_private_file_and_its_spare_stay_private() {
        use std::os::unix::fs::PermissionsExt;
        let d = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let p = d.path().join("secret.json");
        for b in [&b"a"[..], b"b", b"c"] {
            write_atomic_private(&p, b).unwrap_or_else(|e| panic!("{e}"));
        }
        for f in [p.clone(), spare(&p)] {
            let mode = std::fs::metadata(&f).map(|m| m.permissions().mode() & 0o777).unwrap_or_default();
            assert_eq!(mode, 0o600, "{}", f.display());
        }
    }
}
