//! Cross-check of `orchestrator schedule next` against an independent crontab
//! implementation, Python's `cronsim` (installed by `scripts/test`): a broad matrix of
//! expressions × time zones × start instants must give the same fire times, except where
//! the documented Debian cron DST rules intentionally differ from cronsim. Those exceptions
//! are listed in [`EXCEPTIONS`] with their reasons; each must be needed at least once, and
//! the fire times it excuses must all lie next to a UTC offset change of the zone.
//!
//! Each side has its own copy of the tz database (chrono-tz's, compiled in; Python's from
//! the system or the `tzdata` package). The instants compared lie in 2026, 2018 and 2011,
//! whose rules are settled in every release; a new release that rewrote them would show
//! here as a disagreement in that zone.

use std::io::Write as _;
use std::process::{Command, Stdio};

use chrono::{DateTime, Duration, LocalResult, Offset, SecondsFormat, TimeZone, Utc};
use chrono_tz::Tz;
use serde_json::Value;

use crate::support::{orchestrator, temp_project};

/// How many fire times are compared per case.
const COUNT: usize = 12;

/// One expression in one zone from one instant.
#[derive(Debug, Clone)]
struct Case {
    expr: &'static str,
    zone: Tz,
    from: DateTime<Utc>,
}

impl Case {
    fn fields(&self) -> Vec<&str> {
        self.expr.split_whitespace().collect()
    }

    /// Neither the minute nor the hour field starts with `*` (after macro expansion).
    fn is_fixed_time(&self) -> bool {
        match self.expr {
            "@hourly" => false,
            macro_name if macro_name.starts_with('@') => true,
            _ => {
                let fields = self.fields();
                let skip = fields.len() - 5;
                !fields[skip].starts_with('*') && !fields[skip + 1].starts_with('*')
            }
        }
    }

    fn describe(&self) -> String {
        format!(
            "`{}` in {} from {}",
            self.expr,
            self.zone,
            self.from.to_rfc3339_opts(SecondsFormat::Secs, false)
        )
    }
}

/// A documented difference between the Debian cron rules `orchestrator` implements and
/// cronsim, with the cases it covers.
struct Exception {
    name: &'static str,
    reason: &'static str,
    applies: fn(&Case) -> bool,
}

/// Every way `orchestrator` is allowed to disagree with cronsim.
const EXCEPTIONS: &[Exception] = &[
    Exception {
        name: "six-field fixed-time expressions across a DST change",
        reason: "cronsim applies Debian cron's DST handling to five-field expressions only \
                 (\"6-field expressions are not Debian cron compatible anyway\"), so there a \
                 six-field expression whose minute and hour fields do not start with `*` \
                 follows real time: its times in a spring-forward gap are dropped and its times \
                 in a repeated hour fire twice. orchestrator applies the fixed-time rules to \
                 it like to a five-field one: the gap's times run once at the end of the gap, \
                 repeated times only the first time.",
        applies: |case| case.fields().len() == 6 && case.is_fixed_time(),
    },
    Exception {
        name: "fixed-time job asked from inside a repeated hour",
        reason: "For a fixed-time job cronsim walks the wall clock without its UTC offset. \
                 Started at an instant inside a repeated (fall-back) interval, it returns the \
                 next wall time as its first occurrence, which lies before the start. \
                 orchestrator returns a time after the start: the next first occurrence.",
        applies: |case| {
            let wall = case.from.with_timezone(&case.zone).naive_local();
            case.is_fixed_time()
                && matches!(
                    case.zone.from_local_datetime(&wall),
                    LocalResult::Ambiguous(..)
                )
        },
    },
    Exception {
        name: "wildcard job across an offset change that is not whole hours on the hour",
        reason: "cronsim moves a wildcard job forward by wall-clock minutes and hours computed \
                 before the move and then applied in real time, or truncated to the hour on \
                 the wall clock. Across an offset change that is not a whole number of hours \
                 at a whole hour (Australia/Lord_Howe's 30-minute change at 02:00, \
                 Pacific/Chatham's change at 02:45) that overshoots times that exist: \
                 `30 * * * *` loses the second 01:30 of Lord_Howe's fall-back night and the \
                 02:30 that follows its spring-forward gap. orchestrator's times there are \
                 those of a minute-by-minute simulation of Debian's cron daemon (unit tests \
                 in src/cron.rs).",
        applies: |case| {
            !case.is_fixed_time()
                && changes_near(case).iter().any(|(change, jump)| {
                    let wall = change.with_timezone(&case.zone).naive_local();
                    jump % 3600 != 0 || wall.and_utc().timestamp() % 3600 != 0
                })
        },
    },
    Exception {
        name: "offset change of 3 hours or more forward",
        reason: "Debian's cron treats a forward clock change of 3 hours or more (Pacific/Apia \
                 skipping 2011-12-30, Antarctica/Casey's +08 to +11) as a clock correction: \
                 fixed-time jobs skipped by it are not caught up. cronsim catches them up \
                 like after a one-hour DST change.",
        applies: |case| {
            case.is_fixed_time() && changes_near(case).iter().any(|(_, jump)| *jump >= 3 * 3600)
        },
    },
];

