//! The durable state, in sled. This is the only module that imports sled.
//!
//! Trees: `objects` (key `Kind/id`, one record per object ever applied) and `meta` (per-source
//! status); `runs`, `run_workflows` and `steps` (a run's record without its expanded
//! workflow, that workflow, its steps under `<run id>\0<index>`). A run's workflow is
//! written once, before its first record, so a status change rewrites a small record and
//! no run is ever found without its workflow; records of an older release keep their
//! workflow inside (format 1) and are read as they are. `runs` also holds the index of
//! runs per workflow, under keys that start with a zero byte
//! (`\0by-workflow\0<workflow id>\0<run id>`, run ids sort by creation; value: the run's
//! status): it is written in the same batch as the run record, so that a workflow's runs
//! are listed and counted without decoding any other, and no crash leaves the two apart.
//! Listing every run goes through an in-memory index ([`RunIndex`]: run ids by status,
//! counts per workflow), built at open and kept by every run write and delete, so a page
//! decodes its own records only; it caches the listed runs' summaries as JSON, each dropped
//! by the next write of its run. The index of finish times
//! (`\0by-finish\0<ms, big-endian><run id>`, also in `runs` and its batches) finds the
//! runs that finished in a time range without reading the others. Every value starts with a format-version byte so that a
//! later release can migrate records; the rest is JSON. Writes go through one atomic batch and are flushed before the
//! call returns, so whatever the caller then reports is on disk.

pub mod test_history;

use std::borrow::Cow;
use std::collections::{BTreeMap, HashMap};
use std::fs;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde::{de::DeserializeOwned, Deserialize, Serialize};
use serde_json::Value;
use sled::Transactional;

use crate::diagnostics::Diagnostic;
use crate::manifest::Kind;
use crate::model::{RunHead, RunRecord, RunSummary, Status, StepRecord};

/// Version byte of the record encoding written by this release.
const FORMAT_VERSION: u8 = 1;
/// Version byte of run records: their workflow is in `run_workflows` (format 1 records
/// hold it inside).
const RUN_FORMAT_VERSION: u8 = 2;

/// The file in the data directory naming the process that holds the store.
const OWNER_FILE: &str = "owner.pid";
/// Key prefix of reconcile memos in the meta tree.
const MEMO_PREFIX: &str = "memo/";

/// How many object records [`Store::commit`] writes in one sled batch.
pub const OBJECT_BATCH: usize = 1_000;

/// An object's identity: its kind and id.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct ObjectKey {
    /// The kind.
    pub kind: Kind,
    /// The id, unique within the kind.
    pub id: String,
}

impl ObjectKey {
    fn to_bytes(&self) -> Vec<u8> {
        format!("{}/{}", self.kind.as_str(), self.id).into_bytes()
    }
}

impl std::fmt::Display for ObjectKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} {}", self.kind, self.id)
    }
}

/// Where an object stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ObjectStatus {
    /// Its current manifest is applied.
    Applied,
    /// Its current manifest is invalid; `spec` is the last good version, still in force
    /// (or none if it never had one).
    Invalid,
    /// Its manifest was removed and `apply --prune` removed it.
    Pruned,
}

/// What the store keeps about one object.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ObjectRecord {
    /// Kind and id.
    #[serde(flatten)]
    pub key: ObjectKey,
    /// The declared name.
    pub name: String,
    /// The applied spec in force, if any (shared with the reconcile's checks that found it,
    /// never copied).
    pub spec: Option<Arc<Value>>,
    /// Content hash of `spec`.
    pub hash: Option<String>,
    /// The file the object was last seen in.
    pub source_file: String,
    /// Applied, invalid or pruned.
    pub status: ObjectStatus,
    /// Why the current manifest is invalid.
    #[serde(default)]
    pub diagnostics: Vec<Diagnostic>,
    /// The source revision whose manifest is in force.
    pub applied_revision: Option<String>,
    /// The last source revision that included this object.
    pub attempted_revision: String,
    /// Incremented every time the spec in force changes.
    pub generation: u64,
    /// When the spec in force was applied (RFC 3339).
    pub applied_at: Option<String>,
    /// When this record last changed (RFC 3339).
    pub updated_at: String,
}

impl ObjectRecord {
    /// Whether the object is in force (it has an applied spec and was not pruned).
    pub fn is_live(&self) -> bool {
        self.spec.is_some() && self.status != ObjectStatus::Pruned
    }
}

/// Reconcile status of one source, as Flux keeps it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SourceStatus {
    /// The source (`dir` for the directory source).
    pub source: String,
    /// The last revision applied without errors.
    pub last_applied_revision: Option<String>,
    /// The last revision an apply was attempted at.
    pub last_attempted_revision: String,
    /// When the last attempt happened (RFC 3339).
    pub last_attempt_at: String,
    /// Errors found in the last attempt.
    pub errors: usize,
}

/// What can go wrong with the store.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The data directory cannot be created or written.
    #[error("cannot use data directory {path}: {source}; fix its permissions or choose another with --data-dir")]
    DataDir {
        /// The directory.
        path: String,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// Another process holds the store.
    #[error("data directory {path} is in use by {holder}; stop it, or let commands go through its API, or use another --data-dir")]
    Locked {
        /// The directory.
        path: String,
        /// "PID N (command)" or "another process".
        holder: String,
    },
    /// sled failed.
    #[error("store error in {path}: {source}")]
    Sled {
        /// The data directory.
        path: String,
        /// The cause.
        #[source]
        source: sled::Error,
    },
    /// A record could not be decoded.
    #[error("corrupt record {key} in the store: {message}")]
    Corrupt {
        /// The record's key.
        key: String,
        /// What is wrong with it.
        message: String,
    },
}

/// The open store.
///
/// sled latches an IO error: after a write or flush fails (a full disk), every later
/// operation of that `Db` fails with the same error, even once space is back. So a failed
/// write marks the store unwritable, and [`Store::recover`] (called periodically by the
/// server while the store is unwritable) closes the `Db` and opens it again — sled's own
/// recovery keeps every flushed write — and checks with a flushed probe write that writes
/// succeed again.
pub struct Store {
    path: PathBuf,
    /// The open `Db` and its trees; `None` only while it is being reopened.
    handles: std::sync::RwLock<Option<std::sync::Arc<Handles>>>,
    flushes: GroupCommit,
    /// A write or flush failed and the store has not been reopened and probed since.
    failed: std::sync::atomic::AtomicBool,
    /// Held while test results are recorded: they read and rewrite buckets of test states.
    test_writes: std::sync::Mutex<()>,
    /// Every run by status, for listing; written under its lock together with the `runs`
    /// tree, so the two agree.
    /// Boxed: its maps would make every `Store` large.
    index: std::sync::RwLock<Box<RunIndex>>,
}

/// The open `Db` and its trees.
struct Handles {
    db: sled::Db,
    objects: sled::Tree,
    meta: sled::Tree,
    runs: sled::Tree,
    run_workflows: sled::Tree,
    steps: sled::Tree,
}

impl Handles {
    /// The run records (the `runs` tree after its index entries), in id order.
    fn run_records(&self) -> sled::Iter {
        self.runs.range(&[1u8][..]..)
    }
}

/// Group commit: one sled flush at a time, each covering every write made before it
/// started. sled seals and syncs its current buffer on every `flush` call, so many threads
/// flushing at once (runs, webhook deliveries) cost one device sync each; here a caller
/// waits for the flush in progress (it may have started before the caller's write) and
/// then for the next one, which one of the waiters runs for all of them.
#[derive(Default)]
struct GroupCommit {
    state: std::sync::Mutex<FlushState>,
    finished: std::sync::Condvar,
}

#[derive(Default)]
struct FlushState {
    /// A flush is running.
    running: bool,
    /// Flushes started so far; the running one, if any, is number `started`.
    started: u64,
    /// The last flush finished.
    finished: u64,
    /// The last flush that failed, and why.
    failed: Option<(u64, std::io::ErrorKind, String)>,
}

impl GroupCommit {
    /// Returns once everything written before the call is on disk.
    fn flush(&self, db: &sled::Db) -> Result<(), sled::Error> {
        let lock = || self.state.lock().unwrap_or_else(|e| e.into_inner());
        let mut state = lock();
        // A flush already running may have started before this caller's write: only the
        // next one to start is sure to cover it.
        let needed = state.started + 1;
        loop {
            if state.finished >= needed {
                return match &state.failed {
                    Some((number, kind, message)) if *number >= needed => {
                        Err(sled::Error::Io(std::io::Error::new(*kind, message.clone())))
                    }
                    _ => Ok(()),
                };
            }
            if !state.running {
                state.running = true;
                state.started += 1;
                let number = state.started;
                drop(state);
                let result = db.flush();
                let mut state = lock();
                state.running = false;
                state.finished = number;
                if let Err(err) = &result {
                    let kind = match err {
                        sled::Error::Io(io) => io.kind(),
                        _ => std::io::ErrorKind::Other,
                    };
                    state.failed = Some((number, kind, err.to_string()));
                }
                drop(state);
                self.finished.notify_all();
                return result.map(|_| ());
            }
            state = self.finished.wait(state).unwrap_or_else(|e| e.into_inner());
        }
    }
}

impl Store {
    /// Opens (creating if needed) the store in a data directory, holding it for this process.
    pub fn open(data_dir: &Path) -> Result<Store, StoreError> {
        // A handle this process just dropped is released by sled's own threads a moment
        // later: only then is the lock free again. While the owner file names this process,
        // or names no one (a store dropped removes it before sled lets go; another process
        // writes it a moment after taking the lock), the lock is waited for; another
        // process's lock is reported at once.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(2);
        loop {
            match Store::open_once(data_dir) {
                Err(StoreError::Locked { .. })
                    if std::time::Instant::now() < deadline
                        && (held_by_this_process(data_dir) || owner_unnamed(data_dir)) =>
                {
                    std::thread::sleep(std::time::Duration::from_millis(10));
                }
                other => return other,
            }
        }
    }

