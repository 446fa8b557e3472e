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
    /// that read every record and then wrote some knows without reading them again.
    pub fn set_records(&self, records: BTreeMap<ObjectKey, ObjectRecord>) {
        let workflows = records
            .values()
            .filter(|r| r.key.kind == Kind::Workflow && r.is_live())
            .map(|r| (r.key.id.clone(), workflow_summary(r).to_string()))
            .collect();
        let schedules = records
            .values()
            .filter(|r| r.key.kind == Kind::Schedule && r.is_live())
            .map(|r| (r.key.id.clone(), schedule_spec(r, &self.schedule_zone)))
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
