//! Jobs and their state in an embedded SQLite database (WAL mode), outputs as files
//! beside it: `DATA/jobs.sqlite3`, `DATA/videos/ID.mp4`, `DATA/videos/ID.png` (first
//! frame), `DATA/inputs/ID` (the image of an image-to-video request).
//!
//! Invariants that make a kill at any moment harmless:
//! - a job is `completed` only after its mp4 and thumbnail were renamed into place, so a
//!   completed job always has whole files and no partial mp4 is ever served;
//! - a job's row is deleted before its files, and files whose job is gone are swept at
//!   start-up, as are temporary files of interrupted writes;
//! - a job found `in_progress` at start-up was interrupted: it is queued again (keeping
//!   its place in arrival order), or failed once it has been interrupted twice.

use std::path::{Path, PathBuf};
use std::sync::Mutex;

use rusqlite::{params, Connection, OptionalExtension, TransactionBehavior};

use crate::params::JobParams;
use phyai::{Error, Result};

/// A job's life: queued → in_progress → completed | failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status {
    Queued,
    InProgress,
    Completed,
    Failed,
}

impl Status {
    pub const ALL: [Status; 4] = [
        Status::Queued,
        Status::InProgress,
        Status::Completed,
        Status::Failed,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Status::Queued => "queued",
            Status::InProgress => "in_progress",
            Status::Completed => "completed",
            Status::Failed => "failed",
        }
    }

    fn parse(s: &str) -> Result<Self> {
        Self::ALL
            .into_iter()
            .find(|x| x.as_str() == s)
            .ok_or_else(|| Error::msg(format!("database: unknown job status {s:?}")))
    }

    pub fn is_terminal(self) -> bool {
        matches!(self, Status::Completed | Status::Failed)
    }
}

/// Why a job failed, in the video object's `error`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JobError {
    pub code: String,
    pub message: String,
}

/// One job as stored.
#[derive(Debug, Clone)]
pub struct Job {
    pub id: String,
    /// Arrival order: the queue runs jobs by ascending `seq`.
    pub seq: i64,
    /// Unix seconds.
    pub created_at: i64,
    pub status: Status,
    pub params: JobParams,
    pub has_image: bool,
    pub error: Option<JobError>,
    pub completed_at: Option<i64>,
    /// How many times a worker has started it (a restart re-queues it while < 2).
    pub attempts: u32,
    /// The engine's own time for the request (tokenize, encode, denoise, decode).
    pub generation_seconds: Option<f64>,
    /// From dequeue to the mp4 being in place.
    pub total_seconds: Option<f64>,
}

/// What start-up did to jobs interrupted by the previous process's end.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Recovery {
    pub requeued: Vec<String>,
    pub failed: Vec<String>,
}

/// How often a job may be interrupted mid-run before it is failed instead of re-queued.
const MAX_ATTEMPTS: u32 = 2;

/// Why [`Store::insert`] refused a job.
#[derive(Debug)]
pub enum InsertError {
    QueueFull,
    Store(Error),
}

pub struct Store {
    conn: Mutex<Connection>,
    dir: PathBuf,
}

fn db(e: rusqlite::Error) -> Error {
    Error::msg(format!("database: {e}"))
}

const COLUMNS: &str = "id, seq, created_at, status, params, has_image, error_code, \
     error_message, completed_at, attempts, generation_seconds, total_seconds";

