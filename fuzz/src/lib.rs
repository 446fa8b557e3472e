//! The checks the fuzz targets run, one function per target, taking the raw input bytes.
//!
//! Each check drives the library the way the program does (a manifest file through the
//! reconciler's `desired_set`, a condition through `parse_condition`, a crontab expression
//! through `CronSchedule::parse` and `next_fire`, a webhook delivery through the steps of the
//! `/hooks/` handler) and asserts the properties that must hold for any input: a panic or a
//! failed assertion is a finding. The same file is compiled into the integration tests
//! (`tests/it/fuzz_regressions.rs`), which replay the seed corpus and every input a finding
//! was fixed for on the stable toolchain.

use std::collections::BTreeSet;
use std::sync::LazyLock;

use axum::http::{HeaderMap, HeaderName, HeaderValue};
use chrono::{DateTime, TimeZone, Utc};
use hmac::{Hmac, Mac};
use orchestrator::cron::CronSchedule;
use orchestrator::diagnostics::Diagnostic;
use orchestrator::lang::condition::{parse_condition, MetricRef};
use orchestrator::reconcile::desired_set;
use orchestrator::source::{Snapshot, SourceFile};
use orchestrator::triggers::{
    branch_of, changed_paths, signature, template_context, Auth, Provider, TriggerSpec,
};
use serde_json::json;
use sha2::Sha256;

/// The names of the targets, as `fuzz_targets/<name>.rs` and `corpus/<name>/`.
pub const TARGETS: [&str; 6] = [
    "manifest",
    "condition",
    "cron",
    "webhook",
    "worker_message",
    "test_results",
];

/// Runs the check of the target `name` on one input.
///
/// # Panics
///
/// On an unknown target name, and wherever the check finds a property broken.
pub fn check(name: &str, data: &[u8]) {
    match name {
        "manifest" => manifest(data),
        "condition" => condition(data),
        "cron" => cron(data),
        "webhook" => webhook(data),
        "test_results" => test_results(data),
        "worker_message" => worker_message(data),
        other => panic!("unknown fuzz target `{other}`: expected one of {TARGETS:?}"),
    }
}

/// The directories a manifest file may sit in (the kind comes from the nearest one when the
/// document has no `kind`); the input's first byte picks one.
const MANIFEST_DIRS: [&str; 9] = [
    "",
    "workflows/",
    "templates/",
    "agents/",
    "schedules/",
    "alerts/",
    "triggers/",
    "dashboards/",
    "quarantine/",
];

/// A valid file beside the fuzzed one, as a project always has more than one: the files
/// are then checked in parallel on rayon's threads, and the fuzzed one's objects meet
/// another's in the checks across files (references, duplicate ids).
const OTHER_FILE: &str = "workflows/other.yaml";
const OTHER_TEXT: &str = "name: Other\nsteps:\n  - name: s\n    command: [\"true\"]\n";

/// A manifest file: the input (after its first byte, which picks the directory and, by its
/// top bit, `.json` rather than `.yaml`) as the text of a file, through the reconciler's
/// per-file path (parse, extract, schema validation, semantic checks), beside another
/// file. It must not panic; every diagnostic names the file and a line of it (1-based, at
/// most one past the last line), and renders. One file per execution: the same text as
/// the other kind is another input, which the mutations reach by one bit.
pub fn manifest(data: &[u8]) {
    let Some((&selector, rest)) = data.split_first() else {
        return;
    };
    let text = String::from_utf8_lossy(rest);
    let dir = MANIFEST_DIRS[usize::from(selector & 0x7f) % MANIFEST_DIRS.len()];
    let extension = if selector & 0x80 == 0 { "yaml" } else { "json" };
    let path = format!("{dir}fuzz.{extension}");
    let snapshot = Snapshot {
        revision: "dir:fuzz".to_owned(),
        content_revision: None,
        files: vec![
            SourceFile {
                path: path.clone(),
                text: text.clone().into_owned(),
            },
            SourceFile {
                path: OTHER_FILE.to_owned(),
                text: OTHER_TEXT.to_owned(),
            },
        ],
        diagnostics: Vec::new(),
        context: Vec::new(),
    };
    let set = desired_set(&snapshot);
    let lines = line_count(&text);
    for diagnostic in set.diagnostics.iter().filter(|d| d.file != OTHER_FILE) {
        check_diagnostic(diagnostic, &path, lines);
        let rendered = diagnostic.render(Some(&text), false);
        assert!(rendered.contains(&diagnostic.message), "{rendered}");
    }
    for object in set.objects.values().filter(|o| o.file != OTHER_FILE) {
        assert_eq!(object.file, path);
        assert!(
            !set.invalid.contains_key(&object.key),
            "{:?} is both valid and invalid",
            object.key
        );
    }
    for invalid in set.invalid.values().filter(|o| o.file != OTHER_FILE) {
        assert_eq!(invalid.file, path);
        assert!(
            invalid.diagnostics.iter().any(Diagnostic::is_error),
            "an invalid object without an error: {invalid:?}"
        );
        for diagnostic in &invalid.diagnostics {
            check_diagnostic(diagnostic, &path, lines);
        }
    }
}

