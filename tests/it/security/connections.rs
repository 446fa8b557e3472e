//! Clients that hold on, flood or leave: slow headers are cut off, idle connections close,
//! the connection cap holds new ones back (saying so once), a half-sent request does not
//! hold up a shutdown, webhook bodies are buffered under a budget, rejected deliveries
//! keep to their own part of a trigger's history, GitHub deliveries need their id, a
//! trigger's missing secret is not named to senders, and memory comes back after a large
//! run and after thousands of WebSockets.
//!
//! Memory is read from `/proc/<pid>/status` (`VmRSS`, `VmHWM`): these are correctness
//! bounds (within 2× of the idle figure), not benchmarks.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::support::{
    edit_config, eventually, eventually_every, project, server_address, sign, Api, Server, DEADLINE,
};

/// Adds lines under `server:` in the project's development configuration.
fn server_settings(dir: &Path, lines: &str) {
    edit_config(dir, "\nserver:\n", &format!("\nserver:\n{lines}"));
}

/// A field of `/proc/<pid>/status`, in KiB.
fn status_kib(pid: u32, field: &str) -> u64 {
    let text = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    text.lines()
        .find_map(|line| line.strip_prefix(&format!("{field}:")))
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|kib| kib.parse().ok())
        .unwrap_or_else(|| panic!("no {field} in /proc/{pid}/status"))
}

fn mib(kib: u64) -> f64 {
    kib as f64 / 1024.0
}

/// Waits until the server has closed `socket` (end of file or a reset), by `deadline`;
/// anything the server sent before is skipped. Err says what happened instead.
fn closed_by(socket: &mut TcpStream, deadline: Instant) -> Result<Instant, String> {
    let mut buffer = [0u8; 4096];
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err("still open at the deadline".into());
        }
        socket.set_read_timeout(Some(left)).unwrap();
        match socket.read(&mut buffer) {
            Ok(0) => return Ok(Instant::now()),
            Ok(_) => continue,
            Err(err)
                if matches!(
                    err.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                return Err("still open at the deadline".into())
            }
            Err(_) => return Ok(Instant::now()),
        }
    }
}

/// Whether `socket` gets nothing (no answer, no close) for `wait`.
fn silent_for(socket: &mut TcpStream, wait: Duration) -> bool {
    socket.set_read_timeout(Some(wait)).unwrap();
    let mut byte = [0u8; 1];
    matches!(
        socket.read(&mut byte),
        Err(err) if matches!(err.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut)
    )
}

/// One HTTP/1.1 answer read off a socket: status, headers (lowercase names), body.
struct Answer {
    status: u16,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl Answer {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }

    fn json(&self) -> Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&self.body)))
    }
}

/// Reads one answer (a `100 Continue` counts as one, without a body).
fn read_answer(reader: &mut impl BufRead) -> Answer {
    let mut line = String::new();
    reader.read_line(&mut line).expect("a status line");
    let status = line
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("not a status line: {line:?}"));
    let mut headers = Vec::new();
    loop {
        line.clear();
        reader.read_line(&mut line).expect("a header line");
        if line.trim().is_empty() {
            break;
        }
        if let Some((name, value)) = line.split_once(':') {
            headers.push((name.trim().to_ascii_lowercase(), value.trim().to_owned()));
        }
    }
    let length = headers
        .iter()
        .find(|(n, _)| n == "content-length")
        .map_or(0, |(_, v)| v.parse().unwrap());
    let mut body = vec![0; length];
    reader.read_exact(&mut body).expect("the body");
    Answer {
        status,
        headers,
        body,
    }
}

/// A kept-alive `GET` on `socket`, answered.
fn get_on(socket: &TcpStream, address: &str, path: &str) -> Answer {
    let mut writer = socket;
    write!(
        writer,
        "GET {path} HTTP/1.1\r\nHost: {address}\r\nConnection: keep-alive\r\n\r\n"
    )
    .unwrap();
    socket.set_read_timeout(Some(DEADLINE)).unwrap();
    read_answer(&mut BufReader::new(socket))
}

