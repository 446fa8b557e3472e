//! Configuration per environment (development, testing, staging, production): the embedded
//! defaults, then the project's `config/<environment>.yaml` (or `--config FILE`), then
//! `ORCHESTRATOR_*` environment variables, then command-line flags. The file is validated
//! against `schemas/config.json` with the same diagnostics as manifests.

pub mod api_token;
pub mod process_file;
pub mod secrets;

use std::fmt;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::diagnostics::Diagnostic;
use crate::manifest::parse;
use crate::schema::{self, SchemaName};

/// The environments a project can run in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum, Default)]
#[serde(rename_all = "lowercase")]
pub enum Environment {
    /// Local development, debug logging.
    #[default]
    Development,
    /// Automated testing.
    Testing,
    /// Pre-production testing.
    Staging,
    /// Live production.
    Production,
}

impl Environment {
    /// Every environment.
    pub const ALL: [Environment; 4] = [
        Environment::Development,
        Environment::Testing,
        Environment::Staging,
        Environment::Production,
    ];

    /// The lowercase name.
    pub fn as_str(self) -> &'static str {
        match self {
            Environment::Development => "development",
            Environment::Testing => "testing",
            Environment::Staging => "staging",
            Environment::Production => "production",
        }
    }

    /// The embedded default configuration file (also what `init` writes).
    pub fn default_file(self) -> &'static str {
        match self {
            Environment::Development => include_str!("../../config/development.yaml"),
            Environment::Testing => include_str!("../../config/testing.yaml"),
            Environment::Staging => include_str!("../../config/staging.yaml"),
            Environment::Production => include_str!("../../config/production.yaml"),
        }
    }

    /// The project-relative path of the environment's configuration file.
    pub fn file_path(self) -> PathBuf {
        Path::new("config").join(format!("{}.yaml", self.as_str()))
    }
}

impl fmt::Display for Environment {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The effective configuration.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// The environment this configuration is for.
    pub environment: Environment,
    /// The API and dashboard server.
    pub server: ServerConfig,
    /// The sled store.
    pub storage: StorageConfig,
    /// Log level and directory.
    pub logging: LoggingConfig,
    /// Where reports are written.
    pub reports_dir: PathBuf,
    /// Where manifests are read from.
    pub manifests: ManifestsConfig,
    /// Run execution limits.
    pub runs: RunsConfig,
    /// Schedule defaults.
    pub scheduler: SchedulerConfig,
    /// Where the server reads manifests from: without it, the manifest directories of the
    /// project (watched); with `git`, a repository it fetches.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source: Option<SourceConfig>,
    /// The system sampler, metric history and alert evaluation.
    #[serde(default)]
    pub monitoring: MonitoringConfig,
    /// Notification channels that alert actions name.
    #[serde(default)]
    pub notifications: NotificationsConfig,
    /// Workers on NATS JetStream: absent, every step runs in this process.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub distributed: Option<DistributedConfig>,
    /// Test history: how much is kept and when a test counts as flaky.
    #[serde(default)]
    pub tests: TestsConfig,
}

/// Test history settings.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TestsConfig {
    /// Runs whose test results are kept, per workflow (default 200): older ones are
    /// removed as new ones come, with the tests seen only in them.
    pub retention_runs: u32,
    /// Days a run's test results are kept, counted back from the workflow's newest run
    /// (default 90).
    pub retention_days: u32,
    /// A test whose pass/fail flips this many times (default 3) within its last
    /// `flaky_window` results is flaky.
    pub flaky_flips: u32,
    /// The results `flaky_flips` counts over (default 20); a test that passed and failed on
    /// one revision stays flaky for this many results too.
    pub flaky_window: u32,
}

impl Default for TestsConfig {
    fn default() -> Self {
        TestsConfig {
            retention_runs: 200,
            retention_days: 90,
            flaky_flips: 3,
            flaky_window: 20,
        }
    }
}

/// Where workers are reached and how long they may stay silent.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DistributedConfig {
    /// The NATS server (with JetStream) and how to sign in to it.
    pub nats: NatsConfig,
    /// How long a worker may go without a heartbeat before its attempts are lost
    /// (`15s` by default).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lease: Option<DurationSetting>,
    /// How long a step may wait for a matching worker unless it sets `queue_timeout`
    /// (`30m` by default).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub queue_timeout: Option<DurationSetting>,
    /// Deliveries of one attempt before it is given up (5 by default).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_deliver: Option<u32>,
}

