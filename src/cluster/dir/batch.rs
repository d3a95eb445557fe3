//! Writes to directory targets, made durable in batches.
//!
//! Written one at a time, every file costs the file system a commit of its own: seven or more
//! fsyncs per cluster, one after another, which is where issuing to many directory targets
//! spent its time. Here each write goes through the steps a single write goes through, the
//! first on its own and the rest together with every other write waiting at the time:
//! 1. the write's new files, and copies of the files they replace, are written under
//!    temporary names (keys 0600 from creation), on the blocking pool, while the writes before
//!    it are being made durable;
//! 2. one writer thread takes every staged write waiting as one batch and fsyncs every one of
//!    their files, many at once — fsyncs issued together share the device's flushes;
//! 3. the copies are renamed into their fresh backup folders, and those folders fsynced: a
//!    backup is durable before what it keeps is replaced;
//! 4. the new files are renamed into place, and the target folders fsynced.
//!
//! Durability is that of one write at a time: every file is fsynced before it is renamed,
//! every rename's folder is fsynced, and a crash leaves each file old or new, never torn, with
//! the previous set safe in its backup (a set mixing old and new files fails validation and is
//! re-issued). A folder has one write under way at a time (a second write backs up what the
//! first wrote, so it waits for it). Batches grow with load and a lone write waits for
//! nobody. A write that fails at any step fails alone; the others of its batch go on.

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, OnceLock, PoisonError, mpsc};

use tokio::sync::{Notify, OwnedSemaphorePermit, Semaphore, oneshot};
use zeroize::Zeroizing;

use super::{BACKUP_STAMP, CA_CRT, DirTarget, MANIFEST, TLS_CRT, TLS_KEY, fsyncs};
use crate::cluster::{TargetError, WriteMeta, WriteReport, cacerts_secret_yaml};
use crate::fsutil::{
    FsError, Mode, StagedFile, create_new_private_dir, create_private_dir, fs_err, read_optional,
};
use crate::pki::CaCertsFiles;

/// At most this many writes staged and not yet done: each holds its temporary files open (up
/// to a dozen descriptors), so this bounds the descriptors a large run holds at once.
const STAGED_AT_ONCE: usize = 64;

/// At most this many writes staged at the same moment, on the blocking pool.
const STAGING_AT_ONCE: usize = 4;

/// One write asked for. The copy of the key it carries is wiped when the write is done.
struct Job {
    target: DirTarget,
    files: CaCertsFiles,
    meta: WriteMeta,
}

/// Replaces `target`'s set with `files`, backing up what is there first; returns when the
/// write is durable.
pub(super) async fn write(
    target: &DirTarget,
    files: &CaCertsFiles,
    meta: &WriteMeta,
) -> Result<WriteReport, TargetError> {
    let claim = Claim::take(&target.path).await;
    let stopped = || {
        TargetError::Io(fs_err("cannot write", &target.path)(std::io::Error::other(
            "cacertd's directory writer thread stopped",
        )))
    };
    let (staged_at_once, staging_at_once) = limits();
    let slot = staged_at_once
        .clone()
        .acquire_owned()
        .await
        .map_err(|_| stopped())?;
    let job = Job {
        target: target.clone(),
        files: files.clone(),
        meta: meta.clone(),
    };
    let (job, (backup, new, created)) = {
        let _staging = staging_at_once.acquire().await.map_err(|_| stopped())?;
        match tokio::task::spawn_blocking(move || stage(&job).map(|staged| (job, staged))).await {
            Ok(staged) => staged?,
            Err(e) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
            Err(_) => return Err(stopped()),
        }
    };
    let (reply, answer) = oneshot::channel();
    let staged = Staged {
        job,
        backup,
        new,
        created,
        reply,
        _held: (claim, slot),
    };
    writer().send(staged).map_err(|_| stopped())?;
    answer.await.map_err(|_| stopped())?
}

/// The two limits above, shared by every write of the process.
fn limits() -> &'static (Arc<Semaphore>, Semaphore) {
    static LIMITS: OnceLock<(Arc<Semaphore>, Semaphore)> = OnceLock::new();
    LIMITS.get_or_init(|| {
        (
            Arc::new(Semaphore::new(STAGED_AT_ONCE)),
            Semaphore::new(STAGING_AT_ONCE),
        )
    })
}

