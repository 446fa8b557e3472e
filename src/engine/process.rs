//! Step processes: argv (or an author's `sh -c` string), a clean environment, working
//! directory, stdout and stderr read from one pipe and appended to the step's log as they
//! happen (masked and capped by [`StepLog`]), each process in a process group of its own so
//! a timeout or a cancel stops everything it started. A process is reaped with `wait4`, so
//! the CPU time and peak memory it and the descendants it waited for used are known
//! ([`ResourceUsage`]) and added up on its step's [`StepControl`].
//!
//! No step descendant outlives its step. The process running steps is a child subreaper
//! ([`become_subreaper`]), so descendants whose parent exits re-parent to it rather than to
//! PID 1, and each step process carries `ORCHESTRATOR_STEP_COOKIE` in its environment,
//! which everything it starts inherits (`setsid` or not). When the process ends — success,
//! failure, timeout or cancel — every process carrying the cookie gets SIGTERM, then
//! SIGKILL after [`KILL_GRACE`], and the count is kept on the [`StepControl`].
//!
//! Reaping. Orphans re-parented to this process become its zombies when they end. Only
//! zombies that nobody in this process waits for are reaped: the pids of processes whose
//! starter waits for them (step processes, agent health checks) are registered in
//! [`spawn_awaited`] under the same lock the reaper holds, from before they can end until
//! their starter has reaped them, and the reaper takes only unregistered zombie children.

use std::collections::BTreeSet;
use std::ffi::{OsStr, OsString};
use std::io::{Read, Write};
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use nix::sys::signal::{kill, killpg, Signal};
use nix::sys::wait::{waitpid, WaitPidFlag};
use nix::unistd::Pid;
use wait4::Wait4;

use super::mask::StepLog;
use super::threads::STEP_THREADS;

/// How long a process group has between SIGTERM and SIGKILL.
pub const KILL_GRACE: Duration = Duration::from_secs(3);

/// The variable that marks every process a step started, and their descendants.
pub const COOKIE_VARIABLE: &str = "ORCHESTRATOR_STEP_COOKIE";

/// Variables a step inherits from the environment of the process that runs it; everything
/// else it gets is set by the engine or declared by the manifest.
pub const INHERITED_VARIABLES: &[&str] = &["PATH", "HOME", "LANG", "TZ", "TMPDIR", "USER"];

/// Whether a variable of this process's environment reaches steps: [`INHERITED_VARIABLES`]
/// and the locale's `LC_*`.
pub fn is_inherited(name: &str) -> bool {
    INHERITED_VARIABLES.contains(&name) || name.starts_with("LC_")
}

/// Makes this process a child subreaper (`PR_SET_CHILD_SUBREAPER`): descendants of its
/// steps whose parent exits re-parent to it, where the end of their step finds and stops
/// them, instead of to PID 1. Called where the engine runs: the server and local
/// `workflow execute`.
pub fn become_subreaper() {
    if let Err(err) = nix::sys::prctl::set_child_subreaper(true) {
        tracing::warn!("cannot become a child subreaper ({err}): a step's descendants that leave its session are still stopped at its end, but may re-parent to PID 1 as zombies");
    }
}

/// The pids whose starter in this process waits for them; the reaper leaves them alone.
static AWAITED: Mutex<BTreeSet<i32>> = Mutex::new(BTreeSet::new());

fn awaited() -> std::sync::MutexGuard<'static, BTreeSet<i32>> {
    AWAITED.lock().unwrap_or_else(|e| e.into_inner())
}

/// Spawns a process its caller will wait for, registered so that the orphan reaper never
/// reaps it first; call [`forget_awaited`] once it is reaped.
pub fn spawn_awaited(command: &mut Command) -> std::io::Result<Child> {
    let mut registry = awaited();
    let child = command.spawn()?;
    registry.insert(child.id() as i32);
    Ok(child)
}

