//! Server benchmark, on a project of 1,000 workflow manifests served by a real
//! `orchestrator start` (release build):
//!
//! - file change → store → `/ws` event: 200 edits, each timed from the write to the
//!   `manifest_applied` event for that workflow (debounce included); p50 and p99; and the
//!   same on a project of 10,000 workflows, in a server of its own;
//! - `GET /api/workflows` (default page, and all 1,000) under `wrk` with 32 connections, beside
//!   Dagu's `/api/v2/dags` serving 1,000 DAGs in the same run (`DAGU_BIN`; skipped without it);
//! - `/ws` fan-out: 100 clients while a run produces about 10,000 events; every client must
//!   get every event of the run (or be told it lagged);
//! - resident memory of the server, idle and after the list load, beside Dagu's;
//! - `GET /api/runs` (default page) under `wrk` with 1,000, 10,000 and 100,000 runs stored
//!   (written straight into the store while the server is stopped: finished runs of the
//!   1,000 workflows, each with a workflow of 10 steps), beside `GET /api/workflows` served
//!   by the same server in the same run; and the server's start and idle memory with them.
//!
//! `bench/server` installs wrk and Dagu and runs this. Prints a markdown table (and writes
//! `BENCH_JSON`, see `support`). One run is one sample of each figure: the percentiles come
//! from the 200 edits and wrk's 5 s; `bench/run` takes medians over runs.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use serde_json::Value;
use tokio_tungstenite::tungstenite::Message;

#[path = "support/mod.rs"]
mod support;
use support::{percentile, release_binary, rss_kib, run_ok, Measurement, Report, Server, Target};

const WORKFLOWS: usize = 1_000;
const EDITS: usize = 200;
const WS_CLIENTS: usize = 100;
/// Steps in the fan-out run: two events per step, two per run.
const FANOUT_STEPS: usize = 4_999;
/// Stored runs at each point of the run-listing curve; the last is the target's.
const STORED_RUNS: [usize; 3] = [1_000, 10_000, 100_000];
/// How long a server has been idle when its idle memory is read (Dagu's too): past the
/// allocator's one-second decay of the memory its start freed.
const IDLE_SETTLE: std::time::Duration = std::time::Duration::from_secs(3);
/// Steps in the workflow of each stored run.
const STORED_RUN_STEPS: usize = 10;

