//! Step processes: argv (or an author's `sh -c` string), environment, working directory,
//! stdout and stderr appended to the step's log as they happen, each process in a process
//! group of its own so a timeout or a cancel stops everything it started. A process is
//! reaped with `wait4`, so the CPU time and peak memory it and the descendants it waited
//! for used are known ([`ResourceUsage`]) and added up on its step's [`StepControl`].

use std::fs::File;
use std::io::{Read, Write};
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use nix::sys::signal::{killpg, Signal};
use nix::unistd::Pid;
use wait4::Wait4;

/// How long a process group has between SIGTERM and SIGKILL.
pub const KILL_GRACE: Duration = Duration::from_secs(3);

/// Why a step was stopped from outside.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StopReason {
    /// Its time ran out.
    Timeout,
    /// The run was cancelled.
    Cancel,
}

/// Shared between a step's worker and the run's executor: the process group running now,
/// and whether the step has been told to stop.
#[derive(Debug, Default)]
pub struct StepControl {
    state: Mutex<ControlState>,
}

#[derive(Debug, Default)]
struct ControlState {
    pgid: Option<i32>,
    stop: Option<StopReason>,
    usage: Option<ResourceUsage>,
}

/// What processes used, from the kernel's accounting of a reaped child (`wait4`): its own
/// use plus that of the descendants it waited for.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct ResourceUsage {
    /// User plus system CPU time, in seconds.
    pub cpu_seconds: f64,
    /// Peak resident set size of the largest process, in bytes.
    pub max_rss_bytes: u64,
}

impl ResourceUsage {
    /// The use of two runs one after the other: CPU time adds up, the peak is the larger.
    pub fn combine(self, other: ResourceUsage) -> ResourceUsage {
        ResourceUsage {
            cpu_seconds: self.cpu_seconds + other.cpu_seconds,
            max_rss_bytes: self.max_rss_bytes.max(other.max_rss_bytes),
        }
    }
}

impl StepControl {
    /// A control with no process and no stop.
    pub fn new() -> Arc<StepControl> {
        Arc::new(StepControl::default())
    }

    /// Tells the step to stop: its process group gets SIGTERM now and SIGKILL after
    /// [`KILL_GRACE`] if it is still there. The first reason given is kept.
    pub fn stop(self: &Arc<Self>, reason: StopReason) {
        let pgid = {
            let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
            state.stop.get_or_insert(reason);
            state.pgid
        };
        if let Some(pgid) = pgid {
            signal_group(pgid, Signal::SIGTERM);
            let control = Arc::clone(self);
            std::thread::spawn(move || {
                std::thread::sleep(KILL_GRACE);
                if control.pgid() == Some(pgid) {
                    signal_group(pgid, Signal::SIGKILL);
                }
            });
        }
    }

    /// Forgets a timeout before the next attempt (a cancel stays).
    pub fn clear_timeout(&self) {
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        if state.stop == Some(StopReason::Timeout) {
            state.stop = None;
        }
    }

    /// Why the step was told to stop, if it was.
    pub fn stopped(&self) -> Option<StopReason> {
        self.state.lock().unwrap_or_else(|e| e.into_inner()).stop
    }

    /// The process group running now.
    pub fn pgid(&self) -> Option<i32> {
        self.state.lock().unwrap_or_else(|e| e.into_inner()).pgid
    }

    /// The resources used by the processes run under this control since the last call,
    /// and forgets them (called once per attempt); `None` when no process ran.
    pub fn take_usage(&self) -> Option<ResourceUsage> {
        self.state
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .usage
            .take()
    }

    fn add_usage(&self, usage: ResourceUsage) {
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        state.usage = Some(match state.usage {
            Some(before) => before.combine(usage),
            None => usage,
        });
    }

    fn set_pgid(&self, pgid: Option<i32>) -> Option<StopReason> {
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        state.pgid = pgid;
        state.stop
    }
}

/// Kills the process groups of step processes that belong to the given runs and outlived the
/// process that ran them (a server or CLI killed outright): every process whose environment
/// says `ORCHESTRATOR_RUN_ID=<one of the runs>` is found in `/proc` and its group killed.
/// This process and its own group are never touched. Returns how many groups were killed.
pub fn kill_orphaned_steps(run_ids: &std::collections::BTreeSet<String>) -> usize {
    if run_ids.is_empty() {
        return 0;
    }
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return 0;
    };
    let own_pid = std::process::id() as i32;
    let own_group = nix::unistd::getpgrp().as_raw();
    let mut groups = std::collections::BTreeSet::new();
    for entry in entries.flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|n| n.parse::<i32>().ok())
        else {
            continue;
        };
        if pid == own_pid {
            continue;
        }
        // Unreadable (another user's, or gone already): not ours to stop.
        let Ok(environ) = std::fs::read(entry.path().join("environ")) else {
            continue;
        };
        let belongs = environ.split(|byte| *byte == 0).any(|variable| {
            variable
                .strip_prefix(b"ORCHESTRATOR_RUN_ID=")
                .and_then(|id| std::str::from_utf8(id).ok())
                .is_some_and(|id| run_ids.contains(id))
        });
        if !belongs {
            continue;
        }
        if let Ok(group) = nix::unistd::getpgid(Some(Pid::from_raw(pid))) {
            if group.as_raw() != own_group {
                groups.insert(group.as_raw());
            }
        }
    }
    for group in &groups {
        signal_group(*group, Signal::SIGKILL);
    }
    groups.len()
}

