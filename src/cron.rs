//! Crontab schedule expressions with Debian cron (Vixie cron / cronie) semantics.
//!
//! The expression is parsed once, field by field, into one set of allowed values per
//! field, so that an error can name the field and the text that is wrong. The same sets
//! are what the next fire time is computed from: a search over wall-clock time
//! ([`CronSchedule::next_fire`]) that also handles time zones and their offset changes
//! (DST) the way Debian's cron does. No other cron crate reads the expression.
//!
//! Supported syntax:
//!
//! - five fields `minute hour day-of-month month day-of-week`, or six with a leading
//!   seconds field;
//! - `*`, numbers, ranges `a-b`, steps `*/n`, `a-b/n` and `a/n` (the last meaning
//!   `a-max/n`), and comma-separated lists of these;
//! - month names `jan`-`dec` and day names `sun`-`sat`, case-insensitive, in the month
//!   and day-of-week fields; both `0` and `7` mean Sunday;
//! - the macros `@hourly`, `@daily`, `@midnight`, `@weekly`, `@monthly`, `@yearly` and
//!   `@annually`.
//!
//! The day rule follows Vixie cron: when neither day field starts with `*`, a day fires
//! if its day of month *or* its weekday matches; when either starts with `*` (including
//! `*/2`), both fields must match.

use std::fmt;
use std::str::FromStr;

use chrono::{
    DateTime, Datelike, LocalResult, NaiveDate, NaiveDateTime, NaiveTime, Offset, TimeDelta,
    TimeZone, Timelike, Utc,
};

/// The macros accepted in place of the five fields, with their five-field equivalents.
const MACROS: [(&str, &str); 7] = [
    ("@hourly", "0 * * * *"),
    ("@daily", "0 0 * * *"),
    ("@midnight", "0 0 * * *"),
    ("@weekly", "0 0 * * 0"),
    ("@monthly", "0 0 1 * *"),
    ("@yearly", "0 0 1 1 *"),
    ("@annually", "0 0 1 1 *"),
];

const MONTH_NAMES: [&str; 12] = [
    "jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec",
];

const DAY_NAMES: [&str; 7] = ["sun", "mon", "tue", "wed", "thu", "fri", "sat"];

/// The longest each month can be, with February counted in a leap year.
const MAX_DAYS_IN_MONTH: [u32; 12] = [31, 29, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31];

/// One field of a crontab expression.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum CronField {
    /// The optional leading seconds field (0-59).
    Second,
    /// The minute field (0-59).
    Minute,
    /// The hour field (0-23).
    Hour,
    /// The day-of-month field (1-31).
    DayOfMonth,
    /// The month field (1-12 or `jan`-`dec`).
    Month,
    /// The day-of-week field (0-7 or `sun`-`sat`, where 0 and 7 are Sunday).
    DayOfWeek,
}

impl CronField {
    /// The smallest value the field accepts.
    fn min(self) -> u32 {
        match self {
            CronField::DayOfMonth | CronField::Month => 1,
            _ => 0,
        }
    }

    /// The largest value the field accepts.
    fn max(self) -> u32 {
        match self {
            CronField::Second | CronField::Minute => 59,
            CronField::Hour => 23,
            CronField::DayOfMonth => 31,
            CronField::Month => 12,
            CronField::DayOfWeek => 7,
        }
    }

    /// The symbolic names the field accepts, with the value of the first name.
    fn names(self) -> Option<(&'static [&'static str], u32)> {
        match self {
            CronField::Month => Some((&MONTH_NAMES, 1)),
            CronField::DayOfWeek => Some((&DAY_NAMES, 0)),
            _ => None,
        }
    }

    /// What a single value of this field looks like, for error messages.
    fn expected_value(self) -> String {
        match self {
            CronField::Month => "a number 1-12 or a month name jan-dec".to_string(),
            CronField::DayOfWeek => {
                "a number 0-7 (0 and 7 are sunday) or a day name sun-sat".to_string()
            }
            _ => format!("a number {}-{}", self.min(), self.max()),
        }
    }
}

impl fmt::Display for CronField {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            CronField::Second => "second",
            CronField::Minute => "minute",
            CronField::Hour => "hour",
            CronField::DayOfMonth => "day-of-month",
            CronField::Month => "month",
            CronField::DayOfWeek => "day-of-week",
        })
    }
}

/// Why a crontab expression was rejected.
///
/// Displays as ``<field> field `<text>`: <message>`` when the error belongs to one field,
/// and as the bare message otherwise.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{}", render_error(.field.as_ref(), .text, .message))]
pub struct CronError {
    /// The field the problem was found in, if it belongs to a single field.
    pub field: Option<CronField>,
    /// The complete text of that field, or an empty string when `field` is `None`.
    pub text: String,
    /// What is wrong and what was expected instead.
    pub message: String,
}

impl CronError {
    /// Creates an error that concerns the expression as a whole.
    fn whole(message: impl Into<String>) -> Self {
        CronError {
            field: None,
            text: String::new(),
            message: message.into(),
        }
    }

    /// Creates an error that concerns the field `field`, whose text is `text`.
    fn in_field(field: CronField, text: &str, message: impl Into<String>) -> Self {
        CronError {
            field: Some(field),
            text: text.to_string(),
            message: message.into(),
        }
    }
}

fn render_error(field: Option<&CronField>, text: &str, message: &str) -> String {
    match field {
        Some(field) => format!("{field} field `{text}`: {message}"),
        None => message.to_string(),
    }
}

/// A forward offset change of at least this many seconds is a clock correction for cron
/// (its "time has changed a *lot*" case): nothing skipped by it is caught up.
///
/// Cron counts in wall-clock minutes: after the last minute before a forward jump of `G`
/// minutes it wakes up `G + 1` minutes later, and more than 180 is a correction, so
/// `G >= 180`.
const CORRECTION_FORWARD_SECS: i64 = 180 * 60;

/// A backward offset change of more than this many seconds is a clock correction for
/// cron: the repeated times fire again for every job.
///
/// After the last minute before a backward jump of `O` minutes cron finds itself
/// `1 - O` minutes "later"; below -180 is a correction, so `O > 181`.
const CORRECTION_BACKWARD_SECS: i64 = 181 * 60;

/// A forward offset change shorter than this is, for cron, a late wake-up (its "small"
/// case, a difference of at most 5 minutes): every job catches up, wildcard jobs too.
const LATE_WAKEUP_SECS: i64 = 5 * 60;

/// The first year a wall-clock time can match in: nothing fires before 0001-01-01.
const FIRST_YEAR: i32 = 1;

/// The first year no wall-clock time matches in: [`CronSchedule::next_fire`] returns `None`
/// when there is no fire time before it, which also bounds every search.
const END_YEAR: i32 = 5000;

/// 0000-12-31T00:00:00Z, a day before the first wall-clock time that matches (in
/// [`FIRST_YEAR`]): where [`CronSchedule::next_fire`] starts searching when asked about an
/// earlier instant.
const FIRST_SEARCHED_SECS: i64 = -62_135_683_200;

/// How far apart [`first_offset_change`] samples a zone's UTC offset: a day. Two offset
/// changes within one sample that cancel each other out would go unnoticed, but no two
/// offset changes of any zone in the tz database are less than four days apart.
const OFFSET_PROBE_SECS: i64 = 86_400;

/// A validated crontab schedule that can compute its next fire time.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CronSchedule {
    /// The values each field allows, matched against wall-clock time.
    fields: ParsedFields,
    expression: String,
}

impl CronSchedule {
    /// Parses and validates a crontab expression such as `0 2 * * *` or `@daily`.
    ///
    /// Surrounding whitespace is ignored.
    ///
    /// # Errors
    ///
    /// Returns a [`CronError`] naming the offending field for a wrong field count, an
    /// unknown or unsupported macro, a value out of range, a reversed range, a zero step,
    /// Quartz syntax (`?`, `L`, `W`, `#`), any other malformed field, and an expression
    /// that is well-formed but can never fire, such as `0 0 30 2 *`.
    pub fn parse(expr: &str) -> Result<CronSchedule, CronError> {
        Ok(CronSchedule {
            fields: parse_fields(expr)?,
            expression: expr.trim().to_string(),
        })
    }

    /// The expression as written, without surrounding whitespace.
    pub fn expression(&self) -> &str {
        &self.expression
    }

    /// The first fire time strictly after `after`, in the time zone of `after`.
    ///
    /// The same as [`CronSchedule::next_fire`], for any [`TimeZone`]: offset changes of
    /// the zone follow the rules documented there.
    pub fn next_after<Z: TimeZone>(&self, after: &DateTime<Z>) -> Option<DateTime<Z>> {
        let zone = after.timezone();
        self.next_in_zone(after.with_timezone(&Utc), &zone)
            .map(|next| next.with_timezone(&zone))
    }

    /// The first fire time strictly after `after` for a job whose crontab runs in the time
    /// zone `zone`: the instant the scheduler sets its timer for.
    ///
    /// The expression is matched against the wall clock of `zone`. Where the zone's UTC
    /// offset changes (daylight saving time), the result is what Debian's cron (Vixie
    /// cron, cronie) does when the system clock is in that zone:
    ///
    /// - A job is **fixed-time** when neither its minute nor its hour field starts with
    ///   `*` (`30 2 * * *`, `0 9-17 * * 1-5`, `@daily`, `@weekly`, `@monthly`,
    ///   `@yearly`); otherwise it is a **wildcard** job (`*/15 * * * *`, `30 * * * *`,
    ///   `* 2 * * *`, `@hourly`). Only the minute and hour fields decide; a seconds field
    ///   is matched but never makes a job wildcard.
    /// - **Clock jumps forward** (spring forward; wall times in the gap do not exist): a
    ///   fixed-time job whose times fall in the gap fires once, at the first instant after
    ///   the gap — Europe/Berlin `30 2 * * *` on 2026-03-29 fires at 03:00+02:00. All of
    ///   its times in the gap, and a time of its own at that very instant, make that one
    ///   run (cron starts one run per skipped minute, all at that moment). A wildcard job
    ///   follows real elapsed time: its times in the gap do not happen —
    ///   `*/15 * * * *` goes from 01:45+01:00 to 03:00+02:00.
    /// - **Clock jumps back** (fall back; wall times in the repeated interval happen
    ///   twice): a fixed-time job fires only in the first occurrence — `30 2 * * *` on
    ///   2026-10-25 fires at 02:30+02:00, not at 02:30+01:00. A wildcard job follows real
    ///   elapsed time and fires in both — `30 * * * *` fires at 02:30+02:00 and again at
    ///   02:30+01:00.
    /// - As in cron, an offset change of 3 hours or more forward, or of more than 181
    ///   minutes back (a zone moving across the date line, such as Pacific/Apia on
    ///   2011-12-30), counts as a clock correction: nothing skipped is caught up, and
    ///   repeated times fire again for every job. A forward change of less than 5 minutes
    ///   counts as a late wake-up: every job, wildcard ones too, catches up its skipped
    ///   times once at the first instant after the gap. No zone has had such a small
    ///   change since 1970.
    ///
    /// The offsets are those of the tz database compiled into chrono-tz, whose DST rules
    /// run to the year 2099; later, a zone keeps the offset of its last change.
    ///
    /// Returns `None` when there is no fire time before the year 5000.
    pub fn next_fire(&self, after: DateTime<Utc>, zone: chrono_tz::Tz) -> Option<DateTime<Utc>> {
        self.next_in_zone(after, &zone)
    }

