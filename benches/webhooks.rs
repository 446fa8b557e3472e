//! Webhook benchmark: a real `orchestrator start` (release build, production environment)
//! with one GitHub trigger whose workflow is a single `true` step, and a loopback client
//! sending signed push deliveries at a fixed rate (1,000/s for 10 s by default) over
//! several keep-alive connections.
//!
//! The reference, measured first on the same server: the receiver alone — the same rate
//! for `WEBHOOK_REFERENCE_SECONDS` (5 by default) of pushes to another branch at a second
//! trigger, each verified, parsed, filtered out and recorded (one durable record), no run.
//!
//! Latency is measured from the moment each delivery was due to be sent (so a client or
//! server that falls behind shows in the figures, not in a lower send rate) to the end of
//! its answer. Afterwards: every delivery must be recorded (`/api/triggers/{id}/deliveries`
//! total), the time until every run has finished is reported, and then runs started
//! (`orchestrator_runs_started_total`, counted as each run takes one of the server's
//! `runs.max_active` slots) must equal the deliveries accepted.
//!
//! `bench/webhooks` builds the release binary and runs this. `WEBHOOK_RATE`,
//! `WEBHOOK_SECONDS` and `WEBHOOK_CONNECTIONS` change the load, `WEBHOOK_MAX_ACTIVE` the
//! server's `runs.max_active`. Prints a markdown table (and writes `BENCH_JSON`, see
//! `support`); one run is one sample of each figure, `bench/run` takes medians over runs.

use std::fs;
use std::path::Path;
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use hmac::{Hmac, Mac};

#[path = "support/mod.rs"]
mod support;
use serde_json::{json, Value};
use sha2::Sha256;
use support::{percentile, release_binary, rss_kib, run_ok, Measurement, Report, Server, Target};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader as AsyncBufReader};
use tokio::net::TcpStream;

const SECRET: &str = "bench-webhook-secret";