/// A NATS connection: its URL, its credentials as secret references, its TLS files.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NatsConfig {
    /// `nats://host:port` (or `tls://`).
    pub url: String,
    /// A token, as `env:NAME` or `file:PATH`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token: Option<String>,
    /// An nkey seed, as `env:NAME` or `file:PATH`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nkey: Option<String>,
    /// A `.creds` file (JWT and seed), as `file:PATH` or `env:NAME` holding its text.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub creds: Option<String>,
    /// A CA file to trust for the server's certificate; setting it requires TLS.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls_ca: Option<PathBuf>,
    /// A client certificate and key for mutual TLS.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls_cert: Option<PathBuf>,
    /// The client certificate's key.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls_key: Option<PathBuf>,
}

/// Server settings.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServerConfig {
    /// Address to bind.
    pub host: String,
    /// Port to bind.
    pub port: u16,
    /// Reference to the API token (`env:NAME` or `file:PATH`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub api_token: Option<String>,
    /// Largest request body accepted.
    #[serde(default = "default_max_body_bytes")]
    pub max_body_bytes: u64,
    /// Host names the server answers to besides its own (`localhost`, `127.0.0.1`, `[::1]`,
    /// the bound address and the machine's name): `name` with any port, `name:port` with that
    /// port only, `*` any host (turns the DNS-rebinding check off).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub allowed_hosts: Vec<String>,
    /// Origins (`scheme://host[:port]`) whose pages may change things and open `/ws`,
    /// besides the server's own.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub allowed_origins: Vec<String>,
    /// Whether `/metrics` needs the API token too (it is open by default, for scrapers).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub metrics_auth: bool,
    /// How long a client has to send a request's headers, from the connection's start or
    /// the first byte of a request on a kept-alive connection; then it is closed.
    #[serde(default = "default_header_read_timeout")]
    pub header_read_timeout: DurationSetting,
    /// How long a kept-alive connection may sit idle between requests before it is closed.
    #[serde(default = "default_idle_timeout")]
    pub idle_timeout: DurationSetting,
    /// How long a request's body may take to arrive, all of it (webhook deliveries
    /// included); then the request is answered 408 and the connection closed.
    #[serde(default = "default_body_read_timeout")]
    pub body_read_timeout: DurationSetting,
    /// Connections served at once (WebSockets included); further ones wait, unaccepted,
    /// until one closes.
    #[serde(default = "default_max_connections")]
    pub max_connections: u32,
}

fn default_max_body_bytes() -> u64 {
    25 * 1024 * 1024
}

fn default_header_read_timeout() -> DurationSetting {
    DurationSetting::Seconds(10)
}

fn default_idle_timeout() -> DurationSetting {
    DurationSetting::Seconds(60)
}

fn default_body_read_timeout() -> DurationSetting {
    DurationSetting::Seconds(30)
}

impl ServerConfig {
    /// [`ServerConfig::body_read_timeout`] as a duration (30 s when unset or zero).
    pub fn body_read_timeout(&self) -> std::time::Duration {
        self.body_read_timeout
            .duration()
            .ok()
            .filter(|d| !d.is_zero())
            .unwrap_or(std::time::Duration::from_secs(30))
    }
}

fn default_max_connections() -> u32 {
    1024
}

/// Store settings.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StorageConfig {
    /// The data directory holding the sled store.
    pub data_dir: PathBuf,
}

/// Logging settings.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LoggingConfig {
    /// Level written to `logs/system.log`: error, warn, info, debug, trace.
    pub level: String,
    /// The log directory.
    pub dir: PathBuf,
    /// `system.log` and `api.log` are rotated once they pass this size.
    #[serde(default = "default_log_max_file_bytes")]
    pub max_file_bytes: u64,
    /// Files kept per log, the current one included (`api.log`, `api.log.1`, ...).
    #[serde(default = "default_log_max_files")]
    pub max_files: u32,
}

pub use crate::logging::{DEFAULT_LOG_MAX_FILES, DEFAULT_LOG_MAX_FILE_BYTES};

fn default_log_max_file_bytes() -> u64 {
    DEFAULT_LOG_MAX_FILE_BYTES
}

fn default_log_max_files() -> u32 {
    DEFAULT_LOG_MAX_FILES
}

impl LoggingConfig {
    /// How the log files rotate.
    pub fn rotation(&self) -> crate::logging::Rotation {
        crate::logging::Rotation {
            max_file_bytes: self.max_file_bytes,
            max_files: self.max_files,
        }
    }
}