#[test]
fn partial_headers_are_cut_off_and_idle_connections_close() {
    let project = project(&[]);
    let dir = project.path();
    server_settings(dir, "  header_read_timeout: 1s\n  idle_timeout: 3s\n");
    let server = Server::start(dir);
    let address = server_address(dir);

    // 300 clients that start a request and never finish its headers.
    let started = Instant::now();
    let mut slow: Vec<TcpStream> = (0..300)
        .map(|_| {
            let mut socket = TcpStream::connect(&address).unwrap();
            socket
                .write_all(
                    format!("GET /api/status HTTP/1.1\r\nHost: {address}\r\nX-Slow: ").as_bytes(),
                )
                .unwrap();
            socket
        })
        .collect();
    let deadline = started + Duration::from_secs(1) + DEADLINE;
    let mut first = None;
    for (i, socket) in slow.iter_mut().enumerate() {
        let closed = closed_by(socket, deadline).unwrap_or_else(|e| {
            panic!(
                "slow client {i}: {e} ({:?} after it started)",
                started.elapsed()
            )
        });
        first.get_or_insert(closed);
    }
    let first = first.unwrap().duration_since(started);
    assert!(
        first >= Duration::from_millis(900),
        "closed after {first:?}, before the 1 s header-read timeout"
    );

    // The server still serves; a kept-alive connection outlives the header-read timeout
    // while idle, and closes after the idle timeout.
    let mut kept = TcpStream::connect(&address).unwrap();
    assert_eq!(get_on(&kept, &address, "/healthz").status, 200);
    assert!(
        silent_for(&mut kept, Duration::from_millis(1500)),
        "an idle kept-alive connection was closed by the header-read timeout"
    );
    assert_eq!(get_on(&kept, &address, "/healthz").status, 200);
    let answered_again = Instant::now();
    let closed = closed_by(&mut kept, answered_again + DEADLINE).expect("closed when idle");
    let idle = closed.duration_since(answered_again);
    assert!(
        idle >= Duration::from_millis(2800),
        "closed {idle:?} after its last answer, before the 3 s idle timeout"
    );
    drop(server);
}

#[test]
fn a_half_sent_request_does_not_hold_up_the_shutdown() {
    let project = project(&[]);
    let dir = project.path();
    // Timeouts longer than the test: only the shutdown's deadline can end these clients.
    server_settings(dir, "  header_read_timeout: 10m\n  idle_timeout: 10m\n");
    let grace = Duration::from_secs(2);
    let mut server = Server::start_with(dir, &[("ORCHESTRATOR_SHUTDOWN_GRACE", "2")]);
    let address = server_address(dir);
    // Headers cut off half-way.
    let mut headers = TcpStream::connect(&address).unwrap();
    headers
        .write_all(format!("GET /api/status HTTP/1.1\r\nHost: {address}\r\nX-Half: ").as_bytes())
        .unwrap();
    // A body promised and never sent, to a route that reads it.
    let mut body = TcpStream::connect(&address).unwrap();
    body.write_all(
        format!(
            "POST /hooks/nowhere HTTP/1.1\r\nHost: {address}\r\nContent-Type: application/json\r\nContent-Length: 1000\r\n\r\n{{\"a\": "
        )
        .as_bytes(),
    )
    .unwrap();
    // A kept-alive connection, idle, and one answered after both: the two above are in.
    let idle = TcpStream::connect(&address).unwrap();
    assert_eq!(get_on(&idle, &address, "/healthz").status, 200);
    assert!(silent_for(&mut body, Duration::from_millis(200)));

    let stopping = Instant::now();
    let (exit, stdout) = server.stop();
    let took = stopping.elapsed();
    assert!(exit.success(), "{exit:?}\n{}", server.stderr());
    assert!(stdout.contains("stopped"), "{stdout}");
    assert!(
        took < grace + Duration::from_secs(8),
        "the server took {took:?} to stop with a {grace:?} grace period"
    );
    for (what, socket) in [("headers", &mut headers), ("body", &mut body)] {
        closed_by(socket, Instant::now() + Duration::from_secs(5))
            .unwrap_or_else(|e| panic!("the half-sent {what}: {e}"));
    }
}