fn main() {
    let work = tempfile::tempdir().expect("temp dir");
    let project = work.path().join("project");
    let binary = release_binary();
    init_project(&binary, &project, WORKFLOWS);
    // Memory and list throughput on exactly the 1,000 manifests: first just after a start
    // that applied them, then idle after a restart, then after the list load.
    let mut server = Server::start(&binary, &project, &[]);
    let fresh_rss = rss_kib(server.child.id());
    server.stop();
    let mut server = Server::start(&binary, &project, &[]);
    let ready_rss = rss_kib(server.child.id());
    std::thread::sleep(IDLE_SETTLE);
    let idle_rss = rss_kib(server.child.id());
    let idle_anon = support::status_kib(server.child.id(), "RssAnon");
    let page = wrk(&format!("http://{}/api/workflows", server.address));
    let all = wrk(&format!(
        "http://{}/api/workflows?limit=1000",
        server.address
    ));
    let loaded_rss = rss_kib(server.child.id());
    server.stop();

    // Edit latency and fan-out, with a long workflow added for the events.
    let mut chain = String::from("name: Fanout\nhistory_limit: 2\nsteps:\n");
    for index in 0..FANOUT_STEPS {
        chain.push_str(&format!("  - name: s{index}\n    command: [\"true\"]\n"));
    }
    fs::write(project.join("workflows/fanout.yaml"), chain).expect("write fan-out workflow");
    let mut server = Server::start(&binary, &project, &[]);
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    let latencies = runtime.block_on(edit_latencies(&server.address, &project));
    let (p50, p99) = (percentile(&latencies, 0.50), percentile(&latencies, 0.99));
    let fanout = runtime.block_on(fanout(&server.address));
    // As the server resolves it: relative to the project.
    let data_dir = project.join(
        get_json(&server.address, "/api/status")["data_dir"]
            .as_str()
            .expect("the status names the data directory"),
    );
    server.stop();
    let (p50_large, p99_large) = edit_latency_at_scale(&binary, work.path());

    // Run listing as runs pile up: runs written into the stopped server's store, then the
    // default page under load, with the workflow list of the same server as the reference.
    let mut listing = Vec::new();
    let mut written = 0;
    for stored in STORED_RUNS {
        write_runs(&data_dir, written, stored);
        written = stored;
        let started = Instant::now();
        let mut server = Server::start(&binary, &project, &[]);
        let start_ms = started.elapsed().as_secs_f64() * 1e3;
        let total = get_json(&server.address, "/api/runs")["total"]
            .as_u64()
            .unwrap_or(0);
        assert!(
            total as usize >= stored,
            "{total} runs listed, {stored} stored"
        );
        let idle = rss_kib(server.child.id());
        let runs = wrk(&format!("http://{}/api/runs", server.address));
        let reference = wrk(&format!("http://{}/api/workflows", server.address));
        server.stop();
        listing.push((stored, runs, reference, start_ms, idle));
    }

    // Dagu beside it.
    let dagu = std::env::var_os("DAGU_BIN").map(PathBuf::from).map(|bin| {
        let home = work.path().join("dagu");
        fs::create_dir_all(home.join("dags")).expect("dagu dags");
        for index in 0..WORKFLOWS {
            fs::write(
                home.join("dags").join(format!("bench-{index:04}.yaml")),
                format!("description: bench {index}\nsteps:\n  - name: s\n    command: \"true\"\n"),
            )
            .expect("write dag");
        }
        let port = free_port();
        let mut child = Command::new(&bin)
            .args(["server", "--port", &port.to_string(), "--dags"])
            .arg(home.join("dags"))
            .env("DAGU_HOME", &home)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start dagu");
        let url = format!("http://127.0.0.1:{port}/api/v2/dags");
        wait_until_up(&url);
        std::thread::sleep(IDLE_SETTLE);
        let idle = rss_kib(child.id());
        let list = wrk(&url);
        let loaded = rss_kib(child.id());
        let _ = child.kill();
        let _ = child.wait();
        (list, idle, loaded)
    });

    let mib = |kib: u64| kib as f64 / 1024.0;
    let dagu_name = "Dagu 1.30.2 (/api/v2/dags, 1,000 DAGs)";
    let mut report = Report::new("server");
    let edit = format!(
        "file change → /ws event ({EDITS} edits, {} manifests)",
        support::number(WORKFLOWS as f64)
    );
    report.add(Measurement::new(format!("{edit}, p50"), "ms", p50));
    report.add(
        Measurement::new(format!("{edit}, p99"), "ms", p99)
            .target(Target::AtMost(100.0))
            .bound(
                "each edit reconciles the whole tree after the watcher's debounce (10 ms of \
                 quiet for an isolated save): every file is read and hashed, only the edited \
                 one parsed and validated, every record read once for the diff. \
                 Reconciling only the changed paths between periodic full resyncs would move it.",
            ),
    );
    let edit_large = format!(
        "file change → /ws event ({EDITS} edits, {} manifests)",
        support::number(LARGE_WORKFLOWS as f64)
    );
    report.add(Measurement::new(
        format!("{edit_large}, p50"),
        "ms",
        p50_large,
    ));
    report.add(
        Measurement::new(format!("{edit_large}, p99"), "ms", p99_large)
            .target(Target::AtMost(250.0))
            .bound(
                "the whole-tree work an edit still does grows with the tree: the walk lists \
                 and stats every file (only the edited one is read and parsed), the checks \
                 across files (ids, references) run over every manifest, the plan is diffed \
                 against every record and the view rebuilt.",
            ),
    );
    report.add(
        Measurement::new(
            "GET /api/workflows (default page) under wrk, 32 connections, throughput",
            "req/s",
            page.rps,
        )
        .reference(dagu_name, dagu.as_ref().map(|(l, _, _)| l.rps))
        .target(Target::AtLeast(10_000.0))
        .bound(
            "wrk and the server share the machine's cores; the page is written from summaries \
             serialized once per reconcile, so what remains is HTTP and copying bytes. More \
             cores, or wrk on another machine, would move it.",
        ),
    );
    report.add(
        Measurement::new(
            "GET /api/workflows (default page) under wrk, p99",
            "ms",
            page.p99_ms,
        )
        .reference(dagu_name, dagu.as_ref().map(|(l, _, _)| l.p99_ms))
        .target(Target::AtMost(5.0))
        .bound(
            "32 connections on the machine's cores with wrk's own threads: the p99 is a \
             request waiting for a core. More cores, or wrk on another machine, would \
             move it.",
        ),
    );
    report.add(Measurement::new(
        "GET /api/workflows?limit=1000 under wrk, throughput",
        "req/s",
        all.rps,
    ));
    report.add(Measurement::new(
        "GET /api/workflows?limit=1000 under wrk, p99",
        "ms",
        all.p99_ms,
    ));
    let fan = format!(
        "/ws fan-out, {WS_CLIENTS} clients × {} events of one run",
        support::number(fanout.expected as f64)
    );
    report.add(
        Measurement::new(format!("{fan}: events missing"), "", fanout.missing as f64)
            .target(Target::AtMost(0.0))
            .every_run()
            .bound(
                "a client that falls behind the broadcast channel's capacity is sent a \
                 `lagged` notice instead of the events it missed (counted in the lagged row). \
                 A larger channel would move it.",
            ),
    );
    report.add(Measurement::new(
        format!("{fan}: lagged notices"),
        "",
        fanout.lagged as f64,
    ));
    report.add(Measurement::new(
        format!("{fan}: delivery rate"),
        "events/s",
        fanout.rate,
    ));
    report.add(
        Measurement::new(
            "RSS, idle after a restart (3 s after it listens)",
            "MiB",
            mib(idle_rss),
        )
        .reference(dagu_name, dagu.as_ref().map(|(_, idle, _)| mib(*idle)))
        .target(Target::AtMost(30.0))
        .bound(
            "about 25 MiB of it are the pages of the binary's code and read-only data \
                 that the start touched (RssFile, shared with every other orchestrator process \
                 on the machine and part of the page cache); the server's own memory (RssAnon) \
                 is the rest: the view of the 1,000 workflows, sled's page cache, the runtime's \
                 threads. A smaller binary (fewer features linked, LTO) would move the first.",
        ),
    );
    report.add(Measurement::new(
        "RSS, idle after a restart: the server's own memory (RssAnon, without the binary's pages)",
        "MiB",
        mib(idle_anon),
    ));
    report.add(Measurement::new(
        "RSS, idle after a restart, as soon as it listens",
        "MiB",
        mib(ready_rss),
    ));
    report.add(
        Measurement::new("RSS after the list load", "MiB", mib(loaded_rss))
            .reference(dagu_name, dagu.as_ref().map(|(_, _, loaded)| mib(*loaded)))
            .target(Target::AtMost(60.0))
            .bound(
                "the idle figure plus the buffers of 32 connections and the allocator's \
                 per-thread caches.",
            ),
    );
    report.add(Measurement::new(
        "RSS just after the start that applied the 1,000 manifests",
        "MiB",
        mib(fresh_rss),
    ));
    for (stored, runs, reference, start_ms, idle) in &listing {
        let stored_text = support::number(*stored as f64);
        let at_target = *stored == STORED_RUNS[STORED_RUNS.len() - 1];
        let same = "GET /api/workflows (default page), same server and run";
        let mut rps = Measurement::new(
            format!("GET /api/runs (default page), {stored_text} runs stored, wrk 32 connections, throughput"),
            "req/s",
            runs.rps,
        )
        .reference(same, reference.rps);
        let mut p99 = Measurement::new(
            format!("GET /api/runs (default page), {stored_text} runs stored, p99"),
            "ms",
            runs.p99_ms,
        )
        .reference(same, reference.p99_ms);
        if at_target {
            rps = rps.target(Target::AtLeast(5_000.0)).bound(
                "the page's 50 summaries come serialized from the store's cache (nothing \
                 decoded); most of the time is the kernel's TCP copy of a 25 KB body and \
                 wrk sharing the cores with the server. More cores would move it.",
            );
            p99 = p99.target(Target::AtMost(10.0)).bound(
                "32 connections on the machine's cores with wrk's own threads: the p99 is a \
                 request waiting for a core. More cores would move it.",
            );
        }
        report.add(rps);
        report.add(p99);
        report.add(Measurement::new(
            format!("server start to listening, {stored_text} runs stored"),
            "ms",
            *start_ms,
        ));
        report.add(Measurement::new(
            format!("RSS idle after a restart, {stored_text} runs stored"),
            "MiB",
            mib(*idle),
        ));
    }
    report.finish();
}

