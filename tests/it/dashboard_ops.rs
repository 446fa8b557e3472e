//! The dashboard's Schedules, Agents and Manifests pages in a real headless chromium
//! against a seeded server (schedules, an agent whose health check fails, an invalid
//! manifest): each loads with no console error and shows the seeded data; a schedule is
//! paused and created from the page (a bad cron shows its diagnostic inline); an agent is
//! stopped from the page; the invalid manifest's diagnostic shows with its file:line; what
//! apply would change shows as a diff. And `GET /api/agents/{name}/executions` over HTTP.
//!
//! Screenshots go to `target/screenshots/ops-*.png`.

use std::fs;

use serde_json::{json, Value};

use crate::browser::{runtime, serve, Browser, DESKTOP};
use crate::support::{eventually, project, Api};

const TICK: &str = "name: Tick\ndescription: Two quick shell steps\nsteps:\n  - name: first\n    command: [\"sh\", \"-c\", \"echo tick one\"]\n  - name: second\n    depends_on: [first]\n    command: [\"sh\", \"-c\", \"echo tick two\"]\n";

/// An exec agent whose program does not exist: its health check fails.
const GHOST: &str = "kind: Agent\nname: ghost\ntype: exec\ncommand: [\"./plugins/ghost-plugin-that-is-not-there\"]\n";

/// Invalid: an unknown field on line 4, column 5.
const BROKEN: &str =
    "name: Broken\nsteps:\n  - name: a\n    agnt: shell\n    command: [\"true\"]\n";

fn seeded() -> tempfile::TempDir {
    project(&[
        ("workflows/tick.yaml", TICK),
        ("workflows/broken.yaml", BROKEN),
        ("agents/ghost.yaml", GHOST),
        (
            "schedules/nightly.yaml",
            "name: Nightly Tick\ncron: \"0 2 * * *\"\nworkflow: wf_tick\ntimezone: UTC\nconcurrency_policy: forbid\n",
        ),
        (
            "schedules/berlin.yaml",
            "name: Berlin Morning\ncron: \"30 7 * * 1-5\"\nworkflow: wf_tick\ntimezone: Europe/Berlin\n",
        ),
    ])
}

fn get(base: &str, path: &str) -> (u16, Value) {
    Api::at(base).get(path).into_parts()
}

/// Runs `wf_tick` through the API to its end; returns the run id.
fn run_tick(base: &str) -> String {
    let shown = Api::at(base).run_to_end("wf_tick", "{}");
    assert_eq!(shown["run"]["status"], "succeeded", "{shown}");
    shown["run"]["id"].as_str().unwrap().to_owned()
}

fn job(base: &str, id: &str) -> Option<Value> {
    let (_, jobs) = get(base, "/api/scheduler/jobs");
    jobs["jobs"]
        .as_array()?
        .iter()
        .find(|j| j["id"] == id)
        .cloned()
}

