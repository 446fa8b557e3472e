//! Impact selection, the pure part: which `run_tests` steps a change affects. A step (or its
//! workflow) says `select: affected`; each suite of a `test_runner` Agent manifest may
//! declare `paths:` globs (relative to the top of the repository, `*` stopping at `/`,
//! `**` crossing it, as trigger paths). [`decide`] takes the changed files (or why they are
//! unknown), the selectable steps with their suites' globs, the globs of every suite those
//! agents declare, and the manifest files that define the workflow, and answers per step:
//! run, and which changed paths decided it, or skip, and why. Safe by default: no baseline,
//! a changed manifest, or a changed file no suite claims runs everything. No IO: the engine
//! and `tests affected` gather the changes (`source::changes`) and call this.

use globset::{GlobSet, GlobSetBuilder};
use serde::Serialize;
use serde_json::Value;

/// The value of `select` that turns impact selection on (`all`, the default, turns it off).
pub const AFFECTED: &str = "affected";

/// Whether `step` runs only when affected: its own `select`, else its workflow's.
pub fn selects_affected(step: &Value, workflow: &Value) -> bool {
    step.get("select")
        .or_else(|| workflow.get("select"))
        .and_then(Value::as_str)
        == Some(AFFECTED)
}

/// A suite's `paths:` globs, compiled once.
#[derive(Debug, Clone)]
pub struct SuitePaths {
    patterns: Vec<String>,
    set: GlobSet,
}

impl SuitePaths {
    /// The globs `patterns`; the error names the first invalid one.
    pub fn compile(patterns: &[String]) -> Result<SuitePaths, String> {
        let mut builder = GlobSetBuilder::new();
        for pattern in patterns {
            builder.add(crate::spec::trigger::glob(pattern)?);
        }
        let set = builder
            .build()
            .map_err(|e| format!("invalid globs {}: {e}", patterns.join(", ")))?;
        Ok(SuitePaths {
            patterns: patterns.to_vec(),
            set,
        })
    }

    /// The `paths` of suite `suite` in an Agent manifest: `None` when the suite (or its
    /// `paths`) is absent, an error when a glob is invalid (validation rejects those).
    pub fn of_suite(agent: &Value, suite: &str) -> Option<Result<SuitePaths, String>> {
        let paths = agent.get("suites")?.get(suite)?.get("paths")?.as_array()?;
        let patterns: Vec<String> = paths
            .iter()
            .filter_map(Value::as_str)
            .map(str::to_owned)
            .collect();
        Some(SuitePaths::compile(&patterns))
    }

    /// Every suite of an Agent manifest that declares `paths`, by name (invalid ones left
    /// out: validation reports them).
    pub fn all_of(agent: &Value) -> Vec<(String, SuitePaths)> {
        let Some(suites) = agent.get("suites").and_then(Value::as_object) else {
            return Vec::new();
        };
        suites
            .keys()
            .filter_map(|name| {
                let paths = SuitePaths::of_suite(agent, name)?.ok()?;
                Some((name.clone(), paths))
            })
            .collect()
    }

    /// Whether a changed file (a path relative to the repository's top) is under the globs.
    pub fn matches(&self, path: &str) -> bool {
        self.set.is_match(path)
    }

    /// The globs as written.
    pub fn patterns(&self) -> &[String] {
        &self.patterns
    }

    /// The globs, comma-separated, as reasons show them.
    pub fn describe(&self) -> String {
        self.patterns.join(", ")
    }
}

/// The files a change touched, or why they are unknown.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "known", rename_all = "snake_case")]
pub enum Baseline {
    /// The change is known.
    Changes {
        /// Where the list comes from, e.g. "parameters base..head (1a2b3c4..5d6e7f8) in the
        /// project's repository".
        from: String,
        /// The changed paths, relative to the repository's top, sorted, each once.
        files: Vec<String>,
    },
    /// Nothing to compare with: everything runs.
    Unknown {
        /// Why, e.g. "no earlier run of this workflow succeeded on a git revision".
        why: String,
    },
}

