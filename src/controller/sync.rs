//! The reconcile loop: the manifest directories are watched (notify), changes are debounced
//! — editors save through rename-and-replace, several files change at once; the quiet
//! waited for grows with the burst — and the whole source is reconciled into the store (its
//! directories walked again, only the files whose stamp changed read again — the controller's
//! [`FileIndex`](crate::source::dir::FileIndex) — and only those whose text changed parsed
//! again — its [`FileChecks`](crate::reconcile::FileChecks)); a periodic full resync catches
//! anything a watch missed. Every reconcile publishes what it changed, once it is durable.
//!
//! The controller prunes: a manifest removed from the tree removes its object, because the
//! files are the source of truth (`apply` from the command line prunes only when asked).

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Result;
use notify::{RecursiveMode, Watcher};
use serde::Serialize;

use super::Controller;
use crate::diagnostics::Diagnostic;
use crate::events::{Event, ManifestChange, ManifestInvalid, SyncCompleted};
use crate::reconcile::{self, ApplyReport, ReconcileOptions};
use crate::store::ObjectKey;

/// The quiet that ends a burst that has just begun: an isolated save (one write, or an
/// editor's write-and-rename, which the watcher reports within a millisecond) is reconciled
/// this soon after it.
pub const DEBOUNCE_QUIET_MIN: Duration = Duration::from_millis(10);
/// The most quiet a reconcile waits for: the quiet asked for grows with the burst's length
/// (a checkout writing many files), from [`DEBOUNCE_QUIET_MIN`] up to this.
pub const DEBOUNCE_QUIET: Duration = Duration::from_millis(40);
/// The longest a burst of changes delays a reconcile.
pub const DEBOUNCE_MAX: Duration = Duration::from_millis(200);
/// A full resync happens at least this often, changes or not.
pub const RESYNC_INTERVAL: Duration = Duration::from_secs(60);

/// What a reconcile did.
#[derive(Debug, Clone, Serialize)]
pub struct ReconcileOutcome {
    /// What was applied (or, dry, would be).
    pub report: ApplyReport,
    /// Every diagnostic found.
    pub diagnostics: Vec<Diagnostic>,
    /// Whether the plan came from the memo of an unchanged revision.
    pub from_memo: bool,
    /// How long it took.
    pub duration_ms: u64,
    /// The plan: what changed (or, dry, would change), object by object.
    pub plan: crate::reconcile::Plan,
}

/// Reconciles the configured manifest directories (or `paths`) into the store and publishes
/// what changed. With a git source, fetches it and reconciles its tip commit instead (paths
/// are refused: the repository is reconciled whole). Blocking: call from a thread of its
/// own or `spawn_blocking`.
pub fn reconcile(
    shared: &Controller,
    paths: &[PathBuf],
    prune: bool,
    dry_run: bool,
    reason: &str,
) -> Result<ReconcileOutcome> {
    let _one_at_a_time = shared
        .reconcile_lock
        .lock()
        .unwrap_or_else(|e| e.into_inner());
    let started = Instant::now();
    // A git source is fetched first, and the manifests of its tip commit are read.
    let (snapshot, scope, source) = match &shared.git {
        Some(git) => (
            super::git::load(shared, git, paths)?,
            None,
            super::git::GIT_SOURCE,
        ),
        None => {
            let (snapshot, scope) =
                reconcile::load_manifests_indexed(&shared.config, paths, &shared.file_index)?;
            (snapshot, scope, "dir")
        }
    };
    let loaded = started.elapsed();
    let prepared = reconcile::prepare_checked(
        &shared.store,
        &snapshot,
        &ReconcileOptions {
            source: source.to_owned(),
            scope,
            prune,
            use_memo: true,
        },
        Some(&shared.file_checks),
    )?;
    let planned = started.elapsed();
    let now = chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
    let (report, records) =
        reconcile::apply_returning_records(&shared.store, &prepared, dry_run, &now)?;
    let applied = started.elapsed();
    let outcome = ReconcileOutcome {
        report,
        diagnostics: prepared.diagnostics.clone(),
        from_memo: prepared.from_memo,
        duration_ms: started.elapsed().as_millis() as u64,
        plan: prepared.plan.clone(),
    };
    if !dry_run {
        // The records the reconcile read with those it wrote are what the store holds now
        // (only a reconcile writes objects, one at a time): no need to read them again.
        match records {
            Some(records) => shared.view.set_records(records),
            None => shared.view.refresh_objects(&shared.store)?,
        }
        let refreshed = started.elapsed();
        shared.metrics.reconciles.inc();
        if outcome.report.errors > 0 {
            shared.metrics.reconcile_errors.inc();
        }
        publish(shared, &outcome, reason);
        // Where a reconcile's time goes, phase by phase (cumulative, ms).
        let ms = |d: Duration| d.as_secs_f64() * 1e3;
        tracing::debug!(
            reason,
            files = snapshot.files.len(),
            from_memo = outcome.from_memo,
            load_ms = ms(loaded),
            prepare_ms = ms(planned - loaded),
            apply_ms = ms(applied - planned),
            view_ms = ms(refreshed - applied),
            publish_ms = ms(started.elapsed() - refreshed),
            "reconciled"
        );
    }
    Ok(outcome)
}