/// Manifest source settings.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ManifestsConfig {
    /// Directories (or files) holding manifests, relative to the project.
    pub paths: Vec<PathBuf>,
    /// Largest manifest file read.
    pub max_file_bytes: u64,
}

/// Run settings.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RunsConfig {
    /// Runs kept per workflow.
    pub history_limit: u32,
    /// Steps of one run that may run at once.
    pub max_parallel: u32,
    /// Runs the server executes at once; more wait queued for a slot, in creation order.
    /// `None` means 2 per CPU core: the measured drain of a burst is the same from 2 to 8 per
    /// core, and fewer runs at once leave the API and webhook receiver their CPU.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_active: Option<u32>,
    /// The most bytes one step's log holds (default 100 MiB); the log then says its output
    /// was cut and the rest is drained unwritten.
    #[serde(default = "default_max_log_bytes")]
    pub max_log_bytes: u64,
}

fn default_max_log_bytes() -> u64 {
    100 << 20
}

impl RunsConfig {
    /// How many runs the server executes at once.
    pub fn max_active_runs(&self) -> usize {
        match self.max_active {
            Some(limit) => limit.max(1) as usize,
            None => 2 * std::thread::available_parallelism().map_or(1, |n| n.get()),
        }
    }
}

/// Monitoring settings: the system sampler, the persisted history and alert evaluation.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MonitoringConfig {
    /// How often system metrics are sampled and published.
    pub sample_interval: DurationSetting,
    /// Width of the downsampled points of the persisted history.
    pub history_step: DurationSetting,
    /// How long the persisted history is kept.
    pub history_retention: DurationSetting,
    /// How often alert rules are evaluated.
    pub evaluation_interval: DurationSetting,
    /// The window workflow, agent and test metrics are computed over.
    pub metrics_window: DurationSetting,
}

impl Default for MonitoringConfig {
    fn default() -> Self {
        MonitoringConfig {
            sample_interval: DurationSetting::Seconds(10),
            history_step: DurationSetting::Seconds(60),
            history_retention: DurationSetting::Seconds(24 * 3600),
            evaluation_interval: DurationSetting::Seconds(10),
            metrics_window: DurationSetting::Seconds(3600),
        }
    }
}

/// Notification channels by name, and how deliveries are retried.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct NotificationsConfig {
    /// How failed deliveries are retried.
    #[serde(default)]
    pub retry: RetryConfig,
    /// The channels by name (`email`, `webhook`, `slack`, or any name with a `type`).
    #[serde(flatten)]
    pub channels: std::collections::BTreeMap<String, ChannelConfig>,
}

/// How failed notification deliveries are retried: `attempts` in all, waiting
/// `initial_backoff` before the second and doubling up to five minutes.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RetryConfig {
    /// Delivery attempts per notification.
    pub attempts: u32,
    /// Wait before the second attempt.
    pub initial_backoff: DurationSetting,
}

impl Default for RetryConfig {
    fn default() -> Self {
        RetryConfig {
            attempts: 5,
            initial_backoff: DurationSetting::Seconds(1),
        }
    }
}

/// One notification channel as configured. The `type` may be left out of channels named
/// `email`, `webhook`, `slack` or `log`; [`NotificationsConfig::channel`] fills it in.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ChannelConfig {
    /// `email`, `webhook`, `slack` or `log`.
    #[serde(default, rename = "type", skip_serializing_if = "Option::is_none")]
    pub kind: Option<String>,
    /// SMTP server (email).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host: Option<String>,
    /// SMTP port (email); the default follows `security`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port: Option<u16>,
    /// `none`, `starttls` (default) or `tls` (email).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub security: Option<String>,
    /// Reference to the SMTP user name (email).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub username: Option<String>,
    /// Reference to the SMTP password (email).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub password: Option<String>,
    /// Sender address (email).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub from: Option<String>,
    /// Recipient addresses (email).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub to: Vec<String>,
    /// Receiver URL (webhook).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub url: Option<String>,
    /// Reference to a bearer token (webhook).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bearer_token: Option<String>,
    /// Incoming-webhook URL or a reference to it (slack).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub webhook_url: Option<String>,
    /// Channel override (slack).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub channel: Option<String>,
    /// The file each notification is appended to as one JSON line (log; relative to the
    /// project directory, default `logs/alerts.log`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<PathBuf>,
    /// How long one delivery attempt may take (default 10 s).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout: Option<DurationSetting>,
}

