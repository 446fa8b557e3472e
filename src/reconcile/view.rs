//! What the read routes serve, kept in memory: the object records as of the last reconcile,
//! each workflow's summary ready to send, and the newest run of each workflow. The store
//! stays the source of truth — the view is rebuilt from it after every reconcile and updated
//! as runs start and finish — so a list request decodes nothing.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, RwLock};

use serde_json::{json, Value};

use crate::manifest::Kind;
use crate::model::{RunHeadRef, RunRecord};
use crate::spec::alert::AlertRule;
use crate::spec::schedule::ScheduleSpec;
use crate::store::{ObjectKey, ObjectRecord, Store, StoreError};

/// One consistent picture of the objects, with the specs the subsystems read compiled
/// once per reconcile.
#[derive(Debug, Default)]
pub struct Objects {
    /// Every record, as the store holds it.
    pub records: BTreeMap<ObjectKey, ObjectRecord>,
    /// Live workflows in id order: (id, summary without its last run, serialized once).
    pub workflows: Vec<(String, String)>,
    /// Live Schedules in id order, compiled, or why one cannot be (by id).
    pub schedules: Vec<(String, Result<ScheduleSpec, String>)>,
    /// Live Alert rules in id order; one that cannot be compiled is logged and left out
    /// (validation rejects such manifests already).
    pub alerts: Vec<AlertRule>,
    /// Live Agent manifests by agent name: what each run's steps and the health checks
    /// are configured with.
    pub agents: BTreeMap<String, Value>,
}

/// Agent manifests by agent name.
pub fn agent_configs(objects: &BTreeMap<ObjectKey, ObjectRecord>) -> BTreeMap<String, Value> {
    objects
        .values()
        .filter(|r| r.key.kind == Kind::Agent && r.is_live())
        .filter_map(|r| Some((r.name.clone(), r.spec.as_deref()?.clone())))
        .collect()
}

/// A live Schedule record compiled; `default_zone` when it names none.
pub fn schedule_spec(record: &ObjectRecord, default_zone: &str) -> Result<ScheduleSpec, String> {
    let spec = record.spec.as_ref().ok_or("no spec in force")?;
    ScheduleSpec::new(&record.key.id, &record.name, spec, default_zone)
}

/// A live Alert record compiled, with the file it was declared in.
pub fn alert_rule(record: &ObjectRecord) -> Result<AlertRule, String> {
    let spec = record.spec.as_ref().ok_or("no spec in force")?;
    let mut rule = AlertRule::from_spec(&record.key.id, spec)?;
    rule.source_file = Some(record.source_file.clone());
    Ok(rule)
}

/// The live Alert rules among the records; a rule that cannot be read is logged and left
/// out (validation has rejected such manifests already).
pub fn alert_rules(records: &BTreeMap<ObjectKey, ObjectRecord>) -> Vec<AlertRule> {
    records
        .values()
        .filter(|r| r.key.kind == Kind::Alert && r.is_live())
        .filter_map(|record| match alert_rule(record) {
            Ok(rule) => Some(rule),
            Err(err) => {
                tracing::warn!(alert = %record.key.id, "cannot evaluate: {err}");
                None
            }
        })
        .collect()
}

/// The in-memory view.
#[derive(Debug, Default)]
pub struct View {
    /// `scheduler.timezone`: the zone of Schedules that name none.
    schedule_zone: String,
    objects: RwLock<Arc<Objects>>,
    last_runs: RwLock<HashMap<String, Value>>,
}

/// Whether what the view derives from a record (a workflow's summary, a compiled Schedule)
/// is the same for both versions of it: the same spec (by its content hash), name, file,
/// status and applied revision.
fn reads_the_same(before: &ObjectRecord, after: &ObjectRecord) -> bool {
    before.hash.is_some()
        && before.hash == after.hash
        && before.spec.is_some() == after.spec.is_some()
        && before.name == after.name
        && before.status == after.status
        && before.source_file == after.source_file
        && before.applied_revision == after.applied_revision
}