/// Where `execvp` would find `program` in the child's `PATH` (`cwd` for relative entries),
/// or `None` for a program given as a path, or not found (the spawn then reports it).
///
/// Resolved here because the standard library forks (copying this process's page tables)
/// instead of using `posix_spawn` when a command sets `PATH` and names its program
/// without a path; with the path resolved, a step costs a `vfork`-like spawn and no
/// failed `execve` per `PATH` entry.
pub fn resolve_program(program: &str, path: Option<&OsStr>, cwd: &Path) -> Option<PathBuf> {
    if program.is_empty() || program.contains('/') {
        return None;
    }
    // POSIX leaves an unset PATH to the implementation; glibc's execvp uses this one.
    let path = path.unwrap_or_else(|| OsStr::new("/bin:/usr/bin"));
    std::env::split_paths(path).find_map(|dir| {
        let dir = if dir.as_os_str().is_empty() {
            cwd.to_owned()
        } else {
            cwd.join(dir)
        };
        let candidate = dir.join(program);
        let metadata = std::fs::metadata(&candidate).ok()?;
        (metadata.is_file()
            && nix::unistd::access(&candidate, nix::unistd::AccessFlags::X_OK).is_ok())
        .then_some(candidate)
    })
}

/// `ENOEXEC`: the file is neither a known binary format nor a `#!` script.
fn is_not_executable_format(err: &std::io::Error) -> bool {
    err.raw_os_error() == Some(nix::libc::ENOEXEC)
}

/// Ends the registration of [`spawn_awaited`] (after the process was reaped).
pub fn forget_awaited(pid: u32) {
    awaited().remove(&(pid as i32));
}

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
    leftovers: u32,
}

/// What processes used, from the kernel's accounting of a reaped child (`wait4`): its own
/// use plus that of the descendants it waited for.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct ResourceUsage {
    /// User plus system CPU time, in seconds.
    pub cpu_seconds: f64,
    /// Peak resident set size of the largest process, in bytes. A process is spawned
    /// without copying this one (`posix_spawn`, which shares its memory until the exec), and
    /// the kernel counts what that memory held at the exec into the new process's peak: a
    /// step that stays below this process's own peak is counted at that peak.
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
    /// [`KILL_GRACE`] if it is still there. The first reason given is kept. Descendants
    /// that left the group are stopped when the step's process has ended.
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

    /// How many descendants outlived the processes run under this control since the last
    /// call and were stopped, and forgets the count (called once per attempt).
    pub fn take_leftovers(&self) -> u32 {
        std::mem::take(
            &mut self
                .state
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .leftovers,
        )
    }

    fn add_usage(&self, usage: ResourceUsage, leftovers: u32) {
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        state.usage = Some(match state.usage {
            Some(before) => before.combine(usage),
            None => usage,
        });
        state.leftovers += leftovers;
    }

    fn set_pgid(&self, pgid: Option<i32>) -> Option<StopReason> {
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        state.pgid = pgid;
        state.stop
    }
}

/// Kills the process groups of step processes that belong to the given runs and outlived the
/// process that ran them (a server or CLI killed outright): every process whose environment
/// says `ORCHESTRATOR_RUN_ID=<one of the runs>` is found in `/proc` and its group killed (a
/// descendant that called `setsid` has a group of its own, found the same way). This
/// process and its own group are never touched. Returns how many groups were killed.
pub fn kill_orphaned_steps(run_ids: &BTreeSet<String>) -> usize {
    if run_ids.is_empty() {
        return 0;
    }
    kill_groups_where(|environ| {
        environ.split(|byte| *byte == 0).any(|variable| {
            variable
                .strip_prefix(b"ORCHESTRATOR_RUN_ID=")
                .and_then(|id| std::str::from_utf8(id).ok())
                .is_some_and(|id| run_ids.contains(id))
        })
    })
}

/// Kills the process groups of processes whose environment holds `name=value` exactly
/// (a worker's steps left running by its previous incarnation, which a kill -9 ended),
/// as [`kill_orphaned_steps`] does for runs. Returns how many groups were killed.
pub fn kill_marked_steps(name: &str, value: &str) -> usize {
    let entry = format!("{name}={value}").into_bytes();
    kill_groups_where(|environ| has_cookie(environ, &entry))
}

