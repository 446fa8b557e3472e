//! The one server harness: `orchestrator start` as a child process on port 0 in a temp
//! project, its output drained for its whole life, stopped with SIGTERM when dropped.

use std::io::{BufRead, BufReader, Read};
use std::path::Path;
use std::process::{Child, ExitStatus, Stdio};
use std::sync::{mpsc, Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use super::{command, poll_for, signal, Api, DEADLINE};

/// `orchestrator start --port 0` running in the foreground as a child; stopped with SIGTERM
/// when dropped.
pub(crate) struct Server {
    child: Option<Child>,
    pub(crate) address: String,
    stderr: Arc<Mutex<String>>,
    stdout: Option<JoinHandle<String>>,
}

impl Server {
    pub(crate) fn start(dir: &Path) -> Server {
        Server::start_with(dir, &[])
    }

    /// Starts the server with extra environment variables and waits for its
    /// `orchestrator listening on http://ADDR ...` line.
    pub(crate) fn start_with(dir: &Path, env: &[(&str, &str)]) -> Server {
        Server::start_args(dir, &["--port", "0"], env)
    }

    /// `orchestrator start ARGS` with extra environment variables; waits for its
    /// `orchestrator listening on http://ADDR ...` line.
    pub(crate) fn start_args(dir: &Path, args: &[&str], env: &[(&str, &str)]) -> Server {
        let mut child = command(dir)
            .arg("start")
            .args(args)
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start the server");
        // Both pipes are drained for the server's whole life, so it never blocks on them.
        let stderr = Arc::new(Mutex::new(String::new()));
        let mut pipe = child.stderr.take().unwrap();
        let sink = Arc::clone(&stderr);
        std::thread::spawn(move || {
            let mut buffer = [0u8; 4096];
            while let Ok(n @ 1..) = pipe.read(&mut buffer) {
                sink.lock()
                    .unwrap()
                    .push_str(&String::from_utf8_lossy(&buffer[..n]));
            }
        });
        let (first_line, heard) = mpsc::channel();
        let out = child.stdout.take().unwrap();
        let stdout = std::thread::spawn(move || {
            let mut reader = BufReader::new(out);
            let mut line = String::new();
            let _ = reader.read_line(&mut line);
            let _ = first_line.send(line);
            let mut rest = String::new();
            let _ = reader.read_to_string(&mut rest);
            rest
        });
        let mut server = Server {
            child: Some(child),
            address: String::new(),
            stderr,
            stdout: Some(stdout),
        };
        let line = heard.recv_timeout(DEADLINE).unwrap_or_default();
        let Some(address) = line
            .strip_prefix("orchestrator listening on http://")
            .and_then(|rest| rest.split_whitespace().next())
        else {
            panic!(
                "the server did not say where it listens; stdout: {line:?}\n--- stderr\n{}",
                server.stderr()
            );
        };
        server.address = address.to_owned();
        server
    }

    pub(crate) fn pid(&self) -> u32 {
        self.child.as_ref().expect("running").id()
    }

    /// SIGKILL, as a crash would, and reaps it (so that its PID is gone); returns its
    /// stderr.
    pub(crate) fn kill9(&mut self) -> String {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        self.stderr()
    }

    /// Everything the server wrote to stderr so far.
    pub(crate) fn stderr(&self) -> String {
        self.stderr.lock().unwrap().clone()
    }

    /// [`eventually_within`](super::eventually_within), naming the server's stderr when
    /// the wait fails.
    #[track_caller]
    pub(crate) fn eventually<T>(
        &self,
        what: &str,
        timeout: Duration,
        probe: impl FnMut() -> Option<T>,
    ) -> T {
        match poll_for(timeout, probe) {
            Some(value) => value,
            None => panic!(
                "timed out waiting for {what}; server stderr:\n{}",
                self.stderr()
            ),
        }
    }

    pub(crate) fn api(&self) -> Api {
        Api::new(&self.address, None)
    }

    /// SIGTERM, then waits for the exit; returns the status and the rest of stdout.
    pub(crate) fn stop(&mut self) -> (ExitStatus, String) {
        let mut child = self.child.take().expect("running");
        signal(child.id(), nix::sys::signal::Signal::SIGTERM);
        let Some(status) = poll_for(DEADLINE, || child.try_wait().expect("wait")) else {
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "the server did not stop within {DEADLINE:?} of SIGTERM\n--- stderr\n{}",
                self.stderr()
            );
        };
        let stdout = self.stdout.take().unwrap().join().unwrap_or_default();
        (status, stdout)
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let Some(mut child) = self.child.take() else {
            return;
        };
        signal(child.id(), nix::sys::signal::Signal::SIGTERM);
        // Best effort: killed once it is gone or the wait is over.
        let _ = poll_for(Duration::from_secs(10), || {
            (!matches!(child.try_wait(), Ok(None))).then_some(())
        });
        let _ = child.kill();
        let _ = child.wait();
    }
}
