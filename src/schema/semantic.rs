//! The rules a JSON Schema cannot express: step names and `depends_on` forming a DAG,
//! references between objects (agents and their actions, templates, workflows), and the
//! detailed messages for the cron, timezone, duration and condition formats. No IO.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use serde_json::Value;

use crate::diagnostics::Diagnostic;
use crate::manifest::{Kind, Manifest};
use crate::spec::agents::{self, BUILTIN_AGENTS};
use crate::util::did_you_mean;

/// The detailed message for a string that failed one of the custom formats, and the
/// 1-based character inside the string where the problem is, when known.
pub fn format_message(format: &str, text: &str) -> (String, Option<u32>) {
    let detail = match format {
        "duration" => crate::duration::parse_duration(text)
            .err()
            .map(|e| (e.to_string(), None)),
        "cron" => crate::cron::CronSchedule::parse(text)
            .err()
            .map(|e| (format!("invalid cron expression `{text}`: {e}"), None)),
        "timezone" => crate::cron::parse_time_zone(text)
            .err()
            .map(|e| (e.to_string(), None)),
        "condition" => crate::lang::condition::parse_condition(text)
            .err()
            .map(|e| (e.validation_message(), u32::try_from(e.column).ok())),
        "git-url" => crate::spec::git::check_url(text).err().map(|e| (e, None)),
        "git-branch" => crate::spec::git::check_branch(text)
            .err()
            .map(|e| (e, None)),
        "repository-path" => crate::spec::git::check_path(text).err().map(|e| (e, None)),
        "glob" => crate::spec::trigger::glob(text).err().map(|e| (e, None)),
        "payload-template" => crate::lang::delivery_template::check(text)
            .err()
            .map(|e| (e, None)),
        // A Quarantine's `until`: the message its compilation gives.
        "date" => {
            crate::spec::quarantine::compile_entry("", 0, &serde_json::json!({"until": text}))
                .err()
                .filter(|(field, _)| field == "until")
                .map(|(_, message)| (message, None))
        }
        _ => None,
    };
    detail.unwrap_or_else(|| (format!("`{text}` is not a valid {format}"), None))
}

/// Checks one object on its own: for workflows and templates, unique step names and a
/// `depends_on` graph without unknown steps or cycles; for triggers, the rules between
/// fields (`crate::spec::trigger::check_manifest`).
pub fn check_object(manifest: &Manifest) -> Vec<Diagnostic> {
    let mut diagnostics = Vec::new();
    if manifest.kind == Kind::Quarantine {
        return check_quarantine_entries(manifest);
    }
    if manifest.kind == Kind::Trigger {
        for (pointer, message) in crate::spec::trigger::check_manifest(&manifest.value) {
            diagnostics.push(manifest.error_at(&pointer, false, message));
        }
        return diagnostics;
    }
    if !matches!(manifest.kind, Kind::Workflow | Kind::WorkflowTemplate) {
        return diagnostics;
    }
    let Some(steps) = manifest.value.get("steps").and_then(Value::as_array) else {
        return diagnostics;
    };
    if steps.is_empty() && manifest.kind == Kind::WorkflowTemplate {
        diagnostics.push(Diagnostic::warning(
            &manifest.file,
            manifest.locate("/steps", false).0,
            manifest.locate("/steps", false).1,
            &format!("{}/steps", manifest.pointer),
            "template has no steps: a workflow using it would do nothing".to_owned(),
        ));
    }
    let mut index_of: HashMap<&str, usize> = HashMap::new();
    for (index, step) in steps.iter().enumerate() {
        let Some(name) = step.get("name").and_then(Value::as_str) else {
            continue;
        };
        if let Some(first) = index_of.get(name) {
            let (line, _) = manifest.locate(&format!("/steps/{first}/name"), false);
            diagnostics.push(manifest.error_at(
                &format!("/steps/{index}/name"),
                false,
                format!("duplicate step name `{name}` (first used at line {line}): step names must be unique"),
            ));
        } else {
            index_of.insert(name, index);
        }
    }
    let mut edges: Vec<Vec<usize>> = vec![Vec::new(); steps.len()];
    for (index, step) in steps.iter().enumerate() {
        let Some(depends_on) = step.get("depends_on").and_then(Value::as_array) else {
            continue;
        };
        for (position, dependency) in depends_on.iter().enumerate() {
            let Some(dependency) = dependency.as_str() else {
                continue;
            };
            let pointer = format!("/steps/{index}/depends_on/{position}");
            match index_of.get(dependency) {
                Some(&target) if target == index => diagnostics.push(manifest.error_at(
                    &pointer,
                    false,
                    format!("step `{dependency}` depends on itself"),
                )),
                Some(&target) => edges[index].push(target),
                None => {
                    let names: Vec<&str> = index_of.keys().copied().collect();
                    let hint = did_you_mean(dependency, names.iter().copied())
                        .map(|s| format!("; did you mean `{s}`?"))
                        .unwrap_or_default();
                    let mut sorted = names.clone();
                    sorted.sort_unstable();
                    diagnostics.push(manifest.error_at(
                        &pointer,
                        false,
                        format!(
                            "unknown step `{dependency}` in depends_on{hint} (steps: {})",
                            sorted.join(", ")
                        ),
                    ));
                }
            }
        }
    }
    check_conditions(manifest, steps, &mut diagnostics);
    check_parameter_references(manifest, steps, &mut diagnostics);
    check_shell_injection(manifest, steps, &mut diagnostics);
    if let Some(cycle) = find_cycle(&edges) {
        let name_of = |i: usize| steps[i].get("name").and_then(Value::as_str).unwrap_or("?");
        let path: Vec<&str> = cycle.iter().map(|&i| name_of(i)).collect();
        diagnostics.push(manifest.error_at(
            &format!("/steps/{}/depends_on", cycle[0]),
            false,
            format!(
                "dependency cycle: {} -> {}: depends_on must form a DAG",
                path.join(" -> "),
                path[0]
            ),
        ));
    }
    diagnostics
}