/// Lines as YAML counts them: `\n`, `\r\n` and a lone `\r` end one.
fn line_count(text: &str) -> u32 {
    let breaks = text.replace("\r\n", "\n").matches(['\n', '\r']).count();
    u32::try_from(breaks + 1).unwrap_or(u32::MAX)
}

fn check_diagnostic(diagnostic: &Diagnostic, path: &str, lines: u32) {
    assert_eq!(diagnostic.file, path, "{diagnostic:?}");
    assert!(
        diagnostic.line >= 1 && diagnostic.line <= lines + 1,
        "diagnostic outside the file's {lines} lines: {diagnostic:?}"
    );
}

/// The metric values the condition target evaluates with: a fixed function of the metric,
/// some missing (unknown), some not a number.
fn lookup(metric: &MetricRef) -> Option<f64> {
    let mut hash: u32 = 2_166_136_261;
    for byte in metric.name.bytes().chain(
        metric
            .labels
            .iter()
            .flat_map(|(k, v)| k.bytes().chain(v.bytes())),
    ) {
        hash = (hash ^ u32::from(byte)).wrapping_mul(16_777_619);
    }
    match hash % 8 {
        0 => None,
        1 => Some(f64::NAN),
        2 => Some(-0.0),
        n => Some(f64::from(hash % 200) - 50.0 + f64::from(n) / 4.0),
    }
}

/// An alert condition: `parse_condition` must not panic; an error points at a column of
/// the text (or just past it); a parsed condition evaluates, lists its metrics, and its
/// canonical text parses back to an equal condition.
pub fn condition(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    match parse_condition(&text) {
        Ok(condition) => {
            let _ = condition.evaluate(&lookup);
            let _ = condition.evaluate(&|_| None);
            assert!(!condition.metrics().is_empty());
            let canonical = condition.to_string();
            let reparsed = parse_condition(&canonical)
                .unwrap_or_else(|e| panic!("canonical text `{canonical}` does not parse: {e}"));
            assert_eq!(
                reparsed, condition,
                "`{text}` printed as `{canonical}` parses differently"
            );
            assert_eq!(
                reparsed.evaluate(&lookup),
                condition.evaluate(&lookup),
                "{canonical}"
            );
        }
        Err(err) => {
            let length = text.chars().count();
            assert!(
                err.column >= 1 && err.column <= length + 1,
                "column {} outside `{text}` ({length} characters): {err}",
                err.column
            );
        }
    }
}

/// The zones the cron target computes fire times in: no DST, ordinary DST, a half-hour DST,
/// a 3-hour jump, a zone that crossed the date line.
const CRON_ZONES: [chrono_tz::Tz; 7] = [
    chrono_tz::UTC,
    chrono_tz::Europe::Berlin,
    chrono_tz::America::New_York,
    chrono_tz::Australia::Lord_Howe,
    chrono_tz::Antarctica::Casey,
    chrono_tz::Pacific::Apia,
    chrono_tz::Asia::Kathmandu,
];

/// A crontab expression: `CronSchedule::parse` must not panic, and a valid schedule's
/// next fire time after each of a few instants (a DST change, a date-line crossing, the
/// edges of what chrono represents) in each of a few zones must come quickly, strictly
/// after the instant, and the one after it later still.
pub fn cron(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    let Ok(schedule) = CronSchedule::parse(&text) else {
        return;
    };
    assert_eq!(schedule.expression(), text.trim());
    let instants: [DateTime<Utc>; 6] = [
        Utc.with_ymd_and_hms(2026, 3, 29, 0, 30, 0).unwrap(),
        Utc.with_ymd_and_hms(2026, 10, 24, 23, 59, 59).unwrap(),
        Utc.with_ymd_and_hms(2011, 12, 29, 9, 0, 0).unwrap(),
        Utc.with_ymd_and_hms(2099, 12, 31, 23, 0, 0).unwrap(),
        DateTime::<Utc>::MAX_UTC - chrono::TimeDelta::days(400),
        DateTime::<Utc>::MIN_UTC,
    ];
    for zone in CRON_ZONES {
        for after in instants {
            let Some(next) = schedule.next_fire(after, zone) else {
                continue;
            };
            assert!(next > after, "`{text}` in {zone}: {next} after {after}");
            if let Some(then) = schedule.next_fire(next, zone) {
                assert!(then > next, "`{text}` in {zone}: {then} after {next}");
            }
        }
    }
}