/// Sends a signal to a process group; a group that is gone already is not an error.
pub fn signal_group(pgid: i32, signal: Signal) {
    if pgid > 1 {
        let _ = killpg(Pid::from_raw(pgid), signal);
    }
}

/// What to run.
#[derive(Debug, Clone, Default)]
pub struct ProcessSpec {
    /// Program and arguments. A single-element command given as a string by the manifest
    /// author is passed as `["sh", "-c", text]` by the caller.
    pub argv: Vec<String>,
    /// Extra environment variables.
    pub env: Vec<(String, String)>,
    /// Working directory.
    pub cwd: PathBuf,
    /// Bytes written to stdin (then closed); stdin is empty otherwise.
    pub stdin: Option<Vec<u8>>,
    /// Capture stdout (up to [`MAX_CAPTURE`]) instead of writing it to the log.
    pub capture_stdout: bool,
}

/// The most stdout a captured process may produce.
pub const MAX_CAPTURE: usize = 4 << 20;

/// How a process ended.
#[derive(Debug, Clone, Default)]
pub struct ProcessResult {
    /// Exit code, when it exited.
    pub exit_code: Option<i32>,
    /// The signal that ended it, when one did.
    pub signal: Option<i32>,
    /// Captured stdout (with `capture_stdout`).
    pub stdout: Vec<u8>,
    /// Set when the step was told to stop while this ran.
    pub stopped: Option<StopReason>,
    /// Wall time.
    pub duration: Duration,
    /// CPU time and peak memory of the process and the descendants it waited for (`None`
    /// when it did not start).
    pub usage: Option<ResourceUsage>,
}

impl ProcessResult {
    /// Exited with status 0 and was not stopped.
    pub fn success(&self) -> bool {
        self.exit_code == Some(0) && self.stopped.is_none()
    }

    /// "exit code 3", "killed by signal 9".
    pub fn describe(&self) -> String {
        match (self.exit_code, self.signal) {
            (Some(code), _) => format!("exit code {code}"),
            (None, Some(signal)) => format!("killed by signal {signal}"),
            _ => "ended without a status".to_owned(),
        }
    }
}