/// A folder with a write under way, from staging until the write is answered: held by the
/// write, so it is let go by whoever finishes it (a caller that stops waiting does not free
/// the folder while the writer thread still works on it).
struct Claim(PathBuf);

/// The folders claimed, and a signal each time one is let go.
fn claimed() -> &'static (Mutex<HashSet<PathBuf>>, Notify) {
    static CLAIMED: OnceLock<(Mutex<HashSet<PathBuf>>, Notify)> = OnceLock::new();
    CLAIMED.get_or_init(Default::default)
}

impl Claim {
    /// Waits until no other write works on `folder`, and claims it.
    async fn take(folder: &Path) -> Claim {
        let (folders, freed) = claimed();
        loop {
            let notified = freed.notified();
            let mut notified = std::pin::pin!(notified);
            // Registered before looking, so a folder let go meanwhile still wakes this.
            notified.as_mut().enable();
            let taken = folders
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .insert(folder.to_path_buf());
            if taken {
                return Claim(folder.to_path_buf());
            }
            notified.await;
        }
    }
}

impl Drop for Claim {
    fn drop(&mut self) {
        let (folders, freed) = claimed();
        folders
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(&self.0);
        freed.notify_waiters();
    }
}

/// The writer thread's queue, the thread started on first use.
fn writer() -> &'static mpsc::Sender<Staged> {
    static QUEUE: OnceLock<mpsc::Sender<Staged>> = OnceLock::new();
    QUEUE.get_or_init(|| {
        let (queue, staged) = mpsc::channel();
        // Should the thread not start, `staged` is dropped with the closure and every write
        // fails with "writer thread stopped".
        let _ = std::thread::Builder::new()
            .name("cacertd-dir-writer".into())
            .spawn(move || run(staged));
        queue
    })
}

/// Takes every staged write waiting as one batch, until the process ends. A folder has one
/// write under way at a time ([`Claim`]), so no two writes of a batch share one.
fn run(staged: mpsc::Receiver<Staged>) {
    while let Ok(first) = staged.recv() {
        let mut batch = vec![first];
        batch.extend(staged.try_iter());
        write_batch(batch);
    }
}

/// One write with its files under temporary names.
struct Staged {
    job: Job,
    backup: Option<Backup>,
    new: Vec<StagedFile>,
    /// The target folder was created for this write: its parent gains an entry.
    created: bool,
    reply: oneshot::Sender<Result<WriteReport, TargetError>>,
    /// The folder's claim and the write's place among [`STAGED_AT_ONCE`], let go with it.
    _held: (Claim, OwnedSemaphorePermit),
}

/// The copies of what a write replaces, bound for a fresh folder under the backups folder.
struct Backup {
    dir: PathBuf,
    files: Vec<StagedFile>,
    /// Something of the target has been replaced: from then on the backup is what keeps the
    /// old set, and stays whatever happens next.
    placed: bool,
}

impl Drop for Backup {
    /// A write that fails before replacing anything leaves the target as it was: its backup
    /// folder would be a second copy of the old key for nothing, and is removed.
    fn drop(&mut self) {
        if !self.placed {
            self.files.clear();
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}

/// Something step 2, 3 or 4 makes durable: a file under its temporary name, or a folder's
/// entries.
enum Durable<'a> {
    File(&'a StagedFile),
    Dir(PathBuf),
}

impl Durable<'_> {
    /// What an fsync thread needs to make it durable.
    fn to_sync(&self) -> Result<fsyncs::ToSync, FsError> {
        match self {
            Durable::File(f) => f
                .handle()
                .map(|(file, path)| fsyncs::ToSync::File(file, path)),
            Durable::Dir(d) => Ok(fsyncs::ToSync::Dir(d.clone())),
        }
    }
}

impl Staged {
    fn fail(self, e: impl Into<TargetError>) {
        let _ = self.reply.send(Err(e.into()));
    }

