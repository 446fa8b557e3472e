//! Workers' parts: a real `nats-server -js` on a loopback port with its own store
//! directory ([`Nats`]), `orchestrator worker` processes ([`WorkerProcess`]), and a
//! project configured for them ([`distributed_project`]). Each is stopped (SIGKILL for
//! nats-server and workers, whose steps die with their process group) when dropped.

use std::io::Read;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use nix::sys::signal::Signal;

use super::{command, poll_for, project, signal, DEADLINE};

/// The lease the tests' controllers and workers use.
pub(crate) const TEST_LEASE: &str = "2s";

/// A `nats-server -js` of its own: a free loopback port, a temp store directory.
pub(crate) struct Nats {
    child: Option<Child>,
    pub(crate) port: u16,
    store: tempfile::TempDir,
    token: Option<String>,
    /// `--tls --tlscert CERT --tlskey KEY` when set.
    tls: Option<(PathBuf, PathBuf)>,
}

impl Nats {
    /// Starts one and waits until it accepts connections.
    pub(crate) fn start() -> Nats {
        Nats::start_with_token(None)
    }

    /// Starts one that requires `token`.
    pub(crate) fn start_with_token(token: Option<&str>) -> Nats {
        Nats::start_as(token, None)
    }

    /// Starts one that speaks only TLS, with this certificate and key.
    pub(crate) fn start_tls(cert: &Path, key: &Path) -> Nats {
        Nats::start_as(None, Some((cert.to_path_buf(), key.to_path_buf())))
    }

    fn start_as(token: Option<&str>, tls: Option<(PathBuf, PathBuf)>) -> Nats {
        let port = {
            let listener = TcpListener::bind("127.0.0.1:0").expect("a free port");
            listener.local_addr().unwrap().port()
        };
        let mut nats = Nats {
            child: None,
            port,
            store: tempfile::tempdir().expect("temp dir"),
            token: token.map(str::to_owned),
            tls,
        };
        nats.spawn();
        nats
    }

    fn spawn(&mut self) {
        let mut command = Command::new("nats-server");
        command
            .args([
                "-js",
                "-a",
                "127.0.0.1",
                "-p",
                &self.port.to_string(),
                "-sd",
            ])
            .arg(self.store.path())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        if let Some(token) = &self.token {
            command.args(["--auth", token]);
        }
        if let Some((cert, key)) = &self.tls {
            command
                .arg("--tls")
                .arg("--tlscert")
                .arg(cert)
                .arg("--tlskey")
                .arg(key);
        }
        self.child = Some(command.spawn().expect(
            "start nats-server (Debian: apt-get install nats-server; ./scripts/test installs it)",
        ));
        let port = self.port;
        poll_for(DEADLINE, || {
            std::net::TcpStream::connect(("127.0.0.1", port))
                .ok()
                .map(drop)
        })
        .expect("nats-server accepts connections");
    }

    /// `nats://127.0.0.1:PORT`.
    pub(crate) fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    /// Kills it (SIGKILL) and starts it again on the same port and store.
    pub(crate) fn restart(&mut self) {
        self.kill();
        self.spawn();
    }