impl Store {
    /// Opens (or creates) the store in `dir`, recovers interrupted jobs and sweeps files
    /// no job owns.
    pub fn open(dir: &Path) -> Result<(Self, Recovery)> {
        for d in [dir.to_path_buf(), dir.join("videos"), dir.join("inputs")] {
            std::fs::create_dir_all(&d).map_err(|e| Error::io(&d, e))?;
        }
        let path = dir.join("jobs.sqlite3");
        let conn =
            Connection::open(&path).map_err(|e| Error::msg(format!("{}: {e}", path.display())))?;
        // WAL: readers never block the writer; FULL: a committed state change survives
        // even a power loss, not only a killed process.
        conn.pragma_update(None, "journal_mode", "WAL")
            .map_err(db)?;
        conn.pragma_update(None, "synchronous", "FULL")
            .map_err(db)?;
        conn.busy_timeout(std::time::Duration::from_secs(10))
            .map_err(db)?;
        conn.execute_batch(
            "CREATE TABLE IF NOT EXISTS jobs (
                 seq INTEGER PRIMARY KEY AUTOINCREMENT,
                 id TEXT NOT NULL UNIQUE,
                 created_at INTEGER NOT NULL,
                 status TEXT NOT NULL,
                 params TEXT NOT NULL,
                 has_image INTEGER NOT NULL,
                 error_code TEXT,
                 error_message TEXT,
                 completed_at INTEGER,
                 attempts INTEGER NOT NULL DEFAULT 0,
                 generation_seconds REAL,
                 total_seconds REAL
             );
             CREATE INDEX IF NOT EXISTS jobs_status ON jobs(status, seq);",
        )
        .map_err(db)?;
        let store = Self {
            conn: Mutex::new(conn),
            dir: dir.to_path_buf(),
        };
        let recovery = store.recover()?;
        store.sweep()?;
        Ok((store, recovery))
    }

    pub fn video_path(&self, id: &str) -> PathBuf {
        self.dir.join("videos").join(format!("{id}.mp4"))
    }

    pub fn thumbnail_path(&self, id: &str) -> PathBuf {
        self.dir.join("videos").join(format!("{id}.png"))
    }

    pub fn input_path(&self, id: &str) -> PathBuf {
        self.dir.join("inputs").join(id)
    }

    /// A transfer job's control clip of `hint` (an mp4).
    pub fn control_path(&self, id: &str, hint: &str) -> PathBuf {
        self.dir
            .join("inputs")
            .join(format!("{id}.control_{hint}.mp4"))
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Connection> {
        // A panic while holding the lock cannot leave SQLite inconsistent (transactions
        // roll back on drop), so a poisoned lock is still usable.
        self.conn.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn recover(&self) -> Result<Recovery> {
        let mut conn = self.lock();
        let tx = conn.transaction().map_err(db)?;
        let running: Vec<(String, u32)> = {
            let mut st = tx
                .prepare("SELECT id, attempts FROM jobs WHERE status = 'in_progress' ORDER BY seq")
                .map_err(db)?;
            let rows = st
                .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
                .map_err(db)?;
            rows.collect::<std::result::Result<_, _>>().map_err(db)?
        };
        let mut out = Recovery::default();
        for (id, attempts) in running {
            if attempts >= MAX_ATTEMPTS {
                tx.execute(
                    "UPDATE jobs SET status = 'failed', error_code = 'interrupted',
                         error_message = ?2, completed_at = ?3 WHERE id = ?1",
                    params![
                        id,
                        format!(
                            "the server stopped while generating this video {attempts} times; \
                             it is not retried again"
                        ),
                        now()
                    ],
                )
                .map_err(db)?;
                out.failed.push(id);
            } else {
                tx.execute(
                    "UPDATE jobs SET status = 'queued' WHERE id = ?1",
                    params![id],
                )
                .map_err(db)?;
                out.requeued.push(id);
            }
        }
        tx.commit().map_err(db)?;
        Ok(out)
    }

    /// Removes temporary files of interrupted writes and files whose job is gone.
    fn sweep(&self) -> Result<()> {
        for sub in ["videos", "inputs"] {
            let dir = self.dir.join(sub);
            let entries = std::fs::read_dir(&dir).map_err(|e| Error::io(&dir, e))?;
            for e in entries {
                let e = e.map_err(|e| Error::io(&dir, e))?;
                let name = e.file_name().to_string_lossy().into_owned();
                let id = name.split('.').next().unwrap_or_default();
                let orphan = name.starts_with('.') || id.is_empty() || self.get(id)?.is_none();
                if orphan {
                    let p = e.path();
                    std::fs::remove_file(&p).map_err(|e| Error::io(&p, e))?;
                }
            }
        }
        Ok(())
    }

    /// Adds a queued job unless `max_queue` jobs are already waiting.
    pub fn insert(
        &self,
        id: &str,
        params: &JobParams,
        has_image: bool,
        max_queue: usize,
    ) -> std::result::Result<Job, InsertError> {
        let mut conn = self.lock();
        let tx = conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(|e| InsertError::Store(db(e)))?;
        let waiting: i64 = tx
            .query_row(
                "SELECT COUNT(*) FROM jobs WHERE status = 'queued'",
                [],
                |r| r.get(0),
            )
            .map_err(|e| InsertError::Store(db(e)))?;
        if waiting as usize >= max_queue {
            return Err(InsertError::QueueFull);
        }
        let json = serde_json::to_string(params)
            .map_err(|e| InsertError::Store(Error::msg(e.to_string())))?;
        tx.execute(
            "INSERT INTO jobs (id, created_at, status, params, has_image)
             VALUES (?1, ?2, 'queued', ?3, ?4)",
            params![id, now(), json, has_image],
        )
        .map_err(|e| InsertError::Store(db(e)))?;
        // Read back inside the transaction: the answer is the job as created
        // ("queued"), even if a worker claims it the moment it commits.
        let job = tx
            .query_row(
                &format!("SELECT {COLUMNS} FROM jobs WHERE id = ?1"),
                params![id],
                row_to_job,
            )
            .map_err(|e| InsertError::Store(db(e)))?
            .map_err(InsertError::Store)?;
        tx.commit().map_err(|e| InsertError::Store(db(e)))?;
        Ok(job)
    }

    pub fn get(&self, id: &str) -> Result<Option<Job>> {
        let conn = self.lock();
        conn.query_row(
            &format!("SELECT {COLUMNS} FROM jobs WHERE id = ?1"),
            params![id],
            row_to_job,
        )
        .optional()
        .map_err(db)?
        .transpose()
    }

    /// A page of jobs by arrival, `ascending` or not, starting after job `after`; the flag
    /// says whether more follow.
    pub fn list(
        &self,
        limit: usize,
        after: Option<&str>,
        ascending: bool,
    ) -> Result<Option<(Vec<Job>, bool)>> {
        let conn = self.lock();
        let from = match after {
            Some(id) => {
                let seq: Option<i64> = conn
                    .query_row("SELECT seq FROM jobs WHERE id = ?1", params![id], |r| {
                        r.get(0)
                    })
                    .optional()
                    .map_err(db)?;
                match seq {
                    Some(s) => s,
                    None => return Ok(None),
                }
            }
            None if ascending => i64::MIN,
            None => i64::MAX,
        };
        let sql = if ascending {
            format!("SELECT {COLUMNS} FROM jobs WHERE seq > ?1 ORDER BY seq ASC LIMIT ?2")
        } else {
            format!("SELECT {COLUMNS} FROM jobs WHERE seq < ?1 ORDER BY seq DESC LIMIT ?2")
        };
        let mut st = conn.prepare(&sql).map_err(db)?;
        let rows = st
            .query_map(params![from, (limit + 1) as i64], row_to_job)
            .map_err(db)?;
        let mut jobs = Vec::new();
        for r in rows {
            jobs.push(r.map_err(db)??);
        }
        let more = jobs.len() > limit;
        jobs.truncate(limit);
        Ok(Some((jobs, more)))
    }

    /// Deletes the job's row (its files are the caller's to remove); the job as it was.
    pub fn delete(&self, id: &str) -> Result<Option<Job>> {
        let job = self.get(id)?;
        if job.is_some() {
            self.lock()
                .execute("DELETE FROM jobs WHERE id = ?1", params![id])
                .map_err(db)?;
        }
        Ok(job)
    }

    /// Takes the oldest queued job and marks it running (counting the attempt).
    pub fn claim_next(&self) -> Result<Option<Job>> {
        let mut conn = self.lock();
        let tx = conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(db)?;
        let id: Option<String> = tx
            .query_row(
                "SELECT id FROM jobs WHERE status = 'queued' ORDER BY seq LIMIT 1",
                [],
                |r| r.get(0),
            )
            .optional()
            .map_err(db)?;
        let Some(id) = id else {
            return Ok(None);
        };
        tx.execute(
            "UPDATE jobs SET status = 'in_progress', attempts = attempts + 1 WHERE id = ?1",
            params![id],
        )
        .map_err(db)?;
        tx.commit().map_err(db)?;
        drop(conn);
        self.get(&id)
    }

    /// Marks a running job completed; false if it was deleted meanwhile.
    pub fn complete(&self, id: &str, generation_seconds: f64, total_seconds: f64) -> Result<bool> {
        let n = self
            .lock()
            .execute(
                "UPDATE jobs SET status = 'completed', completed_at = ?2,
                     generation_seconds = ?3, total_seconds = ?4
                 WHERE id = ?1 AND status = 'in_progress'",
                params![id, now(), generation_seconds, total_seconds],
            )
            .map_err(db)?;
        Ok(n == 1)
    }

    /// Marks a running job failed with its reason; false if it was deleted meanwhile.
    pub fn fail(&self, id: &str, code: &str, message: &str) -> Result<bool> {
        let n = self
            .lock()
            .execute(
                "UPDATE jobs SET status = 'failed', completed_at = ?2, error_code = ?3,
                     error_message = ?4
                 WHERE id = ?1 AND status = 'in_progress'",
                params![id, now(), code, message],
            )
            .map_err(db)?;
        Ok(n == 1)
    }

    /// Number of jobs in each state.
    pub fn counts(&self) -> Result<Vec<(Status, u64)>> {
        let conn = self.lock();
        let mut st = conn
            .prepare("SELECT status, COUNT(*) FROM jobs GROUP BY status")
            .map_err(db)?;
        let rows = st
            .query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)?)))
            .map_err(db)?;
        let mut found = Vec::new();
        for r in rows {
            let (s, n) = r.map_err(db)?;
            found.push((Status::parse(&s)?, n as u64));
        }
        Ok(Status::ALL
            .into_iter()
            .map(|s| {
                let n = found.iter().find(|(x, _)| *x == s).map_or(0, |(_, n)| *n);
                (s, n)
            })
            .collect())
    }
}