    /// Step 2: every file, backups and new, under its temporary name.
    fn files(&self) -> Vec<Durable<'_>> {
        let backups = self.backup.iter().flat_map(|b| b.files.iter());
        backups.chain(self.new.iter()).map(Durable::File).collect()
    }

    /// Step 3: the backup renamed into its folder.
    fn place_backup(&mut self) -> Result<(), FsError> {
        if let Some(backup) = &mut self.backup {
            for file in std::mem::take(&mut backup.files) {
                file.commit()?;
            }
        }
        Ok(())
    }

    /// Step 3: the backup folder, and the folder that gained it.
    fn backup_dirs(&self) -> Vec<Durable<'_>> {
        match &self.backup {
            Some(b) => vec![
                Durable::Dir(b.dir.clone()),
                Durable::Dir(self.job.target.backups.clone()),
            ],
            None => Vec::new(),
        }
    }

    /// Step 4: the new files renamed into place.
    fn place_new(&mut self) -> Result<(), FsError> {
        for file in std::mem::take(&mut self.new) {
            if let Some(backup) = &mut self.backup {
                // A failed rename may still have replaced the file.
                backup.placed = true;
            }
            file.commit()?;
        }
        Ok(())
    }

    /// Step 4: the target folder, and its parent when the folder is new.
    fn target_dirs(&self) -> Vec<Durable<'_>> {
        let path = &self.job.target.path;
        let mut dirs = vec![Durable::Dir(path.clone())];
        match path.parent() {
            Some(parent) if self.created && !parent.as_os_str().is_empty() => {
                dirs.push(Durable::Dir(parent.to_path_buf()));
            }
            _ => {}
        }
        dirs
    }
}

fn write_batch(staged: Vec<Staged>) {
    let staged = make_durable(staged, Staged::files);
    let staged = keep_ok(staged, Staged::place_backup);
    let staged = make_durable(staged, Staged::backup_dirs);
    let staged = keep_ok(staged, Staged::place_new);
    let staged = make_durable(staged, Staged::target_dirs);
    for done in staged {
        let backup = done.backup.as_ref().map(|b| b.dir.display().to_string());
        let report = WriteReport {
            backup,
            ..WriteReport::default()
        };
        let _ = done.reply.send(Ok(report));
    }
}

/// Runs one step for every write of a batch; a write whose step fails is answered with the
/// error and leaves the batch (its temporary files removed).
fn keep_ok(
    staged: Vec<Staged>,
    mut step: impl FnMut(&mut Staged) -> Result<(), FsError>,
) -> Vec<Staged> {
    let mut kept = Vec::with_capacity(staged.len());
    for mut s in staged {
        match step(&mut s) {
            Ok(()) => kept.push(s),
            Err(e) => s.fail(e),
        }
    }
    kept
}

