//! `start [--host H] [--port P] [--background]`, `stop`, `status`: the controller process.
//! A running server is found through `server.json` in the data directory.

use std::io::Write;
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _, Result};
use clap::Args;
use serde_json::Value;

use super::{Context, OutputFormat, EXIT_OK};
use crate::config::process_file::{self, ServerInfo};
use crate::server::{self, StartOptions};

/// `status` exits with this when no server runs.
pub const EXIT_NOT_RUNNING: u8 = 3;

/// Arguments of `start`.
#[derive(Debug, Args)]
pub struct StartArgs {
    /// Address to listen on (default: server.host of the environment's configuration).
    #[arg(long, env = "ORCHESTRATOR_HOST")]
    pub host: Option<String>,
    /// Port to listen on (default: server.port; 0 picks a free one).
    #[arg(long, env = "ORCHESTRATOR_PORT")]
    pub port: Option<u16>,
    /// Detach: run in the background, output to logs/system.log; returns once it is ready.
    #[arg(long)]
    pub background: bool,
    /// Listen on a non-loopback address without an API token (without it, such an address
    /// gets a generated token, kept in the data directory's `api-token`).
    #[arg(long)]
    pub insecure: bool,
    /// Set by `--background` for the server it starts, whose output goes to
    /// logs/system.log: the generated token's address is then shown by the starting command
    /// instead, never written to the log.
    #[arg(long, hide = true)]
    pub detached: bool,
    /// Seconds running steps get to finish at shutdown before they are stopped.
    #[arg(long, default_value_t = 10, env = "ORCHESTRATOR_SHUTDOWN_GRACE")]
    pub grace: u64,
    /// Follow this git repository instead of the manifest directories (overrides
    /// source.git.url and .branch): an https:// or file:// URL or a local path (relative to
    /// the project), with an optional #BRANCH.
    #[arg(long, value_name = "URL[#BRANCH]")]
    pub source: Option<String>,
    /// Run steps with `runs_on` on workers over this NATS server with JetStream
    /// (overrides distributed.nats.url).
    #[arg(long, value_name = "URL", env = "ORCHESTRATOR_NATS")]
    pub nats: Option<String>,
}

/// Arguments of `status`.
#[derive(Debug, Args)]
pub struct StatusArgs {
    /// Output format.
    #[arg(long, short = 'o', value_enum, default_value_t)]
    pub output: OutputFormat,
}

/// Runs `start`.
pub fn start(context: &Context, args: &StartArgs) -> Result<u8> {
    let data_dir = context.data_dir();
    if let Some(info) = process_file::read(&data_dir) {
        bail!(
            "a server is already running for {} (PID {}, {}); stop it with `orchestrator stop`",
            data_dir.display(),
            info.pid,
            info.url()
        );
    }
    let host = args
        .host
        .clone()
        .unwrap_or_else(|| context.config.config.server.host.clone());
    let port = args.port.unwrap_or(context.config.config.server.port);
    if args.background {
        return start_background(context, &host, port, args);
    }
    context.init_logging(true)?;
    crate::engine::process::become_subreaper();
    let environment = context.config.config.environment.as_str().to_owned();
    let workers = dispatcher(context, args.nats.as_deref())?;
    server::serve(
        context.config.clone(),
        environment.clone(),
        data_dir.clone(),
        crate::workers::route::engine_config(&context.config, data_dir.clone(), workers.clone()),
        StartOptions {
            host,
            port,
            insecure: args.insecure,
            grace: Duration::from_secs(args.grace),
            source: args.source.clone(),
            workers,
        },
        |address, generated| {
            let mut out = std::io::stdout().lock();
            let _ = writeln!(
                out,
                "orchestrator listening on http://{address} (environment {environment}, data {}); Ctrl-C stops it",
                data_dir.display()
            );
            if let (Some(token), false) = (generated, args.detached) {
                let _ = write!(out, "{}", token_notice(address, token, &data_dir));
            }
            let _ = out.flush();
        },
    )?;
    println!("stopped");
    Ok(EXIT_OK)
}

/// The dispatcher of steps to workers, when `--nats` or `distributed.nats` names a server.
fn dispatcher(
    context: &Context,
    nats: Option<&str>,
) -> Result<Option<std::sync::Arc<crate::workers::dispatch::Dispatcher>>> {
    let mut distributed = context.config.config.distributed.clone();
    if let Some(url) = nats {
        match &mut distributed {
            Some(d) => d.nats.url = url.to_owned(),
            None => {
                distributed = Some(crate::config::DistributedConfig {
                    nats: crate::config::NatsConfig {
                        url: url.to_owned(),
                        ..Default::default()
                    },
                    lease: None,
                    queue_timeout: None,
                    max_deliver: None,
                });
            }
        }
    }
    let Some(distributed) = distributed else {
        return Ok(None);
    };
    let config = &context.config;
    let data_dir = context.data_dir();
    let settings = crate::workers::dispatch::DispatchSettings::from_config(
        &distributed,
        config.project_dir.clone(),
        vec![
            data_dir.clone(),
            config.resolve(&config.config.logging.dir),
            config.resolve(&config.config.reports_dir),
        ],
        data_dir.join("remote-artifacts"),
    );
    let dispatcher = crate::workers::dispatch::Dispatcher::connect(&distributed, settings)
        .map_err(|err| anyhow::anyhow!(err))?;
    Ok(Some(std::sync::Arc::new(dispatcher)))
}

