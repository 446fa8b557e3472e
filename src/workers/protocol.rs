//! The wire between the controller and its workers, over NATS JetStream (server 2.9 or
//! later): the streams, buckets and subjects both sides create and use, the messages on
//! them, the selector a set of labels hashes to, and the connection with its credentials.
//!
//! | name | kind | what |
//! |---|---|---|
//! | `ORCH_WORK` | work-queue stream, `orch.work.<selector>` | step attempts to run; `Nats-Msg-Id` `<run>.<step>.<attempt>` |
//! | `sel_<selector>` | durable pull consumer on `ORCH_WORK` | one per selector (2.9: one filter subject per consumer) |
//! | `ORCH_RESULTS` | work-queue stream, `orch.result.<worker>` | started, log chunks, finished, from workers |
//! | `controller` | durable pull consumer on `ORCH_RESULTS` | the controller applies them in order |
//! | `orch_selectors` | KV | selector → its labels, so workers know what to pull |
//! | `orch_workers` | KV | worker name → [`WorkerInfo`], written with each heartbeat |
//! | `orch_leases` | KV | attempt key → [`Lease`], renewed with each heartbeat |
//! | `orch_files` | object store | project snapshots (`snapshot-<sha256>`) and artifacts |
//! | `orch.claim` | request/reply | a worker claims an attempt; the controller grants once |
//! | `orch.worker.<name>` | subject | [`Control`] for one worker: stop an attempt, drain, resume |

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use async_nats::jetstream::{self, consumer, kv, object_store, stream};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use sha2::{Digest, Sha256};

use crate::agents::local::PreparedStep;
use crate::config::NatsConfig;
use crate::model::{Attempt, Status, TestCase};

/// The stream of attempts waiting for a worker.
pub const WORK_STREAM: &str = "ORCH_WORK";
/// The stream of what workers report.
pub const RESULT_STREAM: &str = "ORCH_RESULTS";
/// The controller's consumer of [`RESULT_STREAM`].
pub const RESULT_CONSUMER: &str = "controller";
/// Selector → labels.
pub const SELECTORS: &str = "orch_selectors";
/// Worker name → [`WorkerInfo`].
pub const WORKERS: &str = "orch_workers";
/// Attempt key → [`Lease`].
pub const LEASES: &str = "orch_leases";
/// Snapshots and artifacts.
pub const FILES: &str = "orch_files";
/// Where claims go.
pub const CLAIM_SUBJECT: &str = "orch.claim";
/// How long a delivered report may stay unacknowledged before it is delivered again.
pub const ACK_WAIT: Duration = Duration::from_secs(30);
/// How long a delivered attempt may stay unacknowledged before it is delivered again: a
/// worker acks it as soon as its claim is answered, so this bounds how long an attempt
/// waits when the worker it was delivered to dies before claiming it.
pub const DELIVERY_WAIT: Duration = Duration::from_secs(5);
/// The largest log chunk a worker sends.
pub const LOG_CHUNK_BYTES: usize = 32 * 1024;
/// How often a worker sends what its step wrote.
pub const LOG_FLUSH: Duration = Duration::from_millis(100);
/// Headers of a report: its kind (`log`, `started`, `finished`), attempt, token, sequence.
pub const KIND_HEADER: &str = "Orch-Kind";
/// The attempt a report is about.
pub const KEY_HEADER: &str = "Orch-Key";
/// The fencing token the claim gave.
pub const TOKEN_HEADER: &str = "Orch-Token";
/// A log chunk's number, from 0.
pub const SEQ_HEADER: &str = "Orch-Seq";

/// The subject of attempts for a selector.
pub fn work_subject(selector: &str) -> String {
    format!("orch.work.{selector}")
}

/// The subject a worker reports on.
pub fn result_subject(worker: &str) -> String {
    format!("orch.result.{worker}")
}

/// The subject a worker hears its [`Control`] on.
pub fn control_subject(worker: &str) -> String {
    format!("orch.worker.{worker}")
}

/// The durable consumer of a selector.
pub fn selector_consumer(selector: &str) -> String {
    format!("sel_{selector}")
}

/// An attempt's key: `<run>.<step index>.<attempt number>` (its message id, lease key and
/// claim key).
pub fn attempt_key(run_id: &str, index: usize, number: u32) -> String {
    format!("{run_id}.{index}.{number}")
}

/// The selector of a set of labels: a hash of them sorted, `k=v` per line, so the same
/// labels in any order share one subject and one consumer.
pub fn selector(labels: &BTreeMap<String, String>) -> String {
    let mut hash = Sha256::new();
    for (key, value) in labels {
        hash.update(key.as_bytes());
        hash.update(b"=");
        hash.update(value.as_bytes());
        hash.update(b"\n");
    }
    hex::encode(&hash.finalize()[..8])
}

