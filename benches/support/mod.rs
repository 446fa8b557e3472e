//! What the benchmark binaries share: the release binary, a server started on port 0, a
//! process's resident memory, percentiles, running a command that must succeed, and the
//! report every bench prints: one row per figure (orchestrator, reference measured in the
//! same run, target), also written as JSON lines to `BENCH_JSON` for `bench/run`, which runs
//! each bench several times with `BENCH_REPEATS=1` and takes the medians.

#![allow(dead_code)] // Each bench uses its own share of these.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

/// The release binary next to the bench's own executable (`target/release/`).
pub fn release_binary() -> PathBuf {
    let exe = std::env::current_exe().expect("bench path");
    let binary = exe
        .parent()
        .and_then(Path::parent)
        .expect("target/release")
        .join("orchestrator");
    assert!(
        binary.exists(),
        "{} is missing: run `cargo build --release` first (the bench/ scripts do)",
        binary.display()
    );
    binary
}

/// `orchestrator start --port 0` in the production environment, running until `stop`.
pub struct Server {
    /// The process.
    pub child: Child,
    /// `host:port` it listens on.
    pub address: String,
}

impl Server {
    /// Starts the server in `project` with extra environment variables and waits for its
    /// `orchestrator listening on http://ADDR` line.
    pub fn start(binary: &Path, project: &Path, env: &[(&str, &str)]) -> Server {
        let mut child = Command::new(binary)
            .args(["start", "--port", "0"])
            .current_dir(project)
            .env("ORCHESTRATOR_ENVIRONMENT", "production")
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("start the server");
        let stdout = child.stdout.take().expect("stdout");
        let mut line = String::new();
        BufReader::new(stdout)
            .read_line(&mut line)
            .expect("read the listening line");
        let address = line
            .split("http://")
            .nth(1)
            .and_then(|rest| rest.split_whitespace().next())
            .unwrap_or_else(|| panic!("no address in {line:?}"))
            .to_owned();
        Server { child, address }
    }

    /// SIGTERM, then waits for it to exit.
    pub fn stop(&mut self) {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(self.child.id() as i32),
            nix::sys::signal::Signal::SIGTERM,
        );
        let _ = self.child.wait();
    }
}

/// Resident memory of a process, in KiB.
pub fn rss_kib(pid: u32) -> u64 {
    status_kib(pid, "VmRSS")
}

/// A figure of `/proc/PID/status` given in KiB (`VmRSS`, `RssAnon`, ...); 0 if not found.
pub fn status_kib(pid: u32, field: &str) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.strip_prefix(field).is_some_and(|r| r.starts_with(':')))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse().ok())
        })
        .unwrap_or(0)
}

/// The `quantile` of samples (sorted here).
pub fn percentile(samples: &[f64], quantile: f64) -> f64 {
    if samples.is_empty() {
        return 0.0;
    }
    let mut sorted = samples.to_vec();
    sorted.sort_by(f64::total_cmp);
    let index = ((sorted.len() as f64 - 1.0) * quantile).round() as usize;
    sorted[index.min(sorted.len() - 1)]
}