    fn open_once(data_dir: &Path) -> Result<Store, StoreError> {
        /// sled's page cache.
        const CACHE_BYTES: u64 = 16 << 20;
        let shown = data_dir.display().to_string();
        fs::create_dir_all(data_dir).map_err(|source| StoreError::DataDir {
            path: shown.clone(),
            source,
        })?;
        let db_path = data_dir.join("db");
        let db = sled::Config::new()
            .path(&db_path)
            // sled's default page cache is 1 GiB; the records here are small and read
            // mostly through the server's in-memory view.
            .cache_capacity(CACHE_BYTES)
            .open()
            .map_err(|source| match source {
                sled::Error::Io(ref io)
                    if io.kind() == std::io::ErrorKind::WouldBlock
                        || io.to_string().contains("lock") =>
                {
                    StoreError::Locked {
                        path: shown.clone(),
                        holder: read_owner(data_dir),
                    }
                }
                sled::Error::Io(io) if io.kind() == std::io::ErrorKind::PermissionDenied => {
                    StoreError::DataDir {
                        path: shown.clone(),
                        source: io,
                    }
                }
                source => StoreError::Sled {
                    path: shown.clone(),
                    source,
                },
            })?;
        let owner = format!(
            "{}\n{}\n",
            std::process::id(),
            std::env::args().collect::<Vec<_>>().join(" ")
        );
        fs::write(data_dir.join(OWNER_FILE), owner).map_err(|source| StoreError::DataDir {
            path: shown.clone(),
            source,
        })?;
        Store::on(db, data_dir)
    }

    /// Whether `data_dir` holds a store (an earlier [`Store::open`] created it).
    pub fn exists(data_dir: &Path) -> bool {
        data_dir.join("db").exists()
    }

    /// An empty store in a temporary place of sled's own, removed when it is dropped:
    /// what read-only commands read where no store exists yet, so that they create nothing
    /// in the project.
    pub fn empty() -> Result<Store, StoreError> {
        let db = sled::Config::new()
            .temporary(true)
            .cache_capacity(1 << 20)
            .open()
            .map_err(|source| StoreError::Sled {
                path: "(temporary)".to_owned(),
                source,
            })?;
        // A path no data directory has: nothing is ever written there.
        Store::on(db, &std::env::temp_dir().join("orchestrator-no-store"))
    }

    /// The store on an open database whose data directory is `data_dir`.
    fn on(db: sled::Db, data_dir: &Path) -> Result<Store, StoreError> {
        let shown = data_dir.display().to_string();
        let sled_error = |source| StoreError::Sled {
            path: shown.clone(),
            source,
        };
        let objects = db.open_tree("objects").map_err(sled_error)?;
        let meta = db.open_tree("meta").map_err(sled_error)?;
        let runs = db.open_tree("runs").map_err(sled_error)?;
        let run_workflows = db.open_tree("run_workflows").map_err(sled_error)?;
        let steps = db.open_tree("steps").map_err(sled_error)?;
        let store = Store {
            path: data_dir.to_owned(),
            handles: std::sync::RwLock::new(Some(std::sync::Arc::new(Handles {
                db,
                objects,
                meta,
                runs,
                run_workflows,
                steps,
            }))),
            flushes: GroupCommit::default(),
            failed: std::sync::atomic::AtomicBool::new(false),
            test_writes: std::sync::Mutex::new(()),
            index: std::sync::RwLock::new(Box::default()),
        };
        store.build_run_index()?;
        store.build_finish_index()?;
        let index = store.load_run_index()?;
        **store.index.write().unwrap_or_else(|e| e.into_inner()) = index;
        Ok(store)
    }

    /// Starts a thread that, every `every` until `stop` is set, tries to [`recover`] the
    /// store while it is unwritable: writes succeed again once space is back, without a
    /// restart.
    ///
    /// [`recover`]: Store::recover
    pub fn spawn_recovery(
        store: std::sync::Arc<Store>,
        stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
        every: std::time::Duration,
    ) -> std::io::Result<std::thread::JoinHandle<()>> {
        std::thread::Builder::new()
            .name("store recovery".into())
            .spawn(move || {
                let step = std::time::Duration::from_millis(50);
                let mut waited = std::time::Duration::ZERO;
                while !stop.load(std::sync::atomic::Ordering::SeqCst) {
                    std::thread::sleep(step);
                    waited += step;
                    if waited >= every {
                        waited = std::time::Duration::ZERO;
                        if !store.is_writable() {
                            store.recover();
                        }
                    }
                }
            })
    }

    /// The open `Db` and its trees.
    fn handles(&self) -> Result<std::sync::Arc<Handles>, StoreError> {
        self.handles
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
            .ok_or_else(|| {
                self.sled_error(sled::Error::Io(std::io::Error::other(
                    "the store could not be reopened after a write error",
                )))
            })
    }

    /// Whether writes are expected to succeed: false from a failed write or flush (a full
    /// disk) until [`Store::recover`] succeeds.
    pub fn is_writable(&self) -> bool {
        !self.failed.load(std::sync::atomic::Ordering::SeqCst)
    }

    /// After a failed write: closes and reopens the `Db` (sled keeps failing once an IO
    /// error happened) and makes a flushed probe write. Returns whether the store is
    /// writable again; does nothing when no write failed.
    pub fn recover(&self) -> bool {
        if self.is_writable() {
            return true;
        }
        {
            let mut guard = self.handles.write().unwrap_or_else(|e| e.into_inner());
            // The old `Db` must be gone before it is opened again: sled locks its files
            // (`open` waits for a moment while a call in flight still holds it).
            *guard = None;
            match Store::open(&self.path) {
                Ok(mut reopened) => {
                    *guard = reopened
                        .handles
                        .get_mut()
                        .unwrap_or_else(|e| e.into_inner())
                        .take();
                    // What the reopened store holds: writes lost with the failure are gone
                    // from the listing too.
                    *self.index.write().unwrap_or_else(|e| e.into_inner()) =
                        std::mem::take(reopened.index.get_mut().unwrap_or_else(|e| e.into_inner()));
                }
                Err(err) => {
                    tracing::warn!("the store is still unwritable: {err}");
                    return false;
                }
            }
        }
        // Recovery from here on is a probe: a write flushed to disk.
        self.failed
            .store(false, std::sync::atomic::Ordering::SeqCst);
        let probe = chrono::Utc::now().to_rfc3339();
        match self.put_state("meta", "health/write_probe", &probe, true) {
            Ok(()) => {
                tracing::info!("the store is writable again");
                true
            }
            Err(err) => {
                tracing::debug!("the store is still unwritable: {err}");
                false
            }
        }
    }

    /// A store written before the run index existed has runs and no index: the index is
    /// built once, from every run, and flushed.
    fn build_run_index(&self) -> Result<(), StoreError> {
        let h = self.handles()?;
        if h.runs.scan_prefix(INDEX_PREFIX).next().is_some() || h.run_records().next().is_none() {
            return Ok(());
        }
        let mut batch = sled::Batch::default();
        for entry in h.run_records() {
            let (key, value) = entry.map_err(|e| self.sled_error(e))?;
            let run: RunIndexFields = decode(&key, &value)?;
            batch.insert(index_key(&run.workflow_id, &run.id), encode(&run.status));
        }
        h.runs.apply_batch(batch).map_err(|e| self.sled_error(e))?;
        self.flush_on(&h)
    }

    /// A store written before the index of finish times existed: the index is built once,
    /// from every run (reading their status and finish time only), and marked built.
    fn build_finish_index(&self) -> Result<(), StoreError> {
        let h = self.handles()?;
        if h.runs
            .contains_key(FINISH_PREFIX)
            .map_err(|e| self.sled_error(e))?
        {
            return Ok(());
        }
        let mut batch = sled::Batch::default();
        for entry in h.run_records() {
            let (key, value) = entry.map_err(|e| self.sled_error(e))?;
            let run: FinishFields = decode(&key, &value)?;
            if let Some(key) = finish_key(&run.id, run.status, run.finished_at.as_deref()) {
                batch.insert(key, &[][..]);
            }
        }
        batch.insert(FINISH_PREFIX, &[][..]);
        h.runs.apply_batch(batch).map_err(|e| self.sled_error(e))?;
        self.flush_on(&h)
    }

    /// The in-memory run index, from the per-workflow index of the `runs` tree (keys and
    /// statuses only: no record is decoded).
    fn load_run_index(&self) -> Result<RunIndex, StoreError> {
        let h = self.handles()?;
        let mut index = RunIndex::default();
        for entry in h.runs.scan_prefix(INDEX_PREFIX) {
            let (key, value) = entry.map_err(|e| self.sled_error(e))?;
            let status: Status = decode(&key, &value)?;
            let rest = &key[INDEX_PREFIX.len()..];
            if let Some(at) = rest.iter().position(|&b| b == 0) {
                index.insert_new(
                    &String::from_utf8_lossy(&rest[at + 1..]),
                    &String::from_utf8_lossy(&rest[..at]),
                    status,
                );
            }
        }
        Ok(index)
    }

    /// Makes every write made so far durable (one flush for all the threads asking at
    /// once: see [`GroupCommit`]). The store's own writes use [`Store::flush_on`].
    #[cfg(test)]
    fn flush(&self) -> Result<(), StoreError> {
        let handles = self.handles()?;
        self.flush_on(&handles)
    }

    /// Makes every write made so far durable (one flush for all the threads asking at
    /// once: see [`GroupCommit`]), with the handles the caller holds: taking them again
    /// could wait behind a reopen that waits for these to be released.
    fn flush_on(&self, handles: &Handles) -> Result<(), StoreError> {
        self.flushes
            .flush(&handles.db)
            .map_err(|e| self.sled_error(e))
    }

    /// A sled error as this store reports it; an IO error marks the store unwritable.
    fn sled_error(&self, source: sled::Error) -> StoreError {
        if matches!(source, sled::Error::Io(_)) {
            self.failed.store(true, std::sync::atomic::Ordering::SeqCst);
        }
        StoreError::Sled {
            path: self.path.display().to_string(),
            source,
        }
    }

    /// Every object record, live or not.
    pub fn objects(&self) -> Result<BTreeMap<ObjectKey, ObjectRecord>, StoreError> {
        let h = self.handles()?;
        let mut records = BTreeMap::new();
        for entry in h.objects.iter() {
            let (key, value) = entry.map_err(|e| self.sled_error(e))?;
            let record: ObjectRecord = decode(&key, &value)?;
            records.insert(record.key.clone(), record);
        }
        Ok(records)
    }

    /// One object record.
    pub fn object(&self, key: &ObjectKey) -> Result<Option<ObjectRecord>, StoreError> {
        let h = self.handles()?;
        let bytes = key.to_bytes();
        h.objects
            .get(&bytes)
            .map_err(|e| self.sled_error(e))?
            .map(|value| decode(&bytes, &value))
            .transpose()
    }

    /// The status of a source.
    pub fn source_status(&self, source: &str) -> Result<Option<SourceStatus>, StoreError> {
        let h = self.handles()?;
        let key = format!("source/{source}");
        h.meta
            .get(key.as_bytes())
            .map_err(|e| self.sled_error(e))?
            .map(|value| decode(key.as_bytes(), &value))
            .transpose()
    }