#[test]
fn agent_executions_lists_an_agents_recent_steps_newest_first_with_their_logs() {
    let dir = seeded();
    let (_server, base) = serve(dir.path());
    let older = run_tick(&base);
    let newer = run_tick(&base);
    let (status, body) = get(&base, "/api/agents/shell/executions?limit=3");
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["agent"], "shell");
    let executions = body["executions"].as_array().unwrap();
    let seen: Vec<(String, String)> = executions
        .iter()
        .map(|x| {
            (
                x["run_id"].as_str().unwrap().to_owned(),
                x["step"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    assert_eq!(
        seen,
        [
            (newer.clone(), "second".to_owned()),
            (newer.clone(), "first".to_owned()),
            (older.clone(), "second".to_owned()),
        ],
        "{body}"
    );
    assert_eq!(executions[0]["status"], "succeeded");
    assert_eq!(executions[0]["workflow_id"], "wf_tick");
    assert!(executions[0]["duration_ms"].is_u64(), "{body}");
    // The log it points to is the step's.
    let log_url = executions[0]["log_url"].as_str().unwrap();
    assert_eq!(log_url, format!("/api/runs/{newer}/logs/second"));
    let log = Api::at(&base).get(log_url);
    assert_eq!(log.status, 200);
    assert!(log.text.contains("tick two"));
    // A declared agent that ran nothing; a limit out of range; no such agent.
    let (status, ghost) = get(&base, "/api/agents/ghost/executions");
    assert_eq!(status, 200, "{ghost}");
    assert_eq!(ghost["executions"], json!([]), "{ghost}");
    let (status, bad) = get(&base, "/api/agents/shell/executions?limit=0");
    assert_eq!(status, 400, "{bad}");
    assert_eq!(bad["error"]["details"]["field"], "limit", "{bad}");
    let (status, missing) = get(&base, "/api/agents/nobody/executions");
    assert_eq!(status, 404, "{missing}");
    assert!(
        missing["error"]["message"]
            .as_str()
            .unwrap()
            .contains("ghost"),
        "{missing}"
    );
}

#[test]
fn schedules_agents_and_manifests_pages_show_the_seeded_data_and_act() {
    let dir = seeded();
    let (_server, base) = serve(dir.path());
    let run = run_tick(&base);
    // The ghost agent's first health check has failed before the page is looked at.
    eventually("the ghost agent's health check", || {
        let (_, ghost) = get(&base, "/api/agents/ghost/metrics");
        (ghost["health_check"]["status"] == "failed").then_some(())
    });

    runtime().block_on(async {
        let browser = Browser::start(DESKTOP).await;

        // Schedules: the seeded ones, with cron, zone, workflow and next fires in UTC.
        browser.open(&format!("{base}/#/schedules"), "schedules").await;
        let row = browser
            .wait_text("[data-schedule='sch_nightly-tick']", "0 2 * * *")
            .await;
        assert!(row.contains("Tick"), "the workflow's name: {row}");
        assert!(row.contains("forbid"), "the concurrency policy: {row}");
        assert!(row.contains("02:00 UTC"), "next fire in UTC: {row}");
        let berlin = browser
            .wait_text("[data-schedule='sch_berlin-morning']", "Europe/Berlin")
            .await;
        assert!(
            berlin.contains("05:30 UTC") || berlin.contains("06:30 UTC"),
            "07:30 in Berlin is 05:30 or 06:30 UTC: {berlin}"
        );
        let link = browser
            .js(
                "return document.querySelector(\"[data-schedule='sch_nightly-tick'] a[href^='#/workflows/']\").getAttribute('href');",
                vec![],
            )
            .await;
        assert_eq!(link, json!("#/workflows/wf_tick"));
        browser.check("the schedules page", "ops-schedules").await;

        // Pause from the page: the API says paused, the row says so.
        browser.press("[data-schedule='sch_nightly-tick'] button[data-action='pause']")
            .await;
        eventually("the API to report the schedule paused", || {
            job(&base, "sch_nightly-tick").filter(|j| j["paused"] == true)
        });
        browser
            .wait_element("[data-schedule='sch_nightly-tick'][data-state='paused'] button[data-action='resume']")
            .await;

        // Create from the form; first with a cron that can never fire: its diagnostic inline.
        browser.press("button[data-action='new']").await;
        browser.type_into("#schedule-name", "Never Ever").await;
        browser.type_into("#schedule-cron", "0 0 30 2 *").await;
        browser
            .js(
                "const s = document.querySelector('#schedule-workflow'); s.value = 'wf_tick'; return s.value;",
                vec![],
            )
            .await;
        browser.press("#schedule-form button[type='submit']").await;
        let diagnostic = browser
            .wait_text("[data-section='form-errors'] [data-diagnostics]", "schedules/never-ever.yaml:")
            .await;
        assert!(diagnostic.contains("never"), "{diagnostic}");
        assert!(job(&base, "sch_never-ever").is_none());
        browser
            .js("document.querySelector('#schedule-cron').value = ''; return true;", vec![])
            .await;
        browser.type_into("#schedule-cron", "*/5 * * * *").await;
        browser.press("#schedule-form button[type='submit']").await;
        let created = eventually("the created schedule in the API", || job(&base, "sch_never-ever"));
        assert_eq!(created["schedule"], "*/5 * * * *", "{created}");
        browser
            .wait_text("[data-schedule='sch_never-ever']", "*/5 * * * *")
            .await;
        assert!(dir.path().join("schedules/never-ever.yaml").exists());
        browser.check("after pausing and creating", "ops-schedules-created").await;

        // Agents: the failing health check, the shell agent's executions, then stop it.
        browser.route("#/agents", "agents").await;
        let ghost = browser.wait_text("[data-agent='ghost']", "failed").await;
        assert!(ghost.contains("ghost-plugin-that-is-not-there"), "{ghost}");
        let score = browser
            .js("return document.querySelector(\"[data-agent='ghost'] [data-score]\").dataset.score;", vec![])
            .await;
        assert_eq!(score, json!("0.00"), "a failing check zeroes the score");
        browser
            .wait_element(&format!("[data-agent='shell'] [data-execution='{run}/second'] a[data-log]"))
            .await;
        let shell = browser.text("[data-agent='shell']").await;
        assert!(shell.contains("100 %"), "the success rate: {shell}");
        browser.check("the agents page", "ops-agents").await;
        browser.press("[data-agent='shell'] button[data-action='stop']")
            .await;
        eventually("the API to report shell disabled", || {
            let (_, shell) = get(&base, "/api/agents/shell");
            (shell["enabled"] == false).then_some(())
        });
        browser
            .wait_element("[data-agent='shell'][data-state='disabled'] button[data-action='start']")
            .await;

        // Manifests: the invalid manifest's diagnostic with file:line:column.
        browser.route("#/manifests", "manifests").await;
        let problems = browser
            .wait_text("[data-problems]", "workflows/broken.yaml:4:5")
            .await;
        assert!(problems.contains("agnt"), "{problems}");
        browser
            .wait_text("[data-object='Workflow/wf_broken']", "invalid")
            .await;
        browser
            .wait_text("[data-object='Schedule/sch_never-ever']", "applied")
            .await;
        // The kind filter.
        browser
            .js(
                "const s = document.querySelector('#manifest-kind'); s.value = 'Schedule'; s.dispatchEvent(new Event('change')); return true;",
                vec![],
            )
            .await;
        browser
            .wait_for(
                "only schedules listed",
                "const rows = [...document.querySelectorAll('[data-object]')]; return rows.length === 3 && rows.every((r) => r.dataset.object.startsWith('Schedule/'));",
                vec![],
            )
            .await;
        // The diff: nothing to change, then a real change shown as added and removed lines.
        browser.press("button[data-action='diff']").await;
        browser.wait_element("[data-diff]").await;
        fs::write(
            dir.path().join("workflows/tick.yaml"),
            TICK.replace("Two quick shell steps", "Two quick steps, edited"),
        )
        .unwrap();
        browser.press("button[data-action='diff']").await;
        let lines = browser
            .wait_for(
                "the edit in the diff (unless the watcher applied it first)",
                "const d = document.querySelector(\"[data-diff] [data-object='Workflow/wf_tick']\"); if (d) return [d.querySelector('.diff-del')?.textContent, d.querySelector('.diff-add')?.textContent]; return document.querySelector('[data-no-changes]') ? 'applied' : null;",
                vec![],
            )
            .await;
        if lines != json!("applied") {
            assert_eq!(
                lines,
                json!(["-description: Two quick shell steps", "+description: Two quick steps, edited"])
            );
        }
        // The page's line diff, on two known texts: hunks with context, lines marked.
        let hunks = browser
            .js(
                "return import('/assets/pages/manifests.js').then((m) => m.lineDiff('a\\nb\\nc\\nd\\ne\\nf\\ng\\nh\\n', 'a\\nb\\nc\\nd\\nE\\nf\\ng\\nh\\ni\\n', 1).map((h) => [h.header, h.lines.map((l) => l.op + l.text)]));",
                vec![],
            )
            .await;
        assert_eq!(
            hunks,
            json!([
                ["@@ -4,3 +4,3 @@", [" d", "-e", "+E", " f"]],
                ["@@ -8,1 +8,2 @@", [" h", "+i"]]
            ])
        );
        // Sync now: the edit is in force.
        browser.press("button[data-action='sync']").await;
        browser.wait_text("#toasts", "Synced").await;
        eventually("the edit in force", || {
            let (_, wf) = get(&base, "/api/workflows/wf_tick");
            (wf["description"] == "Two quick steps, edited").then_some(())
        });
        browser.check("the manifests page", "ops-manifests").await;

        // Readable at 768 px.
        browser.resize((768, 1000)).await;
        browser.route("#/schedules", "schedules").await;
        browser
            .wait_text("[data-schedule='sch_never-ever']", "*/5 * * * *")
            .await;
        browser.screenshot("ops-schedules-768").await;
        browser.route("#/manifests", "manifests").await;
        browser.wait_text("[data-problems]", "workflows/broken.yaml:4:5").await;
        browser.screenshot("ops-manifests-768").await;
        browser.assert_no_errors("at 768 px").await;
        browser.close().await;
    });
}