fn publish(shared: &Controller, outcome: &ReconcileOutcome, reason: &str) {
    let report = &outcome.report;
    let change_of = |key: &ObjectKey, change: &'static str| ManifestChange {
        kind: key.kind,
        id: key.id.clone(),
        change,
        revision: report.revision.clone(),
    };
    for (keys, change) in [
        (&report.created, "created"),
        (&report.updated, "updated"),
        (&report.pruned, "pruned"),
    ] {
        for key in keys {
            shared
                .events
                .publish(Event::ManifestApplied(change_of(key, change)));
        }
    }
    // The view holds the records as of this reconcile.
    let view = shared.view.objects();
    let objects = &view.records;
    // Invalid documents, and objects kept because their file no longer parses at all: both
    // leave the last good version in force.
    for (keys, change) in [(&report.invalid, "invalid"), (&report.kept, "kept")] {
        for key in keys {
            let file = objects.get(key).map(|r| r.source_file.as_str());
            let diagnostics: Vec<Diagnostic> = outcome
                .diagnostics
                .iter()
                .filter(|d| Some(d.file.as_str()) == file)
                .cloned()
                .collect();
            shared
                .events
                .publish(Event::ManifestInvalid(ManifestInvalid {
                    object: change_of(key, change),
                    diagnostics,
                }));
        }
    }
    shared.events.publish(Event::SyncCompleted(SyncCompleted {
        reason: reason.to_owned(),
        revision: report.revision.clone(),
        created: report.created.len(),
        updated: report.updated.len(),
        pruned: report.pruned.len(),
        unchanged: report.unchanged,
        invalid: report.invalid.len(),
        errors: report.errors,
        warnings: report.warnings,
        duration_ms: outcome.duration_ms,
    }));
}

/// Watches the manifest directories and reconciles on every change, until `stop` is set.
/// Runs on the calling thread.
pub fn watch(shared: Arc<Controller>, stop: Arc<std::sync::atomic::AtomicBool>) -> Result<()> {
    // Absolute paths: events name what changed by the path that was watched.
    let project = std::fs::canonicalize(&shared.config.project_dir)
        .unwrap_or_else(|_| shared.config.project_dir.clone());
    let roots: Vec<PathBuf> = shared
        .config
        .config
        .manifests
        .paths
        .iter()
        .map(|p| project.join(p))
        .collect();
    let (sender, receiver) = mpsc::channel::<notify::Result<notify::Event>>();
    let mut watcher = notify::recommended_watcher(move |event| {
        let _ = sender.send(event);
    })?;
    let mut watched = Watched::default();
    watched.refresh(&mut watcher, &roots);
    tracing::debug!(recursive = ?watched.recursive, shallow = ?watched.shallow, "watching");
    // What changed between the first reconcile and the watches being in place is caught by
    // one more (cheap: an unchanged tree reuses its memo).
    if let Err(err) = reconcile(&shared, &[], true, false, "resync") {
        shared.metrics.errors.inc();
        tracing::error!("reconcile failed; the last applied state stays in force: {err:#}");
    }
    let mut last_sync = Instant::now();
    while !stop.load(std::sync::atomic::Ordering::SeqCst) {
        let first = match receiver.recv_timeout(Duration::from_millis(250)) {
            Ok(event) => Some(event),
            Err(mpsc::RecvTimeoutError::Timeout) => None,
            Err(mpsc::RecvTimeoutError::Disconnected) => break,
        };
        let relevant = first.as_ref().is_some_and(|event| concerns(event, &roots));
        if let Some(event) = &first {
            tracing::trace!(?event, relevant, "file system event");
        }
        let resync_due = last_sync.elapsed() >= RESYNC_INTERVAL;
        if !relevant && !resync_due {
            continue;
        }
        let reason = if relevant { "change" } else { "resync" };
        if relevant {
            // Debounce: wait for a quiet moment, within a bound.
            let burst_started = Instant::now();
            loop {
                let elapsed = burst_started.elapsed();
                let left = DEBOUNCE_MAX.saturating_sub(elapsed);
                if left.is_zero() {
                    break;
                }
                match receiver.recv_timeout(quiet_after(elapsed).min(left)) {
                    Ok(_) => continue,
                    Err(_) => break,
                }
            }
        }
        watched.refresh(&mut watcher, &roots);
        last_sync = Instant::now();
        if let Err(err) = reconcile(&shared, &[], true, false, reason) {
            shared.metrics.errors.inc();
            tracing::error!("reconcile failed; the last applied state stays in force: {err:#}");
        }
    }
    Ok(())
}