#[test]
fn the_connection_cap_holds_new_connections_until_others_close() {
    let project = project(&[]);
    let dir = project.path();
    server_settings(dir, "  max_connections: 8\n");
    let server = Server::start(dir);
    let address = server_address(dir);
    let mut served: Vec<TcpStream> = (0..8)
        .map(|_| {
            let socket = TcpStream::connect(&address).unwrap();
            assert_eq!(get_on(&socket, &address, "/healthz").status, 200);
            socket
        })
        .collect();
    // Four more: connected (the backlog takes them), not served.
    let mut waiting: Vec<TcpStream> = (0..4)
        .map(|_| {
            let mut socket = TcpStream::connect(&address).unwrap();
            write!(
                socket,
                "GET /healthz HTTP/1.1\r\nHost: {address}\r\nConnection: keep-alive\r\n\r\n"
            )
            .unwrap();
            socket
        })
        .collect();
    for socket in &mut waiting {
        assert!(
            silent_for(socket, Duration::from_millis(500)),
            "a connection over server.max_connections was served"
        );
    }
    const LINE: &str = "connection limit reached";
    eventually("the connection limit to be logged", || {
        server.stderr().contains(LINE).then_some(())
    });
    // Half the served ones leave: the waiting ones are served, in their turn.
    drop(served.drain(..4).collect::<Vec<_>>());
    for socket in &waiting {
        socket.set_read_timeout(Some(DEADLINE)).unwrap();
        let answer = read_answer(&mut BufReader::new(socket));
        assert_eq!(answer.status, 200);
    }
    // Full again, in the same burst: one line for all of it, not one per connection.
    let mut more = TcpStream::connect(&address).unwrap();
    write!(more, "GET /healthz HTTP/1.1\r\nHost: {address}\r\n\r\n").unwrap();
    assert!(silent_for(&mut more, Duration::from_millis(300)));
    let stderr = server.stderr();
    assert_eq!(stderr.matches(LINE).count(), 1, "{stderr}");
    assert!(stderr.contains("server.max_connections"), "{stderr}");
    drop(served);
}

/// A workflow of one quick step, and a GitHub trigger with a secret in a file.
const BUILD: &str = "name: Build\nsteps:\n  - name: build\n    command: [\"true\"]\n";
const HOOK: &str = "name: Hook\npath: /hooks/push\nworkflow: wf_build\nsecret: file:secrets/hook\nhistory_limit: 5\n";
const SECRET: &str = "a webhook secret";

fn webhook_project() -> tempfile::TempDir {
    project(&[
        ("workflows/build.yaml", BUILD),
        ("triggers/hook.yaml", HOOK),
        ("secrets/hook", SECRET),
    ])
}

/// POSTs a delivery with the given headers; the answer's status and JSON.
fn deliver(dir: &Path, path: &str, headers: &[(&str, &str)], body: &[u8]) -> (u16, Value) {
    let reply = Api::of_project(dir).post_with(path, headers, body);
    let body = serde_json::from_str(&reply.text).unwrap_or_else(|e| panic!("{e}: {reply:?}"));
    (reply.status, body)
}

/// A push to `main` the test trigger accepts.
const PUSH: &[u8] =
    br#"{"ref": "refs/heads/main", "after": "0123456789abcdef0123456789abcdef01234567"}"#;

fn get_json(dir: &Path, path: &str) -> Value {
    let reply = Api::of_project(dir).get(path);
    assert_eq!(reply.status, 200);
    serde_json::from_str(&reply.text).unwrap()
}