/// The channel every configuration has unless it configures its own under that name.
pub const LOG_CHANNEL: &str = "log";

impl NotificationsConfig {
    /// Adds the built-in `log` channel (one JSON line per notification appended to
    /// `<log_dir>/alerts.log`) unless a channel of that name is configured, so alerts can
    /// name a channel that works in every environment without settings of its own.
    pub fn add_log_channel(&mut self, log_dir: &Path) {
        self.channels
            .entry(LOG_CHANNEL.to_owned())
            .or_insert_with(|| ChannelConfig {
                kind: Some(LOG_CHANNEL.to_owned()),
                path: Some(log_dir.join("alerts.log")),
                ..ChannelConfig::default()
            });
    }

    /// The channel named `name` with its `type` filled in, if configured.
    pub fn channel(&self, name: &str) -> Option<ChannelConfig> {
        let mut channel = self.channels.get(name)?.clone();
        if channel.kind.is_none() {
            channel.kind = Some(name.to_owned());
        }
        Some(channel)
    }
}

/// Scheduler settings.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SchedulerConfig {
    /// Default time zone of schedules.
    pub timezone: String,
}

/// The manifest source of the server.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SourceConfig {
    /// A git repository followed on one branch.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub git: Option<GitSourceConfig>,
}

/// A git repository the server follows.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GitSourceConfig {
    /// `https://`, `http://` or `file://` URL, or a local path (relative to the project).
    pub url: String,
    /// The branch; without it the repository's default branch.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub branch: Option<String>,
    /// The directory inside the repository holding the manifest directories (default `.`);
    /// `manifests.paths` are relative to it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
    /// How often to fetch (seconds, or a duration such as `5m`; default 60 s).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub interval: Option<DurationSetting>,
    /// Reference to the secret push webhooks on `/hooks/source` are signed with (`env:NAME` or
    /// `file:PATH`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub webhook_secret: Option<String>,
}

/// A duration as configured: seconds, or a duration string such as `90s` or `5m`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum DurationSetting {
    /// Whole seconds.
    Seconds(u64),
    /// A duration string (see [`crate::duration`]).
    Text(String),
}

impl DurationSetting {
    /// The duration (the schema has checked the text already).
    pub fn duration(&self) -> Result<std::time::Duration, crate::duration::DurationError> {
        match self {
            DurationSetting::Seconds(seconds) => Ok(std::time::Duration::from_secs(*seconds)),
            DurationSetting::Text(text) => crate::duration::parse_duration(text),
        }
    }
}

/// Where configuration comes from.
#[derive(Debug, Clone, Default)]
pub struct ConfigOptions {
    /// The project directory (relative paths in the configuration are relative to it).
    pub project_dir: PathBuf,
    /// The environment; `None` means development.
    pub environment: Option<Environment>,
    /// An explicit configuration file instead of `config/<environment>.yaml`.
    pub config_file: Option<PathBuf>,
    /// Environment variables to apply (name, value); normally `std::env::vars()`.
    pub env_vars: Vec<(String, String)>,
}

/// The configuration and what it was built from.
#[derive(Debug, Clone)]
pub struct LoadedConfig {
    /// The effective configuration.
    pub config: Config,
    /// The file used, if any (otherwise only the embedded defaults).
    pub file: Option<PathBuf>,
    /// Environment variables that overrode a setting.
    pub overrides: Vec<String>,
    /// The project directory.
    pub project_dir: PathBuf,
}

impl LoadedConfig {
    /// A configured path resolved against the project directory.
    pub fn resolve(&self, path: &Path) -> PathBuf {
        if path.is_absolute() {
            path.to_owned()
        } else {
            self.project_dir.join(path)
        }
    }
}

/// What can go wrong loading configuration.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The configuration file cannot be read.
    #[error("cannot read configuration file {path}: {source}")]
    Read {
        /// The file.
        path: String,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// The configuration file is invalid.
    #[error("{}", render_invalid(.diagnostics))]
    Invalid {
        /// Every problem found.
        diagnostics: Vec<Diagnostic>,
    },
    /// An environment variable holds an unusable value.
    #[error("environment variable {name}={value:?} is invalid: {expected}")]
    BadVariable {
        /// The variable.
        name: String,
        /// Its value.
        value: String,
        /// What was expected.
        expected: String,
    },
}

fn render_invalid(diagnostics: &[Diagnostic]) -> String {
    let lines: Vec<String> = diagnostics.iter().map(Diagnostic::one_line).collect();
    format!("invalid configuration:\n{}", lines.join("\n"))
}