/// [`kill_orphaned_steps`] for some steps only, as `(run id, step name)` (their
/// `ORCHESTRATOR_RUN_ID` and `ORCHESTRATOR_STEP`): a resumed run's steps that ran on this
/// machine, while its steps on workers (which may share the machine) go on.
pub fn kill_orphaned_step_processes(steps: &BTreeSet<(String, String)>) -> usize {
    if steps.is_empty() {
        return 0;
    }
    kill_groups_where(|environ| {
        let variable = |name: &[u8]| {
            environ
                .split(|byte| *byte == 0)
                .find_map(|variable| variable.strip_prefix(name))
                .and_then(|value| std::str::from_utf8(value).ok())
        };
        variable(b"ORCHESTRATOR_RUN_ID=")
            .zip(variable(b"ORCHESTRATOR_STEP="))
            .is_some_and(|(run, step)| steps.contains(&(run.to_owned(), step.to_owned())))
    })
}

fn kill_groups_where(belongs: impl Fn(&[u8]) -> bool) -> usize {
    let own_group = nix::unistd::getpgrp().as_raw();
    let mut groups = BTreeSet::new();
    for (pid, environ) in environments() {
        if !belongs(&environ) {
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
    reap_orphans();
    groups.len()
}

/// Every other process's pid and environment block, as far as they can be read (another
/// user's processes and zombies cannot: not ours to stop, or ended already).
fn environments() -> impl Iterator<Item = (i32, Vec<u8>)> {
    let own_pid = std::process::id() as i32;
    std::fs::read_dir("/proc")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(move |entry| {
            let pid = entry.file_name().to_str()?.parse::<i32>().ok()?;
            if pid == own_pid {
                return None;
            }
            let environ = std::fs::read(entry.path().join("environ")).ok()?;
            Some((pid, environ))
        })
}

fn has_cookie(environ: &[u8], entry: &[u8]) -> bool {
    environ.split(|byte| *byte == 0).any(|v| v == entry)
}

/// Whether a live process carries the cookie (`COOKIE=value` as bytes); a zombie's
/// environment reads empty, so an ended process does not.
fn carries(pid: i32, entry: &[u8]) -> bool {
    std::fs::read(format!("/proc/{pid}/environ")).is_ok_and(|environ| has_cookie(&environ, entry))
}

/// The children of this process's main thread, where the kernel re-parents orphans to a
/// subreaper; `None` when the kernel does not say (no `/proc/<pid>/task/<tid>/children`).
fn main_thread_children() -> Option<Vec<i32>> {
    let pid = std::process::id();
    let text = std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/children")).ok()?;
    Some(
        text.split_whitespace()
            .filter_map(|p| p.parse().ok())
            .collect(),
    )
}

/// Whether a process has ended and waits to be reaped.
fn is_zombie(pid: i32) -> bool {
    let state = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok();
    // The state follows the command name, which is in parentheses and may hold any
    // character: read after the last `)`.
    state
        .as_deref()
        .and_then(|s| s.rsplit_once(')'))
        .is_some_and(|(_, rest)| rest.trim_start().starts_with('Z'))
}

/// Reaps the zombie children of this process that nobody here waits for (orphans of steps
/// re-parented to it). Returns whether any child not waited for is left.
fn reap_orphans() -> bool {
    let registry = awaited();
    let Some(children) = main_thread_children() else {
        return true;
    };
    let mut left = false;
    for pid in children.into_iter().filter(|p| !registry.contains(p)) {
        if is_zombie(pid) {
            let _ = waitpid(Pid::from_raw(pid), Some(WaitPidFlag::WNOHANG));
        } else {
            left = true;
        }
    }
    left
}

/// Stops every process carrying `cookie` and whatever is left in the step's process group:
/// SIGTERM, up to [`KILL_GRACE`] to end, then SIGKILL; reaps the orphans among them.
/// Returns how many processes carried the cookie and outlived the step. When the step was
/// stopped (`group_stopped`: a cancel or a timeout signalled its whole group), members of
/// that group still on their way out are stopped but not counted: they did not outlive
/// the stop, they are ending by it; what left the group (`setsid`) is counted.
///
/// A full `/proc` scan is made only when something may be left: the step's group still has
/// members, or this process has children nobody waits for (where orphans re-parent).
fn stop_leftovers(cookie: &str, pgid: i32, group_stopped: bool) -> u32 {
    let group_alive = || pgid > 1 && killpg(Pid::from_raw(pgid), None).is_ok();
    // Without the subreaper attribute, orphans re-parent elsewhere and leave no trace here.
    let subreaper = nix::sys::prctl::get_child_subreaper().unwrap_or(false);
    if subreaper && !group_alive() && !reap_orphans() {
        return 0;
    }
    let entry = format!("{COOKIE_VARIABLE}={cookie}").into_bytes();
    // The cookie's carriers, and the live members of the step's group: a process caught in
    // the middle of an `execve` shows an empty environment for that instant, but not
    // another group (a zombie's environment reads empty too, and it outlived nothing).
    let in_group = |pid: i32| {
        pgid > 1 && nix::unistd::getpgid(Some(Pid::from_raw(pid))).is_ok_and(|g| g.as_raw() == pgid)
    };
    let found: Vec<i32> = environments()
        .filter(|(pid, environ)| {
            has_cookie(environ, &entry) || (in_group(*pid) && !is_zombie(*pid))
        })
        .map(|(pid, _)| pid)
        .collect();
    let outlived = found
        .iter()
        .filter(|pid| !(group_stopped && in_group(**pid)))
        .count() as u32;
    for pid in &found {
        let _ = kill(Pid::from_raw(*pid), Signal::SIGTERM);
    }
    signal_group(pgid, Signal::SIGTERM);
    let deadline = Instant::now() + KILL_GRACE;
    loop {
        reap_orphans();
        let alive: Vec<i32> = found
            .iter()
            .copied()
            .filter(|pid| carries(*pid, &entry))
            .collect();
        if alive.is_empty() && !group_alive() {
            break;
        }
        if Instant::now() >= deadline {
            for pid in alive {
                let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
            }
            signal_group(pgid, Signal::SIGKILL);
            break;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    // Killed processes end asynchronously; reap those that re-parented here once they have.
    // Any still on their way are reaped at the next step's end.
    let until = Instant::now() + Duration::from_secs(1);
    while found.iter().any(|pid| carries(*pid, &entry)) && Instant::now() < until {
        std::thread::sleep(Duration::from_millis(5));
    }
    reap_orphans();
    outlived
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
    /// The whole environment besides [`INHERITED_VARIABLES`]: nothing else of this
    /// process's environment reaches the process.
    pub env: Vec<(String, String)>,
    /// Working directory.
    pub cwd: PathBuf,
    /// Bytes written to stdin (then closed); stdin is empty otherwise.
    pub stdin: Option<Vec<u8>>,
    /// Capture stdout (up to [`MAX_CAPTURE`]) instead of writing it to the log.
    pub capture_stdout: bool,
    /// What the process's cookie starts with (`<run>/<step>`); a random part is added.
    pub cookie_prefix: String,
}

/// The most stdout a captured process may produce.
pub const MAX_CAPTURE: usize = 4 << 20;

/// How long the log's reader may still take after the process and its descendants ended
/// (a process that escaped the cookie may hold the pipe open; it is left draining).
const READER_GRACE: Duration = Duration::from_secs(2);

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
    /// Descendants that outlived the process and were stopped.
    pub leftovers: u32,
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

/// Runs a process to its end, appending its output (stdout and stderr through one pipe,
/// so their order is kept) to `log`, masked. The process gets its own process group,
/// registered in `control` while it runs, and a cookie in its environment; whatever
/// carries the cookie or is left of the group when the process exits is stopped, so
/// nothing it started outlives it.
pub fn run_process(
    spec: &ProcessSpec,
    log: &Arc<StepLog>,
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
    let cookie = format!("{}/{}", spec.cookie_prefix, ulid::Ulid::new());
    // Close-on-exec, so that processes other threads start meanwhile do not inherit an end
    // (the reader would wait for them); the child gets its copies as stdout and stderr.
    let (reader, writer) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC)?;
    let reader = std::fs::File::from(reader);
    let child_path = spec
        .env
        .iter()
        .rev()
        .find(|(name, _)| name == "PATH")
        .map(|(_, value)| OsString::from(value))
        .or_else(|| std::env::var_os("PATH"));
    let resolved = resolve_program(program, child_path.as_deref(), &spec.cwd);
    let command_for = |executable: &Path| -> std::io::Result<Command> {
        let mut command = Command::new(executable);
        command
            .arg0(program)
            .args(args)
            .env_clear()
            .envs(std::env::vars_os().filter(|(name, _)| name.to_str().is_some_and(is_inherited)))
            .envs(spec.env.iter().map(|(k, v)| (k, v)))
            .env(COOKIE_VARIABLE, &cookie)
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
                Stdio::from(writer.try_clone()?)
            })
            .stderr(Stdio::from(writer.try_clone()?));
        Ok(command)
    };
    let started = Instant::now();
    let mut command = command_for(resolved.as_deref().unwrap_or(Path::new(program)))?;
    let mut spawned = spawn_awaited(&mut command);
    if resolved.is_some() && spawned.as_ref().is_err_and(is_not_executable_format) {
        // A file without `#!` or an ELF header: `execvp`, which a program named without a
        // path gets, runs it with `/bin/sh`; `posix_spawn` does not.
        command = command_for(Path::new(program))?;
        spawned = spawn_awaited(&mut command);
    }
    // The command and `writer` hold this process's copies of the pipe's writing end:
    // closed now, so the reader sees the end once the process and its descendants have
    // closed theirs.
    drop(command);
    drop(writer);
    let mut child = spawned.map_err(|err| {
        std::io::Error::new(err.kind(), format!("cannot start `{program}`: {err}"))
    })?;
    let pid = child.id();
    let pgid = pid as i32;
    if control.set_pgid(Some(pgid)).is_some() {
        // Told to stop between the check above and the spawn.
        signal_group(pgid, Signal::SIGKILL);
    }
    let pump = {
        let pump_log = Arc::clone(log);
        let (done, finished) = std::sync::mpsc::channel::<()>();
        let read = move || {
            let mut masker = pump_log.secrets().masker();
            let mut reader = reader;
            let mut buffer = vec![0u8; 64 * 1024];
            loop {
                match reader.read(&mut buffer) {
                    Ok(0) => break,
                    Ok(n) => pump_log.write_masked(&masker.feed(&buffer[..n])),
                    Err(err) if err.kind() == std::io::ErrorKind::Interrupted => continue,
                    Err(_) => break,
                }
            }
            pump_log.write_masked(&masker.finish());
            let _ = done.send(());
        };
        if let Err(err) = STEP_THREADS.run("step output", read) {
            // Its pipe closes unread: the process ends on SIGPIPE if it writes.
            log.note(&format!("cannot start a thread to read the output: {err}"));
        }
        finished
    };
    let writer = match (spec.stdin.clone(), child.stdin.take()) {
        (Some(bytes), Some(mut stdin)) => Some(std::thread::spawn(move || {
            let _ = stdin.write_all(&bytes);
        })),
        _ => None,
    };
    let capture = child.stdout.take().map(|pipe| {
        std::thread::spawn(move || {
            let mut stdout = Vec::new();
            let _ = pipe.take(MAX_CAPTURE as u64).read_to_end(&mut stdout);
            stdout
        })
    });
    // A blocking wait: a stop signals the process group from another thread, which ends
    // the wait. `wait4` reaps the child and reads what it used.
    let reaped = loop {
        match child.wait4() {
            Err(err) if err.kind() == std::io::ErrorKind::Interrupted => continue,
            other => break other,
        }
    };
    forget_awaited(pid);
    let reaped = reaped?;
    let status = reaped.status;
    let usage = ResourceUsage {
        cpu_seconds: (reaped.rusage.utime + reaped.rusage.stime).as_secs_f64(),
        max_rss_bytes: reaped.rusage.maxrss,
    };
    let leftovers = stop_leftovers(&cookie, pgid, control.stopped().is_some());
    control.add_usage(usage, leftovers);
    if let Some(writer) = writer {
        let _ = writer.join();
    }
    let stdout = capture
        .map(|reader| reader.join().unwrap_or_default())
        .unwrap_or_default();
    let _ = pump.recv_timeout(READER_GRACE);
    let stopped = control.set_pgid(None);
    Ok(ProcessResult {
        exit_code: status.code(),
        signal: status.signal(),
        stdout,
        stopped,
        duration: started.elapsed(),
        usage: Some(usage),
        leftovers,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn log() -> (tempfile::TempDir, Arc<StepLog>) {
        let dir = tempfile::tempdir().unwrap();
        let file = StepLog::open(&dir.path().join("step.log"), 1 << 20).unwrap();
        (dir, Arc::new(file))
    }

    #[test]
    fn processes_marked_with_a_variable_have_their_groups_killed() {
        let value = format!("/work/{}", ulid::Ulid::new());
        let mut child = Command::new("sleep")
            .arg("30")
            .env("ORCHESTRATOR_TEST_MARK", &value)
            .process_group(0)
            .spawn()
            .unwrap();
        let entry = format!("ORCHESTRATOR_TEST_MARK={value}").into_bytes();
        let deadline = Instant::now() + Duration::from_secs(10);
        while !carries(child.id() as i32, &entry) {
            assert!(
                Instant::now() < deadline,
                "the child never ran with its mark"
            );
            std::thread::sleep(Duration::from_millis(5));
        }
        assert_eq!(kill_marked_steps("ORCHESTRATOR_TEST_MARK", "/work"), 0);
        assert_eq!(kill_marked_steps("ORCHESTRATOR_TEST_MARK", &value), 1);
        assert_eq!(child.wait().unwrap().signal(), Some(9));
    }

    fn write_executable(path: &std::path::Path, text: &str, mode: u32) {
        use std::os::unix::fs::PermissionsExt;
        std::fs::write(path, text).unwrap();
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
    }

    #[test]
    fn programs_are_found_on_the_child_path_as_execvp_finds_them() {
        let dir = tempfile::tempdir().unwrap();
        let (first, second, relative) = (
            dir.path().join("first"),
            dir.path().join("second"),
            dir.path().join("relative"),
        );
        for bin in [&first, &second, &relative] {
            std::fs::create_dir(bin).unwrap();
        }
        write_executable(&second.join("tool"), "#!/bin/sh\n", 0o755);
        // Not executable, or not a file: passed over.
        write_executable(&first.join("tool"), "#!/bin/sh\n", 0o644);
        std::fs::create_dir(first.join("other")).unwrap();
        write_executable(&second.join("other"), "#!/bin/sh\n", 0o755);
        write_executable(&relative.join("local"), "#!/bin/sh\n", 0o755);
        let path = std::env::join_paths([&first, &second, Path::new("relative")]).unwrap();
        let find = |program: &str| resolve_program(program, Some(&path), dir.path());
        assert_eq!(find("tool"), Some(second.join("tool")));
        assert_eq!(find("other"), Some(second.join("other")));
        // A relative entry is taken from the child's working directory.
        assert_eq!(
            find("local"),
            Some(dir.path().join("relative").join("local"))
        );
        assert_eq!(find("missing"), None);
        // A name with a slash is a path already.
        assert_eq!(find("./tool"), None);
        assert_eq!(find("second/tool"), None);
        // Without PATH, glibc's default.
        assert_eq!(
            resolve_program("sh", None, dir.path()).map(|p| p.parent().map(Path::to_owned)),
            Some(Some(PathBuf::from("/bin")))
        );
    }

    #[test]
    fn a_program_keeps_the_name_it_was_given_and_a_script_without_a_shebang_runs_with_sh() {
        let (dir, file) = log();
        let bin = dir.path().join("bin");
        std::fs::create_dir(&bin).unwrap();
        // No `#!` line: execvp hands it to /bin/sh, and so does the engine.
        write_executable(&bin.join("plain"), "echo plain ran with \"$1\"\n", 0o755);
        let path = format!("{}:/usr/bin:/bin", bin.display());
        let run = |argv: &[&str]| {
            let spec = ProcessSpec {
                argv: argv.iter().map(|a| (*a).to_owned()).collect(),
                env: vec![("PATH".into(), path.clone())],
                cwd: dir.path().to_owned(),
                ..ProcessSpec::default()
            };
            let result = run_process(&spec, &file, &StepControl::default()).unwrap();
            assert!(result.success(), "{argv:?}: {}", result.describe());
        };
        run(&["plain", "an argument"]);
        // argv[0] is `sh` as written, not the path it was found at.
        run(&["sh", "-c", "tr '\\0' ' ' < /proc/$$/cmdline; echo"]);
        let text = std::fs::read_to_string(dir.path().join("step.log")).unwrap();
        assert_eq!(
            text,
            "plain ran with an argument\nsh -c tr '\\0' ' ' < /proc/$$/cmdline; echo \n"
        );
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
        // A process spawned from this one is counted at least at this one's peak (the
        // kernel records it at the exec), so the step allocates well above it.
        let own_peak = std::fs::read_to_string("/proc/self/status")
            .unwrap()
            .lines()
            .find_map(|line| line.strip_prefix("VmHWM:"))
            .and_then(|kib| kib.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
            .unwrap()
            * 1024;
        let allocated = own_peak + 100_000_000;
        // The shell forks python and waits for it: python's use is counted through it.
        let spec = ProcessSpec {
            argv: vec![
                "sh".into(),
                "-c".into(),
                format!("python3 -c 'x = bytearray({allocated}); s = sum(range(3_000_000))'; true"),
            ],
            cwd: dir.path().to_owned(),
            ..ProcessSpec::default()
        };
        let control = StepControl::new();
        let result = run_process(&spec, &file, &control).unwrap();
        assert!(result.success(), "{}", result.describe());
        let usage = result.usage.unwrap();
        assert!(usage.max_rss_bytes >= allocated, "{usage:?}");
        assert!(usage.cpu_seconds > 0.0, "{usage:?}");
        // A second process under the same control: CPU adds up, the peak stays the largest.
        let small = ProcessSpec {
            argv: vec!["true".into()],
            cwd: dir.path().to_owned(),
            ..ProcessSpec::default()
        };
        let second = run_process(&small, &file, &control).unwrap().usage.unwrap();
        assert!(second.max_rss_bytes < allocated, "{second:?}");
        let total = control.take_usage().unwrap();
        assert_eq!(total.max_rss_bytes, usage.max_rss_bytes);
        assert!((total.cpu_seconds - usage.cpu_seconds - second.cpu_seconds).abs() < 1e-9);
        assert_eq!(control.take_usage(), None, "taken once");
    }

    /// A thread that tells `control` to stop for `reason` once the step runs and has written
    /// something into `marker`.
    fn stop_once_written(
        control: &Arc<StepControl>,
        marker: &std::path::Path,
        reason: StopReason,
    ) -> std::thread::JoinHandle<()> {
        let control = Arc::clone(control);
        let marker = marker.to_owned();
        std::thread::spawn(move || {
            let deadline = Instant::now() + Duration::from_secs(10);
            while std::fs::read_to_string(&marker).map_or(true, |t| t.trim().is_empty())
                || control.pgid().is_none()
            {
                assert!(Instant::now() < deadline, "the step never started");
                std::thread::sleep(Duration::from_millis(5));
            }
            control.stop(reason);
        })
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
        let stopper = stop_once_written(&control, &marker, StopReason::Timeout);
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

    #[test]
    fn group_members_ending_by_a_stop_are_not_counted_as_outliving_it() {
        let (dir, file) = log();
        let marker = dir.path().join("member.pid");
        // The member ignores SIGTERM, so it is still in the group when the shell has ended
        // and the leftovers are looked for: it is ending by the stop (SIGKILL after the
        // grace), not outliving the step.
        let spec = ProcessSpec {
            argv: vec![
                "sh".into(),
                "-c".into(),
                format!(
                    "sh -c 'trap \"\" TERM; echo $$ > {}; exec sleep 302' & wait",
                    marker.display()
                ),
            ],
            cwd: dir.path().to_owned(),
            cookie_prefix: "run/member".into(),
            ..ProcessSpec::default()
        };
        let control = StepControl::new();
        let stopper = stop_once_written(&control, &marker, StopReason::Cancel);
        let result = run_process(&spec, &file, &control).unwrap();
        stopper.join().unwrap();
        assert_eq!(result.stopped, Some(StopReason::Cancel));
        assert_eq!(result.leftovers, 0, "{}", result.describe());
        let member: i32 = std::fs::read_to_string(&marker)
            .unwrap()
            .trim()
            .parse()
            .unwrap();
        assert!(
            !alive(member),
            "the group member {member} outlived the stop"
        );
    }

    fn alive(pid: i32) -> bool {
        // A zombie has ended; only its entry is left.
        std::fs::read_to_string(format!("/proc/{pid}/stat"))
            .ok()
            .and_then(|s| {
                s.rsplit_once(')')
                    .map(|(_, rest)| rest.trim_start().to_owned())
            })
            .is_some_and(|rest| !rest.starts_with('Z'))
    }

    #[test]
    fn the_environment_is_clean_but_for_the_allowlist_and_what_is_given() {
        let (dir, log) = log();
        let spec = ProcessSpec {
            argv: vec!["sh".into(), "-c".into(), "env | sort".into()],
            env: vec![("GIVEN".into(), "yes".into())],
            cwd: dir.path().to_owned(),
            cookie_prefix: "run/step".into(),
            ..ProcessSpec::default()
        };
        let result = run_process(&spec, &log, &StepControl::default()).unwrap();
        assert!(result.success());
        let text = std::fs::read_to_string(dir.path().join("step.log")).unwrap();
        let names: Vec<&str> = text
            .lines()
            .filter_map(|l| l.split_once('='))
            .map(|(n, _)| n)
            .collect();
        assert!(names.contains(&"GIVEN"), "{text}");
        assert!(names.contains(&"PATH"), "{text}");
        assert!(
            text.contains("ORCHESTRATOR_STEP_COOKIE=run/step/"),
            "{text}"
        );
        for name in names {
            assert!(
                is_inherited(name)
                    || ["GIVEN", COOKIE_VARIABLE, "PWD", "SHLVL", "_", "OLDPWD"].contains(&name),
                "{name} leaked into the step: {text}"
            );
        }
    }

    #[test]
    fn secrets_are_masked_in_the_log_as_the_process_writes() {
        let (dir, log) = log();
        log.add_secrets(["hunter2".to_owned()]);
        let spec = ProcessSpec {
            argv: vec![
                "sh".into(),
                "-c".into(),
                "printf 'a hun'; sleep 0.05; printf 'ter2 b\\n'; echo hunter2 >&2".into(),
            ],
            cwd: dir.path().to_owned(),
            ..ProcessSpec::default()
        };
        let result = run_process(&spec, &log, &StepControl::default()).unwrap();
        assert!(result.success());
        let text = std::fs::read_to_string(dir.path().join("step.log")).unwrap();
        assert_eq!(text, "a *** b\n***\n");
    }

    #[test]
    fn a_descendant_that_leaves_the_session_is_stopped_when_the_process_ends() {
        become_subreaper();
        let (dir, log) = log();
        let marker = dir.path().join("daemon.pid");
        let spec = ProcessSpec {
            argv: vec![
                "sh".into(),
                "-c".into(),
                format!(
                    "setsid sh -c 'trap \"\" TERM; echo $$ > {}; exec sleep 301' & \
                     while [ ! -s {} ]; do sleep 0.01; done",
                    marker.display(),
                    marker.display()
                ),
            ],
            cwd: dir.path().to_owned(),
            cookie_prefix: "run/daemon".into(),
            ..ProcessSpec::default()
        };
        let control = StepControl::new();
        let result = run_process(&spec, &log, &control).unwrap();
        assert!(result.success(), "{}", result.describe());
        assert_eq!(result.leftovers, 1);
        assert_eq!(control.take_leftovers(), 1);
        let daemon: i32 = std::fs::read_to_string(&marker)
            .unwrap()
            .trim()
            .parse()
            .unwrap();
        assert!(
            !alive(daemon),
            "the setsid daemon {daemon} outlived its step"
        );
    }
}
