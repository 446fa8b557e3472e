//! Engine benchmark: sequential chains of steps that run `true`, timed as whole processes.
//!
//! - `orchestrator workflow execute` on chains of 10, 100 and 1,000 steps (every step's start
//!   and end durably recorded);
//! - Dagu (`dagu start FILE`, path in `DAGU_BIN`; `bench/engine` installs 1.30.2 from npm)
//!   running the same chains;
//! - the floor: a bare loop in this process that spawns `true` the same number of times
//!   (`std::process::Command`, posix_spawn, as the engine does).
//!
//! Per-step cost is (chain time − 10-step chain time) / (steps − 10), which separates
//! start-up from the cost of a step. Prints a markdown table; medians after a warm-up.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

#[path = "support/mod.rs"]
mod support;
use support::{release_binary, run_ok};

const CHAINS: [usize; 3] = [10, 100, 1_000];
const REPEATS: usize = 5;

fn main() {
    let work = tempfile::tempdir().expect("temp dir");
    let project = work.path().join("project");
    let binary = release_binary();
    run_ok(Command::new(&binary).arg("init").arg(&project));
    for steps in CHAINS {
        write_chain(&project.join("workflows"), steps);
    }
    run_ok(Command::new(&binary).arg("apply").current_dir(&project));

    let dagu = std::env::var_os("DAGU_BIN").map(PathBuf::from);
    let dagu_dir = work.path().join("dagu");
    if let Some(dagu) = &dagu {
        fs::create_dir_all(&dagu_dir).expect("dagu dir");
        for steps in CHAINS {
            write_dagu_chain(&dagu_dir, steps);
        }
        // Warm-up: Dagu creates its home directory on first use.
        time_dagu(dagu, &dagu_dir, 10);
    }
    // Warm-up of the page cache for both binaries and `true`.
    time_orchestrator(&binary, &project, 10);
    bare_spawns(10);

    let mut rows = Vec::new();
    for steps in CHAINS {
        let repeats = if steps >= 1_000 { 2 } else { REPEATS };
        let ours = median((0..repeats).map(|_| time_orchestrator(&binary, &project, steps)));
        let floor = median((0..REPEATS).map(|_| bare_spawns(steps)));
        let theirs = dagu
            .as_ref()
            .map(|d| median((0..repeats).map(|_| time_dagu(d, &dagu_dir, steps))));
        rows.push((steps, ours, theirs, floor));
    }

    println!("| steps | orchestrator | Dagu 1.30.2 | bare spawn loop |");
    println!("|---:|---:|---:|---:|");
    for (steps, ours, theirs, floor) in &rows {
        println!(
            "| {steps} | {} | {} | {} |",
            ms(*ours),
            theirs.map_or("n/a".into(), ms),
            ms(*floor)
        );
    }
    println!();
    println!("Per step, beyond the 10-step chain (start-up excluded):");
    println!();
    println!("| chain | orchestrator ms/step | Dagu ms/step | bare spawn ms/step | orchestrator ÷ spawn | Dagu ÷ orchestrator |");
    println!("|---:|---:|---:|---:|---:|---:|");
    let (_, base_ours, base_theirs, _) = rows[0];
    for (steps, ours, theirs, floor) in rows.iter().skip(1) {
        let extra = (*steps - CHAINS[0]) as f64;
        let ours_step = (ours.as_secs_f64() - base_ours.as_secs_f64()) * 1e3 / extra;
        let floor_step = floor.as_secs_f64() * 1e3 / *steps as f64;
        let theirs_step = theirs
            .zip(base_theirs)
            .map(|(t, b)| (t.as_secs_f64() - b.as_secs_f64()) * 1e3 / extra);
        println!(
            "| {steps} | {ours_step:.3} | {} | {floor_step:.3} | {:.2}× | {} |",
            theirs_step.map_or("n/a".into(), |t| format!("{t:.3}")),
            ours_step / floor_step,
            theirs_step.map_or("n/a".into(), |t| format!("{:.1}×", t / ours_step)),
        );
    }
    if dagu.is_none() {
        println!();
        println!("(Dagu not measured: set DAGU_BIN, or run bench/engine, which installs it.)");
    }
}

fn write_chain(dir: &Path, steps: usize) {
    let mut text = format!("name: Chain {steps}\nhistory_limit: 3\nsteps:\n");
    for index in 0..steps {
        text.push_str(&format!("  - name: s{index}\n    command: [\"true\"]\n"));
    }
    fs::write(dir.join(format!("chain{steps}.yaml")), text).expect("write workflow");
}

fn write_dagu_chain(dir: &Path, steps: usize) {
    let mut text = String::from("type: chain\nsteps:\n");
    for index in 0..steps {
        text.push_str(&format!("  - name: s{index}\n    command: \"true\"\n"));
    }
    fs::write(dir.join(format!("chain{steps}.yaml")), text).expect("write dagu workflow");
}

fn time_orchestrator(binary: &Path, project: &Path, steps: usize) -> Duration {
    let started = Instant::now();
    run_ok(
        Command::new(binary)
            .args(["workflow", "execute", &format!("wf_chain-{steps}")])
            .current_dir(project),
    );
    started.elapsed()
}

fn time_dagu(dagu: &Path, dir: &Path, steps: usize) -> Duration {
    let started = Instant::now();
    run_ok(
        Command::new(dagu)
            .arg("start")
            .arg(dir.join(format!("chain{steps}.yaml")))
            .env("DAGU_HOME", dir.join("home"))
            .current_dir(dir),
    );
    started.elapsed()
}

fn bare_spawns(count: usize) -> Duration {
    let started = Instant::now();
    for _ in 0..count {
        let status = Command::new("true")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .status()
            .expect("spawn true");
        assert!(status.success());
    }
    started.elapsed()
}

fn median(samples: impl Iterator<Item = Duration>) -> Duration {
    let mut samples: Vec<Duration> = samples.collect();
    samples.sort();
    samples[samples.len() / 2]
}

fn ms(duration: Duration) -> String {
    format!("{:.1} ms", duration.as_secs_f64() * 1e3)
}