/// What `previous` derived from `record` (found in `list`, which is in id order) when the
/// record reads the same as it did there; otherwise `derive`d afresh.
fn kept_or_derived<T: Clone>(
    previous: &Objects,
    list: &[(String, T)],
    record: &ObjectRecord,
    derive: impl FnOnce() -> T,
) -> T {
    let unchanged = previous
        .records
        .get(&record.key)
        .is_some_and(|before| reads_the_same(before, record));
    let kept = list
        .binary_search_by(|(id, _)| id.as_str().cmp(&record.key.id))
        .ok()
        .filter(|_| unchanged);
    match kept {
        Some(at) => list[at].1.clone(),
        None => derive(),
    }
}

/// A workflow as lists show it (without its last run).
pub fn workflow_summary(record: &ObjectRecord) -> Value {
    let spec = record.spec.as_ref();
    json!({
        "id": record.key.id,
        "name": record.name,
        "description": spec.and_then(|s| s.get("description")).cloned().unwrap_or(Value::Null),
        "steps": spec.and_then(|s| s.get("steps")).and_then(Value::as_array).map_or(0, Vec::len),
        "template": spec.and_then(|s| s.get("template")).cloned().unwrap_or(Value::Null),
        "status": record.status,
        "source_file": record.source_file,
        "applied_revision": record.applied_revision,
    })
}

/// A run as a workflow's `last_run` shows it.
pub fn last_run_summary(run: RunHeadRef<'_>) -> Value {
    json!({
        "id": run.id,
        "status": run.status,
        "created_at": run.created_at,
        "finished_at": run.finished_at,
    })
}

impl View {
    /// The view of what the store holds now.
    /// `schedule_zone` is `scheduler.timezone`, the zone of Schedules that name none.
    pub fn load(store: &Store, schedule_zone: &str) -> Result<View, StoreError> {
        let view = View {
            schedule_zone: schedule_zone.to_owned(),
            ..View::default()
        };
        view.refresh_objects(store)?;
        let mut last = HashMap::new();
        for run in store.latest_runs()? {
            last.insert(run.workflow_id.clone(), last_run_summary(run.borrowed()));
        }
        *view.last_runs.write().unwrap_or_else(|e| e.into_inner()) = last;
        Ok(view)
    }

    /// Re-reads the object records (after a reconcile).
    pub fn refresh_objects(&self, store: &Store) -> Result<(), StoreError> {
        self.set_records(store.objects()?);
        Ok(())
    }

    /// Takes these records as the objects in force: what the store holds, as a reconcile
    /// that read every record and then wrote some knows without reading them again. The
    /// summary and the compiled Schedule of an object whose record is as it was are taken
    /// from the objects replaced: an edit serializes and compiles what it changed, not
    /// every workflow again.
    pub fn set_records(&self, records: BTreeMap<ObjectKey, ObjectRecord>) {
        let previous = self.objects();
        let workflows = records
            .values()
            .filter(|r| r.key.kind == Kind::Workflow && r.is_live())
            .map(|r| {
                let summary = kept_or_derived(&previous, &previous.workflows, r, || {
                    workflow_summary(r).to_string()
                });
                (r.key.id.clone(), summary)
            })
            .collect();
        let schedules = records
            .values()
            .filter(|r| r.key.kind == Kind::Schedule && r.is_live())
            .map(|r| {
                let compiled = kept_or_derived(&previous, &previous.schedules, r, || {
                    schedule_spec(r, &self.schedule_zone)
                });
                (r.key.id.clone(), compiled)
            })
            .collect();
        let alerts = alert_rules(&records);
        let agents = agent_configs(&records);
        *self.objects.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(Objects {
            records,
            workflows,
            schedules,
            alerts,
            agents,
        });
    }

    /// Notes a run's latest state as its workflow's last run.
    pub fn record_run(&self, run: &RunRecord) {
        self.last_runs
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .insert(run.workflow_id.clone(), last_run_summary(run.head()));
    }

    /// The objects as of the last reconcile.
    pub fn objects(&self) -> Arc<Objects> {
        Arc::clone(&self.objects.read().unwrap_or_else(|e| e.into_inner()))
    }