    /// The reconcile memo last stored for a source (see [`Store::commit`]), if it is still
    /// valid: no object record has changed since it was written.
    pub fn memo(&self, source: &str) -> Result<Option<Vec<u8>>, StoreError> {
        let key = format!("{MEMO_PREFIX}{source}");
        Ok(self
            .handles()?
            .meta
            .get(key.as_bytes())
            .map_err(|e| self.sled_error(e))?
            .map(|value| value.to_vec()))
    }

    /// Writes object records and a source status, then flushes: when this returns `Ok`, the
    /// change is on disk.
    ///
    /// Memos describe the object records as they were when the memo was written, so any write
    /// of records first drops every memo (sled recovers a prefix of its operations after a
    /// crash, so no recovered state has changed records beside an old memo). `memo`, when
    /// given, is stored for the status' source after the records.
    ///
    /// The records are written in batches of [`OBJECT_BATCH`]: one sled batch of 100,000
    /// records (the cold reconcile of a large project) left about 1 GiB allocated inside
    /// sled that it never gave back, where batches of 1,000 leave about 60 MiB. A crash
    /// between two batches leaves some records written and no memo, and the next reconcile
    /// writes the rest.
    pub fn commit(
        &self,
        records: &[ObjectRecord],
        status: Option<&SourceStatus>,
        memo: Option<&[u8]>,
    ) -> Result<(), StoreError> {
        let h = self.handles()?;
        if !records.is_empty() {
            let mut stale = sled::Batch::default();
            for entry in h.meta.scan_prefix(MEMO_PREFIX.as_bytes()).keys() {
                stale.remove(entry.map_err(|e| self.sled_error(e))?);
            }
            h.meta.apply_batch(stale).map_err(|e| self.sled_error(e))?;
            for part in records.chunks(OBJECT_BATCH) {
                let mut batch = sled::Batch::default();
                for record in part {
                    batch.insert(record.key.to_bytes(), encode(record));
                }
                h.objects
                    .apply_batch(batch)
                    .map_err(|e| self.sled_error(e))?;
            }
        }
        if let Some(status) = status {
            let mut batch = sled::Batch::default();
            batch.insert(
                format!("source/{}", status.source).as_bytes(),
                encode(status),
            );
            if let Some(memo) = memo {
                batch.insert(format!("{MEMO_PREFIX}{}", status.source).as_bytes(), memo);
            }
            h.meta.apply_batch(batch).map_err(|e| self.sled_error(e))?;
        }
        self.flush_on(&h)?;
        Ok(())
    }
}

/// Run records: one per run in `runs`, its steps in `steps` under the run id, so a step's
/// state change writes one small record.
impl Store {
    /// Writes a run and some of its steps; with `durable`, flushes before returning. The run
    /// record and its entry in the per-workflow index are written in one batch; the run's
    /// workflow only the first time (it never changes), before the record.
    pub fn save_run(
        &self,
        run: Option<&RunRecord>,
        steps: &[&StepRecord],
        durable: bool,
    ) -> Result<(), StoreError> {
        let h = self.handles()?;
        // Steps first: sled applies a batch to one tree, so a reader may see one tree's
        // batch without the other's. Whoever reads a run and then its steps (the API, a
        // follower) and finds the run finished then finds its steps final too.
        if !steps.is_empty() {
            let mut batch = sled::Batch::default();
            for step in steps {
                batch.insert(step_key(&step.run_id, step.index), encode(*step));
            }
            h.steps.apply_batch(batch).map_err(|e| self.sled_error(e))?;
        }
        if let Some(run) = run {
            // The workflow before the record: sled recovers a prefix of its writes after a
            // crash, so no record is found without its workflow.
            let key = run.id.as_bytes();
            if !h
                .run_workflows
                .contains_key(key)
                .map_err(|e| self.sled_error(e))?
            {
                h.run_workflows
                    .insert(key, encode(&run.workflow))
                    .map_err(|e| self.sled_error(e))?;
            }
            let mut batch = sled::Batch::default();
            batch.insert(key, encode_as(RUN_FORMAT_VERSION, &run.head()));
            batch.insert(index_key(&run.workflow_id, &run.id), encode(&run.status));
            if let Some(key) = finish_key(&run.id, run.status, run.finished_at.as_deref()) {
                batch.insert(key, &[][..]);
            }
            let mut index = self.index.write().unwrap_or_else(|e| e.into_inner());
            h.runs.apply_batch(batch).map_err(|e| self.sled_error(e))?;
            index.insert(&run.id, &run.workflow_id, run.status);
        }
        if durable {
            self.flush_on(&h)?;
        }
        Ok(())
    }

    /// Writes new runs, each under a claim: a state record written only where its key is
    /// absent, the run (its steps and workflow) and the state records that go with it
    /// written only with it. All of them in one atomic write — a sled transaction over
    /// their trees, in which each claim is checked, so a crash leaves all of them or none —
    /// then flushed. Returns, for each run, whether it was written (its claim was free).
    /// For the webhook receiver: a batch of deliveries' claims and records with the runs
    /// they started, one lock of sled's writers and one flush for the whole batch. The runs
    /// must be new (their workflows are written unconditionally).
    pub fn create_claimed_runs(&self, runs: &[ClaimedRun]) -> Result<Vec<bool>, StoreError> {
        let h = self.handles()?;
        let mut trees = vec![h.runs.clone(), h.run_workflows.clone(), h.steps.clone()];
        let mut names: Vec<&str> = Vec::new();
        for write in runs
            .iter()
            .flat_map(|r| std::iter::once(&r.claim).chain(&r.states))
        {
            if !names.contains(&write.tree) {
                names.push(write.tree);
                trees.push(h.db.open_tree(write.tree).map_err(|e| self.sled_error(e))?);
            }
        }
        let tree_of =
            |write: &StateWrite| 3 + names.iter().position(|n| *n == write.tree).unwrap_or(0);
        /// A run's values as they are stored: its record, index entry, status, workflow and
        /// steps (key, value).
        struct Encoded {
            head: Vec<u8>,
            index_key: Vec<u8>,
            status: Vec<u8>,
            workflow: Vec<u8>,
            steps: Vec<(Vec<u8>, Vec<u8>)>,
        }
        let encoded: Vec<Encoded> = runs
            .iter()
            .map(|claimed| {
                let run = claimed.run;
                Encoded {
                    head: encode_as(RUN_FORMAT_VERSION, &run.head()),
                    index_key: index_key(&run.workflow_id, &run.id),
                    status: encode(&run.status),
                    workflow: encode(&run.workflow),
                    steps: claimed
                        .steps
                        .iter()
                        .map(|step| (step_key(&step.run_id, step.index), encode(step)))
                        .collect(),
                }
            })
            .collect();
        let mut index = self.index.write().unwrap_or_else(|e| e.into_inner());
        let written: sled::transaction::TransactionResult<Vec<bool>, ()> =
            trees.as_slice().transaction(|trees| {
                let (runs_tree, workflows, steps_tree) = (&trees[0], &trees[1], &trees[2]);
                let mut written = Vec::with_capacity(runs.len());
                for (claimed, encoded) in runs.iter().zip(&encoded) {
                    let claims = &trees[tree_of(&claimed.claim)];
                    if claims.get(claimed.claim.key.as_bytes())?.is_some() {
                        written.push(false);
                        continue;
                    }
                    claims.insert(claimed.claim.key.as_bytes(), claimed.claim.value.as_slice())?;
                    let run = claimed.run;
                    for (key, value) in &encoded.steps {
                        steps_tree.insert(key.as_slice(), value.as_slice())?;
                    }
                    workflows.insert(run.id.as_bytes(), encoded.workflow.as_slice())?;
                    runs_tree.insert(run.id.as_bytes(), encoded.head.as_slice())?;
                    runs_tree.insert(encoded.index_key.as_slice(), encoded.status.as_slice())?;
                    if let Some(key) = finish_key(&run.id, run.status, run.finished_at.as_deref()) {
                        runs_tree.insert(key, &[][..])?;
                    }
                    for write in &claimed.states {
                        trees[tree_of(write)]
                            .insert(write.key.as_bytes(), write.value.as_slice())?;
                    }
                    written.push(true);
                }
                Ok(written)
            });
        let written = written.map_err(|err| match err {
            sled::transaction::TransactionError::Storage(e) => self.sled_error(e),
            sled::transaction::TransactionError::Abort(()) => {
                self.sled_error(sled::Error::ReportableBug("transaction aborted".into()))
            }
        })?;
        for (claimed, _) in runs.iter().zip(&written).filter(|(_, w)| **w) {
            index.insert(
                &claimed.run.id,
                &claimed.run.workflow_id,
                claimed.run.status,
            );
        }
        drop(index);
        self.flush_on(&h)?;
        Ok(written)
    }

    /// Flushes finished since the store was opened (each one a group commit, see
    /// [`GroupCommit`]): how many device syncs writers shared.
    pub fn flushes(&self) -> u64 {
        self.flushes
            .state
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .finished
    }

    /// One run, whole: its record and its workflow.
    pub fn run(&self, id: &str) -> Result<Option<RunRecord>, StoreError> {
        let h = self.handles()?;
        let Some(value) = h.runs.get(id.as_bytes()).map_err(|e| self.sled_error(e))? else {
            return Ok(None);
        };
        let head: RunHead = decode(id.as_bytes(), &value)?;
        let workflow = self.workflow_of(&h, id, &value)?;
        Ok(Some(head.with_workflow(workflow)))
    }

    /// One run without its workflow.
    pub fn run_head(&self, id: &str) -> Result<Option<RunHead>, StoreError> {
        let h = self.handles()?;
        h.runs
            .get(id.as_bytes())
            .map_err(|e| self.sled_error(e))?
            .map(|value| decode(id.as_bytes(), &value))
            .transpose()
    }

    /// The expanded workflow of a run whose record is `record`: in `run_workflows`, or in a
    /// record an older release wrote (format 1).
    fn workflow_of(&self, h: &Handles, id: &str, record: &[u8]) -> Result<Value, StoreError> {
        if let Some(value) = h
            .run_workflows
            .get(id.as_bytes())
            .map_err(|e| self.sled_error(e))?
        {
            return decode(id.as_bytes(), &value);
        }
        #[derive(Deserialize)]
        struct Inside {
            workflow: Value,
        }
        match record.first() {
            Some(&FORMAT_VERSION) => Ok(decode::<Inside>(id.as_bytes(), record)?.workflow),
            _ => Err(StoreError::Corrupt {
                key: id.to_owned(),
                message: "the run's workflow is missing".to_owned(),
            }),
        }
    }

