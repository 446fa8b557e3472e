//! Bad input: every case of `tests/fixtures/invalid/` gives its expected diagnostics
//! (snapshots), and hostile input is refused quickly with a clear message.

use std::fs;
use std::time::{Duration, Instant};

use crate::support::{orchestrator, repo_dir, temp_project};

#[test]
fn every_invalid_fixture_reports_its_diagnostics() {
    let fixtures = repo_dir().join("tests/fixtures/invalid");
    let mut names: Vec<String> = fs::read_dir(&fixtures)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    assert!(names.len() >= 20, "{names:?}");
    for name in names {
        let path = format!("tests/fixtures/invalid/{name}");
        let run = orchestrator(&repo_dir(), &["validate", &path]);
        assert_eq!(run.code, 1, "{name} should be invalid:\n{}", run.stdout);
        insta::assert_snapshot!(name.clone(), run.stdout);
    }
}

#[test]
fn a_huge_file_is_refused_without_reading_it() {
    let project = temp_project();
    let dir = project.path();
    fs::create_dir(dir.join("workflows")).unwrap();
    let line = "# padding padding padding padding padding padding padding padding\n";
    let text = line.repeat(50 * 1024 * 1024 / line.len());
    fs::write(dir.join("workflows/huge.yaml"), text).unwrap();
    let started = Instant::now();
    let run = orchestrator(dir, &["validate"]).expect_code(1);
    assert!(started.elapsed() < Duration::from_secs(10));
    assert!(
        run.stdout
            .contains("over the 4194304-byte limit for a manifest (manifests.max_file_bytes)"),
        "{}",
        run.stdout
    );
}

#[test]
fn deep_nesting_is_an_error_not_a_crash() {
    let project = temp_project();
    let dir = project.path();
    fs::create_dir(dir.join("workflows")).unwrap();
    let deep = "[".repeat(10_000) + &"]".repeat(10_000);
    fs::write(
        dir.join("workflows/deep.yaml"),
        format!("name: deep\nsteps: {deep}\n"),
    )
    .unwrap();
    fs::write(dir.join("workflows/deep.json"), &deep).unwrap();
    let run = orchestrator(dir, &["validate"]).expect_code(1);
    assert!(run.stdout.contains("workflows/deep.yaml"), "{}", run.stdout);
    assert!(run.stdout.contains("workflows/deep.json"), "{}", run.stdout);
    assert!(
        run.stdout.contains("recursion limit exceeded"),
        "{}",
        run.stdout
    );
}

#[test]
fn a_symlink_out_of_the_tree_is_not_followed() {
    let project = temp_project();
    let dir = project.path();
    fs::create_dir(dir.join("workflows")).unwrap();
    let outside = tempfile::tempdir().unwrap();
    fs::write(
        outside.path().join("secret.yaml"),
        "name: secret\nsteps: []\n",
    )
    .unwrap();
    std::os::unix::fs::symlink(
        outside.path().join("secret.yaml"),
        dir.join("workflows/link.yaml"),
    )
    .unwrap();
    let run = orchestrator(dir, &["validate"]).expect_code(1);
    assert!(
        run.stdout.contains("symlink points outside the project"),
        "{}",
        run.stdout
    );
    assert!(!run.stdout.contains("name: secret"));
}