/// The triggers the webhook target delivers to, as manifests would declare them, compiled
/// once (their globs are costly to build); the input's first byte picks one.
fn trigger_specs() -> &'static [(TriggerSpec, Option<&'static str>)] {
    static SPECS: LazyLock<Vec<(TriggerSpec, Option<&'static str>)>> =
        LazyLock::new(compile_triggers);
    &SPECS
}

fn compile_triggers() -> Vec<(TriggerSpec, Option<&'static str>)> {
    let parameters = json!({
        "sha": "{{ payload.after }}",
        "branch": "{{ branch }}",
        "text": "{{ event }}/{{ action }} on {{ payload.repository.full_name }} by {{ delivery }}",
        "list": ["{{ payload.commits.0.id }}", {"n": "{{ payload.number }}"}],
    });
    let specs = [
        json!({"name": "GitHub push", "path": "/hooks/github", "provider": "github",
            "workflow": "wf_fuzz", "events": ["push", "pull_request"],
            "branches": ["main", "release/**", "v[0-9]*", "{dev,test}/*"],
            "actions": ["opened", "synchronize"], "paths": ["src/**", "*.md", "!docs/**"],
            "secret": "env:FUZZ_SECRET", "parameters": parameters, "history_limit": 10}),
        json!({"name": "Generic HMAC", "path": "/hooks/generic", "provider": "generic",
            "workflow": "wf_fuzz", "events": ["*"], "secret": "env:FUZZ_SECRET",
            "signature_header": "X-Signature", "event_header": "X-Event",
            "delivery_header": "X-Delivery", "parameters": parameters}),
        json!({"name": "Generic bearer", "path": "/hooks/bearer", "provider": "generic",
            "workflow": "wf_fuzz", "auth": "bearer", "secret": "env:FUZZ_SECRET",
            "event_header": "X-Event", "branches": ["**"], "parameters": parameters}),
        json!({"name": "Unsigned", "path": "/hooks/open", "workflow": "wf_fuzz", "insecure": true,
            "enabled": true, "events": ["push"], "paths": ["**/*.rs"]}),
    ];
    specs
        .iter()
        .enumerate()
        .map(|(index, spec)| {
            let name = spec["name"].as_str().unwrap_or_default();
            let trigger = TriggerSpec::from_spec(&format!("trg_fuzz-{index}"), name, spec)
                .expect("the fuzz triggers compile");
            let secret = spec.get("secret").map(|_| WEBHOOK_SECRET);
            (trigger, secret)
        })
        .collect()
}

/// The secret the webhook target's triggers resolve theirs to.
pub const WEBHOOK_SECRET: &str = "fuzz-secret";

/// The server's API token for the webhook target (required of a trigger without a secret).
pub const WEBHOOK_API_TOKEN: &str = "fuzz-api-token";

/// Splits a webhook input into its selector byte, header lines and body: after the first
/// byte, `Name: value` lines up to the first empty line, then the body. Lines that are no
/// valid header are left out, as a server would never see them.
fn webhook_request(data: &[u8]) -> Option<(u8, HeaderMap, &[u8])> {
    let (&selector, rest) = data.split_first()?;
    let (head, body) = match rest.windows(2).position(|w| w == b"\n\n") {
        Some(at) => (&rest[..at], &rest[at + 2..]),
        None => (rest, &[][..]),
    };
    let mut headers = HeaderMap::new();
    for line in head.split(|&b| b == b'\n') {
        let Some(colon) = line.iter().position(|&b| b == b':') else {
            continue;
        };
        let (Ok(name), Ok(value)) = (
            HeaderName::from_bytes(&line[..colon]),
            HeaderValue::from_bytes(line[colon + 1..].trim_ascii()),
        ) else {
            continue;
        };
        headers.append(name, value);
    }
    Some((selector, headers, body))
}

/// The hex HMAC-SHA256 of `body`, computed here rather than by the code under test.
fn hmac_hex(secret: &str, body: &[u8]) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(secret.as_bytes()).expect("any key length");
    mac.update(body);
    hex::encode(mac.finalize().into_bytes())
}