    /// A page of workflows as the JSON body of `GET /api/workflows`, written straight from
    /// the summaries serialized at reconcile time.
    pub fn workflow_page(&self, offset: usize, limit: usize) -> String {
        let objects = self.objects();
        let last_runs = self.last_runs.read().unwrap_or_else(|e| e.into_inner());
        let mut body = String::with_capacity(64 + limit.min(objects.workflows.len()) * 400);
        body.push_str("{\"workflows\":[");
        for (n, (id, summary)) in objects
            .workflows
            .iter()
            .skip(offset)
            .take(limit)
            .enumerate()
        {
            if n > 0 {
                body.push(',');
            }
            // `{...}` + `,"last_run":...}`: the summary is an object, so its last byte is `}`.
            body.push_str(&summary[..summary.len() - 1]);
            body.push_str(",\"last_run\":");
            match last_runs.get(id) {
                Some(run) => body.push_str(&run.to_string()),
                None => body.push_str("null"),
            }
            body.push('}');
        }
        body.push_str(&format!(
            "],\"total\":{},\"limit\":{limit},\"offset\":{offset}}}",
            objects.workflows.len()
        ));
        body
    }

    /// The newest run of a workflow, if it has one.
    pub fn last_run(&self, workflow: &str) -> Value {
        self.last_runs
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .get(workflow)
            .cloned()
            .unwrap_or(Value::Null)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::ObjectStatus;

    fn workflow(id: &str, description: &str, revision: &str) -> (ObjectKey, ObjectRecord) {
        let spec = json!({"name": id, "description": description, "steps": [{"name": "a"}]});
        let key = ObjectKey {
            kind: Kind::Workflow,
            id: id.to_owned(),
        };
        let record = ObjectRecord {
            key: key.clone(),
            name: id.to_owned(),
            hash: Some(crate::reconcile::content_hash(&spec)),
            // A record read back from the store: its own copy of the spec.
            spec: Some(Arc::new(spec)),
            source_file: format!("workflows/{id}.yaml"),
            status: ObjectStatus::Applied,
            diagnostics: Vec::new(),
            applied_revision: Some(revision.to_owned()),
            attempted_revision: revision.to_owned(),
            generation: 1,
            applied_at: None,
            updated_at: "2026-01-01T00:00:00Z".to_owned(),
        };
        (key, record)
    }

    /// (id, description, status, applied revision) of each workflow as the list shows it.
    fn listed(view: &View) -> Vec<(String, String, String, String)> {
        let page: Value = serde_json::from_str(&view.workflow_page(0, 100)).unwrap();
        page["workflows"]
            .as_array()
            .unwrap()
            .iter()
            .map(|w| {
                let field = |name: &str| w[name].as_str().unwrap_or_default().to_owned();
                (
                    field("id"),
                    field("description"),
                    field("status"),
                    field("applied_revision"),
                )
            })
            .collect()
    }

    #[test]
    fn a_new_set_of_records_shows_what_changed_and_keeps_what_did_not() {
        let view = View::default();
        view.set_records(BTreeMap::from([
            workflow("wf_a", "first", "dir:1"),
            workflow("wf_b", "first", "dir:1"),
            workflow("wf_c", "first", "dir:1"),
            workflow("wf_d", "first", "dir:1"),
        ]));
        let row = |id: &str, description: &str, status: &str, revision: &str| {
            (
                id.to_owned(),
                description.to_owned(),
                status.to_owned(),
                revision.to_owned(),
            )
        };
        // wf_a edited; wf_b as it was (read again); wf_c's manifest now invalid, its spec
        // still in force; wf_d re-applied unchanged at a new revision; wf_e new.
        let (key_c, mut invalid_c) = workflow("wf_c", "first", "dir:1");
        invalid_c.status = ObjectStatus::Invalid;
        view.set_records(BTreeMap::from([
            workflow("wf_a", "second", "dir:2"),
            workflow("wf_b", "first", "dir:1"),
            (key_c, invalid_c),
            workflow("wf_d", "first", "dir:2"),
            workflow("wf_e", "new", "dir:2"),
        ]));
        assert_eq!(
            listed(&view),
            vec![
                row("wf_a", "second", "applied", "dir:2"),
                row("wf_b", "first", "applied", "dir:1"),
                row("wf_c", "first", "invalid", "dir:1"),
                row("wf_d", "first", "applied", "dir:2"),
                row("wf_e", "new", "applied", "dir:2"),
            ]
        );
        // A workflow gone from the records is gone from the list.
        view.set_records(BTreeMap::from([workflow("wf_b", "first", "dir:1")]));
        assert_eq!(
            listed(&view),
            vec![row("wf_b", "first", "applied", "dir:1")]
        );
    }
}