/// The changes of the case's zone's UTC offset from a day before its start to 60 days
/// after, which covers the fire times compared for every expression that a change affects.
fn changes_near(case: &Case) -> Vec<(DateTime<Utc>, i64)> {
    offset_changes(
        case.zone,
        case.from - Duration::days(1),
        case.from + Duration::days(60),
    )
}

/// The changes of the zone's UTC offset in `(from, to]`, with their size in seconds.
fn offset_changes(zone: Tz, from: DateTime<Utc>, to: DateTime<Utc>) -> Vec<(DateTime<Utc>, i64)> {
    let offset =
        |t: DateTime<Utc>| i64::from(t.with_timezone(&zone).offset().fix().local_minus_utc());
    let mut changes = Vec::new();
    let mut low = from;
    while low < to {
        let high = (low + Duration::hours(1)).min(to);
        if offset(high) != offset(low) {
            let (mut same, mut differs) = (low, high);
            while differs - same > Duration::seconds(1) {
                let middle = same + (differs - same) / 2;
                if offset(middle) == offset(low) {
                    same = middle;
                } else {
                    differs = middle;
                }
            }
            changes.push((differs, offset(differs) - offset(low)));
        }
        low = high;
    }
    changes
}

/// Expressions about the calendar: the guide's examples, day of week 7, names, the day
/// rule, 29 February, macros, six fields.
const CALENDAR_EXPRESSIONS: &[&str] = &[
    "0 2 * * *",
    "*/15 * * * *",
    "0 9-17 * * 1-5",
    "0 0 * * 0",
    "0 0 1 * *",
    "0 0 * * 7",
    "0 0 * * 5-7",
    "0 8 * * MON-fri",
    "0 12 * dec sun",
    "0 0 1 jan *",
    "0 0 1 JAN-mar SAT,Sun",
    "0 0 13 * 5",
    "0 0 */2 * 5",
    "0 0 13 * */5",
    "0 0 1-7 * mon",
    "0 0 *,1 * 3",
    "0 0 29 2 *",
    "0 6 29 2 1",
    "0 0 29 2 */7",
    "50/5 0 * * *",
    "1-10/3 4 */10 * *",
    "@hourly",
    "@daily",
    "@midnight",
    "@weekly",
    "@monthly",
    "@yearly",
    "@annually",
    "*/10 * * * * *",
    "30 0 12 * * *",
];

/// Expressions whose fire times DST changes affect: fixed-time and wildcard jobs in and
/// around the hours that clocks skip or repeat.
const DST_EXPRESSIONS: &[&str] = &[
    "30 2 * * *",
    "0 2 * * *",
    "0,30 2,3 * * *",
    "15 1 * * *",
    "45 1 * * *",
    "59 1 * * *",
    "0 3 * * *",
    "5 0-6 * * *",
    "0 0 * * *",
    "30 23 * * *",
    "0-59/20 2 * * *",
    "*/30 * * * *",
    "30 * * * *",
    "* 2 * * *",
    "*/7 1-3 * * *",
    "0 */2 * * *",
    "@hourly",
    "@daily",
    "15 30 2 * * *",
    "0 */30 * * * *",
];

fn utc(text: &str) -> DateTime<Utc> {
    DateTime::parse_from_rfc3339(text)
        .unwrap()
        .with_timezone(&Utc)
}