fn start_background(context: &Context, host: &str, port: u16, args: &StartArgs) -> Result<u8> {
    use std::os::unix::process::CommandExt;
    let log_dir = context.config.resolve(&context.config.config.logging.dir);
    std::fs::create_dir_all(&log_dir)
        .with_context(|| format!("cannot create {}", log_dir.display()))?;
    let log_path = log_dir.join("system.log");
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&log_path)
        .with_context(|| format!("cannot open {}", log_path.display()))?;
    let log_start = log.metadata().map(|m| m.len()).unwrap_or(0);
    let mut command = context.this_program()?;
    if context.cli.verbose {
        command.arg("--verbose");
    }
    command
        .args(["start", "--host", host, "--port", &port.to_string()])
        .args(["--grace", &args.grace.to_string()])
        .arg("--detached");
    if args.insecure {
        command.arg("--insecure");
    }
    if let Some(source) = &args.source {
        command.arg("--source").arg(source);
    }
    let mut child = command
        .stdin(std::process::Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log)
        // A process group of its own: the terminal's Ctrl-C does not reach it.
        .process_group(0)
        .spawn()
        .context("cannot start the background server")?;
    let data_dir = context.data_dir();
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if let Some(status) = child.try_wait()? {
            let text = std::fs::read_to_string(&log_path).unwrap_or_default();
            let tail: String = text
                .get(log_start as usize..)
                .unwrap_or_default()
                .lines()
                .rfind(|l| !l.trim().is_empty())
                .unwrap_or("")
                .to_owned();
            bail!(
                "the background server exited ({status}) before it was ready: {}",
                tail.trim_start_matches("error: ")
            );
        }
        if let Some(info) = process_file::read(&data_dir).filter(|i| i.pid == child.id()) {
            println!(
                "orchestrator started in the background: PID {}, {} (logs in {}); stop it with `orchestrator stop`",
                info.pid,
                info.url(),
                log_path.display()
            );
            let generated = context.config.config.server.api_token.is_none()
                && !args.insecure
                && !crate::config::api_token::is_loopback(host);
            if let (true, Some(token), Ok(address)) = (
                generated,
                crate::config::api_token::read(&data_dir),
                info.address.parse::<std::net::SocketAddr>(),
            ) {
                print!("{}", token_notice(&address, &token, &data_dir));
            }
            return Ok(EXIT_OK);
        }
        if Instant::now() > deadline {
            bail!(
                "the background server (PID {}) did not become ready within 60 s; see {}",
                child.id(),
                log_path.display()
            );
        }
        std::thread::sleep(Duration::from_millis(25));
    }
}

/// What `start` says once about a generated token, as Jupyter does: where it is kept and
/// the dashboard's address carrying it (in the fragment, which browsers never send: the
/// dashboard keeps it as its token dialog does and takes it out of the address bar).
fn token_notice(address: &std::net::SocketAddr, token: &str, data_dir: &std::path::Path) -> String {
    let port = address.port();
    let mut hosts = Vec::new();
    if address.ip().is_unspecified() {
        if let Some(name) = sysinfo::System::host_name().filter(|n| !n.is_empty()) {
            hosts.push(name);
        }
        hosts.push("127.0.0.1".to_owned());
    } else {
        hosts.push(match address.ip() {
            std::net::IpAddr::V6(ip) => format!("[{ip}]"),
            ip => ip.to_string(),
        });
    }
    let mut text = format!(
        "this address is reachable from other machines, so the API needs a token: one was generated and kept in {} (the local command line reads it there; set server.api_token to choose your own). Open the dashboard with:\n",
        crate::config::api_token::path(data_dir).display()
    );
    for host in hosts {
        text.push_str(&format!("    http://{host}:{port}/#token={token}\n"));
    }
    text
}