#[test]
fn parallel_unsigned_webhook_bodies_are_buffered_under_a_budget() {
    const BODY: usize = 24 << 20;
    let project = webhook_project();
    let dir = project.path();
    let server = Server::start(dir);
    let address = server_address(dir);
    let idle = status_kib(server.pid(), "VmRSS");
    // Eight senders without the secret, each announcing 24 MB and waiting for
    // `100 Continue` as curl does: the budget lets two in, the others are told to retry.
    let sockets: Vec<TcpStream> = (0..8)
        .map(|i| {
            let mut socket = TcpStream::connect(&address).unwrap();
            write!(
                socket,
                "POST /hooks/push HTTP/1.1\r\nHost: {address}\r\nContent-Type: application/json\r\nX-GitHub-Event: push\r\nX-GitHub-Delivery: big-{i}\r\nContent-Length: {BODY}\r\nExpect: 100-continue\r\n\r\n"
            )
            .unwrap();
            socket.set_read_timeout(Some(DEADLINE)).unwrap();
            socket
        })
        .collect();
    let mut admitted = Vec::new();
    let mut refused = 0;
    for socket in sockets {
        let mut reader = BufReader::new(socket);
        let answer = read_answer(&mut reader);
        match answer.status {
            100 => admitted.push(reader.into_inner()),
            503 => {
                refused += 1;
                let retry: u64 = answer
                    .header("retry-after")
                    .and_then(|v| v.parse().ok())
                    .expect("a Retry-After in seconds");
                assert!(retry >= 1, "{retry}");
                let error = answer.json();
                assert_eq!(error["error"]["code"], "busy", "{error}");
                let message = error["error"]["message"].as_str().unwrap();
                assert!(message.contains("retry"), "{message}");
            }
            other => panic!(
                "answered {other} before the body: {}",
                String::from_utf8_lossy(&answer.body)
            ),
        }
    }
    assert_eq!((admitted.len(), refused), (2, 6));
    let senders: Vec<_> = admitted
        .into_iter()
        .map(|mut socket| {
            std::thread::spawn(move || {
                let chunk = vec![b' '; 1 << 20];
                for _ in 0..BODY / chunk.len() {
                    socket.write_all(&chunk).unwrap();
                }
                read_answer(&mut BufReader::new(socket))
            })
        })
        .collect();
    for sender in senders {
        let answer = sender.join().unwrap();
        assert_eq!(
            answer.status,
            401,
            "{}",
            String::from_utf8_lossy(&answer.body)
        );
    }
    let peak = status_kib(server.pid(), "VmHWM");
    eprintln!(
        "resident memory: idle {:.1} MiB; peak with eight 24 MB senders {:.1} MiB",
        mib(idle),
        mib(peak)
    );
    assert!(
        peak < idle + 100 * 1024,
        "resident memory peaked at {:.0} MiB, {:.0} MiB over the idle {:.0} MiB",
        mib(peak),
        mib(peak - idle),
        mib(idle)
    );
    // Budget given back: a signed delivery goes through.
    let body = PUSH;
    let signature = sign(SECRET, body);
    let (status, answer) = deliver(
        dir,
        "/hooks/push",
        &[
            ("X-GitHub-Event", "push"),
            ("X-GitHub-Delivery", "after-the-burst"),
            ("X-Hub-Signature-256", &signature),
        ],
        body,
    );
    assert_eq!(status, 202, "{answer}");
}

/// Announces a 24 MB delivery on a new connection, waiting for `100 Continue` as curl
/// does; the connection and the first answer.
fn announce_big_delivery(address: &str, delivery: &str) -> (TcpStream, Answer) {
    let mut socket = TcpStream::connect(address).unwrap();
    write!(
        socket,
        "POST /hooks/push HTTP/1.1\r\nHost: {address}\r\nContent-Type: application/json\r\nX-GitHub-Event: push\r\nX-GitHub-Delivery: {delivery}\r\nContent-Length: {}\r\nExpect: 100-continue\r\n\r\n",
        24 << 20
    )
    .unwrap();
    socket.set_read_timeout(Some(DEADLINE)).unwrap();
    let answer = read_answer(&mut BufReader::new(&socket));
    (socket, answer)
}

/// Reads the answer to a request whose body never arrived whole: `408 timeout`, within 20 s.
fn expect_body_timeout(socket: &TcpStream, path: &str) {
    socket
        .set_read_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    let answer = read_answer(&mut BufReader::new(socket));
    assert_eq!(
        answer.status,
        408,
        "{path}: {}",
        String::from_utf8_lossy(&answer.body)
    );
    assert_eq!(answer.json()["error"]["code"], "timeout", "{path}");
}