/// Writes runs number `from` to `to` (exclusive) into the store in `data_dir`: finished
/// runs of the 1,000 workflows, round robin, each with a workflow of
/// [`STORED_RUN_STEPS`] steps, ids a millisecond apart as the engine makes them.
fn write_runs(data_dir: &Path, from: usize, to: usize) {
    use orchestrator::model::{RunRecord, Status, TestSummary, Trigger};
    let store = orchestrator::store::Store::open(data_dir).expect("open the store");
    let steps: Vec<String> = (0..STORED_RUN_STEPS).map(|n| format!("step-{n}")).collect();
    let base_ms = 1_750_000_000_000u64;
    for number in from..to {
        let index = number % WORKFLOWS;
        let workflow = serde_json::json!({
            "name": format!("Bench {index:04}"),
            "description": "first",
            "steps": steps
                .iter()
                .map(|name| serde_json::json!({"name": name, "command": ["true"], "agent": "exec"}))
                .collect::<Vec<_>>(),
        });
        let ulid = ulid::Ulid::from_parts(base_ms + number as u64, number as u128);
        let run = RunRecord {
            id: format!("run_{}", ulid.to_string().to_lowercase()),
            workflow_id: format!("wf_bench-{index:04}"),
            workflow_name: format!("Bench {index:04}"),
            status: if number % 10 == 0 {
                Status::Failed
            } else {
                Status::Succeeded
            },
            parameters: serde_json::Map::new(),
            trigger: Trigger {
                kind: "api".into(),
                details: serde_json::Map::new(),
            },
            workflow,
            steps: steps.clone(),
            created_at: "2026-01-01T00:00:00Z".into(),
            started_at: Some("2026-01-01T00:00:00.010Z".into()),
            finished_at: Some("2026-01-01T00:00:00.250Z".into()),
            duration_ms: Some(240),
            message: None,
            tests: TestSummary::default(),
            rerun_of: None,
            revision: Some("dir:bench".into()),
            pid: None,
        };
        store
            .save_run(Some(&run), &[], number + 1 == to)
            .expect("write a run");
    }
}