    /// Every run without its workflow, oldest first (run ids sort by creation time). For a
    /// page of them, see [`Store::list_runs`]; for one workflow's, [`Store::workflow_runs`].
    pub fn runs(&self) -> Result<Vec<RunHead>, StoreError> {
        let h = self.handles()?;
        h.run_records()
            .map(|entry| {
                let (key, value) = entry.map_err(|e| self.sled_error(e))?;
                decode(&key, &value)
            })
            .collect()
    }

    /// A page of runs, newest first, without their workflows, and how many match the
    /// filter: only the page's records are decoded.
    pub fn list_runs(
        &self,
        filter: &RunFilter,
        offset: usize,
        limit: usize,
    ) -> Result<RunPage, StoreError> {
        let h = self.handles()?;
        let index = self.index.read().unwrap_or_else(|e| e.into_inner());
        let (total, ids) = self.page_ids(&h, &index, filter, offset, limit)?;
        let mut runs = Vec::with_capacity(ids.len());
        for id in ids {
            // A run deleted since the index was read is left out.
            if let Some(value) = h.runs.get(id.as_bytes()).map_err(|e| self.sled_error(e))? {
                runs.push(decode(id.as_bytes(), &value)?);
            }
        }
        Ok(RunPage { runs, total })
    }

    /// A page of runs as lists show them — each run's [`RunSummary`], serialized as JSON —
    /// newest first, and how many match the filter. Summaries are cached in memory (the
    /// newest [`SUMMARY_CACHE_RUNS`] read), dropped whenever their run is written or
    /// deleted: the default page decodes nothing, and no listing reads `run_workflows`.
    pub fn list_run_summaries(
        &self,
        filter: &RunFilter,
        offset: usize,
        limit: usize,
    ) -> Result<SummaryPage, StoreError> {
        let h = self.handles()?;
        // Held while missing summaries are read and cached: a run is written under the
        // index's write lock, which drops its summary, so none cached here is stale.
        let index = self.index.read().unwrap_or_else(|e| e.into_inner());
        let (total, ids) = self.page_ids(&h, &index, filter, offset, limit)?;
        let mut cache = index.summaries.lock().unwrap_or_else(|e| e.into_inner());
        let mut runs = Vec::with_capacity(ids.len());
        for id in ids {
            if let Some(summary) = cache.get(id.as_ref()) {
                runs.push(summary.clone());
                continue;
            }
            // A run deleted since the index was read is left out.
            let Some(value) = h.runs.get(id.as_bytes()).map_err(|e| self.sled_error(e))? else {
                continue;
            };
            let head: RunHead = decode(id.as_bytes(), &value)?;
            let summary: Arc<str> = serde_json::to_string(&RunSummary::of_head(&head))
                .map_err(|e| StoreError::Corrupt {
                    key: id.to_string(),
                    message: e.to_string(),
                })?
                .into();
            cache.insert(id.into(), summary.clone());
            while cache.len() > SUMMARY_CACHE_RUNS {
                cache.pop_first();
            }
            runs.push(summary);
        }
        Ok(SummaryPage { runs, total })
    }

    /// How many runs match `filter`, and the ids of a page of them, newest first: from the
    /// in-memory index, or for one workflow from its keys in the `runs` tree.
    fn page_ids<'i>(
        &self,
        h: &Handles,
        index: &'i RunIndex,
        filter: &RunFilter,
        offset: usize,
        limit: usize,
    ) -> Result<(usize, Vec<Cow<'i, str>>), StoreError> {
        let total = index.total(filter.workflow.as_deref(), filter.status);
        let Some(workflow) = &filter.workflow else {
            return Ok((total, index.page(filter.status, offset, limit)));
        };
        let prefix = index_key(workflow, "");
        let mut ids = Vec::new();
        let mut skipped = 0;
        for entry in h.runs.scan_prefix(&prefix).rev() {
            if ids.len() == limit {
                break;
            }
            let (key, value) = entry.map_err(|e| self.sled_error(e))?;
            if let Some(status) = filter.status {
                if decode::<Status>(&key, &value)? != status {
                    continue;
                }
            }
            if skipped < offset {
                skipped += 1;
                continue;
            }
            ids.push(
                String::from_utf8_lossy(&key[prefix.len()..])
                    .into_owned()
                    .into(),
            );
        }
        Ok((total, ids))
    }

    /// The expanded workflow of a run (what [`Store::run`] adds to its head).
    pub fn run_workflow(&self, id: &str) -> Result<Option<Value>, StoreError> {
        let h = self.handles()?;
        match h.runs.get(id.as_bytes()).map_err(|e| self.sled_error(e))? {
            Some(record) => Ok(Some(self.workflow_of(&h, id, &record)?)),
            None => Ok(None),
        }
    }

    /// The ids and statuses of a workflow's runs, oldest first, read from the index alone.
    pub fn workflow_run_ids(&self, workflow_id: &str) -> Result<Vec<(String, Status)>, StoreError> {
        let h = self.handles()?;
        let prefix = index_key(workflow_id, "");
        h.runs
            .scan_prefix(&prefix)
            .map(|entry| {
                let (key, value) = entry.map_err(|e| self.sled_error(e))?;
                let id = String::from_utf8_lossy(&key[prefix.len()..]).into_owned();
                Ok((id, decode(&key, &value)?))
            })
            .collect()
    }

    /// A workflow's runs without their workflows, oldest first: only its own records are
    /// decoded.
    pub fn workflow_runs(&self, workflow_id: &str) -> Result<Vec<RunHead>, StoreError> {
        let mut runs = Vec::new();
        for (id, _) in self.workflow_run_ids(workflow_id)? {
            if let Some(run) = self.run_head(&id)? {
                runs.push(run);
            }
        }
        Ok(runs)
    }

    /// The newest run of each workflow that has one, decoding only those (without their
    /// workflows).
    pub fn latest_runs(&self) -> Result<Vec<RunHead>, StoreError> {
        let h = self.handles()?;
        let mut newest: BTreeMap<Vec<u8>, Vec<u8>> = BTreeMap::new();
        for key in h.runs.scan_prefix(INDEX_PREFIX).keys() {
            let key = key.map_err(|e| self.sled_error(e))?;
            let key = &key[INDEX_PREFIX.len()..];
            if let Some(at) = key.iter().position(|&b| b == 0) {
                // Keys come in order: the last one per workflow is its newest run.
                newest.insert(key[..at].to_vec(), key[at + 1..].to_vec());
            }
        }
        let mut runs = Vec::new();
        for id in newest.values() {
            if let Some(run) = self.run_head(&String::from_utf8_lossy(id))? {
                runs.push(run);
            }
        }
        Ok(runs)
    }

    /// The ids of the runs in one of `statuses`, oldest first, read from the in-memory
    /// index alone.
    pub fn run_ids_with_status(&self, statuses: &[Status]) -> Result<Vec<String>, StoreError> {
        let index = self.index.read().unwrap_or_else(|e| e.into_inner());
        let mut ids: Vec<String> = statuses
            .iter()
            .flat_map(|status| index.by_status[*status as usize].keys())
            .map(|id| id.to_string())
            .collect();
        ids.sort();
        ids.dedup();
        Ok(ids)
    }

    /// The runs created at or after the run id `from` (ids sort by creation time), oldest
    /// first, without their workflows.
    pub fn runs_from(&self, from: &str) -> Result<Vec<RunHead>, StoreError> {
        let h = self.handles()?;
        h.runs
            .range(from.as_bytes().max(&[1u8][..])..)
            .map(|entry| {
                let (key, value) = entry.map_err(|e| self.sled_error(e))?;
                decode(&key, &value)
            })
            .collect()
    }

    /// The finished runs whose finish time is `since` or later, in order of finishing,
    /// without their workflows: found through the index of finish times, so only those
    /// records are read, however many runs are stored.
    pub fn runs_finished_since(
        &self,
        since: chrono::DateTime<chrono::Utc>,
    ) -> Result<Vec<RunHead>, StoreError> {
        let h = self.handles()?;
        let mut from = FINISH_PREFIX.to_vec();
        from.extend_from_slice(&finish_millis(since).to_be_bytes());
        let mut runs = Vec::new();
        for key in h.runs.range(from..).keys() {
            let key = key.map_err(|e| self.sled_error(e))?;
            let Some(id) = key
                .strip_prefix(FINISH_PREFIX)
                .and_then(|rest| rest.get(8..))
            else {
                break;
            };
            let id = String::from_utf8_lossy(id);
            // A key left by a run deleted (or finished again later) reads nothing or a
            // record whose finish time the caller checks.
            if let Some(run) = self.run_head(&id)? {
                runs.push(run);
            }
        }
        Ok(runs)
    }

    /// The steps of a run, in workflow order.
    pub fn steps(&self, run_id: &str) -> Result<Vec<StepRecord>, StoreError> {
        let h = self.handles()?;
        let mut prefix = run_id.as_bytes().to_vec();
        prefix.push(0);
        h.steps
            .scan_prefix(&prefix)
            .map(|entry| {
                let (key, value) = entry.map_err(|e| self.sled_error(e))?;
                decode(&key, &value)
            })
            .collect()
    }

    /// A record in one of the runtime state trees (`schedules`, `deliveries`, ...): what
    /// the scheduler, the webhook receiver and the like remember across restarts.
    pub fn state<T: DeserializeOwned>(
        &self,
        tree: &str,
        key: &str,
    ) -> Result<Option<T>, StoreError> {
        let h = self.handles()?;
        let tree = h.db.open_tree(tree).map_err(|e| self.sled_error(e))?;
        tree.get(key.as_bytes())
            .map_err(|e| self.sled_error(e))?
            .map(|value| decode(key.as_bytes(), &value))
            .transpose()
    }

    /// Every record of a state tree whose key starts with `prefix`, in key order.
    pub fn states<T: DeserializeOwned>(
        &self,
        tree: &str,
        prefix: &str,
    ) -> Result<Vec<(String, T)>, StoreError> {
        let h = self.handles()?;
        let tree = h.db.open_tree(tree).map_err(|e| self.sled_error(e))?;
        tree.scan_prefix(prefix.as_bytes())
            .map(|entry| {
                let (key, value) = entry.map_err(|e| self.sled_error(e))?;
                Ok((
                    String::from_utf8_lossy(&key).into_owned(),
                    decode(&key, &value)?,
                ))
            })
            .collect()
    }

    /// Writes a state record; with `durable`, flushed before this returns.
    pub fn put_state<T: Serialize>(
        &self,
        tree: &str,
        key: &str,
        value: &T,
        durable: bool,
    ) -> Result<(), StoreError> {
        let h = self.handles()?;
        let opened = h.db.open_tree(tree).map_err(|e| self.sled_error(e))?;
        opened
            .insert(key.as_bytes(), encode(value))
            .map_err(|e| self.sled_error(e))?;
        if durable {
            self.flush_on(&h)?;
        }
        Ok(())
    }

    /// Writes several state records of one tree in one batch; with `durable`, flushed
    /// before this returns.
    pub fn put_states<T: Serialize>(
        &self,
        tree: &str,
        records: &[(String, T)],
        durable: bool,
    ) -> Result<(), StoreError> {
        let h = self.handles()?;
        let opened = h.db.open_tree(tree).map_err(|e| self.sled_error(e))?;
        let mut batch = sled::Batch::default();
        for (key, value) in records {
            batch.insert(key.as_bytes(), encode(value));
        }
        opened.apply_batch(batch).map_err(|e| self.sled_error(e))?;
        if durable {
            self.flush_on(&h)?;
        }
        Ok(())
    }

    /// Writes a state record only if none exists under `key` (atomically); returns whether
    /// it was written. With `durable`, flushed before this returns.
    pub fn insert_state_once<T: Serialize>(
        &self,
        tree: &str,
        key: &str,
        value: &T,
        durable: bool,
    ) -> Result<bool, StoreError> {
        let h = self.handles()?;
        let opened = h.db.open_tree(tree).map_err(|e| self.sled_error(e))?;
        let written = opened
            .compare_and_swap(key.as_bytes(), None as Option<&[u8]>, Some(encode(value)))
            .map_err(|e| self.sled_error(e))?
            .is_ok();
        if written && durable {
            self.flush_on(&h)?;
        }
        Ok(written)
    }

    /// Removes state records, durably.
    pub fn remove_states(&self, tree: &str, keys: &[String]) -> Result<(), StoreError> {
        let h = self.handles()?;
        let opened = h.db.open_tree(tree).map_err(|e| self.sled_error(e))?;
        let mut batch = sled::Batch::default();
        for key in keys {
            batch.remove(key.as_bytes());
        }
        opened.apply_batch(batch).map_err(|e| self.sled_error(e))?;
        self.flush_on(&h)?;
        Ok(())
    }

    /// Removes runs of one workflow, their steps, their index entries and what the state
    /// trees of [`RUN_STATE_TREES`] keep under their ids, durably.
    pub fn delete_runs(&self, workflow_id: &str, ids: &[String]) -> Result<(), StoreError> {
        let h = self.handles()?;
        for tree in RUN_STATE_TREES {
            let opened = h.db.open_tree(tree).map_err(|e| self.sled_error(e))?;
            let mut batch = sled::Batch::default();
            for id in ids {
                batch.remove(id.as_bytes());
            }
            opened.apply_batch(batch).map_err(|e| self.sled_error(e))?;
        }
        for id in ids {
            let mut prefix = id.as_bytes().to_vec();
            prefix.push(0);
            let mut batch = sled::Batch::default();
            for key in h.steps.scan_prefix(&prefix).keys() {
                batch.remove(key.map_err(|e| self.sled_error(e))?);
            }
            h.steps.apply_batch(batch).map_err(|e| self.sled_error(e))?;
            // The record before its workflow, the reverse of their writing.
            let mut batch = sled::Batch::default();
            if let Some(value) = h.runs.get(id.as_bytes()).map_err(|e| self.sled_error(e))? {
                let run: FinishFields = decode(id.as_bytes(), &value)?;
                if let Some(key) = finish_key(id, run.status, run.finished_at.as_deref()) {
                    batch.remove(key);
                }
            }
            batch.remove(id.as_bytes());
            batch.remove(index_key(workflow_id, id));
            {
                let mut index = self.index.write().unwrap_or_else(|e| e.into_inner());
                h.runs.apply_batch(batch).map_err(|e| self.sled_error(e))?;
                index.remove(id);
            }
            h.run_workflows
                .remove(id.as_bytes())
                .map_err(|e| self.sled_error(e))?;
        }
        self.flush_on(&h)?;
        Ok(())
    }
}