fn cases() -> Vec<Case> {
    use chrono_tz::{America, Antarctica, Asia, Australia, Europe, Pacific};
    let mut cases = Vec::new();
    let calendar_starts = [
        utc("2026-01-01T00:00:00Z"),
        utc("2027-06-15T13:45:10Z"),
        utc("2028-02-28T23:59:59Z"),
    ];
    for zone in [Tz::UTC, Asia::Kolkata, Europe::Berlin, America::New_York] {
        for expr in CALENDAR_EXPRESSIONS {
            for from in calendar_starts {
                cases.push(Case { expr, zone, from });
            }
        }
    }
    // Around each offset change of 2026 (and, for the clock corrections, of 2018 and 2011):
    // a day before, an hour before, and ten minutes after.
    let dst_zones = [
        (Europe::Berlin, 2026),
        (Europe::London, 2026),
        (America::New_York, 2026),
        (America::Santiago, 2026),
        (Australia::Sydney, 2026),
        (Australia::Lord_Howe, 2026),
        (Pacific::Chatham, 2026),
        (Antarctica::Casey, 2018),
        (Pacific::Apia, 2011),
    ];
    for (zone, year) in dst_zones {
        let start = utc(&format!("{year}-01-01T00:00:00Z"));
        let changes = offset_changes(zone, start, start + Duration::days(365));
        assert!(!changes.is_empty(), "{zone} has no offset change in {year}");
        for (change, _) in changes {
            for from in [
                change - Duration::days(1),
                change - Duration::minutes(61),
                change + Duration::minutes(10),
            ] {
                for expr in DST_EXPRESSIONS {
                    cases.push(Case { expr, zone, from });
                }
            }
        }
    }
    cases
}

/// Computes every case with cronsim, in one Python process.
const CRONSIM_SCRIPT: &str = r#"
import json, sys
from datetime import datetime
from zoneinfo import ZoneInfo
from cronsim import CronSim

MACROS = {
    "@hourly": "0 * * * *", "@daily": "0 0 * * *", "@midnight": "0 0 * * *",
    "@weekly": "0 0 * * 0", "@monthly": "0 0 1 * *", "@yearly": "0 0 1 1 *",
    "@annually": "0 0 1 1 *",
}
results = []
for expr, zone, start, count in json.load(sys.stdin):
    try:
        it = CronSim(MACROS.get(expr, expr), datetime.fromisoformat(start).astimezone(ZoneInfo(zone)))
        times = []
        for _ in range(count):
            try:
                times.append(next(it).isoformat())
            except StopIteration:
                break
        results.append(times)
    except Exception as err:
        results.append({"error": f"{type(err).__name__}: {err}"})
json.dump(results, sys.stdout)
"#;

/// Panics with what to do when cronsim is not importable.
fn require_cronsim() {
    let probe = Command::new("python3")
        .args([
            "-c",
            "import cronsim, zoneinfo; zoneinfo.ZoneInfo('Europe/Berlin')",
        ])
        .output();
    match probe {
        Ok(output) if output.status.success() => {}
        Ok(output) => panic!(
            "the cron cross-check needs Python's cronsim, which python3 cannot import: run \
             scripts/test (it installs it with `python3 -m pip install cronsim tzdata`)\n{}",
            String::from_utf8_lossy(&output.stderr)
        ),
        Err(err) => panic!(
            "the cron cross-check needs python3 with cronsim, and python3 cannot be run \
             ({err}): run scripts/test, which installs both"
        ),
    }
}