/// A step that may be skipped: a `run_tests` step with `select: affected`.
#[derive(Debug, Clone)]
pub struct Selectable {
    /// The step's name.
    pub step: String,
    /// Its suite.
    pub suite: String,
    /// The suite's `paths`; `None` when it declares none (it always runs).
    pub paths: Option<SuitePaths>,
}

/// What becomes of one selectable step.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct StepDecision {
    /// The step.
    pub step: String,
    /// Its suite.
    pub suite: String,
    /// Whether it runs.
    pub run: bool,
    /// Why, in a few words: "api/users.py changed (api/**)", "no change under api/**".
    pub reason: String,
    /// The suite's globs.
    pub paths: Vec<String>,
    /// The changed paths that decided it: those its globs matched, or (when everything
    /// runs) the paths that made everything run.
    pub decided_by: Vec<String>,
}

/// The whole decision for a run.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ImpactPlan {
    /// The change the plan is about.
    pub baseline: Baseline,
    /// Set when everything runs regardless of globs, and why.
    pub everything: Option<String>,
    /// One decision per selectable step, in the workflow's order.
    pub steps: Vec<StepDecision>,
}

impl ImpactPlan {
    /// The line a step's log gets about the plan (one note).
    pub fn note(&self, decision: &StepDecision) -> String {
        let verb = if decision.run { "runs" } else { "skipped" };
        match &self.everything {
            Some(why) => format!("impact selection: everything runs: {why}"),
            None => format!(
                "impact selection: suite `{}` {verb}: {}",
                decision.suite, decision.reason
            ),
        }
    }
}

/// How many paths a reason names before "and N more".
const SHOWN: usize = 3;

fn list(paths: &[String]) -> String {
    let mut text = paths
        .iter()
        .take(SHOWN)
        .cloned()
        .collect::<Vec<_>>()
        .join(", ");
    if paths.len() > SHOWN {
        text.push_str(&format!(" and {} more", paths.len() - SHOWN));
    }
    text
}

/// Whether `path` is `manifest` or lies under it (a directory given with a trailing `/`).
fn under(path: &str, manifest: &str) -> bool {
    match manifest.strip_suffix('/') {
        Some(dir) => dir.is_empty() || path.starts_with(manifest) || path == dir,
        None => path == manifest,
    }
}