/// Runs `stop`.
pub fn stop(context: &Context) -> Result<u8> {
    let data_dir = context.data_dir();
    let Some(info) = process_file::read(&data_dir) else {
        println!("no server is running for {}", data_dir.display());
        return Ok(EXIT_OK);
    };
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(info.pid as i32),
        nix::sys::signal::Signal::SIGTERM,
    )
    .with_context(|| format!("cannot signal the server (PID {})", info.pid))?;
    let deadline = Instant::now() + Duration::from_secs(120);
    while process_file::process_alive(info.pid) {
        if Instant::now() > deadline {
            bail!(
                "the server (PID {}) did not stop within 120 s; it may be waiting for steps to finish",
                info.pid
            );
        }
        std::thread::sleep(Duration::from_millis(25));
    }
    println!("orchestrator stopped (PID {})", info.pid);
    Ok(EXIT_OK)
}

/// The running server of this project's data directory, if any.
pub fn running(context: &Context) -> Option<ServerInfo> {
    process_file::read(&context.data_dir())
}

/// Runs `status`: exit 0 when a server runs, 3 when none does.
pub fn status(context: &Context, args: &StatusArgs) -> Result<u8> {
    let environment = context.config.config.environment.as_str();
    let data_dir = context.data_dir();
    let info = running(context);
    // A server of another environment sharing this data directory is not this
    // environment's server (a project whose environments name one `storage.data_dir`).
    let other = info.as_ref().filter(|i| i.environment != environment);
    let Some(info) = info.as_ref().filter(|_| other.is_none()) else {
        if args.output == OutputFormat::Json {
            let mut answer = serde_json::json!({
                "running": false,
                "environment": environment,
                "data_dir": data_dir.display().to_string(),
            });
            if let Some(other) = other {
                answer["data_dir_used_by"] =
                    serde_json::json!({"environment": other.environment, "pid": other.pid});
            }
            println!("{answer}");
        } else if let Some(other) = other {
            println!(
                "not running: no {environment} server; the server of {} (PID {}) runs the {} environment, which shares this data directory: give each environment its own storage.data_dir",
                data_dir.display(),
                other.pid,
                other.environment
            );
        } else {
            println!(
                "not running (no {environment} server for {}); start it with `orchestrator{} start`",
                data_dir.display(),
                match context.cli.environment {
                    Some(e) => format!(" --environment {e}"),
                    None => String::new(),
                }
            );
        }
        return Ok(EXIT_NOT_RUNNING);
    };
    let status = super::client::ApiClient::for_context(context)?
        .with_context(|| format!("the server (PID {}) stopped meanwhile", info.pid))?
        .get(&super::client::ApiPath::api(&["status"]))?;
    if args.output == OutputFormat::Json {
        let mut status = status;
        status["running"] = Value::from(true);
        status["address"] = Value::from(info.address.clone());
        println!("{}", serde_json::to_string_pretty(&status)?);
        return Ok(EXIT_OK);
    }
    let uptime = status["uptime_seconds"].as_u64().unwrap_or(0);
    println!("running: PID {}, {}", info.pid, info.url());
    println!(
        "environment: {}; up {}",
        status["environment"].as_str().unwrap_or("?"),
        super::workflow::human_ms(uptime * 1000)
    );
    let source = &status["source"];
    let stored = &source["status"];
    let kind = source["kind"].as_str().unwrap_or("dir");
    let origin = match kind {
        "git" => format!(
            "git {}{}",
            source["url"].as_str().unwrap_or("?"),
            source["branch"]
                .as_str()
                .map(|b| format!(" ({b})"))
                .unwrap_or_default()
        ),
        other => other.to_owned(),
    };
    println!(
        "source: {origin}; last applied revision {}, last attempted {}{}",
        stored["last_applied_revision"].as_str().unwrap_or("none"),
        stored["last_attempted_revision"].as_str().unwrap_or("none"),
        match stored["errors"].as_u64() {
            Some(n) if n > 0 => format!(" ({n} errors)"),
            _ => String::new(),
        }
    );
    if let Some(error) = source["last_fetch_error"].as_str() {
        println!("source fetch failing: {error}");
    }
    let objects: Vec<String> = status["objects"]
        .as_object()
        .map(|m| m.iter().map(|(k, v)| format!("{v} {k}")).collect())
        .unwrap_or_default();
    println!(
        "objects: {}",
        if objects.is_empty() {
            "none".to_owned()
        } else {
            objects.join(", ")
        }
    );
    let active: Vec<&str> = status["active_runs"]
        .as_array()
        .map(|a| a.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default();
    println!(
        "active runs: {}",
        if active.is_empty() {
            "none".to_owned()
        } else {
            active.join(", ")
        }
    );
    let agents: Vec<String> = status["agents"]
        .as_array()
        .map(|a| {
            a.iter()
                .map(|agent| {
                    format!(
                        "{} {}",
                        agent["name"].as_str().unwrap_or("?"),
                        if agent["enabled"].as_bool().unwrap_or(false) {
                            "enabled"
                        } else {
                            "stopped"
                        }
                    )
                })
                .collect()
        })
        .unwrap_or_default();
    println!("agents: {}", agents.join(", "));
    Ok(EXIT_OK)
}