/// Whether a worker with `have` satisfies a step that needs `need`: every needed label
/// present with the same value.
pub fn satisfies(have: &BTreeMap<String, String>, need: &BTreeMap<String, String>) -> bool {
    need.iter().all(|(k, v)| have.get(k) == Some(v))
}

/// A worker name fit for subjects and KV keys: letters, digits, `-` and `_`.
pub fn valid_worker_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 64
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

/// `k=v,k=v` labels.
pub fn parse_labels(text: &str) -> Result<BTreeMap<String, String>, String> {
    let mut labels = BTreeMap::new();
    for pair in text.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let Some((key, value)) = pair.split_once('=') else {
            return Err(format!("label `{pair}` is not key=value"));
        };
        let (key, value) = (key.trim(), value.trim());
        let good = |s: &str, extra: &[u8]| {
            !s.is_empty()
                && s.len() <= 128
                && s.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"_.-".contains(&b) || extra.contains(&b))
        };
        if !good(key, b"") || !good(value, b":/") {
            return Err(format!(
                "label `{pair}`: expected key=value of letters, digits, `_`, `.`, `-` (values also `:` and `/`)"
            ));
        }
        labels.insert(key.to_owned(), value.to_owned());
    }
    Ok(labels)
}

/// One attempt for a worker to run.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct WorkItem {
    /// Its key ([`attempt_key`]).
    pub key: String,
    /// The labels it needs.
    pub labels: BTreeMap<String, String>,
    /// The step, prepared.
    pub step: PreparedStep,
    /// The object holding the project at the run's revision.
    pub snapshot: Option<String>,
}

/// A worker asking to run an attempt.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ClaimRequest {
    /// The attempt.
    pub key: String,
    /// The worker.
    pub worker: String,
}

/// The controller's answer to a claim.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ClaimReply {
    /// The fencing token, when the claim is granted: every report about the attempt
    /// carries it.
    pub token: Option<u64>,
    /// Why not, when it is refused.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub refused: Option<String>,
    /// The refusal is for now only (the controller is starting, or could not record the
    /// claim): the worker hands the attempt back for another delivery instead of dropping
    /// it.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub retry: bool,
}

/// A worker's hold on an attempt, renewed with each heartbeat.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Lease {
    /// The worker.
    pub worker: String,
    /// The claim's token.
    pub token: u64,
}

/// How a remote attempt ended.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Finished {
    /// Succeeded, Failed, TimedOut or Cancelled.
    pub status: Option<Status>,
    /// The exit code of the process that decided it.
    pub exit_code: Option<i32>,
    /// Why it failed, or a summary.
    pub message: Option<String>,
    /// `$ORCHESTRATOR_OUTPUT` outputs.
    pub outputs: Map<String, Value>,
    /// Test cases its JUnit files held.
    pub tests: Vec<TestCase>,
    /// Files it produced: (path in the workspace, object in [`FILES`]).
    pub artifacts: Vec<(String, String)>,
    /// The attempt's record.
    pub attempt: Option<Attempt>,
    /// Log chunks sent.
    pub log_chunks: u64,
    /// SHA-256 of the whole log sent, hex.
    pub log_sha256: String,
    /// The worker stopped the attempt itself because it could not renew its lease for
    /// the lease time (it may have been cut off): the controller treats the attempt as
    /// one whose worker was lost.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub lost: bool,
}

/// A message to one worker.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum Control {
    /// Stop an attempt: it times out or is cancelled.
    Stop {
        /// The attempt.
        key: String,
        /// `timeout` or `cancel`.
        timeout: bool,
    },
    /// Finish what runs, take nothing new.
    Drain,
    /// Take work again.
    Resume,
}

/// What a worker says of itself with each heartbeat.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct WorkerInfo {
    /// Its name.
    pub name: String,
    /// Its labels.
    pub labels: BTreeMap<String, String>,
    /// Attempts it runs at once.
    pub slots: u32,
    /// The attempts it runs now.
    pub running: Vec<RunningAttempt>,
    /// Whether it takes no new work.
    pub draining: bool,
    /// Its orchestrator version.
    pub version: String,
    /// Its host name.
    pub host: String,
    /// Its process id.
    pub pid: u32,
    /// When it started, RFC 3339.
    pub started_at: String,
    /// Attempts it has finished.
    pub finished: u64,
}