/// Every step's `if:` parses as the engine evaluates it, and names only functions and
/// references: a bare `always` would be read as an unset reference, false, and skip the step.
fn check_conditions(manifest: &Manifest, steps: &[Value], diagnostics: &mut Vec<Diagnostic>) {
    for (index, step) in steps.iter().enumerate() {
        let Some(condition) = step.get("if").and_then(Value::as_str) else {
            continue;
        };
        if let Err(problem) = crate::lang::if_condition::check(condition) {
            diagnostics.push(manifest.error_at(
                &format!("/steps/{index}/if"),
                false,
                format!("invalid condition `{condition}`: {problem}"),
            ));
        }
    }
}

/// Every `{{ params.NAME }}` in the steps names a declared parameter, when the object declares
/// its parameters (a workflow that uses a template gets its steps and declarations there; one
/// without declarations accepts any parameter). An undeclared name could only fail its step.
fn check_parameter_references(
    manifest: &Manifest,
    steps: &[Value],
    diagnostics: &mut Vec<Diagnostic>,
) {
    if manifest.value.get("template").is_some() {
        return;
    }
    let Some(declared) = manifest
        .value
        .get("parameters")
        .and_then(Value::as_object)
        .filter(|declared| !declared.is_empty())
    else {
        return;
    };
    let mut strings = Vec::new();
    for (index, step) in steps.iter().enumerate() {
        collect_strings(step, format!("/steps/{index}"), &mut strings);
    }
    for (pointer, text) in strings {
        for reference in template_references(text) {
            let Some(path) = reference.strip_prefix("params.") else {
                continue;
            };
            let name = path.split(['.', '[']).next().unwrap_or_default();
            if name.is_empty() || declared.contains_key(name) {
                continue;
            }
            let hint = did_you_mean(name, declared.keys().map(String::as_str))
                .map(|s| format!("; did you mean `{s}`?"))
                .unwrap_or_default();
            let names: Vec<&str> = declared.keys().map(String::as_str).collect();
            diagnostics.push(manifest.error_at(
                &pointer,
                false,
                format!(
                    "unknown parameter `{name}` in `{{{{ {reference} }}}}`{hint} (declared: {})",
                    names.join(", ")
                ),
            ));
        }
    }
}

/// Warns where a `{{ params.* }}` (or `{{ payload.* }}`) template lands inside a shell
/// script: a step `command` given as one string (run with `sh -c`), the script argument of
/// `sh -c` / `bash -c` and the like in a `command` array, and the same in the shell agent's
/// `parameters.command`. The value is pasted into the script's text before the shell parses
/// it, so a parameter filled from a webhook (a pull request title such as `hi; touch x`) runs
/// as code: the script-injection class GitHub Actions workflows have, as actionlint reports it.
fn check_shell_injection(manifest: &Manifest, steps: &[Value], diagnostics: &mut Vec<Diagnostic>) {
    for (pointer, reference) in shell_pasted_references(steps) {
        let variable = env_name_for(reference);
        diagnostics.push(manifest.warning_at(
            &pointer,
            format!(
                "`{{{{ {reference} }}}}` is pasted into a shell script before the shell parses it: a value such as `x; rm -rf ~` runs as code (script injection); pass it through the environment instead: `env: {{{variable}: \"{{{{ {reference} }}}}\"}}` on the step and `\"${variable}\"` in the script"
            ),
        ));
    }
}

/// The `{{ params.* }}` / `{{ payload.* }}` references pasted into shell scripts in `steps`,
/// each with the JSON pointer of the script.
fn shell_pasted_references(steps: &[Value]) -> Vec<(String, &str)> {
    let mut found = Vec::new();
    for (index, step) in steps.iter().enumerate() {
        let mut commands = Vec::new();
        if let Some(command) = step.get("command") {
            commands.push((format!("/steps/{index}/command"), command));
        }
        let shell_agent = step
            .get("agent")
            .and_then(Value::as_str)
            .is_none_or(|agent| agent == "shell");
        if let Some(command) = step
            .get("parameters")
            .and_then(|p| p.get("command"))
            .filter(|_| shell_agent)
        {
            commands.push((format!("/steps/{index}/parameters/command"), command));
        }
        for (pointer, command) in commands {
            let Some((pointer, script)) = shell_script(&pointer, command) else {
                continue;
            };
            for reference in template_references(script) {
                if is_untrusted_reference(reference) {
                    found.push((pointer.clone(), reference));
                }
            }
        }
    }
    found
}

/// The JSON pointer and text of the shell script inside a command: the whole string of a
/// string command, or the script argument of a shell run with `-c` in an argv array.
fn shell_script<'a>(pointer: &str, command: &'a Value) -> Option<(String, &'a str)> {
    match command {
        Value::String(text) => Some((pointer.to_owned(), text)),
        Value::Array(items) => {
            let argv: Vec<&str> = items.iter().filter_map(Value::as_str).collect();
            if argv.len() != items.len() {
                return None;
            }
            shell_script_index(&argv).map(|i| (format!("{pointer}/{i}"), argv[i]))
        }
        _ => None,
    }
}

/// The shells whose `-c` takes a script as its argument.
const SHELLS: &[&str] = &[
    "sh", "bash", "dash", "zsh", "ksh", "mksh", "ash", "busybox", "fish", "pwsh", "posh", "yash",
];

/// The index of the script argument in an argv that runs a shell with `-c` (`sh -c`,
/// `/bin/bash -lc`, `bash -e -o pipefail -c`, `env FOO=1 sh -ec`, `busybox sh -c`).
fn shell_script_index(argv: &[&str]) -> Option<usize> {
    let base = |arg: &str| arg.rsplit('/').next().unwrap_or(arg).to_owned();
    let mut i = 0;
    // `env [-i] [NAME=VALUE]... shell`, as `/usr/bin/env bash` scripts start.
    if argv.first().is_some_and(|a| base(a) == "env") {
        i = 1;
        while argv
            .get(i)
            .is_some_and(|a| a.starts_with('-') || a.contains('='))
        {
            i += 1;
        }
    }
    let shell = base(argv.get(i)?);
    if !SHELLS.contains(&shell.as_str()) {
        return None;
    }
    i += 1;
    if shell == "busybox" {
        if !argv.get(i).is_some_and(|a| SHELLS.contains(a)) {
            return None;
        }
        i += 1;
    }
    let mut script_follows = false;
    while let Some(arg) = argv.get(i) {
        match *arg {
            "--" => return script_follows.then_some(i + 1).filter(|&n| n < argv.len()),
            "-o" | "+o" | "-O" | "+O" => i += 2,
            "-c" | "-command" | "-Command" => {
                script_follows = true;
                i += 1;
            }
            long if long.starts_with("--") => i += 1,
            short if short.starts_with('-') || short.starts_with('+') => {
                script_follows |= short.starts_with('-') && short.contains('c');
                i += 1;
            }
            _ => return script_follows.then_some(i),
        }
    }
    None
}