    /// Whether the expression has a leading seconds field (six fields).
    pub fn has_seconds(&self) -> bool {
        self.fields.has_seconds
    }

    /// Whether this is a fixed-time job for DST purposes: neither its minute nor its hour
    /// field starts with `*`. See [`CronSchedule::next_fire`].
    pub fn is_fixed_time(&self) -> bool {
        self.fields.fixed_time
    }

    /// Walks the spans of constant UTC offset from `after` on: within a span the next
    /// matching wall-clock time is found by [`ParsedFields::next_match`], and each offset
    /// change crossed is
    /// handled by the rules of [`CronSchedule::next_fire`].
    fn next_in_zone<Z: TimeZone>(&self, after: DateTime<Utc>, zone: &Z) -> Option<DateTime<Utc>> {
        // Nothing fires before the year 1 (`FIRST_YEAR`): a search from before
        // then starts the day before, as walking the offsets up to the first fire is linear
        // in the time it spans (from chrono's first year that took minutes).
        let mut cursor = after.max(DateTime::from_timestamp(FIRST_SEARCHED_SECS, 0)?);
        // Whether a fire time at `cursor` itself counts: only at the start of a new span.
        let mut inclusive = false;
        loop {
            let offset = offset_at(zone, cursor.timestamp())?;
            let local = cursor
                .naive_utc()
                .checked_add_signed(TimeDelta::seconds(offset))?;
            let wall = self.next_wall_time(local, inclusive)?;
            let candidate = wall
                .checked_sub_signed(TimeDelta::seconds(offset))?
                .and_utc();
            match first_offset_change(zone, cursor, candidate, offset)? {
                None => {
                    if self.fields.fixed_time && is_repeated_occurrence(zone, wall, candidate) {
                        cursor = candidate;
                        inclusive = false;
                        continue;
                    }
                    return Some(candidate);
                }
                Some((change, new_offset)) => {
                    // Nothing matches between `cursor` and the change. If the clock jumps
                    // forward there, the wall times from `change + offset` up to
                    // `change + new_offset` are skipped, and `wall` is the first match at
                    // or after the start of that gap.
                    let jump = new_offset - offset;
                    let gap_end = change
                        .naive_utc()
                        .checked_add_signed(TimeDelta::seconds(new_offset))?;
                    if jump > 0 && wall < gap_end && self.catches_up(jump) {
                        return Some(change);
                    }
                    cursor = change;
                    inclusive = true;
                }
            }
        }
    }

    /// The first wall-clock time after `local` (or at it, if `inclusive`) the fields match.
    ///
    /// Fire times fall on whole seconds, so the search starts at the first whole second
    /// after `local` (at `local` itself if `inclusive` and it is a whole second).
    fn next_wall_time(&self, local: NaiveDateTime, inclusive: bool) -> Option<NaiveDateTime> {
        let whole_second = local.with_nanosecond(0)?;
        let start = if inclusive && whole_second == local {
            whole_second
        } else {
            whole_second.checked_add_signed(TimeDelta::seconds(1))?
        };
        self.fields.next_match(start)
    }

    /// Whether times skipped by a forward offset change of `jump` seconds fire once at the
    /// end of the gap.
    fn catches_up(&self, jump: i64) -> bool {
        if jump >= CORRECTION_FORWARD_SECS {
            false
        } else if jump < LATE_WAKEUP_SECS {
            true
        } else {
            self.fields.fixed_time
        }
    }
}

/// Why a time zone name was rejected by [`parse_time_zone`].
///
/// Displays as ``unknown time zone `Europe/Berln`; did you mean `Europe/Berlin`? (expected
/// an IANA name such as Europe/Berlin or UTC)``.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "{} (expected an IANA name such as Europe/Berlin or UTC)",
    render_zone_error(.name, *.suggestion)
)]
pub struct TimeZoneError {
    /// The name as given.
    pub name: String,
    /// The known zone the name most likely meant, if any is close.
    pub suggestion: Option<&'static str>,
}

fn render_zone_error(name: &str, suggestion: Option<&str>) -> String {
    match suggestion {
        _ if name.trim().is_empty() => "empty time zone".to_string(),
        Some(known) => format!("unknown time zone `{name}`; did you mean `{known}`?"),
        None => format!("unknown time zone `{name}`"),
    }
}

/// Parses an IANA time zone name such as `Europe/Berlin`, `America/New_York` or `UTC`
/// (the names of the tz database chrono-tz carries, links such as `US/Eastern` included).
///
/// # Errors
///
/// Returns a [`TimeZoneError`] for any other text, suggesting the closest known name: one
/// that differs only in case, one whose last part is the given name (`Berlin`), or one
/// within a small edit distance (`Europe/Berln`).
pub fn parse_time_zone(name: &str) -> Result<chrono_tz::Tz, TimeZoneError> {
    name.parse::<chrono_tz::Tz>().map_err(|_| TimeZoneError {
        name: name.to_string(),
        suggestion: suggest_time_zone(name),
    })
}

fn suggest_time_zone(name: &str) -> Option<&'static str> {
    let normalize = |text: &str| text.trim().replace(' ', "_").to_ascii_lowercase();
    let wanted = normalize(name);
    if wanted.is_empty() {
        return None;
    }
    let names = || chrono_tz::TZ_VARIANTS.iter().map(|zone| zone.name());
    names()
        .find(|known| known.to_ascii_lowercase() == wanted)
        .or_else(|| {
            names().find(|known| {
                !wanted.contains('/')
                    && known
                        .rsplit('/')
                        .next()
                        .is_some_and(|city| city.to_ascii_lowercase() == wanted)
            })
        })
        .or_else(|| crate::util::did_you_mean(name.trim(), names()))
}

/// The UTC offset of `zone` at the Unix time `timestamp`, in seconds.
fn offset_at<Z: TimeZone>(zone: &Z, timestamp: i64) -> Option<i64> {
    let utc = DateTime::from_timestamp(timestamp, 0)?.naive_utc();
    Some(i64::from(
        zone.offset_from_utc_datetime(&utc).fix().local_minus_utc(),
    ))
}

/// The first instant in `(from, to]` at which the UTC offset of `zone` is no longer
/// `offset`, with the new offset; `Some(None)` when it stays `offset` up to `to`, and
/// `None` only for instants chrono cannot represent.
///
/// Offset changes happen on whole seconds, so the offset at `from` is the offset at the
/// whole second `from` falls in, and the change is found exactly by bisection.
fn first_offset_change<Z: TimeZone>(
    zone: &Z,
    from: DateTime<Utc>,
    to: DateTime<Utc>,
    offset: i64,
) -> Option<Option<(DateTime<Utc>, i64)>> {
    let end = to.timestamp();
    let mut low = from.timestamp();
    while low < end {
        let high = low.saturating_add(OFFSET_PROBE_SECS).min(end);
        if offset_at(zone, high)? != offset {
            // The offset is `offset` at `same` and something else at `differs`.
            let (mut same, mut differs) = (low, high);
            while differs - same > 1 {
                let middle = same + (differs - same) / 2;
                if offset_at(zone, middle)? == offset {
                    same = middle;
                } else {
                    differs = middle;
                }
            }
            let change = DateTime::from_timestamp(differs, 0)?;
            return Some(Some((change, offset_at(zone, differs)?)));
        }
        low = high;
    }
    Some(None)
}

/// Whether `instant`, whose wall-clock time in `zone` is `wall`, is the second occurrence
/// of a wall time repeated by a backward offset change that cron treats as DST (not as a
/// clock correction).
fn is_repeated_occurrence<Z: TimeZone>(
    zone: &Z,
    wall: NaiveDateTime,
    instant: DateTime<Utc>,
) -> bool {
    match zone.from_local_datetime(&wall) {
        LocalResult::Ambiguous(first, second) => {
            let offset_of = |time: &DateTime<Z>| i64::from(time.offset().fix().local_minus_utc());
            let repeated_for = offset_of(&first) - offset_of(&second);
            second.with_timezone(&Utc) == instant
                && first.with_timezone(&Utc) != instant
                && repeated_for <= CORRECTION_BACKWARD_SECS
        }
        _ => false,
    }
}

impl FromStr for CronSchedule {
    type Err = CronError;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        CronSchedule::parse(text)
    }
}

impl fmt::Display for CronSchedule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.expression)
    }
}

/// The values each field allows, as bit sets indexed by value.
#[derive(Debug, Clone, PartialEq, Eq)]
struct ParsedFields {
    has_seconds: bool,
    seconds: u64,
    minutes: u64,
    hours: u64,
    days_of_month: u64,
    months: u64,
    /// Weekdays 0-6 with Sunday as 0; a `7` in the text has been folded into bit 0.
    days_of_week: u64,
    /// The day-of-month text starts with `*`, which makes it a wildcard for the day rule.
    dom_star: bool,
    /// The day-of-week text starts with `*`, which makes it a wildcard for the day rule.
    dow_star: bool,
    /// Neither the minute nor the hour text starts with `*`: a fixed-time job in cron's
    /// DST handling.
    fixed_time: bool,
}

impl ParsedFields {
    /// Vixie cron requires both day fields to match when either starts with `*`.
    fn days_must_both_match(&self) -> bool {
        self.dom_star || self.dow_star
    }

    /// Whether the date's day matches the day fields by the Vixie rule (AND when either
    /// day field starts with `*`, OR otherwise) and its month matches the month field.
    fn date_matches(&self, date: NaiveDate) -> bool {
        let day_of_month = has_value(self.days_of_month, date.day());
        let day_of_week = has_value(self.days_of_week, date.weekday().num_days_from_sunday());
        let day = if self.days_must_both_match() {
            day_of_month && day_of_week
        } else {
            day_of_month || day_of_week
        };
        day && has_value(self.months, date.month())
    }

