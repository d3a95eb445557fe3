//! Durable file writes: every file cacertd writes goes to a temporary file in the same folder,
//! is fsynced, then renamed over the target, and the folder is fsynced — a crash leaves either
//! the old file or the new one, never a torn one. Key-bearing files are 0600 from creation.

use std::fs::{self, File, Permissions};
use std::io::{self, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use tempfile::NamedTempFile;

/// Who may read a file.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// 0600: private keys and anything embedding one.
    Secret,
    /// 0644: certificates.
    Public,
}

impl Mode {
    fn bits(self) -> u32 {
        match self {
            Mode::Secret => 0o600,
            Mode::Public => 0o644,
        }
    }
}

/// An I/O error with the path it happened on.
#[derive(Debug, thiserror::Error)]
#[error("{action} {path}: {source}")]
pub struct FsError {
    pub action: &'static str,
    pub path: PathBuf,
    #[source]
    pub source: io::Error,
}

pub(crate) fn fs_err(action: &'static str, path: &Path) -> impl FnOnce(io::Error) -> FsError {
    let path = path.to_path_buf();
    move |source| FsError {
        action,
        path,
        source,
    }
}

/// Creates a directory (and parents) readable by the owner only.
pub fn create_private_dir(dir: &Path) -> Result<(), FsError> {
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(fs_err("cannot create directory", dir))
}

/// A file written and fsynced under a temporary name, not yet in place.
pub struct StagedFile {
    temp: NamedTempFile,
    dest: PathBuf,
}

impl StagedFile {
    /// Writes `bytes` to a temporary file next to `dest`, and fsyncs it.
    pub fn new(dest: &Path, bytes: &[u8], mode: Mode) -> Result<Self, FsError> {
        let staged = Self::unsynced(dest, bytes, mode)?;
        staged.sync()?;
        Ok(staged)
    }

    /// Writes `bytes` to a temporary file next to `dest`, not yet fsynced: for batches that
    /// write many files first and then [`StagedFile::sync`] each before any is renamed (the
    /// file system then commits them together).
    pub fn unsynced(dest: &Path, bytes: &[u8], mode: Mode) -> Result<Self, FsError> {
        let dir = parent_of(dest);
        let mut temp = tempfile::Builder::new()
            .prefix(".cacertd-")
            .tempfile_in(dir)
            .map_err(fs_err("cannot create a temporary file in", dir))?;
        // tempfile creates 0600; widen only for public files, before any byte is written.
        temp.as_file()
            .set_permissions(Permissions::from_mode(mode.bits()))
            .map_err(fs_err("cannot set permissions on", temp.path()))?;
        temp.write_all(bytes)
            .map_err(fs_err("cannot write", temp.path()))?;
        Ok(StagedFile {
            temp,
            dest: dest.to_path_buf(),
        })
    }

    /// Flushes the file's contents to disk.
    pub fn sync(&self) -> Result<(), FsError> {
        self.temp
            .as_file()
            .sync_all()
            .map_err(fs_err("cannot fsync", self.temp.path()))
    }

    /// The file, as a second descriptor of the same open file (an fsync through it is one
    /// through this), and its temporary name: for fsyncing it on another thread.
    pub fn handle(&self) -> Result<(File, PathBuf), FsError> {
        let file = self
            .temp
            .as_file()
            .try_clone()
            .map_err(fs_err("cannot fsync", self.temp.path()))?;
        Ok((file, self.temp.path().to_path_buf()))
    }

    /// Renames the file into place, replacing whatever is there.
    pub fn commit(self) -> Result<(), FsError> {
        self.place(false)
    }

    /// Moves the file into place only if nothing exists there yet (link + unlink, atomic
    /// against a concurrent writer of the same name).
    pub fn commit_new(self) -> Result<(), FsError> {
        self.place(true)
    }