/// The quiet that ends a burst that has lasted `elapsed`: short for an isolated change,
/// growing with the burst up to [`DEBOUNCE_QUIET`].
fn quiet_after(elapsed: Duration) -> Duration {
    elapsed.clamp(DEBOUNCE_QUIET_MIN, DEBOUNCE_QUIET)
}

fn concerns(event: &notify::Result<notify::Event>, roots: &[PathBuf]) -> bool {
    match event {
        Ok(event) => {
            // Reads (the reconcile's own included) and metadata changes do not change what
            // a manifest says.
            let changes_content = match event.kind {
                notify::EventKind::Create(_)
                | notify::EventKind::Remove(_)
                | notify::EventKind::Any => true,
                notify::EventKind::Modify(kind) => {
                    !matches!(kind, notify::event::ModifyKind::Metadata(_))
                }
                _ => false,
            };
            changes_content
                && event
                    .paths
                    .iter()
                    .any(|p| roots.iter().any(|r| p.starts_with(r) || r.starts_with(p)))
        }
        // The watcher lost track (e.g. a queue overflow): reconcile everything.
        Err(_) => true,
    }
}

/// The directories being watched: each manifest root recursively once it exists, and the
/// nearest existing ancestor of a missing one, so its creation is seen.
#[derive(Default)]
struct Watched {
    recursive: BTreeSet<PathBuf>,
    shallow: BTreeSet<PathBuf>,
}

impl Watched {
    fn refresh(&mut self, watcher: &mut impl Watcher, roots: &[PathBuf]) {
        let mut want_recursive = BTreeSet::new();
        let mut want_shallow = BTreeSet::new();
        for root in roots {
            if root.is_dir() {
                want_recursive.insert(root.clone());
            } else if let Some(ancestor) = existing_ancestor(root) {
                want_shallow.insert(ancestor);
            }
        }
        for gone in self.recursive.difference(&want_recursive) {
            let _ = watcher.unwatch(gone);
        }
        for gone in self.shallow.difference(&want_shallow) {
            let _ = watcher.unwatch(gone);
        }
        for path in want_recursive.difference(&self.recursive) {
            if let Err(err) = watcher.watch(path, RecursiveMode::Recursive) {
                tracing::warn!("cannot watch {}: {err}", path.display());
            }
        }
        for path in want_shallow.difference(&self.shallow) {
            if let Err(err) = watcher.watch(path, RecursiveMode::NonRecursive) {
                tracing::warn!("cannot watch {}: {err}", path.display());
            }
        }
        self.recursive = want_recursive;
        self.shallow = want_shallow;
    }
}

fn existing_ancestor(path: &Path) -> Option<PathBuf> {
    path.ancestors()
        .skip(1)
        .find(|p| p.is_dir())
        .map(Path::to_owned)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_quiet_grows_with_the_burst_within_its_bounds() {
        assert_eq!(quiet_after(Duration::ZERO), DEBOUNCE_QUIET_MIN);
        assert_eq!(
            quiet_after(Duration::from_millis(25)),
            Duration::from_millis(25)
        );
        assert_eq!(quiet_after(Duration::from_millis(150)), DEBOUNCE_QUIET);
    }

    #[test]
    fn notify_reports_a_new_file_under_a_watched_root() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("workflows");
        std::fs::create_dir(&root).unwrap();
        let (sender, receiver) = mpsc::channel();
        let mut watcher = notify::recommended_watcher(move |event| {
            let _ = sender.send(event);
        })
        .unwrap();
        let mut watched = Watched::default();
        watched.refresh(&mut watcher, std::slice::from_ref(&root));
        std::fs::write(root.join("new.yaml"), "name: x\n").unwrap();
        let event = receiver.recv_timeout(Duration::from_secs(5)).unwrap();
        assert!(concerns(&event, &[root]), "{event:?}");
    }
}