/// A webhook delivery to one trigger, through the steps the `/hooks/` handler takes:
/// delivery id and event, signature, payload, ping, filters, parameters. Bit 2 of the
/// selector replaces the signature (or token) with the right one, so that the steps after
/// it are reached too. Nothing may panic, and the signature check must accept exactly the
/// deliveries that carry the HMAC-SHA256 of the body under the secret (or the token).
pub fn webhook(data: &[u8]) {
    let Some((selector, mut headers, body)) = webhook_request(data) else {
        return;
    };
    let specs = trigger_specs();
    let (trigger, secret) = &specs[usize::from(selector & 3) % specs.len()];
    let api_token = (secret.is_none() && selector & 8 == 0).then_some(WEBHOOK_API_TOKEN);
    let sign = selector & 4 != 0;
    if sign {
        match (secret, trigger.auth) {
            (Some(secret), Auth::Hmac) => {
                let name = HeaderName::from_bytes(trigger.signature_header.as_bytes())
                    .expect("a valid header name");
                let digest = hmac_hex(secret, body);
                let value = match (trigger.provider, selector & 16 != 0) {
                    (Provider::Generic, true) => digest,
                    _ => format!("sha256={digest}"),
                };
                headers.insert(name, HeaderValue::from_str(&value).expect("hex is ASCII"));
            }
            (Some(token), Auth::Bearer) => set_bearer(&mut headers, token),
            (None, _) => {
                if let Some(token) = api_token {
                    set_bearer(&mut headers, token);
                }
            }
        }
    }

    let delivery = trigger
        .delivery_id_of(&headers)
        .unwrap_or_else(|| "local-fuzz".to_owned());
    assert!(!delivery.is_empty() && delivery.len() <= 200);
    let event = trigger.event_of(&headers);
    assert!(event
        .as_ref()
        .is_none_or(|e| !e.is_empty() && e.chars().count() <= 200));

    let verified = trigger.verify(*secret, api_token, &headers, body);
    check_signature_property(trigger, *secret, api_token, &headers, body, &verified);
    if sign {
        assert_eq!(verified, Ok(()), "a correctly signed delivery is refused");
    }
    if verified.is_err() {
        return;
    }

    let Ok(payload) = orchestrator::api::hooks::parse_payload(&headers, body) else {
        return;
    };
    let _ = branch_of(&payload);
    if let Some(paths) = changed_paths(&payload) {
        let unique: BTreeSet<&String> = paths.iter().collect();
        assert_eq!(unique.len(), paths.len(), "changed paths repeat: {paths:?}");
    }
    if trigger.is_ping(event.as_deref()) {
        return;
    }
    if trigger.filter(event.as_deref(), &payload).is_err() {
        return;
    }
    let context = template_context(&trigger.id, &delivery, event.as_deref(), &payload);
    if let Ok(parameters) = trigger.parameters_for(&context) {
        assert!(parameters
            .keys()
            .all(|k| trigger.parameters.contains_key(k)));
    }
}

fn set_bearer(headers: &mut HeaderMap, token: &str) {
    let value = HeaderValue::from_str(&format!("Bearer {token}")).expect("an ASCII token");
    headers.insert(axum::http::header::AUTHORIZATION, value);
}

/// The signature check accepts a delivery only with the right proof: for HMAC, the header
/// holds the hex HMAC-SHA256 of the body under the secret (`sha256=` required for GitHub,
/// optional for a generic sender); for a bearer token, `Authorization: Bearer <secret>`;
/// without a secret, the API token the same way, or nothing when there is none.
fn check_signature_property(
    trigger: &TriggerSpec,
    secret: Option<&str>,
    api_token: Option<&str>,
    headers: &HeaderMap,
    body: &[u8],
    verified: &Result<(), String>,
) {
    let text = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
    let bearer_is = |token: &str| {
        text("authorization")
            .map(str::trim)
            .and_then(|v| {
                v.strip_prefix("Bearer ")
                    .or_else(|| v.strip_prefix("bearer "))
            })
            .is_some_and(|given| given.trim() == token)
    };
    let expected = match (secret, trigger.auth) {
        (Some(secret), Auth::Hmac) => {
            let digest = text(&trigger.signature_header).and_then(|value| {
                let value = value.trim();
                match trigger.provider {
                    Provider::Github => value.strip_prefix("sha256="),
                    Provider::Generic => Some(value.strip_prefix("sha256=").unwrap_or(value)),
                }
            });
            digest.is_some_and(|digest| {
                hex::decode(digest.trim())
                    .is_ok_and(|given| hex::encode(given) == hmac_hex(secret, body))
            })
        }
        (Some(secret), Auth::Bearer) => bearer_is(secret),
        (None, _) => api_token.is_none_or(bearer_is),
    };
    assert_eq!(
        verified.is_ok(),
        expected,
        "verify said {verified:?} for headers {headers:?}"
    );
    // The GitHub signature as the library writes it is the one checked here.
    if secret.is_some() && trigger.auth == Auth::Hmac {
        let signed = signature::sign(secret.unwrap_or_default().as_bytes(), body);
        assert_eq!(
            signed,
            format!("sha256={}", hmac_hex(secret.unwrap_or_default(), body))
        );
    }
}