/// Whether a template reference carries a value from outside the manifest: a run parameter
/// (set by whoever starts the run, or mapped from a webhook payload by a trigger) or a payload.
fn is_untrusted_reference(reference: &str) -> bool {
    ["params", "payload"].iter().any(|root| {
        reference
            .strip_prefix(root)
            .is_some_and(|rest| rest.is_empty() || rest.starts_with(['.', '[']))
    })
}

/// An environment variable name for a reference: `params.pr_title` → `PR_TITLE`.
fn env_name_for(reference: &str) -> String {
    let last = reference
        .rsplit(['.', '['])
        .find(|part| !part.is_empty())
        .unwrap_or("value");
    let mut name: String = last
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() {
                c.to_ascii_uppercase()
            } else {
                '_'
            }
        })
        .collect();
    if name.is_empty() || name.starts_with(|c: char| c.is_ascii_digit()) {
        name.insert_str(0, "VALUE_");
    }
    name
}

/// Every string inside `value` with its JSON pointer.
fn collect_strings<'a>(value: &'a Value, pointer: String, out: &mut Vec<(String, &'a str)>) {
    match value {
        Value::String(text) => out.push((pointer, text)),
        Value::Array(items) => {
            for (index, item) in items.iter().enumerate() {
                collect_strings(item, format!("{pointer}/{index}"), out);
            }
        }
        Value::Object(map) => {
            for (key, item) in map {
                let escaped = key.replace('~', "~0").replace('/', "~1");
                collect_strings(item, format!("{pointer}/{escaped}"), out);
            }
        }
        _ => {}
    }
}

/// The trimmed references of the `{{ ... }}` in a string, as the engine substitutes them.
fn template_references(text: &str) -> Vec<&str> {
    crate::lang::template::references(text)
}

/// A cycle in a graph given as adjacency lists, as the nodes along it.
fn find_cycle(edges: &[Vec<usize>]) -> Option<Vec<usize>> {
    #[derive(Clone, Copy, PartialEq)]
    enum Mark {
        New,
        Open,
        Done,
    }
    let mut marks = vec![Mark::New; edges.len()];
    for start in 0..edges.len() {
        if marks[start] != Mark::New {
            continue;
        }
        // Iterative DFS: (node, next edge to follow); the stack is the current path.
        let mut stack: Vec<(usize, usize)> = vec![(start, 0)];
        marks[start] = Mark::Open;
        while let Some(&mut (node, ref mut next)) = stack.last_mut() {
            if let Some(&target) = edges[node].get(*next) {
                *next += 1;
                match marks[target] {
                    Mark::Open => {
                        let from = stack.iter().position(|(n, _)| *n == target)?;
                        return Some(stack[from..].iter().map(|(n, _)| *n).collect());
                    }
                    Mark::New => {
                        marks[target] = Mark::Open;
                        stack.push((target, 0));
                    }
                    Mark::Done => {}
                }
            } else {
                marks[node] = Mark::Done;
                stack.pop();
            }
        }
    }
    None
}

/// What other objects can refer to, gathered from the whole snapshot.
#[derive(Debug, Default)]
pub struct Catalog {
    /// Agent manifests by name: their type and declared actions.
    agents: BTreeMap<String, (String, Option<Vec<String>>)>,
    /// Agent manifests by name, whole: what a test_runner configures (suites, environments).
    agent_specs: BTreeMap<String, Value>,
    /// Per workflow id, the parameters it declares (or its template does) and the ones it
    /// presets for its template: what a run's parameters are checked against.
    workflow_parameters: BTreeMap<String, (Option<Value>, Option<String>)>,
    /// Per template name and id, the parameters it declares.
    template_parameters: BTreeMap<String, Option<Value>>,
    /// Workflow ids, and names to ids for hints.
    workflows: BTreeSet<String>,
    workflow_names: BTreeMap<String, String>,
    /// Template names and ids.
    templates: BTreeSet<String>,
    /// Per workflow id, the parameters its steps paste into a shell script, each with the
    /// place (`file:line:column`) of the first script.
    shell_params: BTreeMap<String, BTreeMap<String, String>>,
}