/// Runs a command that must succeed.
pub fn run_ok(command: &mut Command) {
    let output = command.stdin(Stdio::null()).output().expect("run");
    assert!(
        output.status.success(),
        "{command:?} failed:\n{}\n{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
}

/// The number of repeats a bench makes of each measurement inside one run: `BENCH_REPEATS`
/// when set (`bench/run` sets 1 and takes medians over whole runs), else `default`.
pub fn repeats(default: usize) -> usize {
    std::env::var("BENCH_REPEATS")
        .ok()
        .and_then(|v| v.parse().ok())
        .filter(|&n: &usize| n > 0)
        .unwrap_or(default)
}

/// What a measurement is held to. Kinds and their meaning match `bench/table.py`.
#[derive(Clone, Copy, Debug)]
pub enum Target {
    /// Information only.
    None,
    /// The orchestrator's figure at most this, in the metric's unit.
    AtMost(f64),
    /// The orchestrator's figure below this, in the metric's unit.
    Below(f64),
    /// The orchestrator's figure at least this, in the metric's unit.
    AtLeast(f64),
    /// orchestrator ÷ reference at most this (an overhead over a floor).
    RatioAtMost(f64),
    /// orchestrator ÷ reference at least this (a throughput beside a peer's).
    RatioAtLeast(f64),
    /// reference ÷ orchestrator at least this (a peer's time is this many times ours).
    Faster(f64),
    /// The orchestrator's figure equals the reference (a count that must match).
    Equal,
}

impl Target {
    fn kind(self) -> &'static str {
        match self {
            Target::None => "info",
            Target::AtMost(_) => "max",
            Target::Below(_) => "below",
            Target::AtLeast(_) => "min",
            Target::RatioAtMost(_) => "ratio_max",
            Target::RatioAtLeast(_) => "ratio_min",
            Target::Faster(_) => "faster",
            Target::Equal => "equal",
        }
    }

    fn value(self) -> Option<f64> {
        match self {
            Target::None | Target::Equal => None,
            Target::AtMost(v)
            | Target::Below(v)
            | Target::AtLeast(v)
            | Target::RatioAtMost(v)
            | Target::RatioAtLeast(v)
            | Target::Faster(v) => Some(v),
        }
    }

    fn text(self, unit: &str) -> String {
        match self {
            Target::None => "—".to_owned(),
            Target::AtMost(v) => format!("≤ {}", exact(v, unit)),
            Target::Below(v) => format!("< {}", exact(v, unit)),
            Target::AtLeast(v) => format!("≥ {}", exact(v, unit)),
            Target::RatioAtMost(v) => format!("≤ {}× reference", exact(v, "")),
            Target::RatioAtLeast(v) => format!("≥ {}× reference", exact(v, "")),
            Target::Faster(v) => format!("≥ {}× faster", exact(v, "")),
            Target::Equal => "= reference".to_owned(),
        }
    }

    /// Whether `value` (and `reference`, for the kinds that compare with it) meets the
    /// target; `None` when it is not measured or there is no target.
    fn met(self, value: Option<f64>, reference: Option<f64>) -> Option<bool> {
        let value = value?;
        match self {
            Target::None => None,
            Target::AtMost(t) => Some(value <= t),
            Target::Below(t) => Some(value < t),
            Target::AtLeast(t) => Some(value >= t),
            Target::RatioAtMost(t) => reference.map(|r| value <= t * r),
            Target::RatioAtLeast(t) => reference.map(|r| value >= t * r),
            Target::Faster(t) => reference.map(|r| r >= t * value),
            Target::Equal => reference.map(|r| value == r),
        }
    }
}

/// One figure of a bench: the orchestrator's, beside an optional reference measured in the
/// same run, held to a target.
#[derive(Clone, Debug)]
pub struct Measurement {
    metric: String,
    unit: &'static str,
    value: Option<f64>,
    reference: Option<(String, Option<f64>)>,
    target: Target,
    every_run: bool,
    bound: Option<String>,
    note: Option<String>,
}

impl Measurement {
    /// A figure named `metric` in `unit` (`""` for a count). NaN means not measured.
    pub fn new(metric: impl Into<String>, unit: &'static str, value: f64) -> Measurement {
        Measurement {
            metric: metric.into(),
            unit,
            value: Some(value).filter(|v| v.is_finite()),
            reference: None,
            target: Target::None,
            every_run: false,
            bound: None,
            note: None,
        }
    }

    /// The reference it is compared with, measured in the same run (`None`: not measured,
    /// e.g. the peer is not installed), in the same unit.
    pub fn reference(mut self, name: impl Into<String>, value: impl Into<Option<f64>>) -> Self {
        let value = value.into().filter(|v| v.is_finite());
        self.reference = Some((name.into(), value));
        self
    }

    /// The target it is held to.
    pub fn target(mut self, target: Target) -> Self {
        self.target = target;
        self
    }

    /// The target must be met in every run, not only by the median (counts that must match).
    pub fn every_run(mut self) -> Self {
        self.every_run = true;
        self
    }

    /// What bounds the figure and what would move it: shown when the target is missed.
    pub fn bound(mut self, text: impl Into<String>) -> Self {
        self.bound = Some(text.into());
        self
    }

    /// A note on how the figure is measured.
    pub fn note(mut self, text: impl Into<String>) -> Self {
        self.note = Some(text.into());
        self
    }

    fn reference_value(&self) -> Option<f64> {
        self.reference.as_ref().and_then(|(_, v)| *v)
    }

    fn ratio(&self) -> Option<f64> {
        let (value, reference) = (self.value?, self.reference_value()?);
        (reference != 0.0).then(|| value / reference)
    }

    fn json(&self, bench: &str) -> serde_json::Value {
        serde_json::json!({
            "bench": bench,
            "metric": self.metric,
            "unit": self.unit,
            "orchestrator": self.value,
            "reference_name": self.reference.as_ref().map(|(name, _)| name),
            "reference": self.reference_value(),
            "ratio": self.ratio(),
            "target": {
                "kind": self.target.kind(),
                "value": self.target.value(),
                "text": self.target.text(self.unit),
                "every_run": self.every_run,
            },
            "met": self.target.met(self.value, self.reference_value()),
            "bound": self.bound,
            "note": self.note,
        })
    }