/// What crosses the wire between the controller and its workers, and the labels a worker
/// is started with: the first byte picks the reader, the rest is its input. Labels that
/// parse are well-formed and select the same subject in any order; messages that parse
/// serialize back to what parses to the same; a step's placement reads from any JSON.
pub fn worker_message(data: &[u8]) {
    use orchestrator::workers::protocol::{
        parse_labels, satisfies, selector, ClaimReply, ClaimRequest, Control, Finished, WorkItem,
    };
    let Some((&pick, rest)) = data.split_first() else {
        return;
    };
    fn round_trip<T: serde::Serialize + serde::de::DeserializeOwned>(input: &[u8]) {
        if let Ok(value) = serde_json::from_slice::<T>(input) {
            let once = serde_json::to_string(&value).expect("serializes");
            let again: T = serde_json::from_str(&once).expect("parses back");
            assert_eq!(
                once,
                serde_json::to_string(&again).expect("serializes again")
            );
        }
    }
    match pick % 6 {
        0 => {
            let text = String::from_utf8_lossy(rest);
            if let Ok(labels) = parse_labels(&text) {
                assert!(satisfies(&labels, &labels));
                let reversed = text.split(',').rev().collect::<Vec<_>>().join(",");
                if let Ok(other) = parse_labels(&reversed) {
                    if other == labels {
                        assert_eq!(selector(&labels), selector(&other));
                    }
                }
                for (key, value) in &labels {
                    assert!(!key.is_empty() && !value.is_empty());
                    assert!(!key.contains(['=', ',']) && !value.contains(['=', ',']));
                }
            }
        }
        1 => round_trip::<WorkItem>(rest),
        2 => round_trip::<Finished>(rest),
        3 => round_trip::<ClaimRequest>(rest),
        4 => {
            round_trip::<ClaimReply>(rest);
            round_trip::<Control>(rest);
        }
        _ => {
            if let Ok(step) = serde_json::from_slice::<serde_json::Value>(rest) {
                let workflow = step.get("workflow_runs_on");
                let _ = orchestrator::spec::workflow::Placement::of(&step, workflow);
                let _ = orchestrator::spec::workflow::StepSpec::compile(&step);
            }
        }
    }
}

/// Test results from any input: a JUnit report's cases get ids and failure digests
/// (an id is `tc_` and 16 hex digits; normalising a failure twice changes nothing, so the
/// same failure keeps its digest), and Quarantine entries from any JSON compile or are
/// refused without a panic, and match any case.
pub fn test_results(data: &[u8]) {
    use orchestrator::store::test_history::{failure_digest, normalise_failure, test_id};
    let Some((&pick, rest)) = data.split_first() else {
        return;
    };
    let text = String::from_utf8_lossy(rest);
    if pick % 2 == 0 {
        let Ok(cases) = orchestrator::engine::junit::parse_junit(&text) else {
            return;
        };
        for case in &cases {
            let id = test_id("wf_fuzz", &case.suite, &case.classname, &case.name);
            assert!(id.len() == 19 && id.starts_with("tc_"), "{id}");
            for message in [&case.message, &case.details].into_iter().flatten() {
                let once = normalise_failure(message);
                assert_eq!(normalise_failure(&once), once, "normalising is idempotent");
                assert_eq!(failure_digest(message), failure_digest(&once));
            }
        }
    } else {
        let once = normalise_failure(&text);
        assert_eq!(normalise_failure(&once), once, "normalising is idempotent");
        if let Ok(spec) = serde_json::from_slice::<serde_json::Value>(rest) {
            use orchestrator::spec::quarantine::{QuarantineSet, TestFields};
            let set = QuarantineSet::compile([("qua_fuzz", &spec)]);
            let name = spec
                .get("name")
                .and_then(|v| v.as_str())
                .unwrap_or("test_x");
            let fields = TestFields {
                id: "tc_0123456789abcdef",
                workflow: "wf_fuzz",
                workflow_name: "fuzz",
                suite: "suite",
                classname: "class",
                name,
            };
            let today = chrono::NaiveDate::from_ymd_opt(2027, 1, 1).expect("a date");
            let _ = set.covering(&fields, today);
            for entry in &set.entries {
                let _ = entry.describe();
            }
        }
    }
}