fn env_or(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn main() {
    let rate = env_or("WEBHOOK_RATE", 1_000);
    let seconds = env_or("WEBHOOK_SECONDS", 10);
    let connections = env_or("WEBHOOK_CONNECTIONS", 32) as usize;
    let total = (rate * seconds) as usize;
    let reference_total = (rate * env_or("WEBHOOK_REFERENCE_SECONDS", 5)) as usize;

    let work = tempfile::tempdir().expect("temp dir");
    let project = work.path().join("project");
    let binary = release_binary();
    run_ok(Command::new(&binary).arg("init").arg(&project));
    // Only what the benchmark needs: the scaffolded examples stay out of the way.
    for dir in ["workflows", "templates", "schedules", "alerts", "triggers"] {
        let _ = fs::remove_dir_all(project.join(dir));
        fs::create_dir_all(project.join(dir)).expect("manifest dir");
    }
    // `WEBHOOK_MAX_ACTIVE` sets `runs.max_active` (runs executing at once; default 2 per
    // core): the deliveries beyond it wait for a slot.
    if let Ok(max_active) = std::env::var("WEBHOOK_MAX_ACTIVE") {
        let config = project.join("config/production.yaml");
        let text = fs::read_to_string(&config).expect("config");
        assert!(text.contains("\nruns:\n"), "no runs section in {text}");
        fs::write(
            &config,
            text.replace(
                "\nruns:\n",
                &format!("\nruns:\n  max_active: {max_active}\n"),
            ),
        )
        .expect("config");
    }
    fs::write(
        project.join("workflows/hook.yaml"),
        "name: Hook\nconcurrency: allow\nhistory_limit: 50\nparameters:\n  commit: {type: string, default: none}\nsteps:\n  - name: t\n    command: [\"true\"]\n",
    )
    .expect("write workflow");
    fs::write(
        project.join("triggers/bench.yaml"),
        format!(
            "name: Bench\npath: /hooks/bench\nprovider: github\nworkflow: wf_hook\nevents: [push]\nbranches: [main]\nsecret: env:BENCH_WEBHOOK_SECRET\nhistory_limit: {}\nparameters:\n  commit: \"{{{{ payload.after }}}}\"\n",
            total * 2
        ),
    )
    .expect("write trigger");
    fs::write(
        project.join("triggers/reference.yaml"),
        format!(
            "name: Reference\npath: /hooks/reference\nprovider: github\nworkflow: wf_hook\nevents: [push]\nbranches: [main]\nsecret: env:BENCH_WEBHOOK_SECRET\nhistory_limit: {}\n",
            reference_total * 2
        ),
    )
    .expect("write trigger");

    let mut server = Server::start(&binary, &project, &[("BENCH_WEBHOOK_SECRET", SECRET)]);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    // Every request is built and signed before the clock starts. The reference first:
    // the receiver alone, every delivery filtered out (another branch), no run.
    let reference_requests: Vec<Arc<Vec<u8>>> = (0..reference_total)
        .map(|i| {
            Arc::new(request(
                &server.address,
                i,
                "reference",
                "refs/heads/elsewhere",
            ))
        })
        .collect();
    let reference_results =
        runtime.block_on(load(&server.address, reference_requests, rate, connections));
    let reference_failed = reference_results.iter().filter(|r| r.status != 200).count();
    let mut reference_latencies: Vec<f64> =
        reference_results.iter().map(|r| r.latency_ms).collect();
    reference_latencies.sort_by(f64::total_cmp);
    let reference = |q: f64| percentile(&reference_latencies, q);
    let requests: Vec<Arc<Vec<u8>>> = (0..total)
        .map(|i| Arc::new(request(&server.address, i, "bench", &git_ref())))
        .collect();
    let started = Instant::now();
    let results = runtime.block_on(load(&server.address, requests, rate, connections));
    let load_secs = started.elapsed().as_secs_f64();

    let accepted = results.iter().filter(|r| r.status == 202).count();
    let failed: Vec<&Sample> = results.iter().filter(|r| r.status != 202).collect();
    let mut latencies: Vec<f64> = results.iter().map(|r| r.latency_ms).collect();
    latencies.sort_by(f64::total_cmp);

    // Every delivery recorded, a run for every accepted one; then the runs drain.
    let api = Api::new(&server.address);
    let deliveries = api.json("/api/triggers/trg_bench/deliveries?limit=1");
    let recorded = deliveries["total"].as_u64().unwrap_or(0) as usize;
    let all = api.json(&format!(
        "/api/triggers/trg_bench/deliveries?limit={}",
        total * 2
    ));
    let recorded_accepted = all["deliveries"]
        .as_array()
        .map(|d| d.iter().filter(|r| r["result"] == "accepted").count())
        .unwrap_or(0);
    // Runs beyond `runs.max_active` wait for a slot: counted now, started as slots free.
    let waiting_after_load = api.metric("orchestrator_runs_waiting");
    let drain_started = Instant::now();
    let deadline = drain_started + Duration::from_secs(600);
    let finished = loop {
        let finished: f64 = api
            .metrics()
            .lines()
            .filter(|l| l.starts_with("orchestrator_runs_finished_total{"))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum();
        if finished as usize >= accepted || Instant::now() > deadline {
            break finished as usize;
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    let drain = drain_started.elapsed().as_secs_f64();
    // Counted as each run takes a slot: once every run has finished, one per accepted
    // delivery.
    let runs_started = api.metric("orchestrator_runs_started_total");
    let succeeded = api.metric("orchestrator_runs_finished_total{status=\"succeeded\"}");
    let kept_runs = api.json("/api/runs?workflow=wf_hook&limit=1")["total"]
        .as_u64()
        .unwrap_or(0);
    let rss = rss_kib(server.child.id());
    server.stop();
    let store_bytes = dir_size(&project.join("data"));

    let p = |q: f64| percentile(&latencies, q);
    let load = format!(
        "{} signed push deliveries, {}/s for {seconds} s, {connections} connections",
        support::number(total as f64),
        support::number(rate as f64)
    );
    let mut report = Report::new("webhooks");
    report.add(
        Measurement::new(
            format!("{load}: send rate achieved"),
            "deliveries/s",
            total as f64 / load_secs,
        )
        .note(
            "latency counts from when each delivery was due, so a client or server that \
             falls behind shows in the latency, not here",
        ),
    );
    let alone = "receiver alone: the same load filtered out, no run";
    report.add(
        Measurement::new(format!("{load}: 202 latency p50"), "ms", p(0.50))
            .reference(alone, reference(0.50)),
    );
    report.add(
        Measurement::new(format!("{load}: 202 latency p90"), "ms", p(0.90))
            .reference(alone, reference(0.90)),
    );
    report.add(
        Measurement::new(format!("{load}: 202 latency p99"), "ms", p(0.99))
            .reference(alone, reference(0.99))
            .target(Target::AtMost(20.0))
            .bound(
                "the reference is the receiver alone (the same load filtered out, no run, one \
                 durable record). With a run per delivery the receiver shares the cores and \
                 sled with about 400 runs/s, each spawning a process and making its durable \
                 writes. Acknowledging a delivery once it is in a journal of its own (its \
                 fdatasync took 44 µs at p50) was tried and made it worse: the deliveries' \
                 sled writes, no longer paced by the shared flush, queued behind sled's \
                 global batch lock (every apply_batch, such as a run's record, locks every \
                 tree) and the receiver fell to about 450 deliveries/s. Deliveries are now \
                 written in batches (claims, records and runs of all those waiting in one \
                 sled transaction and one flush, about 5 per batch at this load); what is \
                 left is that lock itself: sled's flush holds it shared for its whole device \
                 sync, a transaction or batch waits for it exclusively, and every other \
                 read and write queues behind that wait, so each batch of deliveries still \
                 waits behind the runs' own flushes.",
            ),
    );
    report.add(
        Measurement::new(
            format!("{load}: 202 latency, worst"),
            "ms",
            latencies.last().copied().unwrap_or(f64::NAN),
        )
        .reference(alone, reference_latencies.last().copied()),
    );
    report.add(
        Measurement::new(
            "reference: answers other than 200 (filtered)",
            "",
            reference_failed as f64,
        )
        .target(Target::AtMost(0.0))
        .every_run(),
    );
    report.add(
        Measurement::new(
            format!("{load}: answers other than 202"),
            "",
            failed.len() as f64,
        )
        .target(Target::AtMost(0.0))
        .every_run(),
    );
    report.add(
        Measurement::new("deliveries recorded", "", recorded as f64)
            .reference("deliveries sent", total as f64)
            .target(Target::Equal)
            .every_run(),
    );
    report.add(
        Measurement::new(
            "deliveries recorded as accepted",
            "",
            recorded_accepted as f64,
        )
        .reference("answered 202", accepted as f64)
        .target(Target::Equal)
        .every_run(),
    );
    report.add(
        Measurement::new(
            "runs started (orchestrator_runs_started_total)",
            "",
            runs_started as f64,
        )
        .reference("deliveries accepted (202)", accepted as f64)
        .target(Target::Equal)
        .every_run(),
    );
    report.add(
        Measurement::new("runs finished successfully", "", succeeded as f64)
            .reference("deliveries accepted (202)", accepted as f64)
            .target(Target::Equal)
            .every_run(),
    );
    report.add(Measurement::new(
        "runs finished (any status)",
        "",
        finished as f64,
    ));
    report.add(Measurement::new(
        "runs waiting for a slot (runs.max_active) when the load ended",
        "",
        waiting_after_load as f64,
    ));
    report.add(Measurement::new(
        "time for the runs to drain after the load",
        "s",
        drain,
    ));
    report.add(Measurement::new(
        "runs kept (history_limit 50)",
        "",
        kept_runs as f64,
    ));
    report.add(Measurement::new(
        "store on disk after the load",
        "MiB",
        store_bytes as f64 / 1_048_576.0,
    ));
    report.add(Measurement::new(
        "server RSS after the load",
        "MiB",
        rss as f64 / 1024.0,
    ));
    report.finish();
    if let Some(first) = failed.first() {
        eprintln!("first failed answer: {} {}", first.status, first.text);
    }
}

/// One answer.
struct Sample {
    status: u16,
    latency_ms: f64,
    text: String,
}

/// The pushed ref: `refs/heads/main` (the trigger's branch), or `WEBHOOK_REF` — another
/// branch measures the receiver alone (every delivery filtered out, answered 200, no run).
fn git_ref() -> String {
    std::env::var("WEBHOOK_REF").unwrap_or_else(|_| "refs/heads/main".to_owned())
}

/// The bytes of delivery `index` to `/hooks/<path>`: a GitHub-shaped push of `git_ref`,
/// signed.
fn request(address: &str, index: usize, path: &str, git_ref: &str) -> Vec<u8> {
    let after = format!("{:040x}", index as u128 * 0x9e37_79b9_7f4a_7c15 + 1);
    let payload = json!({
        "ref": git_ref,
        "before": "0000000000000000000000000000000000000000",
        "after": after,
        "created": false, "deleted": false, "forced": false,
        "base_ref": null,
        "compare": format!("https://github.com/example/tests/compare/{}", &after[..12]),
        "commits": [{
            "id": after, "tree_id": after, "distinct": true,
            "message": format!("Change {index}"),
            "timestamp": "2025-01-01T00:00:00Z",
            "url": format!("https://github.com/example/tests/commit/{after}"),
            "author": {"name": "Dev", "email": "dev@example.com", "username": "dev"},
            "committer": {"name": "Dev", "email": "dev@example.com", "username": "dev"},
            "added": [], "removed": [], "modified": ["src/lib.rs", "README.md"],
        }],
        "head_commit": null,
        "repository": {
            "id": 1, "name": "tests", "full_name": "example/tests", "private": false,
            "owner": {"login": "example", "id": 2, "type": "Organization"},
            "html_url": "https://github.com/example/tests", "default_branch": "main",
        },
        "pusher": {"name": "dev", "email": "dev@example.com"},
        "sender": {"login": "dev", "id": 3, "type": "User"},
    });
    let body = serde_json::to_vec(&payload).expect("payload");
    let mut mac = Hmac::<Sha256>::new_from_slice(SECRET.as_bytes()).expect("hmac");
    mac.update(&body);
    let signature = hex::encode(mac.finalize().into_bytes());
    let mut bytes = format!(
        "POST /hooks/{path} HTTP/1.1\r\nHost: {address}\r\nUser-Agent: GitHub-Hookshot/bench\r\nContent-Type: application/json\r\nX-GitHub-Event: push\r\nX-GitHub-Delivery: {path}-{index:06}\r\nX-Hub-Signature-256: sha256={signature}\r\nContent-Length: {}\r\n\r\n",
        body.len()
    )
    .into_bytes();
    bytes.extend_from_slice(&body);
    bytes
}

/// Sends every request at `rate` per second over `connections` keep-alive connections;
/// each latency is counted from when the request was due.
async fn load(
    address: &str,
    requests: Vec<Arc<Vec<u8>>>,
    rate: u64,
    connections: usize,
) -> Vec<Sample> {
    let total = requests.len();
    let (jobs, receiver) = tokio::sync::mpsc::channel::<(Instant, Arc<Vec<u8>>)>(total.max(1));
    let receiver = Arc::new(tokio::sync::Mutex::new(receiver));
    let mut workers = Vec::new();
    for _ in 0..connections {
        let receiver = Arc::clone(&receiver);
        let address = address.to_owned();
        workers.push(tokio::spawn(async move {
            let mut samples = Vec::new();
            let mut connection: Option<AsyncBufReader<TcpStream>> = None;
            loop {
                let job = receiver.lock().await.recv().await;
                let Some((due, bytes)) = job else {
                    break;
                };
                let (status, text) = loop {
                    let stream = match connection.as_mut() {
                        Some(stream) => stream,
                        None => connection.insert(AsyncBufReader::new(
                            TcpStream::connect(&address).await.expect("connect"),
                        )),
                    };
                    match exchange(stream, &bytes).await {
                        Ok(answer) => break answer,
                        // The server closed an idle connection: reconnect and resend.
                        Err(_) => connection = None,
                    }
                };
                samples.push(Sample {
                    status,
                    latency_ms: due.elapsed().as_secs_f64() * 1e3,
                    text,
                });
            }
            samples
        }));
    }
    let period = Duration::from_secs_f64(1.0 / rate as f64);
    let start = tokio::time::Instant::now();
    for (index, bytes) in requests.into_iter().enumerate() {
        let due = start + period * index as u32;
        tokio::time::sleep_until(due).await;
        jobs.send((due.into_std(), bytes)).await.expect("queue");
    }
    drop(jobs);
    let mut samples = Vec::with_capacity(total);
    for worker in workers {
        samples.extend(worker.await.expect("worker"));
    }
    samples
}

/// Writes one request and reads its answer (status line, headers, `Content-Length` body).
async fn exchange(
    stream: &mut AsyncBufReader<TcpStream>,
    bytes: &[u8],
) -> std::io::Result<(u16, String)> {
    stream.get_mut().write_all(bytes).await?;
    let mut line = String::new();
    if stream.read_line(&mut line).await? == 0 {
        return Err(std::io::ErrorKind::UnexpectedEof.into());
    }
    let status: u16 = line
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or(std::io::ErrorKind::InvalidData)?;
    let mut length = 0usize;
    loop {
        line.clear();
        stream.read_line(&mut line).await?;
        let header = line.trim_end();
        if header.is_empty() {
            break;
        }
        if let Some((name, value)) = header.split_once(':') {
            if name.eq_ignore_ascii_case("content-length") {
                length = value.trim().parse().unwrap_or(0);
            }
        }
    }
    let mut body = vec![0; length];
    stream.read_exact(&mut body).await?;
    Ok((status, String::from_utf8_lossy(&body).into_owned()))
}

/// A blocking client for the checks after the load.
struct Api {
    base: String,
    agent: ureq::Agent,
}

impl Api {
    fn new(address: &str) -> Api {
        Api {
            base: format!("http://{address}"),
            agent: ureq::Agent::config_builder()
                .timeout_global(Some(Duration::from_secs(60)))
                .build()
                .new_agent(),
        }
    }

    fn text(&self, path: &str) -> String {
        self.agent
            .get(format!("{}{path}", self.base))
            .call()
            .expect("GET")
            .body_mut()
            .with_config()
            .limit(256 << 20)
            .read_to_string()
            .expect("body")
    }

    fn json(&self, path: &str) -> Value {
        serde_json::from_str(&self.text(path)).expect("JSON")
    }

    fn metrics(&self) -> String {
        self.text("/metrics")
    }

    fn metric(&self, name: &str) -> u64 {
        self.metrics()
            .lines()
            .find_map(|l| l.strip_prefix(name)?.strip_prefix(' '))
            .and_then(|v| v.trim().parse::<f64>().ok())
            .unwrap_or(0.0) as u64
    }
}

fn dir_size(path: &Path) -> u64 {
    let Ok(entries) = fs::read_dir(path) else {
        return 0;
    };
    entries
        .flatten()
        .map(|e| match e.metadata() {
            Ok(m) if m.is_dir() => dir_size(&e.path()),
            Ok(m) => m.len(),
            Err(_) => 0,
        })
        .sum()
}