/// Validates a configuration file's text, returning its value and every problem.
pub fn check_text(file: &str, text: &str) -> (Option<Value>, Vec<Diagnostic>) {
    let mut documents = match parse::parse_yaml(text) {
        Ok(documents) => documents,
        Err(err) => {
            return (
                None,
                vec![Diagnostic::error(
                    file,
                    err.line,
                    err.column,
                    "",
                    err.message,
                )],
            )
        }
    };
    if documents.len() > 1 {
        return (
            None,
            vec![Diagnostic::error(
                file,
                0,
                0,
                "",
                "expected one YAML document in a configuration file".to_owned(),
            )],
        );
    }
    let Some(document) = documents.pop() else {
        return (Some(Value::Object(Default::default())), Vec::new());
    };
    let diagnostics: Vec<Diagnostic> = schema::validate(SchemaName::Config, &document.value)
        .into_iter()
        .map(|v| {
            let (line, column) = document.locations.locate(&v.pointer, v.at_key);
            Diagnostic::error(file, line, column, &v.pointer, v.message)
        })
        .collect();
    (Some(document.value), diagnostics)
}

/// Loads the effective configuration.
pub fn load(options: &ConfigOptions) -> Result<LoadedConfig, ConfigError> {
    let environment = options.environment.unwrap_or_default();
    let mut merged = embedded_defaults(environment);
    let file = match &options.config_file {
        Some(path) => Some(options.project_dir.join(path)),
        None => {
            let path = options.project_dir.join(environment.file_path());
            path.exists().then_some(path)
        }
    };
    if let Some(path) = &file {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.display().to_string(),
            source,
        })?;
        let shown = path
            .strip_prefix(&options.project_dir)
            .unwrap_or(path)
            .display()
            .to_string();
        let (value, diagnostics) = check_text(&shown, &text);
        if !diagnostics.is_empty() {
            return Err(ConfigError::Invalid { diagnostics });
        }
        if let Some(value) = value {
            merge(&mut merged, value);
        }
    }
    if let Value::Object(map) = &mut merged {
        // The environment asked for wins over what a file says, so that `--environment
        // production --config other.yaml` still reports production.
        map.insert("environment".into(), Value::from(environment.as_str()));
    }
    let mut config: Config =
        serde_json::from_value(merged).map_err(|err| ConfigError::Invalid {
            diagnostics: vec![Diagnostic::error(
                &file
                    .as_ref()
                    .map_or("<defaults>".to_owned(), |p| p.display().to_string()),
                0,
                0,
                "",
                err.to_string(),
            )],
        })?;
    let overrides = apply_env_vars(&mut config, &options.env_vars)?;
    let log_dir = config.logging.dir.clone();
    config.notifications.add_log_channel(&log_dir);
    Ok(LoadedConfig {
        config,
        file,
        overrides,
        project_dir: options.project_dir.clone(),
    })
}

fn embedded_defaults(environment: Environment) -> Value {
    // The embedded files are covered by tests; they always parse.
    parse::parse_yaml(environment.default_file())
        .ok()
        .and_then(|mut docs| docs.pop())
        .map(|d| d.value)
        .unwrap_or(Value::Object(Default::default()))
}

/// Deep-merges `overlay` into `base`: mappings merge key by key, anything else replaces.
fn merge(base: &mut Value, overlay: Value) {
    match (base, overlay) {
        (Value::Object(base), Value::Object(overlay)) => {
            for (key, value) in overlay {
                match base.get_mut(&key) {
                    Some(existing) => merge(existing, value),
                    None => {
                        base.insert(key, value);
                    }
                }
            }
        }
        (base, overlay) => *base = overlay,
    }
}

const LOG_LEVELS: [&str; 5] = ["error", "warn", "info", "debug", "trace"];