    fn row(&self) -> String {
        let value = self
            .value
            .map_or("not measured".to_owned(), |v| with_unit(v, self.unit));
        let reference = match &self.reference {
            None => "—".to_owned(),
            Some((name, None)) => format!("{name}: not measured"),
            Some((name, Some(v))) => format!("{name}: {}", with_unit(*v, self.unit)),
        };
        let ratio = match (self.target, self.ratio()) {
            (_, None) => "—".to_owned(),
            (Target::Faster(_), Some(r)) if r > 0.0 => format!("{}× faster", number(1.0 / r)),
            (_, Some(r)) => format!("{}×", number(r)),
        };
        let mut target = self.target.text(self.unit);
        if self.every_run {
            target.push_str(", every run");
        }
        let result = match self.target.met(self.value, self.reference_value()) {
            _ if matches!(self.target, Target::None) => "info",
            None => "not measured",
            Some(true) => "pass",
            Some(false) => "**miss**",
        };
        format!(
            "| {} | {value} | {reference} | {ratio} | {target} | {result} |",
            self.metric
        )
    }
}

/// The figures of one bench: printed as a markdown table and, when `BENCH_JSON` names a
/// file, appended to it as one JSON line each (`bench/run` gathers them).
pub struct Report {
    bench: &'static str,
    rows: Vec<Measurement>,
}

impl Report {
    /// An empty report for the bench named `bench` (its `bench/` script's name).
    pub fn new(bench: &'static str) -> Report {
        Report {
            bench,
            rows: Vec::new(),
        }
    }

    /// Adds a figure.
    pub fn add(&mut self, measurement: Measurement) {
        self.rows.push(measurement);
    }

    /// Prints the table (and the bounds of the targets missed) and writes the JSON lines.
    pub fn finish(self) {
        println!("| metric | orchestrator | reference (same run) | ratio | target | result |");
        println!("|---|---:|---|---:|---|---|");
        for row in &self.rows {
            println!("{}", row.row());
        }
        for row in &self.rows {
            if let Some(note) = &row.note {
                println!("\n- {}: {note}", row.metric);
            }
        }
        for row in &self.rows {
            if row.target.met(row.value, row.reference_value()) == Some(false) {
                if let Some(bound) = &row.bound {
                    println!("\nMissed, {}: {bound}", row.metric);
                }
            }
        }
        if let Some(path) = std::env::var_os("BENCH_JSON") {
            use std::io::Write as _;
            let mut file = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(&path)
                .unwrap_or_else(|e| panic!("open {}: {e}", Path::new(&path).display()));
            let mut lines = String::new();
            for row in &self.rows {
                lines.push_str(&row.json(self.bench).to_string());
                lines.push('\n');
            }
            file.write_all(lines.as_bytes())
                .unwrap_or_else(|e| panic!("write {}: {e}", Path::new(&path).display()));
        }
    }
}

/// A figure with its unit: `1.47 ms`, `47,012 req/s`, `12` (a count).
pub fn with_unit(value: f64, unit: &str) -> String {
    if unit.is_empty() {
        number(value)
    } else {
        format!("{} {unit}", number(value))
    }
}

/// A target's figure as written: whole numbers grouped (`10,000 req/s`), others as they are
/// (`0.5 ms`).
fn exact(value: f64, unit: &str) -> String {
    let text = if value.fract() == 0.0 {
        grouped(value)
    } else {
        value.to_string()
    };
    if unit.is_empty() {
        text
    } else {
        format!("{text} {unit}")
    }
}

/// Three significant figures (whole numbers as they are), thousands grouped, the same as
/// `bench/table.py`.
pub fn number(value: f64) -> String {
    let magnitude = value.abs();
    if magnitude >= 1000.0 || value.fract() == 0.0 {
        grouped(value)
    } else if magnitude >= 100.0 {
        format!("{value:.0}")
    } else if magnitude >= 10.0 {
        format!("{value:.1}")
    } else if magnitude >= 1.0 {
        format!("{value:.2}")
    } else {
        let decimals = (2.0 - magnitude.log10().floor()) as usize;
        format!("{value:.decimals$}")
    }
}

/// Rounded to a whole number, thousands grouped: `47,012`.
fn grouped(value: f64) -> String {
    let digits = format!("{:.0}", value.abs());
    let mut text = String::new();
    if value < 0.0 && digits != "0" {
        text.push('-');
    }
    for (index, digit) in digits.chars().enumerate() {
        if index > 0 && (digits.len() - index) % 3 == 0 {
            text.push(',');
        }
        text.push(digit);
    }
    text
}