impl Catalog {
    /// Builds the catalog from every manifest of the snapshot, valid or not: an object whose
    /// new version is invalid keeps its last good version, so references to it still hold.
    pub fn new<'a>(manifests: impl IntoIterator<Item = &'a Manifest>) -> Self {
        let mut catalog = Catalog::default();
        for manifest in manifests {
            let Some(id) = manifest.id() else { continue };
            let name = manifest.name().unwrap_or_default().to_owned();
            match manifest.kind {
                Kind::Agent => {
                    let agent_type = manifest
                        .value
                        .get("type")
                        .and_then(Value::as_str)
                        .unwrap_or("exec")
                        .to_owned();
                    let actions = manifest.value.get("actions").and_then(|a| {
                        a.as_array().map(|items| {
                            items
                                .iter()
                                .filter_map(Value::as_str)
                                .map(str::to_owned)
                                .collect()
                        })
                    });
                    catalog
                        .agent_specs
                        .insert(name.clone(), Value::clone(&manifest.value));
                    catalog.agents.insert(name, (agent_type, actions));
                }
                Kind::Workflow => {
                    let steps = manifest.value.get("steps").and_then(Value::as_array);
                    let mut pasted = BTreeMap::new();
                    for (pointer, reference) in
                        shell_pasted_references(steps.map(Vec::as_slice).unwrap_or_default())
                    {
                        if let Some(name) = reference
                            .strip_prefix("params.")
                            .and_then(|path| path.split(['.', '[']).next())
                        {
                            let (line, column) = manifest.locate(&pointer, false);
                            pasted
                                .entry(name.to_owned())
                                .or_insert_with(|| format!("{}:{line}:{column}", manifest.file));
                        }
                    }
                    if !pasted.is_empty() {
                        catalog.shell_params.insert(id.clone(), pasted);
                    }
                    catalog.workflow_parameters.insert(
                        id.clone(),
                        (
                            manifest.value.get("parameters").cloned(),
                            manifest
                                .value
                                .get("template")
                                .and_then(Value::as_str)
                                .map(str::to_owned),
                        ),
                    );
                    catalog.workflow_names.insert(name, id.clone());
                    catalog.workflows.insert(id);
                }
                Kind::WorkflowTemplate => {
                    let declared = manifest.value.get("parameters").cloned();
                    catalog
                        .template_parameters
                        .insert(name.clone(), declared.clone());
                    catalog.template_parameters.insert(id.clone(), declared);
                    catalog.templates.insert(name);
                    catalog.templates.insert(id);
                }
                _ => {}
            }
        }
        catalog
    }

    /// The actions an agent offers, or `None` when the agent is unknown; an empty list means
    /// any action is accepted (an exec plugin that does not declare its actions).
    fn actions_of(&self, agent: &str) -> Option<Vec<String>> {
        if let Some((agent_type, declared)) = self.agents.get(agent) {
            if let Some(declared) = declared {
                return Some(declared.clone());
            }
            return Some(
                agents::builtin(agent_type)
                    .map(|b| b.actions.iter().map(|a| (*a).to_owned()).collect())
                    .unwrap_or_default(),
            );
        }
        agents::builtin(agent).map(|b| b.actions.iter().map(|a| (*a).to_owned()).collect())
    }

    fn agent_names(&self) -> Vec<String> {
        let mut names: Vec<String> = BUILTIN_AGENTS.iter().map(|a| a.name.to_owned()).collect();
        names.extend(self.agents.keys().cloned());
        names.sort();
        names.dedup();
        names
    }
}

/// Checks the references of one object against the catalog.
pub fn check_references(manifest: &Manifest, catalog: &Catalog) -> Vec<Diagnostic> {
    let mut diagnostics = Vec::new();
    match manifest.kind {
        Kind::Workflow | Kind::WorkflowTemplate => {
            check_steps(manifest, catalog, &mut diagnostics);
            if let Some(template) = manifest.value.get("template").and_then(Value::as_str) {
                if manifest.kind == Kind::Workflow && !catalog.templates.contains(template) {
                    let hint = did_you_mean(template, catalog.templates.iter().map(String::as_str))
                        .map(|s| format!("; did you mean `{s}`?"))
                        .unwrap_or_default();
                    diagnostics.push(manifest.error_at(
                        "/template",
                        false,
                        format!("unknown workflow template `{template}`{hint}: expected the name or id of a WorkflowTemplate"),
                    ));
                }
            }
        }
        Kind::Schedule | Kind::Trigger => {
            if let Some(workflow) = manifest.value.get("workflow").and_then(Value::as_str) {
                if !catalog.workflows.contains(workflow) {
                    let hint = match catalog.workflow_names.get(workflow) {
                        Some(id) => {
                            format!("; workflows are referred to by id: did you mean `{id}`?")
                        }
                        None => {
                            did_you_mean(workflow, catalog.workflows.iter().map(String::as_str))
                                .map(|s| format!("; did you mean `{s}`?"))
                                .unwrap_or_default()
                        }
                    };
                    diagnostics.push(manifest.error_at(
                        "/workflow",
                        false,
                        format!("unknown workflow `{workflow}`{hint}"),
                    ));
                }
                if manifest.kind == Kind::Trigger {
                    check_delivery_into_shell(manifest, catalog, workflow, &mut diagnostics);
                }
                check_run_parameters(manifest, catalog, workflow, &mut diagnostics);
            }
        }
        Kind::Agent | Kind::Alert | Kind::Dashboard | Kind::Quarantine => {}
    }
    diagnostics
}

/// A schedule's or trigger's `parameters` as its workflow checks them when a fire or a
/// delivery starts a run (the engine's own check, `spec::params::resolve`): a fire with
/// parameters its workflow rejects would only be recorded as skipped, a delivery as failed.
/// A trigger's value filled from the delivery (`{{ payload.x }}`) is known only then: its
/// name is checked, not its type or value.
fn check_run_parameters(
    manifest: &Manifest,
    catalog: &Catalog,
    workflow: &str,
    diagnostics: &mut Vec<Diagnostic>,
) {
    let Some((own, template)) = catalog.workflow_parameters.get(workflow) else {
        return;
    };
    let (declared, preset) = match template {
        Some(template) => {
            let Some(declared) = catalog.template_parameters.get(template) else {
                return;
            };
            (declared.as_ref(), own.as_ref())
        }
        None => (own.as_ref(), None),
    };
    let mut given = preset
        .and_then(Value::as_object)
        .cloned()
        .unwrap_or_default();
    let schedule_parameters = manifest.value.get("parameters").and_then(Value::as_object);
    if let Some(parameters) = schedule_parameters {
        given.extend(parameters.clone());
    }
    let Err(problems) = crate::spec::params::resolve(declared.and_then(Value::as_object), &given)
    else {
        return;
    };
    let (noun, what) = if manifest.kind == Kind::Trigger {
        ("trigger", "deliveries")
    } else {
        ("schedule", "fires")
    };
    for problem in problems.lines() {
        // A problem with a value the manifest gives points at it; any other at the whole.
        let named = schedule_parameters.and_then(|parameters| {
            parameters.keys().find(|name| {
                problem.starts_with(&format!("unknown parameter `{name}`"))
                    || problem.starts_with(&format!("parameter `{name}` "))
            })
        });
        let filled_later = named
            .and_then(|name| schedule_parameters.and_then(|p| p.get(name)))
            .is_some_and(|value| {
                let mut strings = Vec::new();
                collect_strings(value, String::new(), &mut strings);
                strings.iter().any(|(_, text)| text.contains("{{"))
            });
        if filled_later && problem.starts_with("parameter `") {
            continue;
        }
        let pointer = match (named, schedule_parameters) {
            (Some(name), _) => format!(
                "/parameters/{}",
                crate::diagnostics::escape_pointer_segment(name)
            ),
            (None, Some(_)) => "/parameters".to_owned(),
            (None, None) => "/workflow".to_owned(),
        };
        let at_key = problem.starts_with("unknown parameter");
        diagnostics.push(manifest.error_at(
            &pointer,
            at_key,
            format!("{problem}: workflow `{workflow}` would not run on this {noun}'s {what}"),
        ));
    }
}

