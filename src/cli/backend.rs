//! Where a command reads and changes state: the store itself when no server runs, or the
//! running server's API (sled allows one process per data directory). Commands are written
//! once against this and print the same either way.

use std::collections::BTreeMap;

use anyhow::Result;

use super::client::ApiClient;
use super::workflow::open_store;
use super::Context;
use crate::model::{RunHead, RunRecord, StepRecord};
use crate::store::{ObjectKey, ObjectRecord, RunFilter, Store};

/// The project's store, opened by this process. A read-only command in a project without
/// a store yet gets an empty one that lives in memory, and a note that nothing is applied
/// yet, instead of creating a data directory.
pub fn local_store(context: &Context) -> Result<Store> {
    let data_dir = context.data_dir();
    if context.read_only && !Store::exists(&data_dir) {
        eprintln!(
            "note: nothing applied yet: no store in {} (`orchestrator apply` or `orchestrator start` creates it)",
            data_dir.display()
        );
        return Ok(Store::empty()?);
    }
    open_store(context)
}

/// The store, or the server holding it.
pub enum Backend {
    /// This process opened the store.
    Local(Store),
    /// A server holds the store; requests go through its API.
    Remote(ApiClient),
}

impl Backend {
    /// The running server when there is one, else the store.
    pub fn open(context: &Context) -> Result<Backend> {
        match ApiClient::for_context(context)? {
            Some(client) => Ok(Backend::Remote(client)),
            None => Ok(Backend::Local(local_store(context)?)),
        }
    }

    /// Every object record.
    pub fn objects(&self) -> Result<BTreeMap<ObjectKey, ObjectRecord>> {
        match self {
            Backend::Local(store) => Ok(store.objects()?),
            Backend::Remote(client) => client.objects(),
        }
    }

    /// The runs `filter` matches, newest first, whole records (with their workflows), at
    /// most `limit` (through a server, at most its largest page, 10,000). Only those runs
    /// are read.
    pub fn runs(&self, filter: &RunFilter, limit: usize) -> Result<Vec<RunRecord>> {
        match self {
            Backend::Local(store) => {
                let mut runs = Vec::new();
                for head in store.list_runs(filter, 0, limit)?.runs {
                    if let Some(workflow) = store.run_workflow(&head.id)? {
                        runs.push(head.with_workflow(workflow));
                    }
                }
                Ok(runs)
            }
            Backend::Remote(client) => client.runs(filter, limit),
        }
    }

    /// The newest run of each workflow that has one, without their workflows.
    pub fn latest_runs(&self) -> Result<Vec<RunHead>> {
        match self {
            Backend::Local(store) => Ok(store.latest_runs()?),
            Backend::Remote(client) => {
                let mut newest: BTreeMap<String, RunHead> = BTreeMap::new();
                for run in client.runs(&RunFilter::default(), usize::MAX)? {
                    // Newest first: the first seen of a workflow is its newest.
                    if !newest.contains_key(&run.workflow_id) {
                        newest.insert(run.workflow_id.clone(), run.into_head());
                    }
                }
                Ok(newest.into_values().collect())
            }
        }
    }

    /// One run.
    pub fn run(&self, id: &str) -> Result<Option<RunRecord>> {
        match self {
            Backend::Local(store) => Ok(store.run(id)?),
            Backend::Remote(client) => Ok(client.run(id)?.map(|(run, _)| run)),
        }
    }

    /// What was reported of a run to its GitHub commit, when it is reported.
    pub fn commit_status(
        &self,
        id: &str,
    ) -> Result<Option<crate::triggers::commit_status::CommitStatusReport>> {
        match self {
            Backend::Local(store) => {
                Ok(store.state(crate::triggers::commit_status::STATE_TREE, id)?)
            }
            Backend::Remote(client) => client.commit_status(id),
        }
    }

    /// The steps of a run, in workflow order.
    pub fn steps(&self, id: &str) -> Result<Vec<StepRecord>> {
        match self {
            Backend::Local(store) => Ok(store.steps(id)?),
            Backend::Remote(client) => {
                Ok(client.run(id)?.map(|(_, steps)| steps).unwrap_or_default())
            }
        }
    }
}
