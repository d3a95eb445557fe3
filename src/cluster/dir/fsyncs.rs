//! The fsync threads of the directory writer: a fixed set, started on first use, that fsync
//! what a batch hands them many at once (see [`super::batch`]).

use std::panic::AssertUnwindSafe;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, OnceLock, PoisonError, mpsc};

use crate::fsutil::{FsError, fs_err, sync_dir};

/// One fsync, as an fsync thread takes it.
pub(super) enum ToSync {
    /// A file under its temporary name (named in errors).
    File(std::fs::File, PathBuf),
    Dir(PathBuf),
}

impl ToSync {
    fn sync(self) -> Result<(), FsError> {
        match self {
            ToSync::File(file, path) => file.sync_all().map_err(fs_err("cannot fsync", &path)),
            ToSync::Dir(dir) => sync_dir(&dir),
        }
    }
}

/// At most this many fsyncs in flight at once: the fsync threads, started once.
const SYNC_THREADS: usize = 32;

/// The fsync threads' stack: they call `fsync` and little else.
const SYNC_STACK: usize = 64 * 1024;

/// One fsync handed to the fsync threads: what, its place in the batch, where to answer.
type SyncJob = (ToSync, usize, mpsc::Sender<(usize, Result<(), FsError>)>);

/// The fsync threads' queue, the threads started on first use; `None` if none could start.
fn sync_threads() -> Option<&'static mpsc::Sender<SyncJob>> {
    static QUEUE: OnceLock<Option<mpsc::Sender<SyncJob>>> = OnceLock::new();
    QUEUE
        .get_or_init(|| {
            let (queue, jobs) = mpsc::channel::<SyncJob>();
            let jobs = Arc::new(Mutex::new(jobs));
            let started = (0..SYNC_THREADS)
                .filter(|_| {
                    let jobs = jobs.clone();
                    std::thread::Builder::new()
                        .name("cacertd-fsync".into())
                        .stack_size(SYNC_STACK)
                        .spawn(move || sync_thread(&jobs))
                        .is_ok()
                })
                .count();
            (started > 0).then_some(queue)
        })
        .as_ref()
}

/// One fsync thread: takes a job, answers it (a panic too, as an error), until the queue
/// is gone.
fn sync_thread(jobs: &Mutex<mpsc::Receiver<SyncJob>>) {
    loop {
        let job = jobs.lock().unwrap_or_else(PoisonError::into_inner).recv();
        let Ok((item, at, answer)) = job else { return };
        let synced =
            std::panic::catch_unwind(AssertUnwindSafe(|| item.sync())).unwrap_or_else(|_| {
                let lost = std::io::Error::other("the fsync thread panicked");
                Err(fs_err("cannot fsync", Path::new("?"))(lost))
            });
        let _ = answer.send((at, synced));
    }
}

/// Fsyncs `items` on the fsync threads, [`SYNC_THREADS`] at a time (each holding a second
/// descriptor of its file only while it runs). Fsyncs issued together share the device's work
/// (and, on a journaling file system, its commits); issued one after another, each waits for
/// its own. Results come back in the order of `items`; one whose fsync did not say it
/// succeeded is an error, never taken as durable.
pub(super) fn sync_all<T>(
    items: &[T],
    to_sync: impl Fn(&T) -> Result<ToSync, FsError>,
) -> Vec<Result<(), FsError>> {
    let queue = match sync_threads() {
        Some(queue) if items.len() > 1 => queue,
        _ => {
            return items
                .iter()
                .map(|item| to_sync(item).and_then(ToSync::sync))
                .collect();
        }
    };
    let mut results: Vec<Option<Result<(), FsError>>> = Vec::with_capacity(items.len());
    results.resize_with(items.len(), || None);
    let (answer, answers) = mpsc::channel();
    let (mut next, mut running) = (0, 0);
    loop {
        while running < SYNC_THREADS && next < items.len() {
            match to_sync(&items[next]) {
                Err(e) => results[next] = Some(Err(e)),
                Ok(item) => match queue.send((item, next, answer.clone())) {
                    Ok(()) => running += 1,
                    Err(mpsc::SendError((item, ..))) => results[next] = Some(item.sync()),
                },
            }
            next += 1;
        }
        if running == 0 {
            break;
        }
        // Every job sent is answered (the threads answer even a panic), so this returns.
        match answers.recv() {
            Ok((at, result)) => {
                results[at] = Some(result);
                running -= 1;
            }
            Err(_) => break,
        }
    }
    results
        .into_iter()
        .map(|r| {
            r.unwrap_or_else(|| {
                let lost = std::io::Error::other("the fsync thread stopped");
                Err(fs_err("cannot fsync", Path::new("?"))(lost))
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Many fsyncs at once answer in the order asked, more than there are threads; one that
    /// cannot even start (here: a descriptor that could not be had) fails in its own place.
    #[test]
    fn fsyncs_answer_in_order_and_fail_alone() {
        let tmp = tempfile::tempdir().unwrap();
        let items: Vec<usize> = (0..3 * SYNC_THREADS).collect();
        let results = sync_all(&items, |&i| {
            if i == 40 {
                let e = std::io::Error::other("no descriptor");
                return Err(fs_err("cannot fsync", Path::new("forty"))(e));
            }
            let path = tmp.path().join(format!("f{i}"));
            std::fs::write(&path, b"x").unwrap();
            Ok(match i % 2 {
                0 => ToSync::File(std::fs::File::open(&path).unwrap(), path),
                _ => ToSync::Dir(tmp.path().to_path_buf()),
            })
        });
        assert_eq!(results.len(), items.len());
        for (i, r) in results.iter().enumerate() {
            match i {
                40 => assert_eq!(r.as_ref().unwrap_err().path, Path::new("forty")),
                _ => assert!(r.is_ok(), "{i}: {r:?}"),
            }
        }
        // A folder that does not exist fails alone too.
        let gone = tmp.path().join("gone");
        let results = sync_all(&[0, 1], |&i| {
            Ok(match i {
                0 => ToSync::Dir(gone.clone()),
                _ => ToSync::Dir(tmp.path().to_path_buf()),
            })
        });
        assert!(results[0].is_err() && results[1].is_ok());
    }
}
