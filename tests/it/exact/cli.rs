//! The CLI's contracts: encoded path segments, missing or empty project directories, API
//! errors shown with the same exit codes, closed pipes, output formats, completions and help.
//!
//! Commands that can go through a running server run twice, in a project without a server
//! and in one whose store a real `orchestrator start` holds, and must answer alike.

use std::path::Path;

use tempfile::TempDir;

use crate::server::{cli, project, Server};
use crate::Run;

/// A quick workflow whose name has a space.
const UNIT_TESTS: &str = r#"name: Unit Tests
steps:
  - name: unit
    command: ["sh", "-c", "echo all green"]
  - name: second step
    command: ["true"]
"#;

/// Two projects initialised alike with the same extra files: `local` used on its store
/// directly (applied), `remote` with a server holding its store.
struct Pair {
    // Declared first, so it is stopped before the directories are removed.
    _server: Server,
    local: TempDir,
    remote: TempDir,
}

impl Pair {
    fn new(files: &[(&str, &str)]) -> Pair {
        let local = project(files);
        cli(local.path(), &["apply"]).expect_code(0);
        let remote = project(files);
        let server = Server::start(remote.path());
        Pair {
            _server: server,
            local,
            remote,
        }
    }

    /// Runs one command in both projects; asserts the exit code in both and equal stdout
    /// and stderr once the project paths and run ids are masked; returns the remote run.
    #[track_caller]
    fn same(&self, args: &[&str], code: i32) -> Run {
        let local = cli(self.local.path(), args);
        let remote = cli(self.remote.path(), args);
        let both = format!(
            "`orchestrator {}`\n--- without a server (exit {})\n{}{}\n--- with a server (exit {})\n{}{}",
            args.join(" "),
            local.code,
            local.stdout,
            local.stderr,
            remote.code,
            remote.stdout,
            remote.stderr
        );
        assert_eq!((local.code, remote.code), (code, code), "{both}");
        assert_eq!(
            mask(&local.stdout, self.local.path()),
            mask(&remote.stdout, self.remote.path()),
            "stdout differs: {both}"
        );
        assert_eq!(
            mask(&local.stderr, self.local.path()),
            mask(&remote.stderr, self.remote.path()),
            "stderr differs: {both}"
        );
        remote
    }
}

/// The project's path as `PROJECT`, run ids (`run_` and a ULID) as `RUN`, durations (a
/// number before `ms`, `s` or `min`) as `DUR`, and column padding as one space.
fn mask(text: &str, project: &Path) -> String {
    let text = text.replace(&project.display().to_string(), "PROJECT");
    text.lines()
        .map(|line| {
            let words: Vec<&str> = line.split_whitespace().collect();
            let mut out = Vec::new();
            for (index, word) in words.iter().enumerate() {
                let core = word.trim_matches(|c: char| "`(),:;".contains(c));
                let unit = words
                    .get(index + 1)
                    .map(|u| u.trim_end_matches([',', ';', ')', ':']));
                if core.starts_with("run_") && core.len() == 30 {
                    out.push(word.replace(core, "RUN"));
                } else if core.parse::<f64>().is_ok() && matches!(unit, Some("ms" | "s" | "min")) {
                    out.push("DUR".to_owned());
                } else {
                    out.push((*word).to_owned());
                }
            }
            out.join(" ")
        })
        .collect::<Vec<_>>()
        .join("\n")
}

#[test]
fn names_and_ids_with_spaces_slashes_and_query_characters_reach_the_server_as_one_segment() {
    let pair = Pair::new(&[("workflows/unit.yaml", UNIT_TESTS)]);
    let executed = pair.same(&["workflow", "execute", "Unit Tests"], 0);
    assert!(executed.stdout.contains("succeeded"), "{}", executed.stdout);
    pair.same(&["alert", "show", "High CPU Usage"], 0);
    pair.same(&["schedule", "pause", "Nightly API Tests"], 0);
    pair.same(&["schedule", "resume", "Nightly API Tests"], 0);
    // Ids that hold a slash, a `?`, a `#`, a `%` or a space name nothing: the answer is the
    // store's "no such ...", never another route's answer or a malformed request.
    for id in ["no such/run?x=1#y", "100% done", "a b"] {
        pair.same(&["run", "show", id], 2);
        pair.same(&["run", "cancel", id], 2);
        pair.same(&["run", "rerun", id], 2);
        pair.same(&["workflow", "execute", id], 2);
        pair.same(&["trigger", "deliveries", id], 2);
        pair.same(&["alert", "show", id], 2);
        pair.same(&["alert", "unsilence", id], 2);
    }
}