    /// The first time of day at or after `from` the hour, minute and seconds fields match.
    fn first_time_from(&self, from: NaiveTime) -> Option<NaiveTime> {
        let (hour_from, minute_from, second_from) = (from.hour(), from.minute(), from.second());
        for hour in values_from(self.hours, hour_from) {
            let same_hour = hour == hour_from;
            let minutes = values_from(self.minutes, if same_hour { minute_from } else { 0 });
            for minute in minutes {
                let same_minute = same_hour && minute == minute_from;
                let first_second = if same_minute { second_from } else { 0 };
                if let Some(second) = values_from(self.seconds, first_second).next() {
                    return NaiveTime::from_hms_opt(hour, minute, second);
                }
            }
        }
        None
    }

    /// The first wall-clock time at or after `start` that every field matches, or `None`
    /// when there is none before [`END_YEAR`]. Times before [`FIRST_YEAR`] never match.
    ///
    /// Months that do not match are skipped whole, then days, then the time of day is
    /// found from the bit sets, so a search takes at most a few thousand steps: the longest
    /// run of non-matching days (`0 0 29 2 */7`, 29 February on a Sunday) is 40 years.
    fn next_match(&self, start: NaiveDateTime) -> Option<NaiveDateTime> {
        let first = NaiveDate::from_ymd_opt(FIRST_YEAR, 1, 1)?.and_time(NaiveTime::MIN);
        let start = start.max(first);
        let mut date = start.date();
        let mut from = start.time();
        while date.year() < END_YEAR {
            if !has_value(self.months, date.month()) {
                date = self.first_day_of_next_month(date)?;
                from = NaiveTime::MIN;
                continue;
            }
            if self.date_matches(date) {
                if let Some(time) = self.first_time_from(from) {
                    return Some(date.and_time(time));
                }
            }
            date = date.succ_opt()?;
            from = NaiveTime::MIN;
        }
        None
    }

    /// The first day of the first month after `date`'s that the month field allows.
    fn first_day_of_next_month(&self, date: NaiveDate) -> Option<NaiveDate> {
        match values_from(self.months, date.month() + 1).next() {
            Some(month) => NaiveDate::from_ymd_opt(date.year(), month, 1),
            None => {
                let month = values_from(self.months, 1).next()?;
                NaiveDate::from_ymd_opt(date.year().checked_add(1)?, month, 1)
            }
        }
    }
}

/// Whether `value` is in the bit set `bits`.
fn has_value(bits: u64, value: u32) -> bool {
    value < 64 && bits & (1u64 << value) != 0
}

/// The values in the bit set `bits` from `from` on, in increasing order.
fn values_from(bits: u64, from: u32) -> impl Iterator<Item = u32> {
    (from..64).filter(move |&value| bits & (1u64 << value) != 0)
}

/// Splits the expression into fields, expands macros and validates every field.
fn parse_fields(expr: &str) -> Result<ParsedFields, CronError> {
    let trimmed = expr.trim();
    let expanded;
    let texts: Vec<&str> = if trimmed.starts_with('@') {
        expanded = expand_macro(trimmed)?;
        expanded.split_whitespace().collect()
    } else {
        trimmed.split_whitespace().collect()
    };

    let (seconds_text, rest) = match texts.as_slice() {
        [minute, hour, dom, month, dow] => (None, [*minute, *hour, *dom, *month, *dow]),
        [second, minute, hour, dom, month, dow] => {
            (Some(*second), [*minute, *hour, *dom, *month, *dow])
        }
        other => {
            return Err(CronError::whole(format!(
                "expected 5 fields (minute hour day-of-month month day-of-week) \
                 or 6 with leading seconds, found {}",
                other.len()
            )))
        }
    };
    let [minute_text, hour_text, dom_text, month_text, dow_text] = rest;

    let seconds = match seconds_text {
        Some(text) => parse_field(CronField::Second, text)?,
        None => 1,
    };
    let parsed = ParsedFields {
        has_seconds: seconds_text.is_some(),
        seconds,
        minutes: parse_field(CronField::Minute, minute_text)?,
        hours: parse_field(CronField::Hour, hour_text)?,
        days_of_month: parse_field(CronField::DayOfMonth, dom_text)?,
        months: parse_field(CronField::Month, month_text)?,
        days_of_week: fold_sunday(parse_field(CronField::DayOfWeek, dow_text)?),
        dom_star: dom_text.starts_with('*'),
        dow_star: dow_text.starts_with('*'),
        fixed_time: !minute_text.starts_with('*') && !hour_text.starts_with('*'),
    };
    check_can_fire(&parsed, dom_text, month_text)?;
    Ok(parsed)
}

/// Returns the five-field equivalent of a macro such as `@daily`.
fn expand_macro(text: &str) -> Result<String, CronError> {
    let mut words = text.split_whitespace();
    let name = words.next().unwrap_or(text);
    if words.next().is_some() {
        return Err(CronError::whole(format!(
            "macro `{name}` must stand alone: expected nothing after it"
        )));
    }
    if name.eq_ignore_ascii_case("@reboot") {
        return Err(CronError::whole(
            "macro `@reboot` is not supported: expected a time-based schedule such as `@daily`",
        ));
    }
    MACROS
        .iter()
        .find(|(macro_name, _)| name.eq_ignore_ascii_case(macro_name))
        .map(|(_, fields)| (*fields).to_string())
        .ok_or_else(|| {
            let known: Vec<&str> = MACROS.iter().map(|(macro_name, _)| *macro_name).collect();
            CronError::whole(format!(
                "unknown macro `{name}`: expected one of {}",
                known.join(", ")
            ))
        })
}

/// Moves a Sunday written as `7` onto `0`, so weekdays are always 0-6.
fn fold_sunday(days_of_week: u64) -> u64 {
    let sunday_as_seven = 1u64 << 7;
    if days_of_week & sunday_as_seven != 0 {
        (days_of_week & !sunday_as_seven) | 1
    } else {
        days_of_week
    }
}

/// Rejects expressions whose day-of-month never occurs in any of the chosen months.
///
/// This can only happen when the day fields are ANDed: with the OR rule the weekday
/// field alone still produces fire times. An ANDed weekday never makes an expression
/// impossible, because every date, 29 February included, falls on each weekday in
/// some year.
fn check_can_fire(
    parsed: &ParsedFields,
    dom_text: &str,
    month_text: &str,
) -> Result<(), CronError> {
    if !parsed.days_must_both_match() {
        return Ok(());
    }
    let possible = (1u32..).zip(MAX_DAYS_IN_MONTH).any(|(month, days)| {
        parsed.months & (1u64 << month) != 0
            && (1..=days).any(|day| parsed.days_of_month & (1u64 << day) != 0)
    });
    if possible {
        Ok(())
    } else {
        Err(CronError::in_field(
            CronField::DayOfMonth,
            dom_text,
            format!("never occurs in month `{month_text}`, so the expression can never fire"),
        ))
    }
}

/// Parses one field into the set of values it allows.
fn parse_field(field: CronField, text: &str) -> Result<u64, CronError> {
    let error = |message: String| CronError::in_field(field, text, message);

    // Quartz syntax is common in schedules copied from Java tools, so it gets a message
    // that explains the mismatch instead of a generic "invalid value".
    if text.contains('?') {
        return Err(error(
            "`?` is a Quartz extension, not crontab syntax: use `*` instead".to_string(),
        ));
    }
    if text.contains('#') {
        return Err(error(
            "`#` (nth weekday of the month) is a Quartz extension, not crontab syntax".to_string(),
        ));
    }

    let mut bits = 0u64;
    for item in text.split(',') {
        bits |= parse_item(field, item).map_err(error)?;
    }
    Ok(bits)
}

/// Parses one comma-separated item: `*`, `a`, `a-b`, each optionally followed by `/step`.
fn parse_item(field: CronField, item: &str) -> Result<u64, String> {
    if item.is_empty() {
        return Err("empty list item: expected a value, range or step between commas".to_string());
    }
    let (base, step) = match item.split_once('/') {
        Some((base, step)) => (base, Some(parse_step(step)?)),
        None => (item, None),
    };
    let (start, end) = if base == "*" {
        (field.min(), field.max())
    } else if let Some((start, end)) = base.split_once('-') {
        let start = parse_value(field, start, false)?;
        let end = parse_value(field, end, true)?;
        if start > end {
            return Err(format!(
                "range `{base}` is reversed: expected the start to be at most the end"
            ));
        }
        (start, end)
    } else {
        let value = parse_value(field, base, false)?;
        // `a/n` means every n-th value from `a` to the end of the field, as cronsim reads it.
        match step {
            Some(_) => (value, field.max()),
            None => (value, value),
        }
    };
    let step = step.unwrap_or(1);
    let mut bits = 0u64;
    let mut value = start;
    while value <= end {
        bits |= 1u64 << value;
        value = match value.checked_add(step) {
            Some(next) => next,
            None => break,
        };
    }
    Ok(bits)
}

/// Parses the step after a `/`, which must be a positive integer.
fn parse_step(text: &str) -> Result<u32, String> {
    if text.is_empty() {
        return Err("missing step after `/`: expected a positive integer".to_string());
    }
    if !text.bytes().all(|byte| byte.is_ascii_digit()) {
        return Err(format!(
            "invalid step `{text}`: expected a positive integer"
        ));
    }
    match text.parse::<u32>() {
        Ok(0) => Err("step `0` is invalid: expected a positive integer".to_string()),
        Ok(step) => Ok(step),
        Err(_) => Err(format!(
            "step `{text}` is too large: expected a positive integer"
        )),
    }
}

/// Parses a single number or name and checks it against the field's range.
///
/// `range_end` is set for the value after a `-`, where `sun` means 7 so that ranges
/// such as `mon-sun` read naturally.
fn parse_value(field: CronField, text: &str, range_end: bool) -> Result<u32, String> {
    let (min, max) = (field.min(), field.max());
    let out_of_range = || {
        let note = if field == CronField::DayOfWeek {
            " (0 and 7 are sunday)"
        } else {
            ""
        };
        format!("value `{text}` is out of range: expected {min}-{max}{note}")
    };
    if text.is_empty() {
        return Err(format!(
            "missing value: expected {}",
            field.expected_value()
        ));
    }
    if text.bytes().all(|byte| byte.is_ascii_digit()) {
        // A number too long for u32 is certainly out of range, so it gets the same message.
        let value = text.parse::<u32>().map_err(|_| out_of_range())?;
        return if (min..=max).contains(&value) {
            Ok(value)
        } else {
            Err(out_of_range())
        };
    }
    if let Some((names, first)) = field.names() {
        let named = (first..)
            .zip(names)
            .find(|(_, name)| name.eq_ignore_ascii_case(text));
        if let Some((value, _)) = named {
            let is_sunday = field == CronField::DayOfWeek && value == 0;
            return Ok(if range_end && is_sunday { 7 } else { value });
        }
    }
    if let Some(message) = quartz_letter_message(text) {
        return Err(message);
    }
    Err(format!(
        "invalid value `{text}`: expected {}",
        field.expected_value()
    ))
}