/// A trigger parameter filled from the delivery (`{{ payload.* }}`, `{{ branch }}`, ...: the
/// sender chooses them) that its workflow pastes into a shell script: the script-injection
/// path end to end, warned about at the trigger's parameter too.
fn check_delivery_into_shell(
    manifest: &Manifest,
    catalog: &Catalog,
    workflow: &str,
    diagnostics: &mut Vec<Diagnostic>,
) {
    let Some(pasted) = catalog.shell_params.get(workflow) else {
        return;
    };
    let Some(parameters) = manifest.value.get("parameters").and_then(Value::as_object) else {
        return;
    };
    for (name, value) in parameters {
        let mut strings = Vec::new();
        collect_strings(value, String::new(), &mut strings);
        let from_delivery = strings
            .iter()
            .any(|(_, text)| !template_references(text).is_empty());
        let Some(script) = pasted.get(name).filter(|_| from_delivery) else {
            continue;
        };
        let escaped = name.replace('~', "~0").replace('/', "~1");
        diagnostics.push(manifest.warning_at(
            &format!("/parameters/{escaped}"),
            format!(
                "parameter `{name}` is filled from the webhook delivery, which its sender chooses, and workflow `{workflow}` pastes `{{{{ params.{name} }}}}` into a shell script (at {script}): a delivery can run commands on this host; pass it to the step through `env:` and use `\"$NAME\"` in the script"
            ),
        ));
    }
}

fn check_steps(manifest: &Manifest, catalog: &Catalog, diagnostics: &mut Vec<Diagnostic>) {
    let Some(steps) = manifest.value.get("steps").and_then(Value::as_array) else {
        return;
    };
    for (index, step) in steps.iter().enumerate() {
        let agent = step.get("agent").and_then(Value::as_str);
        let action = step.get("action").and_then(Value::as_str);
        let has_command = step.get("command").is_some()
            || step
                .get("parameters")
                .and_then(|p| p.get("command"))
                .is_some();
        let agent_name = agent.unwrap_or("shell");
        let Some(actions) = catalog.actions_of(agent_name) else {
            let names = catalog.agent_names();
            let hint = did_you_mean(agent_name, names.iter().map(String::as_str))
                .map(|s| format!("; did you mean `{s}`?"))
                .unwrap_or_default();
            diagnostics.push(manifest.error_at(
                &format!("/steps/{index}/agent"),
                false,
                format!(
                    "unknown agent `{agent_name}`{hint} (expected a built-in agent or an Agent manifest: {})",
                    names.join(", ")
                ),
            ));
            continue;
        };
        if let Some(action) = action {
            if !actions.is_empty() && !actions.iter().any(|a| a == action) {
                let hint = did_you_mean(action, actions.iter().map(String::as_str))
                    .map(|s| format!("; did you mean `{s}`?"))
                    .unwrap_or_default();
                diagnostics.push(manifest.error_at(
                    &format!("/steps/{index}/action"),
                    false,
                    format!(
                        "agent `{agent_name}` has no action `{action}`{hint} (its actions: {})",
                        actions.join(", ")
                    ),
                ));
            }
        }
        if let Some(action) = action {
            check_configured_entry(
                manifest,
                catalog,
                index,
                step,
                agent_name,
                action,
                diagnostics,
            );
        }
        if step.get("select").and_then(Value::as_str) == Some(crate::spec::impact::AFFECTED) {
            let agent_type = catalog
                .agent_specs
                .get(agent_name)
                .and_then(|s| s.get("type"))
                .and_then(Value::as_str)
                .unwrap_or(agent_name);
            if agent_type != "test_runner" || action != Some("run_tests") {
                diagnostics.push(manifest.warning_at(
                    &format!("/steps/{index}/select"),
                    "`select: affected` chooses among test suites: it applies to `test_runner` `run_tests` steps, and this step runs whatever changed".to_owned(),
                ));
            }
        }
        let runs_shell =
            agent.is_none() || (agent_name == "shell" && !catalog.agents.contains_key("shell"));
        if runs_shell && !has_command {
            let pointer = format!("/steps/{index}");
            diagnostics.push(manifest.error_at(
                &pointer,
                false,
                format!(
                    "step `{}` has nothing to run: give it `command` (run by the shell agent) or an `agent` and `action`",
                    step.get("name").and_then(Value::as_str).unwrap_or("?")
                ),
            ));
        }
    }
}