/// Runs a process to its end, appending its output to `log`. The process gets its own
/// process group, registered in `control` while it runs; whatever is left of the group when
/// the process exits is killed, so nothing it started outlives the step.
pub fn run_process(
    spec: &ProcessSpec,
    log: &File,
    control: &StepControl,
) -> std::io::Result<ProcessResult> {
    let Some((program, args)) = spec.argv.split_first() else {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            "empty command",
        ));
    };
    if let Some(reason) = control.stopped() {
        return Ok(ProcessResult {
            stopped: Some(reason),
            ..ProcessResult::default()
        });
    }
    let mut command = Command::new(program);
    command
        .args(args)
        .envs(spec.env.iter().map(|(k, v)| (k, v)))
        .current_dir(&spec.cwd)
        .process_group(0)
        .stdin(if spec.stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(if spec.capture_stdout {
            Stdio::piped()
        } else {
            Stdio::from(log.try_clone()?)
        })
        .stderr(Stdio::from(log.try_clone()?));
    let started = Instant::now();
    let mut child = command.spawn().map_err(|err| {
        std::io::Error::new(err.kind(), format!("cannot start `{program}`: {err}"))
    })?;
    let pgid = child.id() as i32;
    if let Some(reason) = control.set_pgid(Some(pgid)) {
        // Told to stop between the check above and the spawn.
        signal_group(pgid, Signal::SIGKILL);
        let _ = reason;
    }
    let writer = match (spec.stdin.clone(), child.stdin.take()) {
        (Some(bytes), Some(mut stdin)) => Some(std::thread::spawn(move || {
            let _ = stdin.write_all(&bytes);
        })),
        _ => None,
    };
    let mut stdout = Vec::new();
    if let Some(pipe) = child.stdout.take() {
        pipe.take(MAX_CAPTURE as u64).read_to_end(&mut stdout)?;
    }
    // A blocking wait: a stop signals the process group from another thread, which ends
    // the wait. `wait4` reaps the child and reads what it used.
    let reaped = loop {
        match child.wait4() {
            Err(err) if err.kind() == std::io::ErrorKind::Interrupted => continue,
            other => break other?,
        }
    };
    let status = reaped.status;
    let usage = ResourceUsage {
        cpu_seconds: (reaped.rusage.utime + reaped.rusage.stime).as_secs_f64(),
        max_rss_bytes: reaped.rusage.maxrss,
    };
    control.add_usage(usage);
    if let Some(writer) = writer {
        let _ = writer.join();
    }
    signal_group(pgid, Signal::SIGKILL);
    let stopped = control.set_pgid(None);
    Ok(ProcessResult {
        exit_code: status.code(),
        signal: status.signal(),
        stdout,
        stopped,
        duration: started.elapsed(),
        usage: Some(usage),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn log() -> (tempfile::TempDir, File) {
        let dir = tempfile::tempdir().unwrap();
        let file = File::create(dir.path().join("step.log")).unwrap();
        (dir, file)
    }

    #[test]
    fn output_goes_to_the_log_and_the_exit_code_is_kept() {
        let (dir, file) = log();
        let spec = ProcessSpec {
            argv: vec![
                "sh".into(),
                "-c".into(),
                "echo out; echo err >&2; exit 3".into(),
            ],
            cwd: dir.path().to_owned(),
            ..ProcessSpec::default()
        };
        let result = run_process(&spec, &file, &StepControl::default()).unwrap();
        assert_eq!(result.exit_code, Some(3));
        let text = std::fs::read_to_string(dir.path().join("step.log")).unwrap();
        assert_eq!(text, "out\nerr\n");
    }

    #[test]
    fn usage_counts_cpu_and_peak_memory_of_the_process_and_what_it_waited_for() {
        let (dir, file) = log();
        // The shell forks python and waits for it: python's use is counted through it.
        let spec = ProcessSpec {
            argv: vec![
                "sh".into(),
                "-c".into(),
                "python3 -c 'x = bytearray(60_000_000); s = sum(range(3_000_000))'; true".into(),
            ],
            cwd: dir.path().to_owned(),
            ..ProcessSpec::default()
        };
        let control = StepControl::new();
        let result = run_process(&spec, &file, &control).unwrap();
        assert!(result.success(), "{}", result.describe());
        let usage = result.usage.unwrap();
        assert!(usage.max_rss_bytes >= 60_000_000, "{usage:?}");
        assert!(usage.cpu_seconds > 0.0, "{usage:?}");
        // A second process under the same control: CPU adds up, the peak stays the largest.
        let small = ProcessSpec {
            argv: vec!["true".into()],
            cwd: dir.path().to_owned(),
            ..ProcessSpec::default()
        };
        let second = run_process(&small, &file, &control).unwrap().usage.unwrap();
        assert!(second.max_rss_bytes < 60_000_000, "{second:?}");
        let total = control.take_usage().unwrap();
        assert_eq!(total.max_rss_bytes, usage.max_rss_bytes);
        assert!((total.cpu_seconds - usage.cpu_seconds - second.cpu_seconds).abs() < 1e-9);
        assert_eq!(control.take_usage(), None, "taken once");
    }

    #[test]
    fn a_stop_kills_the_whole_group() {
        let (dir, file) = log();
        let marker = dir.path().join("child.pid");
        let spec = ProcessSpec {
            argv: vec![
                "sh".into(),
                "-c".into(),
                format!("sleep 100 & echo $! > {}; wait", marker.display()),
            ],
            cwd: dir.path().to_owned(),
            ..ProcessSpec::default()
        };
        let control = StepControl::new();
        let stopper = {
            let control = Arc::clone(&control);
            let marker = marker.clone();
            std::thread::spawn(move || {
                let deadline = Instant::now() + Duration::from_secs(10);
                while !marker.exists() || control.pgid().is_none() {
                    assert!(Instant::now() < deadline, "the step never started");
                    std::thread::sleep(Duration::from_millis(5));
                }
                control.stop(StopReason::Timeout);
            })
        };
        let result = run_process(&spec, &file, &control).unwrap();
        stopper.join().unwrap();
        assert_eq!(result.stopped, Some(StopReason::Timeout));
        assert!(result.duration < Duration::from_secs(10));
        assert!(result.usage.is_some(), "a killed process is measured too");
        let child: i32 = std::fs::read_to_string(&marker)
            .unwrap()
            .trim()
            .parse()
            .unwrap();
        // The background sleep is gone too (kill with signal 0 probes for existence).
        let deadline = Instant::now() + Duration::from_secs(5);
        while nix::sys::signal::kill(Pid::from_raw(child), None).is_ok() {
            assert!(Instant::now() < deadline, "grandchild {child} still alive");
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}