fn row_to_job(r: &rusqlite::Row<'_>) -> rusqlite::Result<Result<Job>> {
    let status: String = r.get(3)?;
    let params: String = r.get(4)?;
    let code: Option<String> = r.get(6)?;
    let message: Option<String> = r.get(7)?;
    let id: String = r.get(0)?;
    let job = (|| -> Result<Job> {
        Ok(Job {
            seq: r.get(1).map_err(db)?,
            created_at: r.get(2).map_err(db)?,
            status: Status::parse(&status)?,
            params: serde_json::from_str(&params)
                .map_err(|e| Error::msg(format!("database: job {id}: params: {e}")))?,
            has_image: r.get(5).map_err(db)?,
            error: code.map(|code| JobError {
                code,
                message: message.unwrap_or_default(),
            }),
            completed_at: r.get(8).map_err(db)?,
            attempts: r.get(9).map_err(db)?,
            generation_seconds: r.get(10).map_err(db)?,
            total_seconds: r.get(11).map_err(db)?,
            id: id.clone(),
        })
    })();
    Ok(job)
}

pub fn now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
}

/// A fresh job id, `video_` and 32 hex digits from the OS-seeded hasher, the clock and a
/// counter (uniqueness is also enforced by the database).
pub fn new_id() -> String {
    use std::hash::{BuildHasher, Hasher};
    use std::sync::atomic::{AtomicU64, Ordering};
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    let t = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    let mut parts = [0u64; 2];
    for (i, p) in parts.iter_mut().enumerate() {
        let mut h = std::collections::hash_map::RandomState::new().build_hasher();
        h.write_u128(t);
        h.write_u64(n);
        h.write_usize(i);
        h.write_u32(std::process::id());
        *p = h.finish();
    }
    format!("video_{:016x}{:016x}", parts[0], parts[1])
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::params::{resolve, CreateFields, ModelInfo, DEMO};

    fn params(prompt: &str) -> JobParams {
        let mut f = CreateFields::default();
        f.set("prompt", prompt.into());
        let m = ModelInfo {
            name: "m".into(),
            defaults: DEMO,
            sound: false,
        };
        resolve(&f, &m).unwrap()
    }

    #[test]
    fn jobs_run_in_arrival_order_and_survive_reopening() {
        let tmp = tempfile::tempdir().unwrap();
        let (store, rec) = Store::open(tmp.path()).unwrap();
        assert_eq!(rec, Recovery::default());
        for (i, id) in ["a", "b", "c"].iter().enumerate() {
            let j = store
                .insert(id, &params(&format!("p{i}")), false, 10)
                .unwrap();
            assert_eq!(j.status, Status::Queued);
            assert_eq!(j.params.prompt, format!("p{i}"));
        }
        let first = store.claim_next().unwrap().unwrap();
        assert_eq!(
            (first.id.as_str(), first.status, first.attempts),
            ("a", Status::InProgress, 1)
        );
        assert!(store.complete("a", 1.5, 1.6).unwrap());
        let a = store.get("a").unwrap().unwrap();
        assert_eq!(a.status, Status::Completed);
        assert_eq!(
            (a.generation_seconds, a.total_seconds),
            (Some(1.5), Some(1.6))
        );
        assert!(a.completed_at.is_some());
        let b = store.claim_next().unwrap().unwrap();
        assert_eq!(b.id, "b");
        drop(store);

        // "b" was running when the process ended: it is queued again, ahead of "c".
        let (store, rec) = Store::open(tmp.path()).unwrap();
        assert_eq!(rec.requeued, vec!["b".to_string()]);
        assert_eq!(store.get("a").unwrap().unwrap().status, Status::Completed);
        let b = store.claim_next().unwrap().unwrap();
        assert_eq!((b.id.as_str(), b.attempts), ("b", 2));
        drop(store);

        // Interrupted a second time: failed with a reason, and "c" runs next.
        let (store, rec) = Store::open(tmp.path()).unwrap();
        assert_eq!(rec.failed, vec!["b".to_string()]);
        let b = store.get("b").unwrap().unwrap();
        assert_eq!(b.status, Status::Failed);
        let err = b.error.unwrap();
        assert_eq!(err.code, "interrupted");
        assert!(err.message.contains("2 times"), "{}", err.message);
        assert_eq!(store.claim_next().unwrap().unwrap().id, "c");
        assert!(store.claim_next().unwrap().is_none());
    }

    #[test]
    fn the_queue_limit_counts_waiting_jobs_only() {
        let tmp = tempfile::tempdir().unwrap();
        let (store, _) = Store::open(tmp.path()).unwrap();
        store.insert("a", &params("a"), false, 2).unwrap();
        store.insert("b", &params("b"), false, 2).unwrap();
        assert!(matches!(
            store.insert("c", &params("c"), false, 2),
            Err(InsertError::QueueFull)
        ));
        store.claim_next().unwrap();
        store.insert("c", &params("c"), false, 2).unwrap();
        let counts = store.counts().unwrap();
        assert_eq!(
            counts,
            vec![
                (Status::Queued, 2),
                (Status::InProgress, 1),
                (Status::Completed, 0),
                (Status::Failed, 0)
            ]
        );
    }

    #[test]
    fn list_pages_by_arrival_and_delete_forgets() {
        let tmp = tempfile::tempdir().unwrap();
        let (store, _) = Store::open(tmp.path()).unwrap();
        for id in ["a", "b", "c", "d"] {
            store.insert(id, &params(id), false, 10).unwrap();
        }
        let ids = |v: Vec<Job>| v.into_iter().map(|j| j.id).collect::<Vec<_>>();
        let (page, more) = store.list(2, None, false).unwrap().unwrap();
        assert_eq!((ids(page), more), (vec!["d".into(), "c".into()], true));
        let (page, more) = store.list(2, Some("c"), false).unwrap().unwrap();
        assert_eq!((ids(page), more), (vec!["b".into(), "a".into()], false));
        let (page, more) = store.list(3, Some("a"), true).unwrap().unwrap();
        assert_eq!(
            (ids(page), more),
            (vec!["b".into(), "c".into(), "d".into()], false)
        );
        assert!(store.list(3, Some("zz"), true).unwrap().is_none());
        assert_eq!(store.delete("b").unwrap().unwrap().id, "b");
        assert!(store.get("b").unwrap().is_none());
        assert!(store.delete("b").unwrap().is_none());
        // A deleted running job cannot be completed or failed afterwards.
        let a = store.claim_next().unwrap().unwrap();
        store.delete(&a.id).unwrap();
        assert!(!store.complete(&a.id, 1.0, 1.0).unwrap());
        assert!(!store.fail(&a.id, "x", "y").unwrap());
    }

    #[test]
    fn start_up_sweeps_partial_and_orphaned_files() {
        let tmp = tempfile::tempdir().unwrap();
        let (store, _) = Store::open(tmp.path()).unwrap();
        store.insert("keep", &params("k"), true, 10).unwrap();
        std::fs::write(store.video_path("keep"), b"mp4").unwrap();
        std::fs::write(store.input_path("keep"), b"png").unwrap();
        std::fs::write(store.video_path("gone"), b"mp4").unwrap();
        let partial = tmp.path().join("videos").join(".partial-x1");
        std::fs::write(&partial, b"half").unwrap();
        drop(store);
        let (store, _) = Store::open(tmp.path()).unwrap();
        assert!(store.video_path("keep").is_file());
        assert!(store.input_path("keep").is_file());
        assert!(!store.video_path("gone").exists());
        assert!(!partial.exists());
    }

    #[test]
    fn ids_are_distinct() {
        let a = new_id();
        let b = new_id();
        assert_ne!(a, b);
        assert!(a.starts_with("video_") && a.len() == 38, "{a}");
    }
}