/// A test_runner's `run_tests` names a suite, and `setup_environment` an environment, that
/// the agent's manifest configures (under `suites:` or `environments:`), as the agent
/// requires when the step runs. A value filled in at run time (`{{ ... }}`) is not checked;
/// an agent without a manifest is a warning (it could be applied from elsewhere).
fn check_configured_entry(
    manifest: &Manifest,
    catalog: &Catalog,
    index: usize,
    step: &Value,
    agent_name: &str,
    action: &str,
    diagnostics: &mut Vec<Diagnostic>,
) {
    let spec = catalog.agent_specs.get(agent_name);
    let agent_type = spec
        .and_then(|s| s.get("type"))
        .and_then(Value::as_str)
        .unwrap_or(agent_name);
    if agent_type != "test_runner" {
        return;
    }
    let (parameter, section) = match action {
        "run_tests" => ("test_suite", "suites"),
        "setup_environment" => ("environment", "environments"),
        _ => return,
    };
    let parameters = step.get("parameters");
    if parameters.is_some_and(|p| !p.is_object()) {
        return;
    }
    let singular = section.trim_end_matches('s');
    let Some(value) = parameters.and_then(|p| p.get(parameter)) else {
        let pointer = if parameters.is_some() {
            format!("/steps/{index}/parameters")
        } else {
            format!("/steps/{index}/action")
        };
        diagnostics.push(manifest.error_at(
            &pointer,
            false,
            format!(
                "`{action}` needs the parameter `{parameter}`: the name of a {singular} under `{section}:` of agent `{agent_name}`"
            ),
        ));
        return;
    };
    let pointer = format!("/steps/{index}/parameters/{parameter}");
    let Some(name) = value.as_str() else {
        diagnostics.push(manifest.error_at(
            &pointer,
            false,
            format!(
                "expected the name of a {singular} (a string), found {}",
                crate::schema::describe_value(value)
            ),
        ));
        return;
    };
    if name.contains("{{") {
        return;
    }
    let Some(spec) = spec else {
        diagnostics.push(manifest.warning_at(
            &pointer,
            format!(
                "agent `{agent_name}` has no Agent manifest here to configure the {singular} `{name}`: the step fails unless one with `{section}: {{{name}: {{command: [...]}}}}` is applied"
            ),
        ));
        return;
    };
    let configured: Vec<&str> = spec
        .get(section)
        .and_then(Value::as_object)
        .map(|m| m.keys().map(String::as_str).collect())
        .unwrap_or_default();
    if configured.contains(&name) {
        return;
    }
    let hint = did_you_mean(name, configured.iter().copied())
        .map(|s| format!("; did you mean `{s}`?"))
        .unwrap_or_default();
    diagnostics.push(manifest.error_at(
        &pointer,
        false,
        format!(
            "agent `{agent_name}` has no {singular} `{name}`{hint} (its {section}: {})",
            if configured.is_empty() {
                "none".to_owned()
            } else {
                configured.join(", ")
            }
        ),
    ));
}

/// The alert's actions that name a channel outside `channels` (those some environment's
/// configuration defines under `notifications:`), warned at the action: a notification on
/// such a channel is never delivered.
pub fn check_channels(manifest: &Manifest, channels: &BTreeSet<String>) -> Vec<Diagnostic> {
    let mut diagnostics = Vec::new();
    if manifest.kind != Kind::Alert {
        return diagnostics;
    }
    let Some(actions) = manifest.value.get("actions").and_then(Value::as_array) else {
        return diagnostics;
    };
    for (index, action) in actions.iter().enumerate() {
        let Some(channel) = action.as_str() else {
            continue;
        };
        if channels.contains(channel) {
            continue;
        }
        let hint = did_you_mean(channel, channels.iter().map(String::as_str))
            .map(|s| format!("; did you mean `{s}`?"))
            .unwrap_or_default();
        let configured = if channels.is_empty() {
            "none".to_owned()
        } else {
            channels.iter().cloned().collect::<Vec<_>>().join(", ")
        };
        diagnostics.push(manifest.warning_at(
            &format!("/actions/{index}"),
            format!(
                "no environment configures the notification channel `{channel}`{hint} (configured: {configured}): add it under `notifications:` in config/<environment>.yaml, or this alert notifies nobody"
            ),
        ));
    }
    diagnostics
}

/// The steps of a workflow or template whose `runs_on` (their own, or the workflow's) no
/// worker in `workers` (name, labels: every worker that ever registered) satisfies, warned
/// at the `runs_on` that asks: such a step waits for its `queue_timeout` and fails unless
/// a matching worker connects. A workflow's `runs_on` is warned about once.
pub fn check_runs_on(
    manifest: &Manifest,
    workers: &[(String, BTreeMap<String, String>)],
) -> Vec<Diagnostic> {
    let mut diagnostics = Vec::new();
    if !matches!(manifest.kind, Kind::Workflow | Kind::WorkflowTemplate) {
        return diagnostics;
    }
    let Some(steps) = manifest.value.get("steps").and_then(Value::as_array) else {
        return diagnostics;
    };
    let workflow_runs_on = manifest.value.get("runs_on");
    let mut warned_workflow = false;
    for (index, step) in steps.iter().enumerate() {
        let Some(placement) = crate::spec::workflow::Placement::of(step, workflow_runs_on) else {
            continue;
        };
        let matched = workers
            .iter()
            .any(|(_, have)| placement.labels.iter().all(|(k, v)| have.get(k) == Some(v)));
        if matched {
            continue;
        }
        let own = step.get("runs_on").is_some();
        if !own && warned_workflow {
            continue;
        }
        let pointer = if own {
            format!("/steps/{index}/runs_on")
        } else {
            warned_workflow = true;
            "/runs_on".to_owned()
        };
        let wanted: Vec<String> = placement
            .labels
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect();
        let step_name = step.get("name").and_then(Value::as_str).unwrap_or("?");
        let known: Vec<String> = workers
            .iter()
            .map(|(name, labels)| {
                let labels: Vec<String> = labels.iter().map(|(k, v)| format!("{k}={v}")).collect();
                format!("{name} ({})", labels.join(","))
            })
            .collect();
        diagnostics.push(manifest.warning_at(
            &pointer,
            format!(
                "no worker that has registered has the labels {{{}}} that step `{step_name}`{} needs: it waits for its queue_timeout and fails unless such a worker connects (workers seen: {})",
                wanted.join(", "),
                if own { "" } else { " (and every step without its own runs_on)" },
                known.join("; ")
            ),
        ));
    }
    diagnostics
}