#[test]
fn a_stalled_webhook_body_gives_its_share_of_the_budget_back() {
    let project = webhook_project();
    let dir = project.path();
    server_settings(dir, "  body_read_timeout: 2s\n");
    let _server = Server::start(dir);
    let address = server_address(dir);
    // Two senders take the whole budget and then send almost nothing.
    let mut stalled = Vec::new();
    for i in 0..2 {
        let (mut socket, answer) = announce_big_delivery(&address, &format!("stalled-{i}"));
        assert_eq!(answer.status, 100);
        socket.write_all(b"{\"ref\": ").unwrap();
        stalled.push(socket);
    }
    let (_, refused) = announce_big_delivery(&address, "meanwhile");
    assert_eq!(refused.status, 503);
    // Within the body timeout (`server.body_read_timeout`, 2 s here) and a margin, they
    // are answered 408 and the budget is free again.
    let started = Instant::now();
    for socket in &stalled {
        expect_body_timeout(socket, "/hooks/push");
    }
    assert!(started.elapsed() < Duration::from_secs(20));
    let (_, admitted) = announce_big_delivery(&address, "after");
    assert_eq!(admitted.status, 100);
}

#[test]
fn a_slow_request_body_is_cut_off_on_every_route() {
    let project = webhook_project();
    let dir = project.path();
    server_settings(dir, "  body_read_timeout: 2s\n");
    let _server = Server::start(dir);
    let address = server_address(dir);
    // A body that trickles in a byte at a time keeps the connection busy (no idle timeout
    // fires while a request is in progress), so only a deadline on the whole body ends it.
    // The trickle stops short of the deadline: bytes the server never reads would turn its
    // close into a reset.
    let started = Instant::now();
    let mut sockets = Vec::new();
    for path in [
        "/api/validate",
        "/api/workflows/wf_build/execute",
        "/hooks/source",
    ] {
        let mut socket = TcpStream::connect(&address).unwrap();
        write!(
            socket,
            "POST {path} HTTP/1.1\r\nHost: {address}\r\nContent-Type: application/json\r\nContent-Length: 1000\r\n\r\n{{"
        )
        .unwrap();
        sockets.push((path, socket));
    }
    let trickle_until = started + Duration::from_millis(1500);
    while Instant::now() < trickle_until {
        for (_, socket) in &mut sockets {
            let _ = socket.write_all(b" ");
        }
        std::thread::sleep(Duration::from_millis(250));
    }
    for (path, socket) in &sockets {
        expect_body_timeout(socket, path);
    }
    assert!(
        started.elapsed() >= Duration::from_secs(2),
        "answered before the deadline"
    );
    // Nothing ran.
    let runs = get_json(dir, "/api/runs");
    assert_eq!(runs["total"], 0, "{runs}");
}