/// A new run to write under a claim with [`Store::create_claimed_runs`].
#[derive(Debug)]
pub struct ClaimedRun<'a> {
    /// Written only where its key is absent; the rest only with it.
    pub claim: StateWrite,
    /// The run, new.
    pub run: &'a RunRecord,
    /// Its steps.
    pub steps: &'a [StepRecord],
    /// State records written with it.
    pub states: Vec<StateWrite>,
}

/// A state record to write with [`Store::create_claimed_runs`]: its tree, key and value
/// (encoded as [`Store::put_state`] encodes).
#[derive(Debug, Clone)]
pub struct StateWrite {
    tree: &'static str,
    key: String,
    value: Vec<u8>,
}

impl StateWrite {
    /// `value` under `key` in the state tree `tree`.
    pub fn new<T: Serialize>(tree: &'static str, key: String, value: &T) -> StateWrite {
        StateWrite {
            tree,
            key,
            value: encode(value),
        }
    }
}

/// State trees keyed by run id, whose records go with their run when history is trimmed:
/// the commit statuses reported of each run (`triggers::commit_status`).
pub const RUN_STATE_TREES: [&str; 1] = ["commit_statuses"];

/// What the index of finish times needs of a run record.
#[derive(Deserialize)]
struct FinishFields {
    id: String,
    status: Status,
    #[serde(default)]
    finished_at: Option<String>,
}

/// What the run index needs of a run record (the rest is skipped when it is built).
#[derive(Deserialize)]
struct RunIndexFields {
    id: String,
    workflow_id: String,
    status: Status,
}

/// Which runs a listing wants.
#[derive(Debug, Clone, Default)]
pub struct RunFilter {
    /// Runs of this workflow id only.
    pub workflow: Option<String>,
    /// Runs in this state only.
    pub status: Option<Status>,
}

/// A page of runs as lists show them ([`Store::list_run_summaries`]).
#[derive(Debug, Clone)]
pub struct SummaryPage {
    /// Newest first: each run's [`RunSummary`] as JSON.
    pub runs: Vec<Arc<str>>,
    /// Every run the filter matches.
    pub total: usize,
}

/// How many serialized run summaries the store keeps (the newest read; each some
/// hundreds of bytes): the first pages of every listing and then some.
pub const SUMMARY_CACHE_RUNS: usize = 4096;

/// A page of runs ([`Store::list_runs`]).
#[derive(Debug, Clone)]
pub struct RunPage {
    /// Newest first, without their workflows.
    pub runs: Vec<RunHead>,
    /// Every run the filter matches.
    pub total: usize,
}

/// Every run, in memory, for listing in the time of a page: run ids by status (each a map
/// in id order, so newest last), the workflow of each, and each workflow's runs counted
/// by status, so any filter's total is a sum. About 100 bytes a run.
#[derive(Default)]
struct RunIndex {
    /// Per status (`status as usize`, the order of [`Status::ALL`]): run id → workflow id.
    by_status: [BTreeMap<Box<str>, Arc<str>>; Status::ALL.len()],
    /// Per workflow id: its runs in each status.
    counts: HashMap<Arc<str>, [usize; Status::ALL.len()]>,
    /// Run id → its [`RunSummary`] as JSON, for the runs listed lately (at most
    /// [`SUMMARY_CACHE_RUNS`], the oldest ids dropped first). Filled by readers under the
    /// index's read lock; a run's entry is dropped by every write of it (under the write
    /// lock), so an entry is always the run's stored state.
    summaries: std::sync::Mutex<BTreeMap<Box<str>, Arc<str>>>,
}

impl RunIndex {
    /// Adds a run, or moves it to its new status.
    fn insert(&mut self, id: &str, workflow: &str, status: Status) {
        // Whatever changed, the cached summary is the old one.
        self.forget_summary(id);
        let slot = status as usize;
        if let Some(known) = self.by_status[slot].get(id) {
            if &**known == workflow {
                return;
            }
        }
        self.remove(id);
        self.insert_new(id, workflow, status);
    }

    /// Adds a run the index does not hold (as it is loaded: each run once), without
    /// looking for it in every status first.
    fn insert_new(&mut self, id: &str, workflow: &str, status: Status) {
        let slot = status as usize;
        let workflow = match self.counts.get_key_value(workflow) {
            Some((shared, _)) => shared.clone(),
            None => Arc::from(workflow),
        };
        self.counts.entry(workflow.clone()).or_default()[slot] += 1;
        self.by_status[slot].insert(id.into(), workflow);
    }

    /// Forgets a run.
    fn remove(&mut self, id: &str) {
        self.forget_summary(id);
        for slot in 0..self.by_status.len() {
            if let Some(workflow) = self.by_status[slot].remove(id) {
                if let Some(counts) = self.counts.get_mut(&workflow) {
                    counts[slot] = counts[slot].saturating_sub(1);
                    if counts.iter().all(|&n| n == 0) {
                        self.counts.remove(&workflow);
                    }
                }
                return;
            }
        }
    }

    /// Drops a run's cached summary.
    fn forget_summary(&mut self, id: &str) {
        self.summaries
            .get_mut()
            .unwrap_or_else(|e| e.into_inner())
            .remove(id);
    }

    /// How many runs match.
    fn total(&self, workflow: Option<&str>, status: Option<Status>) -> usize {
        match (workflow, status) {
            (None, None) => self.by_status.iter().map(BTreeMap::len).sum(),
            (None, Some(status)) => self.by_status[status as usize].len(),
            (Some(workflow), status) => {
                self.counts.get(workflow).map_or(0, |counts| match status {
                    Some(status) => counts[status as usize],
                    None => counts.iter().sum(),
                })
            }
        }
    }