    fn place(self, new_only: bool) -> Result<(), FsError> {
        let dest = self.dest;
        let (placed, failure) = if new_only {
            (self.temp.persist_noclobber(&dest), "refusing to overwrite")
        } else {
            (self.temp.persist(&dest), "cannot rename into place")
        };
        placed.map_err(|e| fs_err(failure, &dest)(e.error))?;
        Ok(())
    }
}

/// Atomically replaces (or creates) one file.
pub fn write_atomic(dest: &Path, bytes: &[u8], mode: Mode) -> Result<(), FsError> {
    StagedFile::new(dest, bytes, mode)?.commit()?;
    sync_dir(parent_of(dest))
}

/// Flushes a directory's entries, so renames in it survive a crash.
pub fn sync_dir(dir: &Path) -> Result<(), FsError> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(fs_err("cannot fsync directory", dir))
}

/// An exclusive advisory lock on `<state_dir>/.lock`, held while a command changes anything:
/// two runs at once would each issue, and the second write would silently replace the first.
/// Released when dropped (or when the process dies).
#[derive(Debug)]
pub struct StateLock {
    _file: File,
}

impl StateLock {
    pub fn acquire(state_dir: &Path) -> Result<Self, FsError> {
        create_private_dir(state_dir)?;
        let path = state_dir.join(".lock");
        let file = fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .mode(0o600)
            .open(&path)
            .map_err(fs_err("cannot open lock file", &path))?;
        match file.try_lock() {
            Ok(()) => Ok(StateLock { _file: file }),
            Err(fs::TryLockError::WouldBlock) => Err(FsError {
                action: "another cacertd run holds the lock",
                path,
                source: io::Error::new(io::ErrorKind::WouldBlock, "try again when it has finished"),
            }),
            Err(fs::TryLockError::Error(e)) => Err(fs_err("cannot lock", &path)(e)),
        }
    }
}

/// Creates a new directory (0700) that did not exist before: the parent must exist, and an
/// existing directory of that name is an error, so two writers never share one.
pub fn create_new_private_dir(dir: &Path) -> io::Result<()> {
    fs::DirBuilder::new().mode(0o700).create(dir)
}

/// The most cacertd reads of one PEM file (certificates, keys, bundles).
pub const MAX_PEM_FILE: u64 = crate::pki::MAX_PEM_TEXT as u64;

/// Reads a PEM file if it exists: a regular file (symlinks followed) of at most
/// [`MAX_PEM_FILE`] bytes.
pub fn read_optional(path: &Path) -> Result<Option<Vec<u8>>, FsError> {
    read_optional_up_to(path, MAX_PEM_FILE)
}

/// Reads a file if it exists, refusing anything but a regular file (a device, a pipe, a
/// folder: `/dev/zero` never ends) and anything longer than `max` bytes, without reading
/// more than that.
pub fn read_optional_up_to(path: &Path, max: u64) -> Result<Option<Vec<u8>>, FsError> {
    use std::io::Read;
    let refuse = |why: String| fs_err("refusing to read", path)(io::Error::other(why));
    let file = fs::OpenOptions::new()
        .read(true)
        // Opening a pipe would wait for a writer.
        .custom_flags(rustix::fs::OFlags::NONBLOCK.bits() as i32)
        .open(path);
    let file = match file {
        Ok(f) => f,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(fs_err("cannot read", path)(e)),
    };
    let meta = file.metadata().map_err(fs_err("cannot read", path))?;
    if !meta.is_file() {
        return Err(refuse(format!(
            "it is {}, not a regular file",
            describe_file_type(meta.file_type())
        )));
    }
    let mut bytes = Vec::with_capacity(meta.len().min(max) as usize);
    file.take(max + 1)
        .read_to_end(&mut bytes)
        .map_err(fs_err("cannot read", path))?;
    if bytes.len() as u64 > max {
        return Err(refuse(format!(
            "it is longer than the {} KiB cacertd reads from such a file",
            max / 1024
        )));
    }
    Ok(Some(bytes))
}