#[test]
fn rejected_deliveries_do_not_push_accepted_ones_out_of_the_history() {
    let project = webhook_project();
    let dir = project.path();
    let _server = Server::start(dir);
    let body = PUSH;
    let signature = sign(SECRET, body);
    for i in 0..3 {
        let delivery = format!("signed-{i}");
        let (status, answer) = deliver(
            dir,
            "/hooks/push",
            &[
                ("X-GitHub-Event", "push"),
                ("X-GitHub-Delivery", &delivery),
                ("X-Hub-Signature-256", &signature),
            ],
            body,
        );
        assert_eq!(status, 202, "{answer}");
    }
    // Far more than the history limit (5) from a sender without the secret, past the
    // point where the history is pruned (every 100 deliveries).
    for i in 0..110 {
        let delivery = format!("unsigned-{i}");
        let (status, answer) = deliver(
            dir,
            "/hooks/push",
            &[("X-GitHub-Event", "push"), ("X-GitHub-Delivery", &delivery)],
            body,
        );
        assert_eq!(status, 401, "{answer}");
    }
    // Pruning runs beside the deliveries, on a thread of its own: the listing settles.
    let listed = eventually("the rejected deliveries to be pruned", || {
        let listed = get_json(dir, "/api/triggers/trg_hook/deliveries?limit=1000");
        let rejected = listed["deliveries"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|r| r["result"] == "rejected")
            .count();
        (rejected < 100).then_some(listed)
    });
    let records = listed["deliveries"].as_array().unwrap();
    let with = |result: &str| -> Vec<&str> {
        records
            .iter()
            .filter(|r| r["result"] == result)
            .map(|r| r["delivery"].as_str().unwrap())
            .collect()
    };
    let mut accepted = with("accepted");
    accepted.sort();
    assert_eq!(accepted, ["signed-0", "signed-1", "signed-2"], "{listed}");
    let rejected = with("rejected");
    assert!(
        !rejected.is_empty() && rejected.len() < 100,
        "the rejected deliveries were not pruned: {} kept",
        rejected.len()
    );
    assert!(rejected.contains(&"unsigned-109"), "{rejected:?}");
}

#[test]
fn a_github_delivery_without_its_id_is_refused() {
    let project = webhook_project();
    let dir = project.path();
    let _server = Server::start(dir);
    let before = get_json(dir, "/api/runs")["total"].as_u64().unwrap();
    let body = PUSH;
    let signature = sign(SECRET, body);
    let (status, answer) = deliver(
        dir,
        "/hooks/push",
        &[
            ("X-GitHub-Event", "push"),
            ("X-Hub-Signature-256", &signature),
        ],
        body,
    );
    assert_eq!(status, 400, "{answer}");
    assert_eq!(answer["error"]["code"], "bad_request", "{answer}");
    let message = answer["error"]["message"].as_str().unwrap();
    assert!(message.contains("X-GitHub-Delivery"), "{message}");
    assert_eq!(
        get_json(dir, "/api/runs")["total"].as_u64().unwrap(),
        before
    );
    // With its id, the same delivery runs.
    let (status, answer) = deliver(
        dir,
        "/hooks/push",
        &[
            ("X-GitHub-Event", "push"),
            ("X-GitHub-Delivery", "with-an-id"),
            ("X-Hub-Signature-256", &signature),
        ],
        body,
    );
    assert_eq!(status, 202, "{answer}");
}

#[test]
fn a_missing_trigger_secret_is_not_named_to_the_sender() {
    const VARIABLE: &str = "CONNECTIONS_TEST_UNSET_HOOK_SECRET";
    let project = project(&[
        ("workflows/build.yaml", BUILD),
        (
            "triggers/broken.yaml",
            &format!(
                "name: Broken\npath: /hooks/broken\nworkflow: wf_build\nsecret: env:{VARIABLE}\n"
            ),
        ),
    ]);
    let dir = project.path();
    let _server = Server::start(dir);
    let body = br#"{"ref": "refs/heads/main"}"#;
    let reply = Api::of_project(dir).post_with(
        "/hooks/broken",
        &[
            ("X-GitHub-Event", "push"),
            ("X-GitHub-Delivery", "d-1"),
            ("X-Hub-Signature-256", "sha256=00"),
        ],
        &body[..],
    );
    assert_eq!(reply.status, 503);
    let text = reply.text;
    assert!(!text.contains(VARIABLE), "{text}");
    let answer: Value = serde_json::from_str(&text).unwrap();
    assert_eq!(answer["error"]["code"], "unavailable", "{answer}");
    let message = answer["error"]["message"].as_str().unwrap();
    assert!(
        message.contains("the trigger's secret is not available"),
        "{message}"
    );
    // The detail is for the operator: in the server's log.
    eventually("the secret's detail in logs/system.log", || {
        std::fs::read_to_string(dir.join("logs/system.log"))
            .ok()
            .filter(|log| log.contains(VARIABLE) && log.contains("trg_broken"))
    });
    let listed = get_json(dir, "/api/triggers/trg_broken/deliveries");
    assert!(!listed.to_string().contains(VARIABLE), "{listed}");
}