    /// The ids of a page of runs in `status` (or any), newest first: the statuses' maps
    /// merged from their ends, `offset + limit` steps at most.
    fn page(&self, status: Option<Status>, offset: usize, limit: usize) -> Vec<Cow<'_, str>> {
        let mut sources: Vec<_> = match status {
            Some(status) => vec![self.by_status[status as usize].keys().rev().peekable()],
            None => self
                .by_status
                .iter()
                .map(|ids| ids.keys().rev().peekable())
                .collect(),
        };
        let mut ids = Vec::new();
        let mut skipped = 0;
        while ids.len() < limit {
            // The source whose next id is the newest.
            let mut newest: Option<(usize, &str)> = None;
            for (at, source) in sources.iter_mut().enumerate() {
                if let Some(id) = source.peek() {
                    if newest.is_none_or(|(_, best)| &***id > best) {
                        newest = Some((at, id));
                    }
                }
            }
            let Some((at, _)) = newest else {
                break;
            };
            let Some(id) = sources[at].next() else {
                break;
            };
            if skipped < offset {
                skipped += 1;
            } else {
                ids.push(Cow::Borrowed(&**id));
            }
        }
        ids
    }
}

/// Where the run index starts in the `runs` tree: before every run id.
const INDEX_PREFIX: &[u8] = b"\0by-workflow\0";

/// Where the index of finish times starts in the `runs` tree; the prefix alone is the key
/// that marks it built.
const FINISH_PREFIX: &[u8] = b"\0by-finish\0";

/// A finished run's key in the index of finish times: `\0by-finish\0`, the finish time in
/// milliseconds since the epoch (8 bytes, big-endian: keys sort by time), the run id. `None`
/// for a run not finished or without a finish time that parses.
fn finish_key(id: &str, status: Status, finished_at: Option<&str>) -> Option<Vec<u8>> {
    if !status.is_finished() {
        return None;
    }
    let at = chrono::DateTime::parse_from_rfc3339(finished_at?).ok()?;
    let mut key = Vec::with_capacity(FINISH_PREFIX.len() + 8 + id.len());
    key.extend_from_slice(FINISH_PREFIX);
    key.extend_from_slice(&finish_millis(at.to_utc()).to_be_bytes());
    key.extend_from_slice(id.as_bytes());
    Some(key)
}

/// A time as the index of finish times sorts it: milliseconds since the epoch, times before
/// it as 0.
fn finish_millis(at: chrono::DateTime<chrono::Utc>) -> u64 {
    u64::try_from(at.timestamp_millis()).unwrap_or(0)
}

/// The run index's key: `\0by-workflow\0<workflow id>\0<run id>`.
fn index_key(workflow_id: &str, run_id: &str) -> Vec<u8> {
    let mut key = Vec::with_capacity(INDEX_PREFIX.len() + workflow_id.len() + 1 + run_id.len());
    key.extend_from_slice(INDEX_PREFIX);
    key.extend_from_slice(workflow_id.as_bytes());
    key.push(0);
    key.extend_from_slice(run_id.as_bytes());
    key
}

fn step_key(run_id: &str, index: u32) -> Vec<u8> {
    let mut key = run_id.as_bytes().to_vec();
    key.push(0);
    key.extend_from_slice(&index.to_be_bytes());
    key
}

impl Drop for Store {
    fn drop(&mut self) {
        // A store whose handles were taken over by a reopened one (or never reopened)
        // leaves the owner file to the store in use.
        if self
            .handles
            .get_mut()
            .unwrap_or_else(|e| e.into_inner())
            .is_none()
        {
            return;
        }
        // sled releases its lock a moment after this handle goes, while the owner file is
        // already gone: `open` waits for a lock whose owner file names no one.
        // Best effort: a stale owner file only makes a later "in use" message less precise.
        let _ = fs::remove_file(self.path.join(OWNER_FILE));
    }
}

/// Whether no owner file names who holds the store in `data_dir`: a lock on it is being
/// released (by this process or another) or just taken, so it is worth waiting for.
fn owner_unnamed(data_dir: &Path) -> bool {
    !data_dir.join(OWNER_FILE).exists()
}

/// Whether the owner file names this process.
fn held_by_this_process(data_dir: &Path) -> bool {
    fs::read_to_string(data_dir.join(OWNER_FILE)).is_ok_and(|text| {
        text.lines().next().map(str::trim) == Some(std::process::id().to_string().as_str())
    })
}

fn read_owner(data_dir: &Path) -> String {
    match fs::read_to_string(data_dir.join(OWNER_FILE)) {
        Ok(text) => {
            let mut lines = text.lines();
            let pid = lines.next().unwrap_or("?").trim().to_owned();
            let command = lines.next().unwrap_or("").trim();
            if command.is_empty() {
                format!("PID {pid}")
            } else {
                format!("PID {pid} ({command})")
            }
        }
        Err(_) => "another process".to_owned(),
    }
}

fn encode<T: Serialize>(value: &T) -> Vec<u8> {
    encode_as(FORMAT_VERSION, value)
}

/// A record in the encoding of `version` (JSON after the byte, in every version so far).
fn encode_as<T: Serialize>(version: u8, value: &T) -> Vec<u8> {
    let mut bytes = vec![version];
    // Serialising these plain data types to JSON cannot fail.
    serde_json::to_writer(&mut bytes, value).expect("record serialises");
    bytes
}