/// Reads a PEM file that must exist, as [`read_optional`] does.
pub fn read_pem(path: &Path) -> Result<Vec<u8>, FsError> {
    read_optional(path)?
        .ok_or_else(|| fs_err("cannot read", path)(io::Error::from(io::ErrorKind::NotFound)))
}

fn describe_file_type(t: fs::FileType) -> &'static str {
    use std::os::unix::fs::FileTypeExt;
    if t.is_dir() {
        "a folder"
    } else if t.is_char_device() || t.is_block_device() {
        "a device"
    } else if t.is_fifo() {
        "a pipe"
    } else if t.is_socket() {
        "a socket"
    } else {
        "something else"
    }
}

fn parent_of(path: &Path) -> &Path {
    match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mode_of(p: &Path) -> u32 {
        fs::metadata(p).unwrap().permissions().mode() & 0o777
    }

    #[test]
    fn secret_files_are_0600_and_public_0644() {
        let dir = tempfile::tempdir().unwrap();
        let k = dir.path().join("k.pem");
        let c = dir.path().join("c.pem");
        write_atomic(&k, b"key", Mode::Secret).unwrap();
        write_atomic(&c, b"cert", Mode::Public).unwrap();
        assert_eq!(mode_of(&k), 0o600);
        assert_eq!(mode_of(&c), 0o644);
        write_atomic(&k, b"key2", Mode::Secret).unwrap();
        assert_eq!(fs::read(&k).unwrap(), b"key2");
        assert_eq!(mode_of(&k), 0o600);
        // No temporary files are left behind.
        assert_eq!(fs::read_dir(dir.path()).unwrap().count(), 2);
    }

    #[test]
    fn commit_new_never_overwrites() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("root-key.pem");
        StagedFile::new(&p, b"first", Mode::Secret)
            .unwrap()
            .commit_new()
            .unwrap();
        let err = StagedFile::new(&p, b"second", Mode::Secret)
            .unwrap()
            .commit_new()
            .unwrap_err();
        assert!(err.to_string().contains("refusing to overwrite"));
        assert_eq!(fs::read(&p).unwrap(), b"first");
    }

    #[test]
    fn the_state_lock_is_exclusive() {
        let dir = tempfile::tempdir().unwrap();
        let first = StateLock::acquire(dir.path()).unwrap();
        let err = StateLock::acquire(dir.path()).unwrap_err();
        assert!(err.to_string().contains("another cacertd run"), "{err}");
        drop(first);
        StateLock::acquire(dir.path()).unwrap();
    }

    #[test]
    fn only_regular_files_of_bounded_size_are_read() {
        let dir = tempfile::tempdir().unwrap();
        let zero = dir.path().join("ca-cert.pem");
        std::os::unix::fs::symlink("/dev/zero", &zero).unwrap();
        let e = read_optional(&zero).unwrap_err().to_string();
        assert!(e.contains("a device, not a regular file"), "{e}");
        let e = read_optional(dir.path()).unwrap_err().to_string();
        assert!(e.contains("a folder"), "{e}");
        let big = dir.path().join("big.pem");
        fs::write(&big, vec![b'A'; MAX_PEM_FILE as usize + 1]).unwrap();
        let e = read_optional(&big).unwrap_err().to_string();
        assert!(e.contains("longer than the 1024 KiB"), "{e}");
        fs::write(&big, vec![b'A'; MAX_PEM_FILE as usize]).unwrap();
        assert_eq!(read_optional(&big).unwrap().unwrap().len(), 1 << 20);
        assert_eq!(read_optional(&dir.path().join("none")).unwrap(), None);
    }

    #[test]
    fn private_dirs_are_0700() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path().join("a/b");
        create_private_dir(&d).unwrap();
        assert_eq!(mode_of(&d), 0o700);
    }
}