/// Decides which selectable steps run. `claims` holds the globs of every suite of the agents
/// involved (a changed file none of them matches makes everything run); `manifests` the
/// workflow's own manifest files and directories (`dir/`), relative to the repository's
/// top (a change there makes everything run).
pub fn decide(
    baseline: Baseline,
    steps: &[Selectable],
    claims: &[SuitePaths],
    manifests: &[String],
) -> ImpactPlan {
    let (everything, trigger): (Option<String>, Vec<String>) = match &baseline {
        Baseline::Unknown { why } => (Some(format!("no baseline: {why}")), Vec::new()),
        Baseline::Changes { files, .. } => {
            let changed_manifests: Vec<String> = files
                .iter()
                .filter(|f| manifests.iter().any(|m| under(f, m)))
                .cloned()
                .collect();
            let unclaimed: Vec<String> = files
                .iter()
                .filter(|f| !claims.iter().any(|c| c.matches(f)))
                .cloned()
                .collect();
            if !changed_manifests.is_empty() {
                (
                    Some(format!(
                        "the workflow's manifests changed ({})",
                        list(&changed_manifests)
                    )),
                    changed_manifests,
                )
            } else if !unclaimed.is_empty() {
                (
                    Some(format!("no suite claims {}", list(&unclaimed))),
                    unclaimed,
                )
            } else {
                (None, Vec::new())
            }
        }
    };
    let files: &[String] = match &baseline {
        Baseline::Changes { files, .. } => files,
        Baseline::Unknown { .. } => &[],
    };
    let decisions = steps
        .iter()
        .map(|selectable| {
            let paths: Vec<String> = selectable
                .paths
                .as_ref()
                .map(|p| p.patterns().to_vec())
                .unwrap_or_default();
            let decision = |run: bool, reason: String, decided_by: Vec<String>| StepDecision {
                step: selectable.step.clone(),
                suite: selectable.suite.clone(),
                run,
                reason,
                paths: paths.clone(),
                decided_by,
            };
            if let Some(why) = &everything {
                return decision(true, format!("everything runs: {why}"), trigger.clone());
            }
            let Some(globs) = &selectable.paths else {
                return decision(
                    true,
                    "the suite declares no paths, so every change may affect it".to_owned(),
                    Vec::new(),
                );
            };
            let matched: Vec<String> = files.iter().filter(|f| globs.matches(f)).cloned().collect();
            if matched.is_empty() {
                decision(
                    false,
                    format!("no change under {}", globs.describe()),
                    Vec::new(),
                )
            } else {
                decision(
                    true,
                    format!("{} changed ({})", list(&matched), globs.describe()),
                    matched,
                )
            }
        })
        .collect();
    ImpactPlan {
        baseline,
        everything,
        steps: decisions,
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn globs(patterns: &[&str]) -> SuitePaths {
        SuitePaths::compile(&patterns.iter().map(|p| p.to_string()).collect::<Vec<_>>()).unwrap()
    }

    #[test]
    fn globs_match_paths_from_the_repository_top() {
        let api = globs(&["api/**", "shared/*.py"]);
        for (path, expected) in [
            ("api/users.py", true),
            ("api/v1/deep/users.py", true),
            ("shared/util.py", true),
            ("shared/deep/util.py", false),
            ("web/api/users.py", false),
            ("apix/users.py", false),
            ("README.md", false),
        ] {
            assert_eq!(api.matches(path), expected, "{path}");
        }
        assert_eq!(api.describe(), "api/**, shared/*.py");
        assert_eq!(
            SuitePaths::compile(&["api/[".to_owned()]).unwrap_err(),
            "invalid glob `api/[`: unclosed character class; missing ']'"
        );
    }

    #[test]
    fn suites_paths_read_from_an_agent_manifest() {
        let agent = json!({"type": "test_runner", "suites": {
            "api": {"command": ["x"], "paths": ["api/**"]},
            "web": {"command": ["x"]},
            "bad": {"command": ["x"], "paths": ["["]},
        }});
        assert!(SuitePaths::of_suite(&agent, "api")
            .unwrap()
            .unwrap()
            .matches("api/a"));
        assert!(SuitePaths::of_suite(&agent, "web").is_none());
        assert!(SuitePaths::of_suite(&agent, "nope").is_none());
        assert!(SuitePaths::of_suite(&agent, "bad").unwrap().is_err());
        let all: Vec<String> = SuitePaths::all_of(&agent)
            .into_iter()
            .map(|(n, _)| n)
            .collect();
        assert_eq!(all, ["api"]);
    }

    #[test]
    fn the_step_says_select_before_its_workflow() {
        let workflow = json!({"select": "affected"});
        assert!(selects_affected(&json!({}), &workflow));
        assert!(!selects_affected(&json!({"select": "all"}), &workflow));
        assert!(selects_affected(&json!({"select": "affected"}), &json!({})));
        assert!(!selects_affected(&json!({}), &json!({})));
    }

    /// The decision table: each row a baseline and what becomes of the steps `api`
    /// (api/**, shared/**), `web` (web/**) and `smoke` (no paths).
    #[test]
    fn the_decision_table() {
        let api = globs(&["api/**", "shared/**"]);
        let web = globs(&["web/**"]);
        let steps = vec![
            Selectable {
                step: "run_api".into(),
                suite: "api".into(),
                paths: Some(api.clone()),
            },
            Selectable {
                step: "run_web".into(),
                suite: "web".into(),
                paths: Some(web.clone()),
            },
            Selectable {
                step: "run_smoke".into(),
                suite: "smoke".into(),
                paths: None,
            },
        ];
        let claims = [api, web];
        let manifests = [
            "workflows/".to_owned(),
            "agents/test_runner.yaml".to_owned(),
        ];
        let changes = |files: &[&str]| Baseline::Changes {
            from: "test".into(),
            files: files.iter().map(|f| f.to_string()).collect(),
        };
        struct Row {
            name: &'static str,
            baseline: Baseline,
            everything: Option<&'static str>,
            runs: [bool; 3],
            reasons: [&'static str; 3],
        }
        let rows = [
            Row {
                name: "a change under one suite's paths skips the other",
                baseline: changes(&["api/users.py"]),
                everything: None,
                runs: [true, false, true],
                reasons: [
                    "api/users.py changed (api/**, shared/**)",
                    "no change under web/**",
                    "the suite declares no paths, so every change may affect it",
                ],
            },
            Row {
                name: "a shared path affects its suites",
                baseline: changes(&["shared/a.py", "web/b.js"]),
                everything: None,
                runs: [true, true, true],
                reasons: [
                    "shared/a.py changed (api/**, shared/**)",
                    "web/b.js changed (web/**)",
                    "the suite declares no paths, so every change may affect it",
                ],
            },
            Row {
                name: "no change skips every suite with paths",
                baseline: changes(&[]),
                everything: None,
                runs: [false, false, true],
                reasons: [
                    "no change under api/**, shared/**",
                    "no change under web/**",
                    "the suite declares no paths, so every change may affect it",
                ],
            },
            Row {
                name: "no baseline runs everything",
                baseline: Baseline::Unknown {
                    why: "first run".into(),
                },
                everything: Some("no baseline: first run"),
                runs: [true; 3],
                reasons: ["everything runs: no baseline: first run"; 3],
            },
            Row {
                name: "an unclaimed file runs everything",
                baseline: changes(&["api/a.py", "README.md"]),
                everything: Some("no suite claims README.md"),
                runs: [true; 3],
                reasons: ["everything runs: no suite claims README.md"; 3],
            },
            Row {
                name: "the workflow's manifest directory runs everything",
                baseline: changes(&["api/a.py", "workflows/other.yaml"]),
                everything: Some("the workflow's manifests changed (workflows/other.yaml)"),
                runs: [true; 3],
                reasons:
                    ["everything runs: the workflow's manifests changed (workflows/other.yaml)"; 3],
            },
            Row {
                name: "its agent's manifest file runs everything",
                baseline: changes(&["agents/test_runner.yaml"]),
                everything: Some("the workflow's manifests changed (agents/test_runner.yaml)"),
                runs: [true; 3],
                reasons:
                    ["everything runs: the workflow's manifests changed (agents/test_runner.yaml)";
                        3],
            },
        ];
        for row in rows {
            let plan = decide(row.baseline, &steps, &claims, &manifests);
            assert_eq!(plan.everything.as_deref(), row.everything, "{}", row.name);
            let runs: Vec<bool> = plan.steps.iter().map(|d| d.run).collect();
            assert_eq!(runs, row.runs, "{}", row.name);
            let reasons: Vec<&str> = plan.steps.iter().map(|d| d.reason.as_str()).collect();
            assert_eq!(reasons, row.reasons, "{}", row.name);
        }
    }

    #[test]
    fn reasons_name_a_few_paths_and_count_the_rest() {
        let api = globs(&["api/**"]);
        let steps = [Selectable {
            step: "s".into(),
            suite: "api".into(),
            paths: Some(api.clone()),
        }];
        let files: Vec<String> = (0..5).map(|i| format!("api/{i}.py")).collect();
        let plan = decide(
            Baseline::Changes {
                from: "x".into(),
                files: files.clone(),
            },
            &steps,
            &[api],
            &[],
        );
        assert_eq!(
            plan.steps[0].reason,
            "api/0.py, api/1.py, api/2.py and 2 more changed (api/**)"
        );
        assert_eq!(plan.steps[0].decided_by, files);
        assert_eq!(
            plan.note(&plan.steps[0]),
            "impact selection: suite `api` runs: api/0.py, api/1.py, api/2.py and 2 more changed (api/**)"
        );
    }
}