fn cronsim_fire_times(cases: &[Case]) -> Vec<Result<Vec<String>, String>> {
    let input: Vec<Value> = cases
        .iter()
        .map(|case| {
            serde_json::json!([
                case.expr,
                case.zone.name(),
                case.from.to_rfc3339_opts(SecondsFormat::Secs, false),
                COUNT
            ])
        })
        .collect();
    let mut child = Command::new("python3")
        .args(["-c", CRONSIM_SCRIPT])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run python3");
    let mut stdin = child.stdin.take().unwrap();
    let text = serde_json::to_vec(&input).unwrap();
    let writer = std::thread::spawn(move || stdin.write_all(&text));
    let output = child.wait_with_output().unwrap();
    writer.join().unwrap().unwrap();
    assert!(
        output.status.success(),
        "cronsim script failed:\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let results: Vec<Value> = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(results.len(), cases.len());
    results
        .into_iter()
        .map(|result| match result {
            Value::Array(times) => Ok(times
                .into_iter()
                .map(|t| t.as_str().unwrap().to_owned())
                .collect()),
            other => Err(other["error"].as_str().unwrap_or_default().to_owned()),
        })
        .collect()
}

/// Runs `orchestrator schedule next` for every case, on a few threads.
fn orchestrator_fire_times(cases: &[Case]) -> Vec<Vec<String>> {
    let project = temp_project();
    let threads = std::thread::available_parallelism().map_or(4, |n| n.get().min(8));
    let chunk = cases.len().div_ceil(threads);
    std::thread::scope(|scope| {
        let handles: Vec<_> = cases
            .chunks(chunk)
            .map(|chunk| {
                let dir = project.path();
                scope.spawn(move || {
                    chunk
                        .iter()
                        .map(|case| {
                            let from = case.from.to_rfc3339_opts(SecondsFormat::Secs, false);
                            let count = COUNT.to_string();
                            let run = orchestrator(
                                dir,
                                &[
                                    "schedule",
                                    "next",
                                    case.expr,
                                    "--timezone",
                                    case.zone.name(),
                                    "--from",
                                    &from,
                                    "--count",
                                    &count,
                                ],
                            );
                            assert_eq!(run.code, 0, "{}: {}", case.describe(), run.stderr);
                            run.stdout.lines().map(str::to_owned).collect::<Vec<_>>()
                        })
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        handles
            .into_iter()
            .flat_map(|handle| handle.join().unwrap())
            .collect()
    })
}

/// The instants in one list and not the other, up to where both lists reach.
fn differing_instants(ours: &[String], theirs: &[String]) -> Vec<DateTime<Utc>> {
    let parse = |list: &[String]| list.iter().map(|t| utc(t)).collect::<Vec<_>>();
    let (ours, theirs) = (parse(ours), parse(theirs));
    let horizon = match (ours.last(), theirs.last()) {
        (Some(a), Some(b)) => *a.min(b),
        _ => return ours.into_iter().chain(theirs).collect(),
    };
    let only = |a: &[DateTime<Utc>], b: &[DateTime<Utc>]| {
        a.iter()
            .filter(|t| **t <= horizon && !b.contains(t))
            .copied()
            .collect::<Vec<_>>()
    };
    let mut differing = only(&ours, &theirs);
    differing.extend(only(&theirs, &ours));
    differing
}

#[test]
fn schedule_next_agrees_with_cronsim() {
    require_cronsim();
    let cases = cases();
    let expected = cronsim_fire_times(&cases);
    let actual = orchestrator_fire_times(&cases);

    let mut agreed = 0;
    let mut excused = vec![0usize; EXCEPTIONS.len()];
    let mut failures = Vec::new();
    for ((case, theirs), ours) in cases.iter().zip(&expected).zip(&actual) {
        for line in ours {
            assert!(
                DateTime::parse_from_rfc3339(line).is_ok(),
                "{}: `{line}` is not an RFC 3339 instant",
                case.describe()
            );
        }
        let theirs = match theirs {
            Ok(times) => times,
            Err(err) => {
                failures.push(format!("{}: cronsim failed: {err}", case.describe()));
                continue;
            }
        };
        if ours == theirs {
            agreed += 1;
            continue;
        }
        let Some(index) = EXCEPTIONS.iter().position(|e| (e.applies)(case)) else {
            failures.push(format!(
                "{}:\n  orchestrator: {ours:?}\n  cronsim:      {theirs:?}",
                case.describe()
            ));
            continue;
        };
        // An exception only excuses differences next to an offset change.
        let changes = offset_changes(
            case.zone,
            case.from - Duration::days(1),
            case.from + Duration::days(400),
        );
        let unexplained: Vec<_> = differing_instants(ours, theirs)
            .into_iter()
            .filter(|t| {
                !changes.iter().any(|(change, jump)| {
                    (*t - *change).abs() <= Duration::seconds(jump.abs()) + Duration::hours(1)
                })
            })
            .collect();
        if unexplained.is_empty() {
            excused[index] += 1;
        } else {
            failures.push(format!(
                "{}: differs away from any offset change ({unexplained:?}), which \"{}\" \
                 does not excuse:\n  orchestrator: {ours:?}\n  cronsim:      {theirs:?}",
                case.describe(),
                EXCEPTIONS[index].name
            ));
        }
    }

    println!(
        "cron cross-check with cronsim: {} cases, {agreed} agree",
        cases.len()
    );
    for (exception, count) in EXCEPTIONS.iter().zip(&excused) {
        println!("  {count} differ as documented: {}", exception.name);
    }
    assert!(
        failures.is_empty(),
        "{} of {} cases disagree with cronsim without a documented reason:\n{}",
        failures.len(),
        cases.len(),
        failures
            .iter()
            .take(25)
            .cloned()
            .collect::<Vec<_>>()
            .join("\n")
    );
    for (exception, count) in EXCEPTIONS.iter().zip(&excused) {
        assert!(
            *count > 0,
            "the exception \"{}\" is never needed any more: remove it ({})",
            exception.name,
            exception.reason
        );
    }
}