/// An attempt a worker runs.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct RunningAttempt {
    /// Its key.
    pub key: String,
    /// The run.
    pub run_id: String,
    /// The step.
    pub step: String,
    /// Its number.
    pub attempt: u32,
}

/// Connects to NATS as `name` with the configured credentials and TLS, and refuses a
/// server older than 2.9 (JetStream's work queues and KV as used here).
pub async fn connect(
    nats: &NatsConfig,
    project_dir: &Path,
    name: &str,
) -> Result<async_nats::Client, String> {
    let read = |what: &str, reference: &str| {
        crate::config::secrets::read(reference, project_dir)
            .map(|text| text.trim().to_owned())
            .map_err(|err| {
                let why = match err {
                    crate::config::secrets::SecretError::Unset(name) => {
                        format!("the environment variable {name} is not set")
                    }
                    crate::config::secrets::SecretError::Unreadable(path, err) => {
                        format!("cannot read {}: {err}", path.display())
                    }
                    crate::config::secrets::SecretError::NotAReference => {
                        "expected env:NAME or file:PATH".to_owned()
                    }
                };
                format!("distributed.nats.{what} `{reference}`: {why}")
            })
    };
    let mut options = if let Some(token) = &nats.token {
        async_nats::ConnectOptions::with_token(read("token", token)?)
    } else if let Some(seed) = &nats.nkey {
        async_nats::ConnectOptions::with_nkey(read("nkey", seed)?)
    } else if let Some(creds) = &nats.creds {
        async_nats::ConnectOptions::with_credentials(&read("creds", creds)?)
            .map_err(|err| format!("distributed.nats.creds `{creds}`: {err}"))?
    } else {
        async_nats::ConnectOptions::new()
    };
    if let Some(ca) = &nats.tls_ca {
        options = options
            .add_root_certificates(project_dir.join(ca))
            .require_tls(true);
    }
    if let (Some(cert), Some(key)) = (&nats.tls_cert, &nats.tls_key) {
        options = options
            .add_client_certificate(project_dir.join(cert), project_dir.join(key))
            .require_tls(true);
    }
    if nats.url.starts_with("tls://") {
        options = options.require_tls(true);
    }
    let client = options
        .name(name)
        .connection_timeout(Duration::from_secs(5))
        .retry_on_initial_connect()
        .max_reconnects(None)
        .connect(&nats.url)
        .await
        .map_err(|err| format!("cannot connect to NATS at {}: {err}", nats.url))?;
    // With retry_on_initial_connect the first connection happens in the background.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while client.connection_state() != async_nats::connection::State::Connected {
        if tokio::time::Instant::now() > deadline {
            return Err(format!(
                "cannot connect to NATS at {}: no answer within 10 s",
                nats.url
            ));
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let version = client.server_info().version;
    if !version_supported(&version) {
        return Err(format!(
            "the NATS server at {} is version {version}; workers need 2.9 or later with JetStream",
            nats.url
        ));
    }
    if !client.server_info().jetstream {
        return Err(format!(
            "the NATS server at {} runs without JetStream: start it with -js",
            nats.url
        ));
    }
    Ok(client)
}

/// Whether a server version is 2.9 or later.
pub fn version_supported(version: &str) -> bool {
    let mut parts = version.split('.').map(|p| {
        p.chars()
            .take_while(char::is_ascii_digit)
            .collect::<String>()
            .parse::<u32>()
            .unwrap_or(0)
    });
    let (major, minor) = (parts.next().unwrap_or(0), parts.next().unwrap_or(0));
    (major, minor) >= (2, 9)
}

/// The streams, buckets and object store, created if missing (controller and workers both
/// call this with the same settings).
#[derive(Clone)]
pub struct Wire {
    /// The JetStream context.
    pub js: jetstream::Context,
    /// The work stream.
    pub work: stream::Stream,
    /// The results stream.
    pub results: stream::Stream,
    /// [`SELECTORS`].
    pub selectors: kv::Store,
    /// [`WORKERS`].
    pub workers: kv::Store,
    /// [`LEASES`].
    pub leases: kv::Store,
    /// [`FILES`].
    pub files: object_store::ObjectStore,
}

impl std::fmt::Debug for Wire {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Wire").finish_non_exhaustive()
    }
}