fn get_json(address: &str, path: &str) -> Value {
    let text = ureq::get(&format!("http://{address}{path}"))
        .call()
        .expect("GET")
        .body_mut()
        .read_to_string()
        .expect("body");
    serde_json::from_str(&text).expect("json")
}

/// The larger project of the edit latency: [`EDITS`] edits of its first [`WORKFLOWS`] files.
const LARGE_WORKFLOWS: usize = 10_000;

/// File change → `/ws` event on a project of [`LARGE_WORKFLOWS`] workflow manifests, in a
/// server of its own: p50 and p99 of [`EDITS`] edits.
fn edit_latency_at_scale(binary: &Path, work: &Path) -> (f64, f64) {
    let project = work.join("project-large");
    init_project(binary, &project, LARGE_WORKFLOWS);
    let mut server = Server::start(binary, &project, &[]);
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    let latencies = runtime.block_on(edit_latencies(&server.address, &project));
    server.stop();
    (percentile(&latencies, 0.50), percentile(&latencies, 0.99))
}

/// `orchestrator init` at `project`, then `count` one-step workflow manifests in it.
fn init_project(binary: &Path, project: &Path, count: usize) {
    run_ok(Command::new(binary).arg("init").arg(project));
    for index in 0..count {
        fs::write(
            project
                .join("workflows")
                .join(format!("bench-{index:04}.yaml")),
            workflow_text(index, "first"),
        )
        .expect("write workflow");
    }
}

fn workflow_text(index: usize, description: &str) -> String {
    format!(
        "name: Bench {index:04}\ndescription: {description}\nsteps:\n  - name: check\n    command: [\"true\"]\n"
    )
}

async fn connect(
    address: &str,
) -> tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>> {
    let (mut socket, _) = tokio_tungstenite::connect_async(format!("ws://{address}/ws"))
        .await
        .expect("connect /ws");
    // The `connected` greeting.
    let _ = socket.next().await;
    socket
}

async fn next_json(
    socket: &mut tokio_tungstenite::WebSocketStream<
        tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>,
    >,
) -> Option<Value> {
    loop {
        match socket.next().await? {
            Ok(Message::Text(text)) => return serde_json::from_str(&text).ok(),
            Ok(_) => continue,
            Err(_) => return None,
        }
    }
}