fn apply_env_vars(
    config: &mut Config,
    vars: &[(String, String)],
) -> Result<Vec<String>, ConfigError> {
    let mut applied = Vec::new();
    for (name, value) in vars {
        let bad = |expected: &str| ConfigError::BadVariable {
            name: name.clone(),
            value: value.clone(),
            expected: expected.to_owned(),
        };
        match name.as_str() {
            "ORCHESTRATOR_HOST" => config.server.host = value.clone(),
            "ORCHESTRATOR_PORT" => {
                config.server.port = value
                    .parse()
                    .map_err(|_| bad("expected a port number from 0 to 65535"))?
            }
            "ORCHESTRATOR_DATA_DIR" => config.storage.data_dir = value.into(),
            "ORCHESTRATOR_LOG_DIR" => config.logging.dir = value.into(),
            "ORCHESTRATOR_REPORTS_DIR" => config.reports_dir = value.into(),
            "ORCHESTRATOR_LOG_LEVEL" => {
                if !LOG_LEVELS.contains(&value.as_str()) {
                    return Err(bad("expected one of error, warn, info, debug, trace"));
                }
                config.logging.level = value.clone();
            }
            "ORCHESTRATOR_API_TOKEN" => {
                if !(value.starts_with("env:") || value.starts_with("file:")) {
                    return Err(bad(
                        "expected a reference such as env:NAME or file:PATH, never the token itself",
                    ));
                }
                config.server.api_token = Some(value.clone());
            }
            _ => continue,
        }
        applied.push(name.clone());
    }
    applied.sort();
    Ok(applied)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn embedded_defaults_are_valid_for_every_environment() {
        for environment in Environment::ALL {
            let (_, diagnostics) = check_text("x.yaml", environment.default_file());
            assert!(diagnostics.is_empty(), "{environment}: {diagnostics:?}");
            let loaded = load(&ConfigOptions {
                environment: Some(environment),
                project_dir: PathBuf::from("/nonexistent"),
                ..ConfigOptions::default()
            })
            .unwrap();
            assert_eq!(loaded.config.environment, environment);
        }
    }

    #[test]
    fn env_vars_override_and_are_checked() {
        let mut options = ConfigOptions {
            project_dir: PathBuf::from("/nonexistent"),
            env_vars: vec![("ORCHESTRATOR_PORT".into(), "9000".into())],
            ..ConfigOptions::default()
        };
        let loaded = load(&options).unwrap();
        assert_eq!(loaded.config.server.port, 9000);
        assert_eq!(loaded.overrides, ["ORCHESTRATOR_PORT"]);
        options.env_vars = vec![("ORCHESTRATOR_PORT".into(), "http".into())];
        let err = load(&options).unwrap_err().to_string();
        assert_eq!(
            err,
            "environment variable ORCHESTRATOR_PORT=\"http\" is invalid: expected a port number from 0 to 65535"
        );
    }

    #[test]
    fn git_source_settings_are_checked_with_their_location() {
        let text = "source:\n  git:\n    url: https://example.com/org/tests.git\n    branch: main\n    path: deploy\n    interval: 5m\n    webhook_secret: env:HOOK_SECRET\n";
        let (value, diagnostics) = check_text("c.yaml", text);
        assert!(diagnostics.is_empty(), "{diagnostics:?}");
        let source: SourceConfig =
            serde_json::from_value(value.unwrap()["source"].clone()).unwrap();
        let git = source.git.unwrap();
        assert_eq!(git.branch.as_deref(), Some("main"));
        assert_eq!(
            git.interval.unwrap().duration().unwrap(),
            std::time::Duration::from_secs(300)
        );
        let one_line = |text: &str| -> Vec<String> {
            check_text("c.yaml", text)
                .1
                .iter()
                .map(Diagnostic::one_line)
                .collect()
        };
        assert_eq!(
            one_line("source:\n  git:\n    url: ftp://example.com/x\n"),
            ["c.yaml:3:10: error: unsupported URL scheme `ftp` in `ftp://example.com/x`: expected an https:// or file:// URL or a local path (at /source/git/url)"]
        );
        assert_eq!(
            one_line("source:\n  git:\n    url: ''\n"),
            ["c.yaml:3:10: error: the git source URL is empty: expected an https:// or file:// URL or a local path (at /source/git/url)"]
        );
        assert_eq!(
            one_line("source:\n  git:\n    url: x\n    path: ../up\n"),
            ["c.yaml:4:11: error: `../up` must be a directory relative to the top of the repository, without `..` (at /source/git/path)"]
        );
        assert_eq!(
            one_line("source:\n  git:\n    branch: main\n"),
            ["c.yaml:3:5: error: missing required field `url` (at /source/git)"]
        );
    }

    #[test]
    fn invalid_file_reports_line_and_field() {
        let (_, diagnostics) = check_text("config/x.yaml", "server:\n  port: http\n");
        assert_eq!(diagnostics.len(), 1);
        assert_eq!(
            diagnostics[0].one_line(),
            "config/x.yaml:2:9: error: expected an integer, found `http` (at /server/port)"
        );
    }
}