impl Wire {
    /// Opens (creating what is missing) everything on `client`.
    pub async fn open(client: &async_nats::Client) -> Result<Wire, String> {
        let js = jetstream::new(client.clone());
        let work = js
            .get_or_create_stream(stream::Config {
                name: WORK_STREAM.into(),
                subjects: vec!["orch.work.*".into()],
                retention: stream::RetentionPolicy::WorkQueue,
                duplicate_window: Duration::from_secs(120),
                storage: stream::StorageType::File,
                ..Default::default()
            })
            .await
            .map_err(|err| format!("cannot create the stream {WORK_STREAM}: {err}"))?;
        let results = js
            .get_or_create_stream(stream::Config {
                name: RESULT_STREAM.into(),
                subjects: vec!["orch.result.*".into()],
                retention: stream::RetentionPolicy::WorkQueue,
                duplicate_window: Duration::from_secs(120),
                storage: stream::StorageType::File,
                ..Default::default()
            })
            .await
            .map_err(|err| format!("cannot create the stream {RESULT_STREAM}: {err}"))?;
        let selectors = bucket(&js, SELECTORS).await?;
        let workers = bucket(&js, WORKERS).await?;
        let leases = bucket(&js, LEASES).await?;
        let files = match js.get_object_store(FILES).await {
            Ok(files) => files,
            Err(_) => js
                .create_object_store(object_store::Config {
                    bucket: FILES.into(),
                    max_age: Duration::from_secs(7 * 24 * 3600),
                    ..Default::default()
                })
                .await
                .map_err(|err| format!("cannot create the object store {FILES}: {err}"))?,
        };
        Ok(Wire {
            js,
            work,
            results,
            selectors,
            workers,
            leases,
            files,
        })
    }

    /// The consumer of one selector's attempts, created if missing.
    pub async fn selector_consumer(
        &self,
        selector: &str,
        max_deliver: i64,
    ) -> Result<consumer::Consumer<consumer::pull::Config>, String> {
        let name = selector_consumer(selector);
        self.work
            .get_or_create_consumer(
                &name,
                consumer::pull::Config {
                    durable_name: Some(name.clone()),
                    filter_subject: work_subject(selector),
                    ack_policy: consumer::AckPolicy::Explicit,
                    ack_wait: DELIVERY_WAIT,
                    max_deliver,
                    max_ack_pending: 10_000,
                    ..Default::default()
                },
            )
            .await
            .map_err(|err| format!("cannot create the consumer {name}: {err}"))
    }
}

/// A KV bucket of one value per key. Created as its stream directly: the client's own
/// bucket creation asks for account details a 2.9 server answers in an older shape.
async fn bucket(js: &jetstream::Context, name: &str) -> Result<kv::Store, String> {
    if let Ok(store) = js.get_key_value(name).await {
        return Ok(store);
    }
    js.get_or_create_stream(stream::Config {
        name: format!("KV_{name}"),
        subjects: vec![format!("$KV.{name}.>")],
        max_messages_per_subject: 1,
        allow_rollup: true,
        deny_delete: true,
        allow_direct: true,
        discard: stream::DiscardPolicy::New,
        storage: stream::StorageType::File,
        ..Default::default()
    })
    .await
    .map_err(|err| format!("cannot create the bucket {name}: {err}"))?;
    js.get_key_value(name)
        .await
        .map_err(|err| format!("cannot open the bucket {name}: {err}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn selectors_ignore_label_order_and_tell_label_sets_apart() {
        let a = parse_labels("os=linux,browser=chromium").unwrap();
        let b = parse_labels("browser=chromium, os=linux").unwrap();
        assert_eq!(selector(&a), selector(&b));
        assert_ne!(selector(&a), selector(&parse_labels("os=linux").unwrap()));
        assert_eq!(selector(&a).len(), 16);
    }

    #[test]
    fn a_worker_satisfies_a_step_when_it_has_every_label() {
        let have = parse_labels("os=linux,browser=chromium,gpu=yes").unwrap();
        assert!(satisfies(&have, &parse_labels("os=linux").unwrap()));
        assert!(satisfies(&have, &BTreeMap::new()));
        assert!(!satisfies(&have, &parse_labels("os=windows").unwrap()));
        assert!(!satisfies(
            &have,
            &parse_labels("os=linux,arch=arm64").unwrap()
        ));
    }

    #[test]
    fn bad_labels_and_names_are_refused_with_the_pair() {
        assert!(parse_labels("os").unwrap_err().contains("`os`"));
        assert!(parse_labels("o s=linux").is_err());
        assert!(parse_labels("os=").is_err());
        assert!(valid_worker_name("rig-07"));
        assert!(!valid_worker_name("rig.07"));
        assert!(!valid_worker_name(""));
    }

    #[test]
    fn servers_before_2_9_are_refused() {
        assert!(version_supported("2.9.10"));
        assert!(version_supported("2.10.0"));
        assert!(version_supported("3.0.0-beta"));
        assert!(!version_supported("2.8.4"));
        assert!(!version_supported("garbage"));
    }
}