/// A workflow of `steps` steps that each run `true`.
fn chain(steps: usize) -> String {
    let mut text = String::from("name: Chain\nhistory_limit: 3\nsteps:\n");
    for index in 0..steps {
        text.push_str(&format!("  - name: s{index}\n    command: [\"true\"]\n"));
    }
    text
}

/// Steps of the large run: 10,000 in a release build; in a debug build (where a step costs
/// several times more) 3,000, so the test stays near half a minute.
const CHAIN_STEPS: usize = if cfg!(debug_assertions) {
    3_000
} else {
    10_000
};

/// Raises this process's soft limit on open files to at least `files` (within the hard
/// limit): the sockets of the test, and of the server it starts, which inherits it.
fn open_files_at_least(files: u64) {
    use nix::sys::resource::{getrlimit, setrlimit, Resource};
    let (soft, hard) = getrlimit(Resource::RLIMIT_NOFILE).unwrap();
    if soft < files {
        assert!(
            hard >= files,
            "the open-files limit is {hard}; this test needs {files} (raise `ulimit -n`)"
        );
        setrlimit(Resource::RLIMIT_NOFILE, files, hard).unwrap();
    }
}

#[test]
fn memory_comes_back_after_a_large_run_and_thousands_of_websockets() {
    const SOCKETS: usize = 2_000;
    open_files_at_least(2 * SOCKETS as u64 + 1024);
    let project = project(&[("workflows/chain.yaml", &chain(CHAIN_STEPS))]);
    let dir = project.path();
    server_settings(dir, "  max_connections: 4096\n");
    let server = Server::start(dir);
    let pid = server.pid();
    let api = server.api();
    let address = server_address(dir);
    // Idle: after the first requests, so that lazily built state is there already.
    assert_eq!(api.get("/api/status").expect(200)["ready"], true);
    let idle = status_kib(pid, "VmRSS");
    let within = |what: &str| {
        eventually(
            &format!("resident memory within 2× of idle after {what}"),
            || {
                let now = status_kib(pid, "VmRSS");
                (now <= 2 * idle).then_some(now)
            },
        )
    };

    let accepted = api.post("/api/workflows/wf_chain/execute", "{}");
    assert_eq!(accepted.status, 202);
    let run = accepted.json(202)["run_id"].as_str().unwrap().to_owned();
    let finished = eventually_every(
        &format!("the {CHAIN_STEPS}-step run to finish"),
        Duration::from_secs(300),
        Duration::from_millis(200),
        || {
            let shown = api.get(&format!("/api/runs/{run}")).expect(200);
            let status = shown["run"]["status"]
                .as_str()
                .unwrap_or_default()
                .to_owned();
            (status != "queued" && status != "running").then_some(status)
        },
    );
    assert_eq!(finished, "succeeded");
    let after_run = within("the large run");

    // Thousands of WebSockets connect, each upgraded, and leave.
    let sockets: Vec<TcpStream> = (0..SOCKETS)
        .map(|_| {
            let mut socket = TcpStream::connect(&address).unwrap();
            write!(
                socket,
                "GET /ws HTTP/1.1\r\nHost: {address}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
            )
            .unwrap();
            socket
        })
        .collect();
    for socket in &sockets {
        socket.set_read_timeout(Some(DEADLINE)).unwrap();
        let mut line = String::new();
        BufReader::new(socket).read_line(&mut line).unwrap();
        assert!(line.starts_with("HTTP/1.1 101"), "{line}");
    }
    let open = status_kib(pid, "VmRSS");
    drop(sockets);
    let after_sockets = within("the WebSockets left");
    eprintln!(
        "resident memory: idle {:.1} MiB; after the {CHAIN_STEPS}-step run {:.1} MiB; {SOCKETS} WebSockets open {:.1} MiB; after they left {:.1} MiB; peak {:.1} MiB",
        mib(idle),
        mib(after_run),
        mib(open),
        mib(after_sockets),
        mib(status_kib(pid, "VmHWM"))
    );
}