    /// Kills it, leaving it down.
    pub(crate) fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for Nats {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A CA and a server certificate for 127.0.0.1 signed by it, made with the openssl
/// command line in `dir`: (ca.pem, server.pem, server.key).
pub(crate) fn tls_files(dir: &Path) -> (PathBuf, PathBuf, PathBuf) {
    let run = |args: &[&str]| {
        let output = Command::new("openssl")
            .args(args)
            .current_dir(dir)
            .output()
            .expect("run openssl");
        assert!(
            output.status.success(),
            "openssl {args:?}: {}",
            String::from_utf8_lossy(&output.stderr)
        );
    };
    run(&[
        "req",
        "-x509",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-days",
        "2",
        "-subj",
        "/CN=test-ca",
        "-keyout",
        "ca.key",
        "-out",
        "ca.pem",
    ]);
    run(&[
        "req",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-subj",
        "/CN=127.0.0.1",
        "-keyout",
        "server.key",
        "-out",
        "server.csr",
    ]);
    std::fs::write(
        dir.join("san.ext"),
        "subjectAltName=IP:127.0.0.1\nbasicConstraints=CA:FALSE\n",
    )
    .unwrap();
    run(&[
        "x509",
        "-req",
        "-in",
        "server.csr",
        "-CA",
        "ca.pem",
        "-CAkey",
        "ca.key",
        "-CAcreateserial",
        "-days",
        "2",
        "-extfile",
        "san.ext",
        "-out",
        "server.pem",
    ]);
    (
        dir.join("ca.pem"),
        dir.join("server.pem"),
        dir.join("server.key"),
    )
}

/// An `init`ed project whose controller uses `nats` with the tests' lease, with extra
/// files.
pub(crate) fn distributed_project(nats: &Nats, files: &[(&str, &str)]) -> tempfile::TempDir {
    distributed_project_with(nats, "", files)
}

/// [`distributed_project`] with `extra` settings of `distributed:` (YAML lines indented
/// by two spaces); a `lease:` among them replaces the tests' lease.
pub(crate) fn distributed_project_with(
    nats: &Nats,
    extra: &str,
    files: &[(&str, &str)],
) -> tempfile::TempDir {
    let project = project(files);
    let lease = if extra.contains("  lease:") {
        String::new()
    } else {
        format!("  lease: {TEST_LEASE}\n")
    };
    append_config(
        project.path(),
        &format!(
            "distributed:\n  nats:\n    url: {}\n{lease}{extra}",
            nats.url()
        ),
    );
    project
}

/// Appends YAML to the development configuration.
pub(crate) fn append_config(dir: &Path, yaml: &str) {
    let path = dir.join("config/development.yaml");
    let mut text = std::fs::read_to_string(&path).unwrap();
    text.push_str(yaml);
    std::fs::write(path, text).unwrap();
}

/// `orchestrator worker` as a child; SIGKILLed when dropped.
pub(crate) struct WorkerProcess {
    child: Option<Child>,
    pub(crate) name: String,
    pub(crate) work_dir: PathBuf,
    _work: tempfile::TempDir,
    stderr: Arc<Mutex<String>>,
    project: PathBuf,
    args: Vec<String>,
}

impl WorkerProcess {
    /// Starts a worker from `dir` (whose configuration names the NATS server) and waits
    /// until it is connected.
    pub(crate) fn start(dir: &Path, name: &str, labels: &str, slots: u32) -> WorkerProcess {
        WorkerProcess::start_with(dir, name, labels, slots, &[])
    }

    /// [`WorkerProcess::start`] with extra arguments; a `--lease` among them replaces the
    /// tests' lease.
    pub(crate) fn start_with(
        dir: &Path,
        name: &str,
        labels: &str,
        slots: u32,
        extra: &[&str],
    ) -> WorkerProcess {
        let work = tempfile::tempdir().expect("temp dir");
        let mut args: Vec<String> = ["worker", "--name", name, "--labels", labels, "--slots"]
            .iter()
            .map(|a| (*a).to_owned())
            .collect();
        args.push(slots.to_string());
        args.push("--work-dir".into());
        args.push(work.path().display().to_string());
        if !extra.contains(&"--lease") {
            args.extend(["--lease".to_owned(), TEST_LEASE.to_owned()]);
        }
        args.extend(extra.iter().map(|a| (*a).to_owned()));
        let mut worker = WorkerProcess {
            child: None,
            name: name.to_owned(),
            work_dir: work.path().to_path_buf(),
            _work: work,
            stderr: Arc::new(Mutex::new(String::new())),
            project: dir.to_path_buf(),
            args,
        };
        worker.spawn();
        worker
    }

    /// Starts it again (after it exited or was killed) with the same name, labels and
    /// work directory; its stderr starts afresh.
    pub(crate) fn restart(&mut self) {
        self.kill9();
        self.stderr = Arc::new(Mutex::new(String::new()));
        self.spawn();
    }

    fn spawn(&mut self) {
        let mut child = command(&self.project)
            .args(&self.args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start a worker");
        let mut pipe = child.stderr.take().unwrap();
        let sink = Arc::clone(&self.stderr);
        std::thread::spawn(move || {
            let mut buffer = [0u8; 4096];
            while let Ok(n @ 1..) = pipe.read(&mut buffer) {
                sink.lock()
                    .unwrap()
                    .push_str(&String::from_utf8_lossy(&buffer[..n]));
            }
        });
        self.child = Some(child);
        let connected = poll_for(DEADLINE, || {
            self.stderr().contains(" connected to ").then_some(())
        });
        assert!(
            connected.is_some(),
            "worker {} did not connect:\n{}",
            self.name,
            self.stderr()
        );
    }

    pub(crate) fn pid(&self) -> u32 {
        self.child.as_ref().expect("running").id()
    }

    /// Everything it wrote to stderr so far.
    pub(crate) fn stderr(&self) -> String {
        self.stderr.lock().unwrap().clone()
    }

    /// Sends it a signal.
    pub(crate) fn signal(&self, sig: Signal) {
        signal(self.pid(), sig);
    }

    /// Waits for it to exit on its own; its exit code.
    pub(crate) fn wait_exit(&mut self, timeout: Duration) -> Option<i32> {
        let child = self.child.as_mut()?;
        let status = poll_for(timeout, || child.try_wait().expect("wait"))?;
        self.child = None;
        Some(status.code().unwrap_or(-1))
    }

    /// SIGKILL, and waits for it.
    pub(crate) fn kill9(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for WorkerProcess {
    fn drop(&mut self) {
        self.kill9();
    }
}