/// Every secret reference of a manifest with its JSON pointer: `{secret: env:NAME|file:PATH}`
/// anywhere (the `env:` of workflows, steps, agents and their suites), a trigger's
/// `secret`, and the token of a trigger's or workflow's `report_to.github`.
pub fn secret_references(manifest: &Manifest) -> Vec<(String, String)> {
    fn walk(value: &Value, pointer: String, out: &mut Vec<(String, String)>) {
        match value {
            Value::Object(map) => {
                if let (1, Some(Value::String(reference))) = (map.len(), map.get("secret")) {
                    out.push((format!("{pointer}/secret"), reference.clone()));
                    return;
                }
                for (key, item) in map {
                    let escaped = crate::diagnostics::escape_pointer_segment(key);
                    walk(item, format!("{pointer}/{escaped}"), out);
                }
            }
            Value::Array(items) => {
                for (index, item) in items.iter().enumerate() {
                    walk(item, format!("{pointer}/{index}"), out);
                }
            }
            _ => {}
        }
    }
    let mut found = Vec::new();
    if manifest.kind == Kind::Trigger {
        if let Some(reference) = manifest.value.get("secret").and_then(Value::as_str) {
            found.push(("/secret".to_owned(), reference.to_owned()));
        }
    }
    if matches!(manifest.kind, Kind::Trigger | Kind::Workflow) {
        if let Some(reference) = manifest
            .value
            .pointer("/report_to/github/token")
            .and_then(Value::as_str)
        {
            found.push(("/report_to/github/token".to_owned(), reference.to_owned()));
        }
    }
    walk(&manifest.value, String::new(), &mut found);
    found
}

/// Reports objects of one kind that share an id, each naming the other places.
pub fn duplicate_ids(manifests: &[(Kind, String, &Manifest)]) -> Vec<(usize, Diagnostic)> {
    let mut by_key: BTreeMap<(Kind, &str), Vec<usize>> = BTreeMap::new();
    for (index, (kind, id, _)) in manifests.iter().enumerate() {
        by_key.entry((*kind, id.as_str())).or_default().push(index);
    }
    let mut diagnostics = Vec::new();
    for ((kind, id), indexes) in by_key.into_iter().filter(|(_, v)| v.len() > 1) {
        for &index in &indexes {
            let manifest = manifests[index].2;
            let others: Vec<String> = indexes
                .iter()
                .filter(|&&other| other != index)
                .map(|&other| {
                    let m = manifests[other].2;
                    let (line, column) = m.locate("", false);
                    format!("{}:{line}:{column}", m.file)
                })
                .collect();
            let field = if manifest.value.get("id").is_some() {
                "/id"
            } else {
                "/name"
            };
            diagnostics.push((
                index,
                manifest.error_at(
                    field,
                    false,
                    format!(
                        "duplicate {kind} id `{id}`, also defined at {}: ids must be unique (rename one or give it an `id`)",
                        others.join(", ")
                    ),
                ),
            ));
        }
    }
    diagnostics
}

#[cfg(test)]
mod tests {
    use super::*;

    fn quarantine_manifest(text: &str) -> Manifest {
        let document = crate::manifest::parse::parse_yaml(text).unwrap().remove(0);
        let (mut manifests, problems) = crate::manifest::extract("quarantine/q.yaml", document, "");
        assert!(problems.is_empty(), "{problems:?}");
        manifests.remove(0)
    }

    fn known(id: &str, name: &str) -> KnownTest {
        KnownTest {
            id: id.to_owned(),
            workflow: "wf_nightly".to_owned(),
            workflow_name: "Nightly".to_owned(),
            suite: "api".to_owned(),
            classname: "tests.api".to_owned(),
            name: name.to_owned(),
        }
    }

    #[test]
    fn quarantine_entries_expired_or_covering_nothing_are_warned_at_their_field() {
        let manifest = quarantine_manifest(
            "kind: Quarantine
name: Q
entries:
  - test: tc_00000000000000a1
    reason: r
    owner: o
    until: 2027-01-31
  - match: {workflow: Nightly, name: \"test_*\"}
    reason: r
    owner: o
    until: 2027-01-31
  - test: tc_00000000000000a2
    reason: r
    owner: o
    until: 2026-12-31
  - match: {suite: ui}
    reason: r
    owner: o
    until: 2027-01-31
  - match: {name: \"[\"}
    reason: r
    owner: o
    until: 2027-01-31
",
        );
        let today = chrono::NaiveDate::from_ymd_opt(2027, 1, 2).unwrap();
        let tests = [
            known("tc_00000000000000a3", "test_a"),
            known("tc_00000000000000ff", "other"),
        ];
        let found = check_quarantine(&manifest, Some(today), Some(&tests));
        let seen: Vec<(&str, u32, bool)> = found
            .iter()
            .map(|d| (d.pointer.as_str(), d.line, d.is_error()))
            .collect();
        // The glob that does not compile is check_object's.
        assert_eq!(
            seen,
            [
                ("/entries/0/test", 4, false),
                ("/entries/2/until", 15, false),
                ("/entries/3/match", 16, false),
            ],
            "{found:#?}"
        );
        assert!(
            found[0]
                .message
                .contains("did you mean `tc_00000000000000a3`?"),
            "{}",
            found[0].message
        );
        assert!(
            found[1]
                .message
                .contains("expired on 2026-12-31 (2 days ago): its failures fail again"),
            "{}",
            found[1].message
        );
        assert!(found[2].message.contains("matches none of the 2 tests"));
        // Without the tests, only the date is checked; without either, nothing.
        assert_eq!(check_quarantine(&manifest, Some(today), None).len(), 1);
        assert!(check_quarantine(&manifest, None, None).is_empty());
        let errors = check_object(&manifest);
        assert_eq!(errors.len(), 1, "{errors:#?}");
        assert_eq!(errors[0].pointer, "/entries/4/match/name");
        assert!(errors[0].is_error());
    }

    #[test]
    fn finds_cycles_and_accepts_dags() {
        assert_eq!(find_cycle(&[vec![1], vec![2], vec![]]), None);
        assert_eq!(
            find_cycle(&[vec![1], vec![2], vec![0]]),
            Some(vec![0, 1, 2])
        );
        assert_eq!(find_cycle(&[vec![], vec![2], vec![1]]), Some(vec![1, 2]));
    }

    #[test]
    fn finds_the_script_of_a_shell_run_with_c() {
        fn script<'a>(argv: &[&'a str]) -> Option<&'a str> {
            shell_script_index(argv).map(|i| argv[i])
        }
        assert_eq!(script(&["sh", "-c", "echo 1", "arg0"]), Some("echo 1"));
        assert_eq!(script(&["/bin/bash", "-lc", "echo 2"]), Some("echo 2"));
        assert_eq!(script(&["bash", "-ec", "echo 3"]), Some("echo 3"));
        assert_eq!(
            script(&["bash", "-e", "-o", "pipefail", "-c", "echo 4"]),
            Some("echo 4")
        );
        assert_eq!(script(&["zsh", "--login", "-c", "echo 5"]), Some("echo 5"));
        assert_eq!(script(&["dash", "-c", "--", "echo 6"]), Some("echo 6"));
        assert_eq!(
            script(&["/usr/bin/env", "FOO=1", "sh", "-c", "echo 7"]),
            Some("echo 7")
        );
        assert_eq!(script(&["busybox", "sh", "-c", "echo 8"]), Some("echo 8"));
        // A script file or stdin, not a script text; other programs.
        assert_eq!(script(&["sh", "script.sh", "-c"]), None);
        assert_eq!(script(&["bash", "-e", "run.sh"]), None);
        assert_eq!(script(&["echo", "-c", "x"]), None);
        assert_eq!(script(&["python3", "-c", "print(1)"]), None);
        assert_eq!(script(&["sh", "-c"]), None);
    }

    #[test]
    fn only_outside_values_are_untrusted() {
        assert!(is_untrusted_reference("params.title"));
        assert!(is_untrusted_reference("payload.pull_request.title"));
        assert!(!is_untrusted_reference("run.id"));
        assert!(!is_untrusted_reference("parameters.x"));
        assert!(!is_untrusted_reference("steps.build.outputs.version"));
        assert_eq!(env_name_for("params.pr-title"), "PR_TITLE");
        assert_eq!(env_name_for("payload.commits.0"), "VALUE_0");
    }
}