fn decode<T: DeserializeOwned>(key: &[u8], value: &[u8]) -> Result<T, StoreError> {
    let corrupt = |message: String| StoreError::Corrupt {
        key: String::from_utf8_lossy(key).into_owned(),
        message,
    };
    match value.split_first() {
        // Format 2 differs from 1 in what a run record holds, not in its encoding.
        Some((&(FORMAT_VERSION | RUN_FORMAT_VERSION), rest)) => {
            serde_json::from_slice(rest).map_err(|e| corrupt(e.to_string()))
        }
        Some((version, _)) => Err(corrupt(format!(
            "record format {version} is newer than this release understands ({RUN_FORMAT_VERSION})"
        ))),
        None => Err(corrupt("empty record".to_owned())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(id: &str) -> ObjectRecord {
        ObjectRecord {
            key: ObjectKey {
                kind: Kind::Workflow,
                id: id.to_owned(),
            },
            name: id.to_owned(),
            spec: Some(Arc::new(serde_json::json!({"name": id}))),
            hash: Some("h".into()),
            source_file: "workflows/a.yaml".into(),
            status: ObjectStatus::Applied,
            diagnostics: Vec::new(),
            applied_revision: Some("dir:1".into()),
            attempted_revision: "dir:1".into(),
            generation: 1,
            applied_at: None,
            updated_at: "2026-01-01T00:00:00Z".into(),
        }
    }

    #[test]
    fn durable_writes_from_many_threads_share_flushes() {
        let dir = tempfile::tempdir().unwrap();
        let calls = 8 * 25;
        {
            let store = Store::open(dir.path()).unwrap();
            std::thread::scope(|scope| {
                for thread in 0..8 {
                    let store = &store;
                    scope.spawn(move || {
                        for n in 0..25 {
                            let key = format!("t{thread}/{n:02}");
                            store.put_state("group", &key, &n, true).unwrap();
                        }
                    });
                }
            });
            let state = store.flushes.state.lock().unwrap();
            assert!(!state.running);
            assert_eq!(state.started, state.finished);
            assert!(
                state.started >= 1 && state.started <= calls,
                "{}",
                state.started
            );
            assert!(state.failed.is_none());
        }
        let store = Store::open(dir.path()).unwrap();
        assert_eq!(
            store.states::<u32>("group", "").unwrap().len(),
            calls as usize
        );
    }

    #[test]
    fn state_records_are_kept_and_inserted_once() {
        let dir = tempfile::tempdir().unwrap();
        {
            let store = Store::open(dir.path()).unwrap();
            store
                .put_state("schedules", "sch_a", &serde_json::json!({"n": 1}), true)
                .unwrap();
            assert!(store
                .insert_state_once("deliveries", "d1", &serde_json::json!(1), true)
                .unwrap());
            assert!(!store
                .insert_state_once("deliveries", "d1", &serde_json::json!(2), true)
                .unwrap());
        }
        let store = Store::open(dir.path()).unwrap();
        let value: Option<serde_json::Value> = store.state("schedules", "sch_a").unwrap();
        assert_eq!(value, Some(serde_json::json!({"n": 1})));
        let all: Vec<(String, serde_json::Value)> = store.states("deliveries", "").unwrap();
        assert_eq!(all, vec![("d1".to_owned(), serde_json::json!(1))]);
        store.remove_states("deliveries", &["d1".into()]).unwrap();
        assert!(store
            .states::<serde_json::Value>("deliveries", "")
            .unwrap()
            .is_empty());
    }

    #[test]
    fn records_survive_reopening() {
        let dir = tempfile::tempdir().unwrap();
        {
            let store = Store::open(dir.path()).unwrap();
            store.commit(&[record("wf_a")], None, None).unwrap();
        }
        let store = Store::open(dir.path()).unwrap();
        let objects = store.objects().unwrap();
        assert_eq!(objects.len(), 1);
        assert_eq!(objects.values().next().unwrap(), &record("wf_a"));
    }

    #[test]
    fn a_second_opener_is_told_who_holds_the_store() {
        let dir = tempfile::tempdir().unwrap();
        let _held = Store::open(dir.path()).unwrap();
        let err = match Store::open(dir.path()) {
            Err(err) => err.to_string(),
            Ok(_) => String::from("opened twice"),
        };
        assert!(
            err.contains(&format!("is in use by PID {}", std::process::id())),
            "{err}"
        );
    }

    fn run_record(id: &str, workflow: &str, status: Status) -> RunRecord {
        serde_json::from_value(serde_json::json!({
            "id": id,
            "workflow_id": workflow,
            "workflow_name": workflow,
            "status": status,
            "parameters": {},
            "trigger": {"kind": "api"},
            "workflow": {"steps": [{"name": "a", "command": ["true"]}]},
            "steps": ["a"],
            "created_at": "2026-01-01T00:00:00Z",
        }))
        .unwrap()
    }

    #[test]
    fn the_run_index_lists_one_workflows_runs_and_follows_deletes() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        for (id, workflow, status) in [
            ("run_01", "wf_a", Status::Succeeded),
            ("run_02", "wf_b", Status::Queued),
            ("run_03", "wf_a", Status::Running),
            ("run_04", "wf_a", Status::Queued),
            ("run_05", "wf_b", Status::Failed),
        ] {
            store
                .save_run(Some(&run_record(id, workflow, status)), &[], false)
                .unwrap();
        }
        // A status change rewrites the entry.
        store
            .save_run(
                Some(&run_record("run_03", "wf_a", Status::Succeeded)),
                &[],
                true,
            )
            .unwrap();
        assert_eq!(
            store.workflow_run_ids("wf_a").unwrap(),
            [
                ("run_01".to_owned(), Status::Succeeded),
                ("run_03".to_owned(), Status::Succeeded),
                ("run_04".to_owned(), Status::Queued),
            ]
        );
        // A workflow whose id is a prefix of another's sees only its own.
        assert!(store.workflow_run_ids("wf_").unwrap().is_empty());
        let ids = |runs: Vec<RunHead>| runs.into_iter().map(|r| r.id).collect::<Vec<_>>();
        assert_eq!(
            ids(store.workflow_runs("wf_b").unwrap()),
            ["run_02", "run_05"]
        );
        let mut latest = ids(store.latest_runs().unwrap());
        latest.sort();
        assert_eq!(latest, ["run_04", "run_05"]);
        assert_eq!(
            store.run_ids_with_status(&[Status::Queued]).unwrap(),
            ["run_02", "run_04"]
        );
        assert_eq!(
            ids(store.runs_from("run_04").unwrap()),
            ["run_04", "run_05"]
        );

        store
            .put_state(RUN_STATE_TREES[0], "run_01", &"reported", false)
            .unwrap();
        store
            .put_state(RUN_STATE_TREES[0], "run_04", &"reported", false)
            .unwrap();
        store
            .delete_runs("wf_a", &["run_01".into(), "run_03".into()])
            .unwrap();
        assert_eq!(
            store
                .states::<String>(RUN_STATE_TREES[0], "")
                .unwrap()
                .into_iter()
                .map(|(key, _)| key)
                .collect::<Vec<_>>(),
            ["run_04"]
        );
        assert_eq!(
            store.workflow_run_ids("wf_a").unwrap(),
            [("run_04".to_owned(), Status::Queued)]
        );
        assert!(store.run("run_01").unwrap().is_none());
    }

    #[test]
    fn a_store_without_the_run_index_gets_it_on_open() {
        let dir = tempfile::tempdir().unwrap();
        {
            let store = Store::open(dir.path()).unwrap();
            for (id, workflow, status) in [
                ("run_01", "wf_a", Status::Succeeded),
                ("run_02", "wf_b", Status::Queued),
                ("run_03", "wf_a", Status::Failed),
            ] {
                store
                    .save_run(Some(&run_record(id, workflow, status)), &[], false)
                    .unwrap();
            }
            // As a release before the index left it: runs, no index.
            for key in store
                .handles()
                .unwrap()
                .runs
                .scan_prefix(INDEX_PREFIX)
                .keys()
            {
                store.handles().unwrap().runs.remove(key.unwrap()).unwrap();
            }
            store.flush().unwrap();
            assert!(store.workflow_run_ids("wf_a").unwrap().is_empty());
        }
        let store = Store::open(dir.path()).unwrap();
        assert_eq!(
            store.workflow_run_ids("wf_a").unwrap(),
            [
                ("run_01".to_owned(), Status::Succeeded),
                ("run_03".to_owned(), Status::Failed),
            ]
        );
        assert_eq!(
            store.run_ids_with_status(&[Status::Queued]).unwrap(),
            ["run_02"]
        );
    }

    /// The page's ids and the total.
    fn listed(
        store: &Store,
        filter: &RunFilter,
        offset: usize,
        limit: usize,
    ) -> (Vec<String>, usize) {
        let page = store.list_runs(filter, offset, limit).unwrap();
        // The summaries' page is the same runs, each the summary of its head.
        let summaries = store.list_run_summaries(filter, offset, limit).unwrap();
        assert_eq!(summaries.total, page.total);
        let expected: Vec<String> = page
            .runs
            .iter()
            .map(|head| serde_json::to_string(&RunSummary::of_head(head)).unwrap())
            .collect();
        let got: Vec<String> = summaries.runs.iter().map(|s| s.to_string()).collect();
        assert_eq!(got, expected);
        (page.runs.into_iter().map(|r| r.id).collect(), page.total)
    }

    fn filter(workflow: Option<&str>, status: Option<Status>) -> RunFilter {
        RunFilter {
            workflow: workflow.map(str::to_owned),
            status,
        }
    }

    #[test]
    fn runs_are_listed_newest_first_by_page_with_filters_and_totals() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let statuses = [Status::Succeeded, Status::Failed, Status::Running];
        for n in 0..30 {
            let workflow = if n % 3 == 0 { "wf_a" } else { "wf_b" };
            let id = format!("run_{n:02}");
            store
                .save_run(
                    Some(&run_record(&id, workflow, statuses[n % 2])),
                    &[],
                    false,
                )
                .unwrap();
        }
        // A status change moves a run between statuses, and keeps it once in the total.
        store
            .save_run(Some(&run_record("run_29", "wf_b", statuses[2])), &[], false)
            .unwrap();
        let ids = |range: std::ops::Range<usize>, keep: &dyn Fn(usize) -> bool| {
            range
                .rev()
                .filter(|n| keep(*n))
                .map(|n| format!("run_{n:02}"))
                .collect::<Vec<_>>()
        };
        assert_eq!(
            listed(&store, &RunFilter::default(), 0, 5),
            (ids(25..30, &|_| true), 30)
        );
        assert_eq!(
            listed(&store, &RunFilter::default(), 28, 5),
            (ids(0..2, &|_| true), 30)
        );
        assert_eq!(listed(&store, &RunFilter::default(), 30, 5), (vec![], 30));
        // Even runs succeeded, odd ones failed, run_29 now runs.
        assert_eq!(
            listed(&store, &filter(None, Some(Status::Failed)), 2, 3),
            (ids(0..24, &|n| n % 2 == 1)[..3].to_vec(), 14)
        );
        assert_eq!(
            listed(&store, &filter(None, Some(Status::Running)), 0, 50),
            (vec!["run_29".to_owned()], 1)
        );
        assert_eq!(
            listed(&store, &filter(Some("wf_a"), None), 1, 3),
            (ids(0..25, &|n| n % 3 == 0)[..3].to_vec(), 10)
        );
        assert_eq!(
            listed(
                &store,
                &filter(Some("wf_a"), Some(Status::Succeeded)),
                0,
                50
            ),
            (ids(0..30, &|n| n % 6 == 0), 5)
        );
        assert_eq!(
            listed(&store, &filter(Some("wf_"), None), 0, 50),
            (vec![], 0)
        );
        assert_eq!(
            listed(&store, &filter(Some("wf_c"), Some(Status::Queued)), 0, 50),
            (vec![], 0)
        );
        // The page holds heads: their workflows are read only when asked for.
        let page = store.list_runs(&RunFilter::default(), 0, 1).unwrap();
        assert_eq!(page.runs[0].steps, ["a"]);
        assert_eq!(
            store.run_workflow("run_29").unwrap(),
            Some(run_record("run_29", "wf_b", Status::Running).workflow)
        );

        store
            .delete_runs("wf_a", &["run_27".into(), "run_24".into()])
            .unwrap();
        assert_eq!(
            listed(&store, &RunFilter::default(), 0, 3),
            (vec!["run_29".into(), "run_28".into(), "run_26".into()], 28)
        );
        assert_eq!(listed(&store, &filter(Some("wf_a"), None), 0, 0).1, 8);
        assert_eq!(
            listed(&store, &filter(None, Some(Status::Succeeded)), 0, 0).1,
            14
        );
        assert!(store.run_workflow("run_27").unwrap().is_none());
        // The index is the store's: a reopened store lists the same.
        drop(store);
        let store = Store::open(dir.path()).unwrap();
        assert_eq!(
            listed(&store, &RunFilter::default(), 0, 3),
            (vec!["run_29".into(), "run_28".into(), "run_26".into()], 28)
        );
        assert_eq!(
            listed(&store, &filter(Some("wf_b"), Some(Status::Failed)), 0, 50).1,
            9
        );
    }

    #[test]
    fn a_run_saved_many_times_writes_its_workflow_once_and_reads_back_whole() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let mut run: RunRecord = serde_json::from_value(serde_json::json!({
            "id": "run_01",
            "workflow_id": "wf_a",
            "workflow_name": "A",
            "status": "running",
            "parameters": {"env": "staging"},
            "trigger": {"kind": "schedule", "details": {"due": "now"}},
            "workflow": {"steps": [{"name": "a", "command": ["true"]}, {"name": "b", "command": ["true"]}]},
            "steps": ["a", "b"],
            "created_at": "2026-01-01T00:00:00Z",
            "started_at": "2026-01-01T00:00:01Z",
            "finished_at": "2026-01-01T00:00:02Z",
            "duration_ms": 1000,
            "message": "why",
            "tests": crate::model::TestSummary { total: 3, passed: 2, failed: 1, ..Default::default() },
            "rerun_of": "run_00",
            "revision": "dir:1",
            "pid": 42,
        }))
        .unwrap();
        let first = run.workflow.clone();
        for n in 0..100 {
            run.duration_ms = Some(n);
            // The workflow never changes once a run exists; a different one here shows
            // whether a save rewrote it.
            if n > 0 {
                run.workflow = serde_json::json!({"save": n});
            }
            store.save_run(Some(&run), &[], n % 10 == 0).unwrap();
        }
        let h = store.handles().unwrap();
        let workflows: Vec<_> = h.run_workflows.iter().map(|e| e.unwrap()).collect();
        assert_eq!(workflows.len(), 1);
        assert_eq!(decode::<Value>(b"run_01", &workflows[0].1).unwrap(), first);
        let record = h.runs.get(b"run_01").unwrap().unwrap();
        assert_eq!(record[0], RUN_FORMAT_VERSION);
        let stored: Value = decode(b"run_01", &record).unwrap();
        assert!(stored.get("workflow").is_none(), "{stored}");
        // Every field comes back: the head and the workflow make the record again.
        run.workflow = first;
        assert_eq!(store.run("run_01").unwrap(), Some(run.clone()));
        assert_eq!(
            store.run_head("run_01").unwrap(),
            Some(run.clone().into_head())
        );
        assert_eq!(
            store
                .runs()
                .unwrap()
                .into_iter()
                .next()
                .map(|r| r.with_workflow(run.workflow.clone())),
            Some(run)
        );
    }

    #[test]
    fn runs_an_older_release_wrote_are_read_listed_and_moved_on_their_next_save() {
        let dir = tempfile::tempdir().unwrap();
        let old = run_record("run_01", "wf_a", Status::Running);
        {
            let store = Store::open(dir.path()).unwrap();
            store
                .save_run(
                    Some(&run_record("run_02", "wf_a", Status::Succeeded)),
                    &[],
                    false,
                )
                .unwrap();
            // As the release before this one wrote it: the workflow inside, format 1.
            let h = store.handles().unwrap();
            h.runs.insert(b"run_01", encode(&old)).unwrap();
            h.runs
                .insert(index_key("wf_a", "run_01"), encode(&old.status))
                .unwrap();
            store.flush().unwrap();
        }
        let store = Store::open(dir.path()).unwrap();
        assert_eq!(store.run("run_01").unwrap(), Some(old.clone()));
        assert_eq!(
            store.run_workflow("run_01").unwrap(),
            Some(old.workflow.clone())
        );
        assert_eq!(
            listed(&store, &filter(None, Some(Status::Running)), 0, 50),
            (vec!["run_01".to_owned()], 1)
        );
        assert_eq!(
            listed(&store, &RunFilter::default(), 0, 50),
            (vec!["run_02".to_owned(), "run_01".to_owned()], 2)
        );
        assert_eq!(
            store.workflow_runs("wf_a").unwrap()[0],
            old.clone().into_head()
        );
        // Its next save writes the new layout.
        let mut finished = old.clone();
        finished.status = Status::Interrupted;
        store.save_run(Some(&finished), &[], true).unwrap();
        let h = store.handles().unwrap();
        assert!(h.run_workflows.contains_key(b"run_01").unwrap());
        assert_eq!(
            h.runs.get(b"run_01").unwrap().unwrap()[0],
            RUN_FORMAT_VERSION
        );
        assert_eq!(store.run("run_01").unwrap(), Some(finished));
        store.delete_runs("wf_a", &["run_01".into()]).unwrap();
        assert!(h.run_workflows.get(b"run_01").unwrap().is_none());
        assert_eq!(listed(&store, &RunFilter::default(), 0, 50).1, 1);
    }

    #[test]
    fn writing_records_drops_every_memo() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let status = SourceStatus {
            source: "dir".into(),
            last_applied_revision: None,
            last_attempted_revision: "dir:1".into(),
            last_attempt_at: "2026-01-01T00:00:00Z".into(),
            errors: 0,
        };
        store.commit(&[], Some(&status), Some(b"memo")).unwrap();
        assert_eq!(store.memo("dir").unwrap().as_deref(), Some(&b"memo"[..]));
        // A status-only write keeps it; a record write drops it.
        store.commit(&[], Some(&status), None).unwrap();
        assert!(store.memo("dir").unwrap().is_some());
        store.commit(&[record("wf_a")], None, None).unwrap();
        assert_eq!(store.memo("dir").unwrap(), None);
    }

    #[test]
    fn a_commit_of_more_records_than_a_batch_writes_them_all_then_the_memo() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let status = SourceStatus {
            source: "dir".into(),
            last_applied_revision: Some("dir:2".into()),
            last_attempted_revision: "dir:2".into(),
            last_attempt_at: "2026-01-01T00:00:00Z".into(),
            errors: 0,
        };
        let records: Vec<ObjectRecord> = (0..OBJECT_BATCH * 2 + 7)
            .map(|n| record(&format!("wf_{n:05}")))
            .collect();
        store
            .commit(&records, Some(&status), Some(b"memo"))
            .unwrap();
        let stored = store.objects().unwrap();
        assert_eq!(stored.len(), records.len());
        assert!(records.iter().all(|r| stored.get(&r.key) == Some(r)));
        assert_eq!(store.memo("dir").unwrap().as_deref(), Some(&b"memo"[..]));
    }

    /// The ids and statuses of a page of summaries.
    fn summarised(store: &Store, filter: &RunFilter) -> Vec<(String, String)> {
        store
            .list_run_summaries(filter, 0, 50)
            .unwrap()
            .runs
            .iter()
            .map(|text| {
                let summary: Value = serde_json::from_str(text).unwrap();
                (
                    summary["id"].as_str().unwrap().to_owned(),
                    summary["status"].as_str().unwrap().to_owned(),
                )
            })
            .collect()
    }

    #[test]
    fn a_cached_summary_follows_every_write_of_its_run() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let mut run = run_record("run_01", "wf_a", Status::Running);
        store.save_run(Some(&run), &[], false).unwrap();
        let all = filter(None, None);
        assert_eq!(
            summarised(&store, &all),
            [("run_01".into(), "running".into())]
        );
        // Cached now: the next listing serves the same text without reading the record.
        let first = store.list_run_summaries(&all, 0, 50).unwrap().runs;
        let again = store.list_run_summaries(&all, 0, 50).unwrap().runs;
        assert!(Arc::ptr_eq(&first[0], &again[0]));
        // A status change shows at once, through every filter.
        run.status = Status::Succeeded;
        run.finished_at = Some("2026-01-01T00:00:01Z".into());
        store.save_run(Some(&run), &[], false).unwrap();
        assert_eq!(
            summarised(&store, &all),
            [("run_01".into(), "succeeded".into())]
        );
        assert_eq!(
            summarised(&store, &filter(Some("wf_a"), None)),
            [("run_01".into(), "succeeded".into())]
        );
        // So does a change that keeps the status.
        run.message = Some("done".into());
        store.save_run(Some(&run), &[], false).unwrap();
        let page = store.list_run_summaries(&all, 0, 50).unwrap();
        let summary: Value = serde_json::from_str(&page.runs[0]).unwrap();
        assert_eq!(summary["message"], "done");
        // And a delete.
        store.delete_runs("wf_a", &["run_01".into()]).unwrap();
        assert!(summarised(&store, &all).is_empty());
        store
            .save_run(
                Some(&run_record("run_01", "wf_a", Status::Queued)),
                &[],
                false,
            )
            .unwrap();
        assert_eq!(
            summarised(&store, &all),
            [("run_01".into(), "queued".into())]
        );
    }

    #[test]
    fn the_summary_cache_keeps_the_newest_runs_it_read() {
        let store = Store::empty().unwrap();
        let count = SUMMARY_CACHE_RUNS + 10;
        for n in 0..count {
            let run = run_record(&format!("run_{n:05}"), "wf_a", Status::Succeeded);
            store.save_run(Some(&run), &[], false).unwrap();
        }
        for offset in (0..count).step_by(500) {
            store
                .list_run_summaries(&filter(None, None), offset, 500)
                .unwrap();
        }
        let index = store.index.read().unwrap();
        let cache = index.summaries.lock().unwrap();
        assert_eq!(cache.len(), SUMMARY_CACHE_RUNS);
        assert_eq!(cache.keys().next().map(|k| &**k), Some("run_00010"));
    }

    #[test]
    fn listing_runs_never_reads_their_workflows() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        for (id, status) in [("run_01", Status::Succeeded), ("run_02", Status::Failed)] {
            store
                .save_run(Some(&run_record(id, "wf_a", status)), &[], false)
                .unwrap();
        }
        // Every workflow gone: reading a whole run fails, listing does not.
        store.handles().unwrap().run_workflows.clear().unwrap();
        assert!(store.run("run_01").is_err());
        for wanted in [
            filter(None, None),
            filter(Some("wf_a"), None),
            filter(None, Some(Status::Failed)),
        ] {
            listed(&store, &wanted, 0, 50);
        }
        assert_eq!(
            summarised(&store, &filter(None, None)),
            [
                ("run_02".into(), "failed".into()),
                ("run_01".into(), "succeeded".into())
            ]
        );
    }

    fn finished(id: &str, at: &str) -> RunRecord {
        let mut run = run_record(id, "wf_a", Status::Succeeded);
        run.finished_at = Some(at.into());
        run
    }

    /// Saves each run's record, without a flush.
    fn save_all(store: &Store, runs: &[RunRecord]) {
        for run in runs {
            store.save_run(Some(run), &[], false).unwrap();
        }
    }

    fn finished_since(store: &Store, since: &str) -> Vec<String> {
        let since = chrono::DateTime::parse_from_rfc3339(since)
            .unwrap()
            .to_utc();
        store
            .runs_finished_since(since)
            .unwrap()
            .into_iter()
            .map(|run| run.id)
            .collect()
    }

    #[test]
    fn runs_are_found_by_finish_time_without_reading_the_others() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        // Created in one order, finished in another; one still running.
        save_all(
            &store,
            &[
                finished("run_01", "2026-01-01T12:00:00Z"),
                finished("run_02", "2026-01-01T10:00:00+00:00"),
                finished("run_03", "2026-01-01T13:30:00+01:00"),
                run_record("run_04", "wf_a", Status::Running),
            ],
        );
        assert_eq!(
            finished_since(&store, "2026-01-01T11:00:00Z"),
            ["run_01", "run_03"]
        );
        assert_eq!(
            finished_since(&store, "2026-01-01T12:00:00Z"),
            ["run_01", "run_03"]
        );
        assert_eq!(finished_since(&store, "2026-01-01T12:00:01Z"), ["run_03"]);
        // The running one, once finished; a deleted one, gone with its key.
        save_all(&store, &[finished("run_04", "2026-01-01T14:00:00Z")]);
        store.delete_runs("wf_a", &["run_03".into()]).unwrap();
        assert_eq!(
            finished_since(&store, "2026-01-01T11:00:00Z"),
            ["run_01", "run_04"]
        );
        let h = store.handles().unwrap();
        assert_eq!(
            h.runs.scan_prefix(FINISH_PREFIX).count(),
            4,
            "the marker and three runs"
        );
        // The rest of the tree never sees the index: listings, run records.
        assert_eq!(store.runs().unwrap().len(), 3);
        assert_eq!(listed(&store, &filter(None, None), 0, 50).1, 3);
        // A record outside the range is never read: one that no longer decodes stops a
        // reader of every run, not this one.
        h.runs.insert(b"run_01", &b"\x02not json"[..]).unwrap();
        assert!(store.runs().is_err());
        assert_eq!(finished_since(&store, "2026-01-01T13:00:00Z"), ["run_04"]);
    }

    #[test]
    fn a_store_without_the_finish_index_gets_it_on_open() {
        let dir = tempfile::tempdir().unwrap();
        {
            let store = Store::open(dir.path()).unwrap();
            save_all(
                &store,
                &[
                    finished("run_01", "2026-01-01T12:00:00Z"),
                    run_record("run_02", "wf_a", Status::Running),
                ],
            );
            // As a release before the index left it: no keys, no marker.
            let h = store.handles().unwrap();
            for key in h.runs.scan_prefix(FINISH_PREFIX).keys() {
                h.runs.remove(key.unwrap()).unwrap();
            }
            store.flush().unwrap();
            assert!(finished_since(&store, "2026-01-01T00:00:00Z").is_empty());
        }
        let store = Store::open(dir.path()).unwrap();
        assert_eq!(finished_since(&store, "2026-01-01T00:00:00Z"), ["run_01"]);
    }
}