/// Fsyncs what every write of a batch needs durable (a folder several writes share, once),
/// all at once; a write any of whose fsyncs failed is answered with the error and leaves the
/// batch.
fn make_durable(
    staged: Vec<Staged>,
    needs: impl for<'a> Fn(&'a Staged) -> Vec<Durable<'a>>,
) -> Vec<Staged> {
    let mut failed: Vec<Option<FsError>> = Vec::new();
    {
        let mut work: Vec<(Durable<'_>, Vec<usize>)> = Vec::new();
        let mut dirs: HashMap<PathBuf, usize> = HashMap::new();
        for (i, s) in staged.iter().enumerate() {
            for item in needs(s) {
                if let Durable::Dir(d) = &item {
                    if let Some(&at) = dirs.get(d) {
                        work[at].1.push(i);
                        continue;
                    }
                    dirs.insert(d.clone(), work.len());
                }
                work.push((item, vec![i]));
            }
        }
        failed.resize_with(staged.len(), || None);
        let results = fsyncs::sync_all(&work, |(item, _)| item.to_sync());
        for ((_, writes), result) in work.iter().zip(results) {
            if let Err(e) = result {
                for &i in writes {
                    failed[i].get_or_insert_with(|| FsError {
                        action: e.action,
                        path: e.path.clone(),
                        source: std::io::Error::new(e.source.kind(), e.source.to_string()),
                    });
                }
            }
        }
    }
    let mut kept = Vec::with_capacity(staged.len());
    for (s, failure) in staged.into_iter().zip(failed) {
        match failure {
            None => kept.push(s),
            Some(e) => s.fail(e),
        }
    }
    kept
}

type StagedWrite = (Option<Backup>, Vec<StagedFile>, bool);

/// Step 1 for one write: checks, then the backup copies and the new files under temporary
/// names.
fn stage(job: &Job) -> Result<StagedWrite, TargetError> {
    let target = &job.target;
    if target.path.join(TLS_CRT).exists() {
        return Err(TargetError::ManagedByCertManager {
            target: target.describe(),
        });
    }
    let created = !target.path.exists();
    if created {
        create_private_dir(&target.path)?;
    }
    // The new set first: a write that cannot even be staged (a full disk, a folder that is
    // not writable) leaves no backup behind, however often it is retried.
    let manifest = Zeroizing::new(cacerts_secret_yaml(&job.files, &job.meta));
    let mut new = Vec::new();
    for (name, bytes) in job.files.files() {
        let mode = DirTarget::mode_of(name);
        new.push(StagedFile::unsynced(&target.path.join(name), bytes, mode)?);
    }
    new.push(StagedFile::unsynced(
        &target.path.join(MANIFEST),
        manifest.as_bytes(),
        Mode::Secret,
    )?);
    let backup = stage_backup(target, &job.meta)?;
    Ok((backup, new, created))
}

/// Copies whatever is in the folder now, bound for a fresh, timestamped backup folder.
fn stage_backup(target: &DirTarget, meta: &WriteMeta) -> Result<Option<Backup>, TargetError> {
    let names = [
        CaCertsFiles::CA_CERT,
        CaCertsFiles::CA_KEY,
        CaCertsFiles::ROOT_CERT,
        CaCertsFiles::CERT_CHAIN,
        CaCertsFiles::CA_CRL,
        MANIFEST,
        TLS_CRT,
        TLS_KEY,
        CA_CRT,
    ];
    let mut existing = Vec::new();
    for name in names {
        if let Some(bytes) = read_optional(&target.path.join(name))? {
            existing.push((name, Zeroizing::new(bytes)));
        }
    }
    if existing.is_empty() {
        return Ok(None);
    }
    let dir = new_backup_dir(&target.backups, meta)?;
    let mut backup = Backup {
        dir,
        files: Vec::new(),
        placed: false,
    };
    for (name, bytes) in &existing {
        // Backups are private whatever they hold.
        let file = StagedFile::unsynced(&backup.dir.join(name), bytes, Mode::Secret)?;
        backup.files.push(file);
    }
    Ok(Some(backup))
}

/// A backup folder of its own, named after the write's time, with `-1`, `-2`… after any
/// folder of the same second (never a name freed by retention: names keep the order the
/// backups were taken in).
fn new_backup_dir(backups: &Path, meta: &WriteMeta) -> Result<PathBuf, TargetError> {
    let stamp = meta
        .written_at
        .format(BACKUP_STAMP)
        .unwrap_or_else(|_| meta.written_at.unix_timestamp().to_string());
    create_private_dir(backups)?;
    let after = std::fs::read_dir(backups)
        .map_err(|e| TargetError::from(fs_err("cannot list", backups)(e)))?
        .filter_map(|e| e.ok())
        .filter_map(|e| {
            let name = e.file_name().to_string_lossy().into_owned();
            let rest = name.strip_prefix(stamp.as_str())?.to_string();
            match rest.as_str() {
                "" => Some(0),
                _ => rest.strip_prefix('-')?.parse::<u32>().ok(),
            }
        })
        .max();
    let mut n = after.map_or(0, |m| m + 1);
    let mut dir = match n {
        0 => backups.join(&stamp),
        _ => backups.join(format!("{stamp}-{n}")),
    };
    n += 1;
    loop {
        match create_new_private_dir(&dir) {
            Ok(()) => return Ok(dir),
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                dir = backups.join(format!("{stamp}-{n}"));
                n += 1;
            }
            Err(e) => return Err(fs_err("cannot create backup directory", &dir)(e).into()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::tests::files;
    use super::*;

    fn meta() -> WriteMeta {
        super::super::tests::meta(1_700_000_000)
    }

    /// A write that fails before it replaces anything (here: dropped once staged, as when an
    /// fsync fails) leaves no backup folder behind; one that replaced its files keeps it.
    #[tokio::test]
    async fn only_a_write_that_replaced_something_keeps_its_backup() {
        let tmp = tempfile::tempdir().unwrap();
        let target = DirTarget::new(tmp.path().join("out"), tmp.path().join("backups"));
        write(&target, &files("1"), &meta()).await.unwrap();
        let job = Job {
            target: target.clone(),
            files: files("2"),
            meta: meta(),
        };
        let (backup, new, _) = stage(&job).unwrap();
        let dir = backup.as_ref().unwrap().dir.clone();
        assert!(dir.exists());
        drop((backup, new));
        assert!(!dir.exists(), "a failed write's backup is removed");
        assert_eq!(
            std::fs::read_dir(tmp.path().join("backups"))
                .unwrap()
                .count(),
            0
        );
        assert_eq!(target.read().unwrap().unwrap(), files("1"));

        let kept = write(&target, &files("3"), &meta()).await.unwrap();
        let kept = PathBuf::from(kept.backup.unwrap());
        assert_eq!(std::fs::read(kept.join("ca-key.pem")).unwrap(), b"key 1");
    }

    /// Many writes at once, two to each folder: every one lands, each second write backs up
    /// its folder's first, and one that cannot be written fails alone.
    #[tokio::test]
    async fn writes_in_one_batch_each_land_with_their_own_backup_and_fail_alone() {
        let tmp = tempfile::tempdir().unwrap();
        let target = |i: usize| {
            DirTarget::new(
                tmp.path().join(format!("out/c{i}")),
                tmp.path().join(format!("backups/c{i}")),
            )
        };
        let targets: Vec<DirTarget> = (0..40).map(target).collect();
        // c7 is handed to cert-manager: refused, and the others go on.
        std::fs::create_dir_all(tmp.path().join("out/c7")).unwrap();
        std::fs::write(tmp.path().join("out/c7/tls.crt"), b"cm").unwrap();
        let writes = targets.iter().enumerate().flat_map(|(i, t)| {
            let first = files(&format!("{i}a"));
            let second = files(&format!("{i}b"));
            [(t, first), (t, second)]
        });
        let results = futures::future::join_all(
            writes.map(|(t, f)| async move { write(t, &f, &meta()).await }),
        )
        .await;
        for (i, pair) in results.chunks(2).enumerate() {
            if i == 7 {
                assert!(matches!(
                    pair[0],
                    Err(TargetError::ManagedByCertManager { .. })
                ));
                continue;
            }
            assert_eq!(pair[0].as_ref().unwrap().backup, None, "c{i}");
            let backup = PathBuf::from(pair[1].as_ref().unwrap().backup.clone().unwrap());
            assert_eq!(
                std::fs::read(backup.join("ca-key.pem")).unwrap(),
                format!("key {i}a").into_bytes(),
                "c{i}: the second write backed up the first"
            );
            assert_eq!(targets[i].read().unwrap().unwrap(), files(&format!("{i}b")));
        }
        // No temporary file is left anywhere.
        let mut left = Vec::new();
        for dir in ["out", "backups"] {
            for c in std::fs::read_dir(tmp.path().join(dir)).unwrap() {
                for f in std::fs::read_dir(c.unwrap().path()).unwrap() {
                    let p = f.unwrap().path();
                    let inner: Vec<_> = if p.is_dir() {
                        std::fs::read_dir(&p)
                            .unwrap()
                            .map(|e| e.unwrap().path())
                            .collect()
                    } else {
                        vec![p]
                    };
                    left.extend(inner.into_iter().filter(|p| {
                        p.file_name()
                            .unwrap()
                            .to_string_lossy()
                            .starts_with(".cacertd-")
                    }));
                }
            }
        }
        assert!(left.is_empty(), "{left:?}");
    }
}