/// A test the store has results of, as Quarantine entries are matched against it.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize, utoipa::ToSchema)]
pub struct KnownTest {
    /// `tc_` and 16 hex digits.
    pub id: String,
    /// The workflow's id.
    pub workflow: String,
    /// The workflow's name, when the workflow is known (else its id).
    pub workflow_name: String,
    /// The JUnit suite.
    pub suite: String,
    /// The JUnit classname.
    pub classname: String,
    /// The case's name.
    pub name: String,
}

impl KnownTest {
    /// The fields an entry matches.
    pub fn fields(&self) -> crate::spec::quarantine::TestFields<'_> {
        crate::spec::quarantine::TestFields {
            id: &self.id,
            workflow: &self.workflow,
            workflow_name: &self.workflow_name,
            suite: &self.suite,
            classname: &self.classname,
            name: &self.name,
        }
    }
}

/// The globs of a Quarantine's entries that do not compile, each an error at its field
/// (`/entries/0/match/name`), all of them. Dates are the schema's (`format: date`, whose
/// message is the compiled entry's).
fn check_quarantine_entries(manifest: &Manifest) -> Vec<Diagnostic> {
    let mut diagnostics = Vec::new();
    let Some(entries) = manifest.value.get("entries").and_then(Value::as_array) else {
        return diagnostics;
    };
    for (index, entry) in entries.iter().enumerate() {
        let Some(globs) = entry.get("match").and_then(Value::as_object) else {
            continue;
        };
        // One field at a time, with a good date: every bad glob is reported, whatever
        // else is wrong with the entry.
        for (field, glob) in globs {
            if !glob.is_string() {
                continue;
            }
            let alone = serde_json::json!({"until": "2000-01-01", "match": {field: glob}});
            if let Err((at, message)) = crate::spec::quarantine::compile_entry("", index, &alone) {
                diagnostics.push(manifest.error_at(
                    &format!("/entries/{index}/{at}"),
                    false,
                    message,
                ));
            }
        }
    }
    diagnostics
}

/// Quarantine entries against the day and the tests there are results of: an entry past
/// its `until` is warned about (its failures fail again), and so is one that covers no
/// test in `tests` (when given: a typo'd id or glob protects nothing). Entries that do not
/// compile are left to [`check_object`] and the schema.
pub fn check_quarantine(
    manifest: &Manifest,
    today: Option<chrono::NaiveDate>,
    tests: Option<&[KnownTest]>,
) -> Vec<Diagnostic> {
    let mut diagnostics = Vec::new();
    if manifest.kind != Kind::Quarantine {
        return diagnostics;
    }
    let id = manifest.id().unwrap_or_default();
    let Some(entries) = manifest.value.get("entries").and_then(Value::as_array) else {
        return diagnostics;
    };
    for (index, entry) in entries.iter().enumerate() {
        let Ok(compiled) = crate::spec::quarantine::compile_entry(&id, index, entry) else {
            continue;
        };
        if let Some(today) = today.filter(|today| !compiled.active_on(*today)) {
            let days = (today - compiled.until).num_days();
            diagnostics.push(manifest.warning_at(
                &format!("/entries/{index}/until"),
                format!(
                    "the quarantine of {} expired on {} ({days} day{} ago): its failures fail again; remove it or extend `until`",
                    compiled.describe(),
                    compiled.until,
                    if days == 1 { "" } else { "s" }
                ),
            ));
            continue;
        }
        let Some(tests) = tests else {
            continue;
        };
        if tests.iter().any(|test| compiled.matches(&test.fields())) {
            continue;
        }
        let (pointer, hint) = match &compiled.test {
            Some(test) => (
                format!("/entries/{index}/test"),
                did_you_mean(test, tests.iter().map(|t| t.id.as_str()))
                    .map(|s| format!("; did you mean `{s}`?"))
                    .unwrap_or_default(),
            ),
            None => (format!("/entries/{index}/match"), String::new()),
        };
        diagnostics.push(manifest.warning_at(
            &pointer,
            format!(
                "the quarantine of {} matches none of the {} test{} with recorded results{hint}: it covers nothing (see `orchestrator tests list`); fix it or remove it",
                compiled.describe(),
                tests.len(),
                if tests.len() == 1 { "" } else { "s" }
            ),
        ));
    }
    diagnostics
}