async fn edit_latencies(address: &str, project: &Path) -> Vec<f64> {
    let mut socket = connect(address).await;
    socket
        .send(Message::Text(
            r#"{"type": "subscribe", "events": ["manifest_applied"]}"#.into(),
        ))
        .await
        .expect("subscribe");
    let _subscribed = next_json(&mut socket).await;
    let mut latencies = Vec::with_capacity(EDITS);
    for edit in 0..EDITS {
        let index = (edit * 7) % WORKFLOWS;
        let id = format!("wf_bench-{index:04}");
        let started = Instant::now();
        fs::write(
            project
                .join("workflows")
                .join(format!("bench-{index:04}.yaml")),
            workflow_text(index, &format!("edit {edit}")),
        )
        .expect("edit");
        loop {
            let event = tokio::time::timeout(Duration::from_secs(10), next_json(&mut socket))
                .await
                .expect("no manifest_applied within 10 s")
                .expect("the stream ended");
            if event["payload"]["id"] == id.as_str() {
                break;
            }
        }
        latencies.push(started.elapsed().as_secs_f64() * 1e3);
    }
    latencies
}

struct Fanout {
    expected: usize,
    missing: usize,
    lagged: usize,
    rate: f64,
}

async fn fanout(address: &str) -> Fanout {
    let expected = FANOUT_STEPS * 2 + 2;
    let mut clients = Vec::new();
    for _ in 0..WS_CLIENTS {
        clients.push(connect(address).await);
    }
    let started = Instant::now();
    let agent = ureq::Agent::new_with_defaults();
    let answer: Value = serde_json::from_str(
        &agent
            .post(&format!("http://{address}/api/workflows/wf_fanout/execute"))
            .header("Content-Type", "application/json")
            .send("{}")
            .expect("execute")
            .body_mut()
            .read_to_string()
            .expect("body"),
    )
    .expect("json");
    let run_id = answer["run_id"].as_str().expect("run id").to_owned();
    let mut tasks = Vec::new();
    for mut socket in clients {
        let run_id = run_id.clone();
        tasks.push(tokio::spawn(async move {
            let (mut seen, mut lagged) = (0usize, 0usize);
            loop {
                let Ok(Some(event)) =
                    tokio::time::timeout(Duration::from_secs(60), next_json(&mut socket)).await
                else {
                    break;
                };
                match event["type"].as_str() {
                    Some("lagged") => lagged += 1,
                    Some("workflow_started" | "step_started" | "step_completed")
                        if event["payload"]["run_id"] == run_id.as_str()
                            || event["payload"]["id"] == run_id.as_str() =>
                    {
                        seen += 1
                    }
                    Some("workflow_completed") if event["payload"]["id"] == run_id.as_str() => {
                        seen += 1;
                        break;
                    }
                    _ => {}
                }
            }
            (seen, lagged)
        }));
    }
    let (mut delivered, mut lagged) = (0usize, 0usize);
    for task in tasks {
        let (seen, lag) = task.await.expect("client task");
        delivered += seen;
        lagged += lag;
    }
    let elapsed = started.elapsed().as_secs_f64();
    Fanout {
        expected,
        missing: expected * WS_CLIENTS - delivered,
        lagged,
        rate: delivered as f64 / elapsed,
    }
}

struct Load {
    rps: f64,
    p99_ms: f64,
}

/// `wrk -t2 -c32 -d5s --latency URL`: requests per second and the 99th percentile.
fn wrk(url: &str) -> Load {
    let output = Command::new("wrk")
        .args(["-t2", "-c32", "-d5s", "--latency", url])
        .output()
        .expect("wrk (bench/server installs it)");
    let text = String::from_utf8_lossy(&output.stdout);
    let rps = text
        .lines()
        .find_map(|l| l.strip_prefix("Requests/sec:"))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0.0);
    let p99_ms = text
        .lines()
        .find_map(|l| l.trim().strip_prefix("99%"))
        .map(|v| duration_ms(v.trim()))
        .unwrap_or(f64::NAN);
    Load { rps, p99_ms }
}

/// wrk's `1.23ms`, `456.00us`, `1.50s`.
fn duration_ms(text: &str) -> f64 {
    let split = text
        .find(|c: char| c.is_ascii_alphabetic())
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let value: f64 = number.parse().unwrap_or(f64::NAN);
    match unit {
        "us" => value / 1e3,
        "ms" => value,
        "s" => value * 1e3,
        "m" => value * 60e3,
        _ => f64::NAN,
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

fn wait_until_up(url: &str) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while ureq::get(url).call().is_err() {
        assert!(Instant::now() < deadline, "{url} did not come up");
        std::thread::sleep(Duration::from_millis(100));
    }
}