/// Explains `L` and `W` values, which are Quartz extensions that crontab does not have.
fn quartz_letter_message(text: &str) -> Option<String> {
    let upper = text.to_ascii_uppercase();
    let letters = upper.trim_start_matches(|c: char| c.is_ascii_digit());
    match letters {
        "L" => Some("`L` (last) is a Quartz extension, not crontab syntax".to_string()),
        "W" | "LW" => {
            Some("`W` (nearest weekday) is a Quartz extension, not crontab syntax".to_string())
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::{Datelike, Duration, FixedOffset, NaiveDate, Timelike};

    fn utc(y: i32, mo: u32, d: u32, h: u32, mi: u32, s: u32) -> DateTime<Utc> {
        Utc.with_ymd_and_hms(y, mo, d, h, mi, s).unwrap()
    }

    /// Returns the first `count` fire times after `from`.
    fn fire_times(expr: &str, from: DateTime<Utc>, count: usize) -> Vec<DateTime<Utc>> {
        let schedule = CronSchedule::parse(expr).unwrap();
        let mut times = Vec::new();
        let mut cursor = from;
        for _ in 0..count {
            cursor = schedule.next_after(&cursor).unwrap();
            times.push(cursor);
        }
        times
    }

    /// An expression, the instant to start from and the fire times expected after it.
    type Case = (&'static str, DateTime<Utc>, Vec<DateTime<Utc>>);

    #[test]
    fn next_fire_times_follow_the_table() {
        let from = utc(2025, 1, 1, 0, 0, 0); // A Wednesday.
        let table: Vec<Case> = vec![
            (
                "0 2 * * *",
                from,
                vec![
                    utc(2025, 1, 1, 2, 0, 0),
                    utc(2025, 1, 2, 2, 0, 0),
                    utc(2025, 1, 3, 2, 0, 0),
                ],
            ),
            (
                "*/15 * * * *",
                utc(2025, 1, 1, 10, 7, 30),
                vec![
                    utc(2025, 1, 1, 10, 15, 0),
                    utc(2025, 1, 1, 10, 30, 0),
                    utc(2025, 1, 1, 10, 45, 0),
                    utc(2025, 1, 1, 11, 0, 0),
                ],
            ),
            (
                "0 9-17 * * 1-5",
                utc(2025, 1, 3, 16, 30, 0), // Friday afternoon.
                vec![
                    utc(2025, 1, 3, 17, 0, 0),
                    utc(2025, 1, 6, 9, 0, 0),
                    utc(2025, 1, 6, 10, 0, 0),
                ],
            ),
            (
                "0 0 * * 0",
                from,
                vec![utc(2025, 1, 5, 0, 0, 0), utc(2025, 1, 12, 0, 0, 0)],
            ),
            (
                "0 0 * * 7",
                from,
                vec![utc(2025, 1, 5, 0, 0, 0), utc(2025, 1, 12, 0, 0, 0)],
            ),
            (
                "0 0 1 * *",
                from,
                vec![utc(2025, 2, 1, 0, 0, 0), utc(2025, 3, 1, 0, 0, 0)],
            ),
            (
                "0 0 * * mon-fri",
                utc(2025, 1, 3, 12, 0, 0), // Friday noon.
                vec![utc(2025, 1, 6, 0, 0, 0), utc(2025, 1, 7, 0, 0, 0)],
            ),
            (
                "0 0 1 jan *",
                from,
                vec![utc(2026, 1, 1, 0, 0, 0), utc(2027, 1, 1, 0, 0, 0)],
            ),
            (
                "0 0 1 JAN-mar SAT,Sun",
                from,
                vec![utc(2025, 1, 4, 0, 0, 0), utc(2025, 1, 5, 0, 0, 0)],
            ),
            // The OR rule: both day fields are restricted, so the 13th and every Friday fire.
            (
                "0 0 13 * 5",
                from,
                vec![
                    utc(2025, 1, 3, 0, 0, 0),
                    utc(2025, 1, 10, 0, 0, 0),
                    utc(2025, 1, 13, 0, 0, 0),
                    utc(2025, 1, 17, 0, 0, 0),
                ],
            ),
            // The star rule: `*/2` makes the day-of-month a wildcard for the day rule, so
            // both fields must match: Mondays that fall on odd days.
            (
                "0 0 */2 * 1",
                from,
                vec![
                    utc(2025, 1, 13, 0, 0, 0),
                    utc(2025, 1, 27, 0, 0, 0),
                    utc(2025, 2, 3, 0, 0, 0),
                    utc(2025, 2, 17, 0, 0, 0),
                ],
            ),
            // The same rule with the star in the day-of-week field: the 13th, on even weekdays.
            (
                "0 0 13 * */2",
                from,
                vec![
                    utc(2025, 2, 13, 0, 0, 0),
                    utc(2025, 3, 13, 0, 0, 0),
                    utc(2025, 4, 13, 0, 0, 0),
                ],
            ),
            (
                "0 0 29 2 *",
                from,
                vec![utc(2028, 2, 29, 0, 0, 0), utc(2032, 2, 29, 0, 0, 0)],
            ),
            (
                "*/10 * * * * *",
                utc(2025, 1, 1, 0, 0, 5),
                vec![utc(2025, 1, 1, 0, 0, 10), utc(2025, 1, 1, 0, 0, 20)],
            ),
            (
                "30 0 12 * * *",
                from,
                vec![utc(2025, 1, 1, 12, 0, 30), utc(2025, 1, 2, 12, 0, 30)],
            ),
            // `a/n` runs from `a` to the end of the field.
            (
                "50/5 0 * * *",
                from,
                vec![
                    utc(2025, 1, 1, 0, 50, 0),
                    utc(2025, 1, 1, 0, 55, 0),
                    utc(2025, 1, 2, 0, 50, 0),
                ],
            ),
            (
                "@hourly",
                from,
                vec![utc(2025, 1, 1, 1, 0, 0), utc(2025, 1, 1, 2, 0, 0)],
            ),
            ("@daily", from, vec![utc(2025, 1, 2, 0, 0, 0)]),
            ("@midnight", from, vec![utc(2025, 1, 2, 0, 0, 0)]),
            ("@weekly", from, vec![utc(2025, 1, 5, 0, 0, 0)]),
            ("@monthly", from, vec![utc(2025, 2, 1, 0, 0, 0)]),
            ("@yearly", from, vec![utc(2026, 1, 1, 0, 0, 0)]),
            ("@annually", from, vec![utc(2026, 1, 1, 0, 0, 0)]),
        ];
        for (expr, start, expected) in table {
            assert_eq!(
                fire_times(expr, start, expected.len()),
                expected,
                "expression `{expr}`"
            );
        }
    }

    #[test]
    fn next_after_is_strictly_after() {
        let schedule = CronSchedule::parse("0 2 * * *").unwrap();
        let at_fire = utc(2025, 1, 1, 2, 0, 0);
        assert_eq!(
            schedule.next_after(&at_fire),
            Some(utc(2025, 1, 2, 2, 0, 0))
        );
        let just_before = at_fire - Duration::milliseconds(1);
        assert_eq!(schedule.next_after(&just_before), Some(at_fire));
        let just_after = at_fire + Duration::milliseconds(1);
        assert_eq!(
            schedule.next_after(&just_after),
            Some(utc(2025, 1, 2, 2, 0, 0))
        );
    }

    #[test]
    fn next_after_works_in_a_fixed_offset() {
        let schedule = CronSchedule::parse("0 2 * * *").unwrap();
        let offset = FixedOffset::east_opt(5 * 3600 + 1800).unwrap();
        let from = offset.with_ymd_and_hms(2025, 1, 1, 3, 0, 0).unwrap();
        let next = schedule.next_after(&from).unwrap();
        assert_eq!(next, offset.with_ymd_and_hms(2025, 1, 2, 2, 0, 0).unwrap());
        assert_eq!(next.offset(), &offset);
        assert_eq!(next.with_timezone(&Utc), utc(2025, 1, 1, 20, 30, 0));
    }

    /// The next `count` fire times after `from` (RFC 3339) in `zone`, as RFC 3339 instants
    /// with the offset of the zone at each one.
    fn zoned_fire_times(expr: &str, zone: chrono_tz::Tz, from: &str, count: usize) -> Vec<String> {
        let schedule = CronSchedule::parse(expr).unwrap();
        let mut cursor = DateTime::parse_from_rfc3339(from)
            .unwrap()
            .with_timezone(&Utc);
        let mut times = Vec::new();
        for _ in 0..count {
            let Some(next) = schedule.next_fire(cursor, zone) else {
                break;
            };
            assert!(
                next > cursor,
                "`{expr}` in {zone}: {next} is not after {cursor}"
            );
            times.push(
                next.with_timezone(&zone)
                    .to_rfc3339_opts(chrono::SecondsFormat::Secs, false),
            );
            cursor = next;
        }
        times
    }

    /// An expression, its time zone, the instant to start from and the fire times expected
    /// after it, all as RFC 3339 with offsets.
    type ZonedCase = (
        &'static str,
        chrono_tz::Tz,
        &'static str,
        &'static [&'static str],
    );

    #[test]
    fn next_fire_follows_the_table_in_utc() {
        use chrono_tz::UTC;
        let new_year = "2026-01-01T00:00:00+00:00"; // A Thursday.
        let table: Vec<ZonedCase> = vec![
            // The guide's five examples.
            (
                "0 2 * * *",
                UTC,
                new_year,
                &[
                    "2026-01-01T02:00:00+00:00",
                    "2026-01-02T02:00:00+00:00",
                    "2026-01-03T02:00:00+00:00",
                ],
            ),
            (
                "*/15 * * * *",
                UTC,
                "2026-01-01T10:07:30+00:00",
                &[
                    "2026-01-01T10:15:00+00:00",
                    "2026-01-01T10:30:00+00:00",
                    "2026-01-01T10:45:00+00:00",
                    "2026-01-01T11:00:00+00:00",
                ],
            ),
            (
                "0 9-17 * * 1-5",
                UTC,
                "2026-01-02T16:30:00+00:00", // Friday afternoon.
                &[
                    "2026-01-02T17:00:00+00:00",
                    "2026-01-05T09:00:00+00:00",
                    "2026-01-05T10:00:00+00:00",
                ],
            ),
            (
                "0 0 * * 0",
                UTC,
                new_year,
                &["2026-01-04T00:00:00+00:00", "2026-01-11T00:00:00+00:00"],
            ),
            (
                "0 0 1 * *",
                UTC,
                new_year,
                &["2026-02-01T00:00:00+00:00", "2026-03-01T00:00:00+00:00"],
            ),
            // Day of week 7 is Sunday, like 0.
            (
                "0 0 * * 7",
                UTC,
                new_year,
                &["2026-01-04T00:00:00+00:00", "2026-01-11T00:00:00+00:00"],
            ),
            (
                "0 0 * * 5-7",
                UTC,
                new_year,
                &[
                    "2026-01-02T00:00:00+00:00",
                    "2026-01-03T00:00:00+00:00",
                    "2026-01-04T00:00:00+00:00",
                    "2026-01-09T00:00:00+00:00",
                ],
            ),
            // Names, in any case.
            (
                "0 8 * * MON-fri",
                UTC,
                "2026-01-02T12:00:00+00:00",
                &["2026-01-05T08:00:00+00:00", "2026-01-06T08:00:00+00:00"],
            ),
            (
                "0 12 * dec sun",
                UTC,
                new_year,
                &["2026-12-06T12:00:00+00:00", "2026-12-13T12:00:00+00:00"],
            ),
            (
                "0 0 1 jan *",
                UTC,
                new_year,
                &["2027-01-01T00:00:00+00:00", "2028-01-01T00:00:00+00:00"],
            ),
            // Both day fields restricted: the 13th *or* a Friday.
            (
                "0 0 13 * 5",
                UTC,
                new_year,
                &[
                    "2026-01-02T00:00:00+00:00",
                    "2026-01-09T00:00:00+00:00",
                    "2026-01-13T00:00:00+00:00",
                    "2026-01-16T00:00:00+00:00",
                ],
            ),
            // A day field starting with `*` is unrestricted for the rule: both must match,
            // here Fridays on odd days of the month...
            (
                "0 0 */2 * 5",
                UTC,
                new_year,
                &[
                    "2026-01-09T00:00:00+00:00",
                    "2026-01-23T00:00:00+00:00",
                    "2026-02-13T00:00:00+00:00",
                ],
            ),
            // ...and the 13th when it is a Sunday or a Friday (`*/5` is 0 and 5).
            (
                "0 0 13 * */5",
                UTC,
                new_year,
                &[
                    "2026-02-13T00:00:00+00:00",
                    "2026-03-13T00:00:00+00:00",
                    "2026-09-13T00:00:00+00:00",
                ],
            ),
            (
                "0 0 29 2 *",
                UTC,
                new_year,
                &["2028-02-29T00:00:00+00:00", "2032-02-29T00:00:00+00:00"],
            ),
            // 29 February on a Sunday: both day fields must match.
            (
                "0 0 29 2 */7",
                UTC,
                new_year,
                &["2032-02-29T00:00:00+00:00", "2060-02-29T00:00:00+00:00"],
            ),
            ("@hourly", UTC, new_year, &["2026-01-01T01:00:00+00:00"]),
            ("@daily", UTC, new_year, &["2026-01-02T00:00:00+00:00"]),
            ("@midnight", UTC, new_year, &["2026-01-02T00:00:00+00:00"]),
            ("@weekly", UTC, new_year, &["2026-01-04T00:00:00+00:00"]),
            ("@monthly", UTC, new_year, &["2026-02-01T00:00:00+00:00"]),
            ("@yearly", UTC, new_year, &["2027-01-01T00:00:00+00:00"]),
            ("@annually", UTC, new_year, &["2027-01-01T00:00:00+00:00"]),
            // Six fields: seconds first.
            (
                "30 */20 * * * *",
                UTC,
                new_year,
                &[
                    "2026-01-01T00:00:30+00:00",
                    "2026-01-01T00:20:30+00:00",
                    "2026-01-01T00:40:30+00:00",
                ],
            ),
        ];
        check_table(&table);
    }

    fn check_table(table: &[ZonedCase]) {
        for (expr, zone, from, expected) in table {
            assert_eq!(
                zoned_fire_times(expr, *zone, from, expected.len()),
                *expected,
                "`{expr}` in {zone} after {from}"
            );
        }
    }

    #[test]
    fn next_fire_follows_debian_cron_across_dst_changes() {
        use chrono_tz::America::{New_York, Santiago};
        use chrono_tz::Antarctica::Casey;
        use chrono_tz::Australia::Lord_Howe;
        use chrono_tz::Europe::Berlin;
        use chrono_tz::Pacific::{Apia, Chatham};
        let table: Vec<ZonedCase> = vec![
            // Europe/Berlin, 2026-03-29: 02:00+01:00 is followed by 03:00+02:00. A fixed-time
            // job in the gap runs once at 03:00.
            (
                "30 2 * * *",
                Berlin,
                "2026-03-28T12:00:00+01:00",
                &["2026-03-29T03:00:00+02:00", "2026-03-30T02:30:00+02:00"],
            ),
            (
                "0 2 * * *",
                Berlin,
                "2026-03-28T12:00:00+01:00",
                &["2026-03-29T03:00:00+02:00", "2026-03-30T02:00:00+02:00"],
            ),
            // Several skipped times and a real time at 03:00 make one run.
            (
                "0,30 2,3 * * *",
                Berlin,
                "2026-03-28T12:00:00+01:00",
                &[
                    "2026-03-29T03:00:00+02:00",
                    "2026-03-29T03:30:00+02:00",
                    "2026-03-30T02:00:00+02:00",
                ],
            ),
            // Wildcard jobs follow real time: the missing times do not happen.
            (
                "*/30 * * * *",
                Berlin,
                "2026-03-29T01:00:00+01:00",
                &[
                    "2026-03-29T01:30:00+01:00",
                    "2026-03-29T03:00:00+02:00",
                    "2026-03-29T03:30:00+02:00",
                ],
            ),
            (
                "30 * * * *",
                Berlin,
                "2026-03-29T01:00:00+01:00",
                &["2026-03-29T01:30:00+01:00", "2026-03-29T03:30:00+02:00"],
            ),
            (
                "* 2 * * *",
                Berlin,
                "2026-03-29T01:00:00+01:00",
                &["2026-03-30T02:00:00+02:00", "2026-03-30T02:01:00+02:00"],
            ),
            // Europe/Berlin, 2026-10-25: 03:00+02:00 is followed by 02:00+01:00. A fixed-time
            // job runs in the first 02:xx only...
            (
                "30 2 * * *",
                Berlin,
                "2026-10-24T12:00:00+02:00",
                &["2026-10-25T02:30:00+02:00", "2026-10-26T02:30:00+01:00"],
            ),
            (
                "0 2 * * *",
                Berlin,
                "2026-10-24T12:00:00+02:00",
                &["2026-10-25T02:00:00+02:00", "2026-10-26T02:00:00+01:00"],
            ),
            // ...also when asked from inside the second one.
            (
                "30 2 * * *",
                Berlin,
                "2026-10-25T02:10:00+01:00",
                &["2026-10-26T02:30:00+01:00"],
            ),
            // Wildcard jobs run in both.
            (
                "*/30 * * * *",
                Berlin,
                "2026-10-25T01:45:00+02:00",
                &[
                    "2026-10-25T02:00:00+02:00",
                    "2026-10-25T02:30:00+02:00",
                    "2026-10-25T02:00:00+01:00",
                    "2026-10-25T02:30:00+01:00",
                    "2026-10-25T03:00:00+01:00",
                ],
            ),
            (
                "30 * * * *",
                Berlin,
                "2026-10-25T01:45:00+02:00",
                &[
                    "2026-10-25T02:30:00+02:00",
                    "2026-10-25T02:30:00+01:00",
                    "2026-10-25T03:30:00+01:00",
                ],
            ),
            // Six fields follow the same rules; the seconds field does not matter.
            (
                "15 30 2 * * *",
                Berlin,
                "2026-03-28T12:00:00+01:00",
                &["2026-03-29T03:00:00+02:00", "2026-03-30T02:30:15+02:00"],
            ),
            (
                "15 30 2 * * *",
                Berlin,
                "2026-10-24T12:00:00+02:00",
                &["2026-10-25T02:30:15+02:00", "2026-10-26T02:30:15+01:00"],
            ),
            (
                "*/20 30 2 * * *",
                Berlin,
                "2026-10-25T02:30:30+02:00",
                &["2026-10-25T02:30:40+02:00", "2026-10-26T02:30:00+01:00"],
            ),
            (
                "0 */30 * * * *",
                Berlin,
                "2026-10-25T02:45:00+02:00",
                &["2026-10-25T02:00:00+01:00", "2026-10-25T02:30:00+01:00"],
            ),
            // America/New_York, 2026-03-08: 02:00-05:00 is followed by 03:00-04:00.
            (
                "30 2 * * *",
                New_York,
                "2026-03-07T12:00:00-05:00",
                &["2026-03-08T03:00:00-04:00", "2026-03-09T02:30:00-04:00"],
            ),
            (
                "0 2 * * *",
                New_York,
                "2026-03-07T12:00:00-05:00",
                &["2026-03-08T03:00:00-04:00", "2026-03-09T02:00:00-04:00"],
            ),
            (
                "*/30 * * * *",
                New_York,
                "2026-03-08T01:00:00-05:00",
                &["2026-03-08T01:30:00-05:00", "2026-03-08T03:00:00-04:00"],
            ),
            (
                "30 * * * *",
                New_York,
                "2026-03-08T01:00:00-05:00",
                &["2026-03-08T01:30:00-05:00", "2026-03-08T03:30:00-04:00"],
            ),
            // America/New_York, 2026-11-01: 02:00-04:00 is followed by 01:00-05:00, so
            // 01:xx happens twice and 02:xx once.
            (
                "30 1 * * *",
                New_York,
                "2026-10-31T12:00:00-04:00",
                &["2026-11-01T01:30:00-04:00", "2026-11-02T01:30:00-05:00"],
            ),
            (
                "30 2 * * *",
                New_York,
                "2026-10-31T12:00:00-04:00",
                &["2026-11-01T02:30:00-05:00", "2026-11-02T02:30:00-05:00"],
            ),
            (
                "0 2 * * *",
                New_York,
                "2026-10-31T12:00:00-04:00",
                &["2026-11-01T02:00:00-05:00"],
            ),
            (
                "*/30 * * * *",
                New_York,
                "2026-11-01T00:45:00-04:00",
                &[
                    "2026-11-01T01:00:00-04:00",
                    "2026-11-01T01:30:00-04:00",
                    "2026-11-01T01:00:00-05:00",
                    "2026-11-01T01:30:00-05:00",
                    "2026-11-01T02:00:00-05:00",
                ],
            ),
            (
                "30 * * * *",
                New_York,
                "2026-11-01T00:45:00-04:00",
                &[
                    "2026-11-01T01:30:00-04:00",
                    "2026-11-01T01:30:00-05:00",
                    "2026-11-01T02:30:00-05:00",
                ],
            ),
            // Australia/Lord_Howe shifts by 30 minutes. 2026-10-04: 02:00+10:30 is followed
            // by 02:30+11:00; 2026-04-05: 02:00+11:00 is followed by 01:30+10:30.
            (
                "15 2 * * *",
                Lord_Howe,
                "2026-10-03T12:00:00+10:30",
                &["2026-10-04T02:30:00+11:00", "2026-10-05T02:15:00+11:00"],
            ),
            (
                "*/15 * * * *",
                Lord_Howe,
                "2026-10-04T01:40:00+10:30",
                &[
                    "2026-10-04T01:45:00+10:30",
                    "2026-10-04T02:30:00+11:00",
                    "2026-10-04T02:45:00+11:00",
                ],
            ),
            (
                "45 1 * * *",
                Lord_Howe,
                "2026-04-04T12:00:00+11:00",
                &["2026-04-05T01:45:00+11:00", "2026-04-06T01:45:00+10:30"],
            ),
            (
                "*/15 * * * *",
                Lord_Howe,
                "2026-04-05T01:20:00+11:00",
                &[
                    "2026-04-05T01:30:00+11:00",
                    "2026-04-05T01:45:00+11:00",
                    "2026-04-05T01:30:00+10:30",
                    "2026-04-05T01:45:00+10:30",
                    "2026-04-05T02:00:00+10:30",
                ],
            ),
            // Pacific/Chatham, 2026-09-27: 02:45+12:45 is followed by 03:45+13:45; 04:00
            // is the first even hour after the gap.
            (
                "0 */2 * * *",
                Chatham,
                "2026-09-27T03:55:00+13:45",
                &["2026-09-27T04:00:00+13:45", "2026-09-27T06:00:00+13:45"],
            ),
            (
                "0 3 * * *",
                Chatham,
                "2026-09-26T12:00:00+12:45",
                &["2026-09-27T03:45:00+13:45", "2026-09-28T03:00:00+13:45"],
            ),
            // America/Santiago changes at midnight. 2026-09-06: 00:00-04:00 is followed by
            // 01:00-03:00, so the day has no midnight and @daily runs at 01:00.
            (
                "@daily",
                Santiago,
                "2026-09-05T12:00:00-04:00",
                &["2026-09-06T01:00:00-03:00", "2026-09-07T00:00:00-03:00"],
            ),
            (
                "0 */2 * * *",
                Santiago,
                "2026-09-05T23:00:00-04:00",
                &["2026-09-06T02:00:00-03:00"],
            ),
            // 2026-04-05: 00:00-03:00 is followed by 23:00-04:00 on the 4th.
            (
                "30 23 * * *",
                Santiago,
                "2026-04-04T12:00:00-03:00",
                &["2026-04-04T23:30:00-03:00", "2026-04-05T23:30:00-04:00"],
            ),
            // Antarctica/Casey, 2018-10-07: 04:00+08:00 is followed by 07:00+11:00. A jump
            // of 3 hours is a clock correction for cron: nothing is caught up.
            (
                "30 5 * * *",
                Casey,
                "2018-10-06T12:00:00+08:00",
                &["2018-10-08T05:30:00+11:00"],
            ),
            // 2018-03-11: 04:00+11:00 is followed by 01:00+08:00. Back by 3 hours is still
            // DST for cron: a fixed-time job runs once, a wildcard job twice.
            (
                "30 2 * * *",
                Casey,
                "2018-03-10T12:00:00+11:00",
                &["2018-03-11T02:30:00+11:00", "2018-03-12T02:30:00+08:00"],
            ),
            (
                "30 */1 * * *",
                Casey,
                "2018-03-11T02:00:00+11:00",
                &[
                    "2018-03-11T02:30:00+11:00",
                    "2018-03-11T03:30:00+11:00",
                    "2018-03-11T01:30:00+08:00",
                    "2018-03-11T02:30:00+08:00",
                ],
            ),
            // Pacific/Apia skipped 2011-12-30 (23:59:59-10:00, then 00:00:00+14:00 on the
            // 31st): a clock correction, so the 30th's noon is not caught up.
            (
                "0 12 * * *",
                Apia,
                "2011-12-29T00:00:00-10:00",
                &["2011-12-29T12:00:00-10:00", "2011-12-31T12:00:00+14:00"],
            ),
            (
                "0 0 * * *",
                Apia,
                "2011-12-29T00:00:00-10:00",
                &["2011-12-31T00:00:00+14:00", "2012-01-01T00:00:00+14:00"],
            ),
        ];
        check_table(&table);
    }

    #[test]
    fn fixed_time_is_decided_by_the_minute_and_hour_text() {
        let cases = [
            ("30 2 * * *", true),
            ("0 9-17 * * 1-5", true),
            ("0-59 2 * * *", true),
            ("0,30 2,3 * * *", true),
            ("@daily", true),
            ("@midnight", true),
            ("@weekly", true),
            ("@monthly", true),
            ("@yearly", true),
            ("*/10 30 2 * * *", true),
            ("*/15 * * * *", false),
            ("30 * * * *", false),
            ("* 2 * * *", false),
            ("0 */2 * * *", false),
            ("*/1 2 * * *", false),
            ("@hourly", false),
            ("0 * 2 * * *", false),
        ];
        for (expr, fixed) in cases {
            assert_eq!(
                CronSchedule::parse(expr).unwrap().is_fixed_time(),
                fixed,
                "`{expr}`"
            );
        }
    }

    /// A zone with one offset change, at `at`, from `before` to `after` seconds east of UTC:
    /// for the rules' thresholds, which no real zone has had since 1970.
    #[derive(Debug, Clone, Copy)]
    struct OneChange {
        at: i64,
        before: i32,
        after: i32,
    }

    impl TimeZone for OneChange {
        type Offset = FixedOffset;

        fn from_offset(_: &FixedOffset) -> Self {
            unreachable!("the tests call next_in_zone with the zone itself")
        }

        fn offset_from_local_date(&self, _: &NaiveDate) -> LocalResult<FixedOffset> {
            unreachable!("cron.rs only asks for local date-times")
        }

        fn offset_from_local_datetime(&self, local: &NaiveDateTime) -> LocalResult<FixedOffset> {
            let local = local.and_utc().timestamp();
            let fixed = |offset: i32| FixedOffset::east_opt(offset).unwrap();
            let in_before = local - i64::from(self.before) < self.at;
            let in_after = local - i64::from(self.after) >= self.at;
            match (in_before, in_after) {
                (true, true) => LocalResult::Ambiguous(fixed(self.before), fixed(self.after)),
                (true, false) => LocalResult::Single(fixed(self.before)),
                (false, true) => LocalResult::Single(fixed(self.after)),
                (false, false) => LocalResult::None,
            }
        }

        fn offset_from_utc_date(&self, _: &NaiveDate) -> FixedOffset {
            unreachable!("cron.rs only asks for date-times")
        }

        fn offset_from_utc_datetime(&self, utc: &NaiveDateTime) -> FixedOffset {
            let offset = if utc.and_utc().timestamp() < self.at {
                self.before
            } else {
                self.after
            };
            FixedOffset::east_opt(offset).unwrap()
        }
    }

    /// Fire times in a [`OneChange`] zone whose change is at 2026-01-01T02:00 local (before
    /// the change), from 01:30 local, as wall-clock `HH:MM` with the offset in minutes.
    fn around_one_change(expr: &str, change_minutes: i32, count: usize) -> Vec<String> {
        let before = 3600;
        let at = utc(2026, 1, 1, 1, 0, 0).timestamp();
        let zone = OneChange {
            at,
            before,
            after: before + change_minutes * 60,
        };
        let schedule = CronSchedule::parse(expr).unwrap();
        let mut cursor = utc(2026, 1, 1, 0, 30, 0);
        let mut times = Vec::new();
        for _ in 0..count {
            cursor = schedule.next_in_zone(cursor, &zone).unwrap();
            let offset = zone.offset_from_utc_datetime(&cursor.naive_utc());
            let local = cursor.with_timezone(&offset);
            times.push(format!(
                "{}{:+}",
                local.format("%d %H:%M"),
                offset.local_minus_utc() / 60
            ));
        }
        times
    }

    #[test]
    fn the_size_of_an_offset_change_decides_as_in_cron() {
        // Forward by less than 5 minutes: a late wake-up for cron, every job catches up.
        assert_eq!(
            around_one_change("2 * * * *", 4, 2),
            ["01 02:04+64", "01 03:02+64"]
        );
        // Forward by 5 minutes: DST, a wildcard job's skipped time is gone...
        assert_eq!(
            around_one_change("2 * * * *", 5, 2),
            ["01 03:02+65", "01 04:02+65"]
        );
        // ...and a fixed-time job catches up.
        assert_eq!(
            around_one_change("2 2 * * *", 5, 2),
            ["01 02:05+65", "02 02:02+65"]
        );
        // Forward by 179 minutes, still DST; by 180, a clock correction: nothing is
        // caught up.
        assert_eq!(
            around_one_change("0 4 * * *", 179, 2),
            ["01 04:59+239", "02 04:00+239"]
        );
        assert_eq!(around_one_change("0 4 * * *", 180, 1), ["02 04:00+240"]);
        // Back by 181 minutes, still DST: a fixed-time job does not run again in the
        // repeated time; back by 182, a clock correction: it does.
        assert_eq!(around_one_change("0 0 * * *", -181, 1), ["02 00:00-121"]);
        assert_eq!(
            around_one_change("0 0 * * *", -182, 2),
            ["01 00:00-122", "02 00:00-122"]
        );
        // Back by an hour: a fixed-time job runs in the first occurrence, a wildcard job
        // in both.
        assert_eq!(
            around_one_change("45 1 * * *", -60, 2),
            ["01 01:45+60", "02 01:45+0"]
        );
        assert_eq!(
            around_one_change("45 * * * *", -60, 3),
            ["01 01:45+60", "01 01:45+0", "01 02:45+0"]
        );
    }

    /// What Debian's cron daemon does, minute by minute, written after its main loop
    /// (`cron.c`): the wall-clock minute it expects next, the four ways the clock may have
    /// moved, fixed-time and wildcard jobs run accordingly. Returns the instants of the runs
    /// in `(from, until]`, one per instant.
    fn simulate_cron_daemon(
        expr: &str,
        zone: chrono_tz::Tz,
        from: DateTime<Utc>,
        until: DateTime<Utc>,
    ) -> Vec<DateTime<Utc>> {
        let fields = parse_fields(expr).unwrap();
        let wall_minute = |instant: DateTime<Utc>| {
            let offset = instant
                .with_timezone(&zone)
                .offset()
                .fix()
                .local_minus_utc();
            (instant.timestamp() + i64::from(offset)).div_euclid(60)
        };
        let matches = |minute: i64| {
            let wall = DateTime::from_timestamp(minute * 60, 0)
                .unwrap()
                .naive_utc();
            vixie_day_matches(&fields, wall.date())
                && has(fields.hours, wall.hour())
                && has(fields.minutes, wall.minute())
        };
        let mut runs: Vec<DateTime<Utc>> = Vec::new();
        let mut run = |now: DateTime<Utc>, minute: i64, wild: bool, fixed: bool| {
            let kind = if fields.fixed_time { fixed } else { wild };
            if kind && matches(minute) && runs.last() != Some(&now) {
                runs.push(now);
            }
        };
        let mut virtual_time = wall_minute(from);
        let mut now = from;
        while now < until {
            now += Duration::minutes(1);
            let clock = wall_minute(now);
            let difference = clock - virtual_time;
            if difference == 1 {
                virtual_time = clock;
                run(now, virtual_time, true, true);
            } else if !(-180..=180).contains(&difference) {
                virtual_time = clock;
                run(now, clock, true, true);
            } else if difference > 5 {
                run(now, clock, true, false);
                while virtual_time < clock {
                    virtual_time += 1;
                    run(now, virtual_time, false, true);
                }
            } else if difference > 0 {
                while virtual_time < clock {
                    virtual_time += 1;
                    run(now, virtual_time, true, true);
                }
            } else {
                run(now, clock, true, false);
            }
        }
        runs
    }

    #[test]
    fn next_fire_agrees_with_a_simulation_of_the_cron_daemon() {
        use chrono_tz::America::{New_York, Santiago};
        use chrono_tz::Antarctica::Casey;
        use chrono_tz::Australia::Lord_Howe;
        use chrono_tz::Europe::Berlin;
        use chrono_tz::Pacific::{Apia, Chatham};
        // A day before and after each offset change.
        let changes = [
            (Berlin, utc(2026, 3, 29, 1, 0, 0)),
            (Berlin, utc(2026, 10, 25, 1, 0, 0)),
            (New_York, utc(2026, 3, 8, 7, 0, 0)),
            (New_York, utc(2026, 11, 1, 6, 0, 0)),
            (Lord_Howe, utc(2026, 4, 4, 15, 0, 0)),
            (Lord_Howe, utc(2026, 10, 3, 15, 30, 0)),
            (Santiago, utc(2026, 4, 5, 3, 0, 0)),
            (Santiago, utc(2026, 9, 6, 4, 0, 0)),
            (Casey, utc(2018, 3, 10, 17, 0, 0)),
            (Casey, utc(2018, 10, 6, 20, 0, 0)),
            (Apia, utc(2011, 12, 30, 10, 0, 0)),
            (Chatham, utc(2026, 4, 4, 14, 0, 0)),
            (Chatham, utc(2026, 9, 26, 14, 0, 0)),
        ];
        let expressions = [
            "30 2 * * *",
            "0 2 * * *",
            "0,30 2,3 * * *",
            "15 1 * * *",
            "45 1 * * *",
            "59 1 * * *",
            "0 3 * * *",
            "30 4 * * *",
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
        ];
        for (zone, change) in changes {
            let from = change - Duration::days(1);
            let until = change + Duration::days(1);
            for expr in expressions {
                let expected = simulate_cron_daemon(expr, zone, from, until);
                let schedule = CronSchedule::parse(expr).unwrap();
                let mut actual = Vec::new();
                let mut cursor = from;
                while let Some(next) = schedule.next_fire(cursor, zone).filter(|t| *t <= until) {
                    actual.push(next);
                    cursor = next;
                }
                let show = |times: &[DateTime<Utc>]| {
                    times
                        .iter()
                        .map(|t| t.with_timezone(&zone).to_rfc3339())
                        .collect::<Vec<_>>()
                };
                assert_eq!(
                    show(&actual),
                    show(&expected),
                    "`{expr}` in {zone} around {change}"
                );
            }
        }
    }

    #[test]
    fn accessors_report_the_expression() {
        let schedule = CronSchedule::parse("  */10 * * * * *  ").unwrap();
        assert_eq!(schedule.expression(), "*/10 * * * * *");
        assert_eq!(schedule.to_string(), "*/10 * * * * *");
        assert!(schedule.has_seconds());
        assert!(!CronSchedule::parse("@daily").unwrap().has_seconds());
        assert!(!"0 2 * * *".parse::<CronSchedule>().unwrap().has_seconds());
    }

    /// Checks a date against the day fields with the Vixie rules, independently of
    /// `ParsedFields::date_matches`.
    fn vixie_day_matches(fields: &ParsedFields, date: NaiveDate) -> bool {
        let dom = has(fields.days_of_month, date.day());
        let dow = has(fields.days_of_week, date.weekday().num_days_from_sunday());
        let day = if fields.dom_star || fields.dow_star {
            dom && dow
        } else {
            dom || dow
        };
        day && has(fields.months, date.month())
    }

    fn has(bits: u64, value: u32) -> bool {
        bits & (1u64 << value) != 0
    }

    /// The values of a bit set as a comma-separated list.
    fn render_list(bits: u64) -> String {
        (0..64u32)
            .filter(|&value| has(bits, value))
            .map(|value| value.to_string())
            .collect::<Vec<_>>()
            .join(",")
    }

    /// Finds the next fire time by walking days, then every second of a matching day.
    fn brute_force_next(fields: &ParsedFields, after: DateTime<Utc>) -> Option<DateTime<Utc>> {
        let start = (after + Duration::seconds(1)).with_nanosecond(0)?;
        let mut date = start.date_naive();
        for _ in 0..(366 * 30) {
            if vixie_day_matches(fields, date) {
                let values = |bits: u64| (0..60u32).filter(move |&value| has(bits, value));
                for hour in values(fields.hours) {
                    for minute in values(fields.minutes) {
                        for second in values(fields.seconds) {
                            let time = date.and_hms_opt(hour, minute, second)?.and_utc();
                            if time >= start {
                                return Some(time);
                            }
                        }
                    }
                }
            }
            date = date.succ_opt()?;
        }
        None
    }

    #[test]
    fn the_search_agrees_with_a_brute_force_vixie_matcher() {
        // These expressions cover the day rule in all its combinations, steps and ranges.
        let expressions = [
            "0 0 */2 * 1",
            "0 0 13 * 5",
            "0 0 13 * */2",
            "0 0 */3 * */2",
            "0 0 1-7 * mon",
            "0 0 *,1 * 3",
            "0 0 1 * *,3",
            "0 12 31 * *",
            "0 6 29 2 1",
            "0 6 29 2 *",
            "15 10 * * 7",
            "0 0 5/10 * 6-7",
            "0 0 * * sat-sun",
            "0 0 * * 5-sun",
            "*/20 3 * * *",
        ];
        let starts = [
            utc(2025, 1, 1, 0, 0, 0),
            utc(2025, 2, 27, 23, 59, 59),
            utc(2024, 12, 31, 12, 0, 0),
            utc(2027, 6, 15, 3, 30, 0),
        ];
        for expr in expressions {
            let schedule = CronSchedule::parse(expr).unwrap();
            let fields = parse_fields(expr).unwrap();
            for start in starts {
                let mut cursor = start;
                for _ in 0..5 {
                    let expected = brute_force_next(&fields, cursor);
                    let actual = schedule.next_after(&cursor);
                    assert_eq!(actual, expected, "expression `{expr}` after {cursor}");
                    match actual {
                        Some(next) => cursor = next,
                        None => break,
                    }
                }
            }
        }
    }

    fn wall(text: &str) -> NaiveDateTime {
        NaiveDateTime::parse_from_str(text, "%Y-%m-%dT%H:%M:%S").unwrap()
    }

    #[test]
    fn the_wall_clock_search_follows_the_table() {
        // Expected times from Python's cronsim; each search starts a second after the
        // previous match, and a match at the start itself counts.
        let table: [(&str, &str, &[&str]); 10] = [
            // A stepped range, and the carry into the next hour.
            (
                "10-40/15 * * * *",
                "2025-01-01T00:00:00",
                &[
                    "2025-01-01T00:10:00",
                    "2025-01-01T00:25:00",
                    "2025-01-01T00:40:00",
                    "2025-01-01T01:10:00",
                ],
            ),
            // The carry into the next day.
            (
                "30 23 * * *",
                "2025-01-01T23:31:00",
                &["2025-01-02T23:30:00", "2025-01-03T23:30:00"],
            ),
            // A seconds field: a start past second 0 of the minute moves on an hour.
            (
                "0 10 * * * *",
                "2025-01-01T05:10:01",
                &["2025-01-01T06:10:00", "2025-01-01T07:10:00"],
            ),
            // Months that do not match are skipped into the next year.
            (
                "0 0 1 2 *",
                "2025-03-01T00:00:00",
                &["2026-02-01T00:00:00", "2027-02-01T00:00:00"],
            ),
            (
                "0 0 * 1,3 *",
                "2025-12-05T00:00:00",
                &["2026-01-01T00:00:00", "2026-01-02T00:00:00"],
            ),
            // The 31st skips the months without one.
            (
                "0 12 31 * *",
                "2025-01-31T12:00:01",
                &[
                    "2025-03-31T12:00:00",
                    "2025-05-31T12:00:00",
                    "2025-07-31T12:00:00",
                ],
            ),
            // The OR rule with a stepped range of days: the 10th, 15th and 20th, and Fridays.
            (
                "0 0 10-20/5 * fri",
                "2025-01-01T00:00:00",
                &[
                    "2025-01-03T00:00:00",
                    "2025-01-10T00:00:00",
                    "2025-01-15T00:00:00",
                    "2025-01-17T00:00:00",
                    "2025-01-20T00:00:00",
                    "2025-01-24T00:00:00",
                ],
            ),
            // A stepped range of weekday names: Sunday and Tuesday.
            (
                "5 4 * * sun-tue/2",
                "2025-01-01T00:00:00",
                &[
                    "2025-01-05T04:05:00",
                    "2025-01-07T04:05:00",
                    "2025-01-12T04:05:00",
                    "2025-01-14T04:05:00",
                ],
            ),
            // The AND rule (`*/7` starts with `*`): 29 February on a Sunday, 40 years apart
            // across 2100, which is no leap year.
            (
                "0 0 29 2 */7",
                "2089-01-01T00:00:00",
                &["2128-02-29T00:00:00", "2156-02-29T00:00:00"],
            ),
            // Nothing matches before the year 1.
            ("0 0 * * *", "0000-06-01T00:00:00", &["0001-01-01T00:00:00"]),
        ];
        for (expr, start, expected) in table {
            let fields = parse_fields(expr).unwrap();
            let mut cursor = wall(start);
            for want in expected {
                let found = fields.next_match(cursor);
                assert_eq!(found, Some(wall(want)), "`{expr}` from {cursor}");
                cursor = wall(want) + Duration::seconds(1);
            }
        }
    }

    #[test]
    fn the_wall_clock_search_ends_before_the_year_5000() {
        let yearly = parse_fields("0 0 1 1 *").unwrap();
        assert_eq!(
            yearly.next_match(wall("4998-06-01T00:00:00")),
            Some(wall("4999-01-01T00:00:00"))
        );
        assert_eq!(yearly.next_match(wall("4999-01-01T00:00:01")), None);
        // The last second before the end still matches.
        let every_second = parse_fields("* * * * * *").unwrap();
        assert_eq!(
            every_second.next_match(wall("4999-12-31T23:59:59")),
            Some(wall("4999-12-31T23:59:59"))
        );
        assert_eq!(every_second.next_match(wall("5000-01-01T00:00:00")), None);
    }

    #[test]
    fn a_fire_time_at_the_start_counts_only_when_inclusive_and_whole() {
        let schedule = CronSchedule::parse("* * * * * *").unwrap();
        let start = wall("2025-01-01T00:00:00");
        let half_past = start + Duration::milliseconds(500);
        let next_second = wall("2025-01-01T00:00:01");
        assert_eq!(schedule.next_wall_time(start, true), Some(start));
        assert_eq!(schedule.next_wall_time(start, false), Some(next_second));
        assert_eq!(schedule.next_wall_time(half_past, true), Some(next_second));
        assert_eq!(schedule.next_wall_time(half_past, false), Some(next_second));
    }

    #[test]
    fn fields_parse_into_the_expected_values() {
        let fields = parse_fields("*/20 1-3,5 */10 feb-apr 1/2").unwrap();
        assert_eq!(fields.seconds, 1);
        assert_eq!(render_list(fields.minutes), "0,20,40");
        assert_eq!(render_list(fields.hours), "1,2,3,5");
        assert_eq!(render_list(fields.days_of_month), "1,11,21,31");
        assert_eq!(render_list(fields.months), "2,3,4");
        // 1/2 in the day-of-week field is 1,3,5,7, and 7 is Sunday.
        assert_eq!(render_list(fields.days_of_week), "0,1,3,5");
        assert!(fields.dom_star && !fields.dow_star);
        assert_eq!(
            render_list(parse_fields("0 0 * * mon-sun").unwrap().days_of_week),
            "0,1,2,3,4,5,6"
        );
    }

    fn error_of(expr: &str) -> CronError {
        match CronSchedule::parse(expr) {
            Ok(_) => panic!("expected `{expr}` to be rejected"),
            Err(err) => err,
        }
    }

    #[test]
    fn invalid_expressions_have_exact_messages() {
        let cases = [
            (
                "0 2 * *",
                "expected 5 fields (minute hour day-of-month month day-of-week) \
                 or 6 with leading seconds, found 4",
            ),
            (
                "0 0 2 * * * *",
                "expected 5 fields (minute hour day-of-month month day-of-week) \
                 or 6 with leading seconds, found 7",
            ),
            (
                "",
                "expected 5 fields (minute hour day-of-month month day-of-week) \
                 or 6 with leading seconds, found 0",
            ),
            ("60 * * * *", "minute field `60`: value `60` is out of range: expected 0-59"),
            ("0 24 * * *", "hour field `24`: value `24` is out of range: expected 0-23"),
            ("0 0 0 * *", "day-of-month field `0`: value `0` is out of range: expected 1-31"),
            ("0 0 * 13 *", "month field `13`: value `13` is out of range: expected 1-12"),
            (
                "0 0 * * 8",
                "day-of-week field `8`: value `8` is out of range: expected 0-7 (0 and 7 are sunday)",
            ),
            ("60 0 * * * *", "second field `60`: value `60` is out of range: expected 0-59"),
            (
                "0 5-1 * * *",
                "hour field `5-1`: range `5-1` is reversed: expected the start to be at most the end",
            ),
            (
                "*/0 * * * *",
                "minute field `*/0`: step `0` is invalid: expected a positive integer",
            ),
            (
                "1,,2 * * * *",
                "minute field `1,,2`: empty list item: expected a value, range or step between commas",
            ),
            (
                "0 0 * * mon,",
                "day-of-week field `mon,`: empty list item: expected a value, range or step between commas",
            ),
            (
                "x * * * *",
                "minute field `x`: invalid value `x`: expected a number 0-59",
            ),
            (
                "0 0 * * monday",
                "day-of-week field `monday`: invalid value `monday`: expected a number 0-7 \
                 (0 and 7 are sunday) or a day name sun-sat",
            ),
            (
                "0 0 * mon *",
                "month field `mon`: invalid value `mon`: expected a number 1-12 or a month name jan-dec",
            ),
            (
                "0 0 ? * 1",
                "day-of-month field `?`: `?` is a Quartz extension, not crontab syntax: use `*` instead",
            ),
            ("0 0 L * *", "day-of-month field `L`: `L` (last) is a Quartz extension, not crontab syntax"),
            (
                "0 0 15W * *",
                "day-of-month field `15W`: `W` (nearest weekday) is a Quartz extension, not crontab syntax",
            ),
            (
                "0 0 * * 5#3",
                "day-of-week field `5#3`: `#` (nth weekday of the month) is a Quartz extension, not crontab syntax",
            ),
            ("0 0 * * 5L", "day-of-week field `5L`: `L` (last) is a Quartz extension, not crontab syntax"),
            (
                "0 0 30 2 *",
                "day-of-month field `30`: never occurs in month `2`, so the expression can never fire",
            ),
            (
                "0 0 31 4 *",
                "day-of-month field `31`: never occurs in month `4`, so the expression can never fire",
            ),
            (
                "0 0 31 apr,jun *",
                "day-of-month field `31`: never occurs in month `apr,jun`, \
                 so the expression can never fire",
            ),
            (
                "0 0 30,31 2 */2",
                "day-of-month field `30,31`: never occurs in month `2`, so the expression can never fire",
            ),
            (
                "@reboot",
                "macro `@reboot` is not supported: expected a time-based schedule such as `@daily`",
            ),
            (
                "@fortnightly",
                "unknown macro `@fortnightly`: expected one of @hourly, @daily, @midnight, \
                 @weekly, @monthly, @yearly, @annually",
            ),
            ("@daily 5", "macro `@daily` must stand alone: expected nothing after it"),
            (
                "*/ * * * *",
                "minute field `*/`: missing step after `/`: expected a positive integer",
            ),
            ("-5 * * * *", "minute field `-5`: missing value: expected a number 0-59"),
            ("1/2/3 * * * *", "minute field `1/2/3`: invalid step `2/3`: expected a positive integer"),
        ];
        for (expr, message) in cases {
            assert_eq!(error_of(expr).to_string(), message, "expression `{expr}`");
        }
    }

    #[test]
    fn errors_name_the_field_and_its_text() {
        let err = error_of("0 0 31 4 *");
        assert_eq!(err.field, Some(CronField::DayOfMonth));
        assert_eq!(err.text, "31");
        let err = error_of("0 0 * *");
        assert_eq!(err.field, None);
        assert_eq!(err.text, "");
    }

    #[test]
    fn restricted_days_with_or_rule_are_not_impossible() {
        // With both day fields restricted the weekday still fires, so this is valid.
        let next = fire_times("0 0 30 2 mon", utc(2025, 1, 1, 0, 0, 0), 1);
        assert_eq!(next, vec![utc(2025, 2, 3, 0, 0, 0)]);
    }

    #[test]
    fn odd_inputs_never_panic() {
        let inputs = [
            "",
            " ",
            "\t\n",
            "@",
            "@@",
            "*",
            "* * * * * * * * * *",
            "99999999999999999999 * * * *",
            "0 0 * * 99999999999999999999",
            "*/99999999999999999999 * * * *",
            "1-99999999999999999999 * * * *",
            "0 0 1 1 * *",
            "é * * * *",
            "0 0 * * 月",
            "日 本 語 の 文 字",
            "🦀 * * * *",
            "-",
            "- - - - -",
            "/ / / / /",
            ", , , , ,",
            "*/*/* * * * *",
            "1-2-3 * * * *",
            "0 0 * * sun-mon",
            "0\u{a0}0 * * *",
            "4294967295 * * * *",
            "*/4294967295 * * * *",
            "0 0 1-31/4294967295 * *",
        ];
        for input in inputs {
            if let Ok(schedule) = CronSchedule::parse(input) {
                let _ = schedule.next_after(&utc(2025, 1, 1, 0, 0, 0));
            }
        }
        assert!(CronSchedule::parse("*/4294967295 * * * *").is_ok());
        // The search stops at the year 5000 (`END_YEAR`), so later starts have no next time.
        let far = NaiveDate::from_ymd_opt(5000, 1, 2)
            .unwrap()
            .and_hms_opt(0, 0, 0)
            .unwrap()
            .and_utc();
        assert_eq!(
            CronSchedule::parse("0 0 1 1 *").unwrap().next_after(&far),
            None
        );
        let very_far = NaiveDate::from_ymd_opt(200_000, 1, 1)
            .unwrap()
            .and_hms_opt(0, 0, 0)
            .unwrap()
            .and_utc();
        assert_eq!(
            CronSchedule::parse("* * * * *")
                .unwrap()
                .next_after(&very_far),
            None
        );
    }
}
