//! Human-readable duration strings such as `300`, `5m`, `1h30m` or `500ms`.
//!
//! A duration is either a bare non-negative integer, read as seconds, or one or more
//! `<integer><unit>` groups with the units `d`, `h`, `m`, `s` and `ms`. The units must
//! appear in that (decreasing) order and at most once each, so every duration has one
//! obvious reading. [`format_duration`] writes the same syntax back.

use std::time::Duration;

/// The units in the order they must appear, with their length in milliseconds.
const UNITS: [(&str, u64); 5] = [
    ("d", 86_400_000),
    ("h", 3_600_000),
    ("m", 60_000),
    ("s", 1_000),
    ("ms", 1),
];

/// Returns `count` units of `unit_millis` milliseconds, or `None` on overflow.
///
/// Whole-second units are multiplied in seconds, because the full range of [`Duration`]
/// (`u64::MAX` seconds) does not fit in a `u64` of milliseconds.
fn scaled(count: u64, unit_millis: u64) -> Option<Duration> {
    if unit_millis % 1_000 == 0 {
        count
            .checked_mul(unit_millis / 1_000)
            .map(Duration::from_secs)
    } else {
        count.checked_mul(unit_millis).map(Duration::from_millis)
    }
}

/// Reminds the reader what a valid duration looks like; appended to most errors.
const EXPECTED: &str = "expected a duration like `300`, `5m` or `1h30m`";

/// Why a duration string was rejected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct DurationError {
    /// What is wrong and what was expected instead.
    pub message: String,
}

impl DurationError {
    fn new(message: impl Into<String>) -> Self {
        DurationError {
            message: message.into(),
        }
    }
}

/// Parses a duration such as `300` (seconds), `5m`, `1h30m`, `2d` or `500ms`.
///
/// Surrounding whitespace is ignored.
///
/// # Errors
///
/// Returns a [`DurationError`] for empty text, negative values, fractions, unknown
/// units, units out of order or repeated, and durations too large for [`Duration`].
pub fn parse_duration(text: &str) -> Result<Duration, DurationError> {
    let trimmed = text.trim();
    if trimmed.is_empty() {
        return Err(DurationError::new(format!("empty duration: {EXPECTED}")));
    }
    if trimmed.bytes().all(|byte| byte.is_ascii_digit()) {
        return trimmed
            .parse::<u64>()
            .map(Duration::from_secs)
            .map_err(|_| too_large(trimmed));
    }

    let mut total = Duration::ZERO;
    // Index into UNITS of the last unit seen; later units must come strictly after it.
    let mut previous_unit: Option<usize> = None;
    let mut rest = trimmed;
    while !rest.is_empty() {
        let (amount, after_amount) = split_amount(trimmed, rest)?;
        let (unit, after_unit) = split_unit(trimmed, amount, after_amount)?;
        let index = unit_index(trimmed, unit)?;
        if previous_unit.is_some_and(|previous| index <= previous) {
            return Err(DurationError::new(format!(
                "unit `{unit}` is out of order in duration `{trimmed}`: \
                 expected units in the order d, h, m, s, ms, each at most once"
            )));
        }
        previous_unit = Some(index);
        let count = amount.parse::<u64>().map_err(|_| too_large(trimmed))?;
        total = UNITS
            .get(index)
            .and_then(|&(_, unit_millis)| scaled(count, unit_millis))
            .and_then(|amount| total.checked_add(amount))
            .ok_or_else(|| too_large(trimmed))?;
        rest = after_unit;
    }
    Ok(total)
}

/// Splits the leading digits off `rest`, rejecting signs and decimal points with a
/// message that names the problem.
fn split_amount<'a>(whole: &str, rest: &'a str) -> Result<(&'a str, &'a str), DurationError> {
    let digits_end = rest
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(rest.len());
    let (amount, after) = rest.split_at(digits_end);
    if after.starts_with(['.', ',']) {
        return Err(DurationError::new(format!(
            "fractional value in duration `{whole}`: expected whole numbers, as in `1h30m` \
             instead of `1.5h`"
        )));
    }
    if amount.is_empty() {
        let message = match rest.chars().next() {
            Some('-') => format!("negative duration `{whole}`: {EXPECTED}"),
            Some(c) if c.is_whitespace() => {
                format!("unexpected space in duration `{whole}`: {EXPECTED}")
            }
            Some(c) => format!("expected a number before `{c}` in duration `{whole}`: {EXPECTED}"),
            None => format!("{EXPECTED}, found `{whole}`"),
        };
        return Err(DurationError::new(message));
    }
    Ok((amount, after))
}

/// Splits the unit letters off `rest`, which follows the number `amount`.
fn split_unit<'a>(
    whole: &str,
    amount: &str,
    rest: &'a str,
) -> Result<(&'a str, &'a str), DurationError> {
    let unit_end = rest
        .find(|c: char| !c.is_alphabetic())
        .unwrap_or(rest.len());
    let (unit, after) = rest.split_at(unit_end);
    if unit.is_empty() {
        let message = match rest.chars().next() {
            Some(c) if c.is_whitespace() => {
                format!("unexpected space in duration `{whole}`: {EXPECTED}")
            }
            Some(c) => {
                format!("unexpected `{c}` after `{amount}` in duration `{whole}`: {EXPECTED}")
            }
            None => format!(
                "missing unit after `{amount}` in duration `{whole}`: \
                 expected one of ms, s, m, h, d"
            ),
        };
        return Err(DurationError::new(message));
    }
    Ok((unit, after))
}

fn unit_index(whole: &str, unit: &str) -> Result<usize, DurationError> {
    UNITS
        .iter()
        .position(|(name, _)| *name == unit)
        .ok_or_else(|| {
            DurationError::new(format!(
                "unknown unit `{unit}` in duration `{whole}`: expected one of ms, s, m, h, d"
            ))
        })
}

fn too_large(whole: &str) -> DurationError {
    DurationError::new(format!(
        "duration `{whole}` is too large: expected at most {} seconds",
        u64::MAX
    ))
}

/// Formats a duration in the syntax [`parse_duration`] reads, such as `1h30m`, `5m`,
/// `300ms` or `0s`.
///
/// Whole days are written with `d`. Anything below a millisecond is dropped, so a
/// duration of whole milliseconds survives a round trip through [`parse_duration`].
pub fn format_duration(d: Duration) -> String {
    let mut remaining = d.as_millis();
    let mut text = String::new();
    for (name, millis) in UNITS {
        let millis = u128::from(millis);
        let count = remaining / millis;
        remaining %= millis;
        if count > 0 {
            text.push_str(&count.to_string());
            text.push_str(name);
        }
    }
    if text.is_empty() {
        text.push_str("0s");
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn valid_durations_parse() {
        let cases = [
            ("300", Duration::from_secs(300)),
            ("0", Duration::ZERO),
            ("5m", Duration::from_secs(300)),
            ("1h30m", Duration::from_secs(5_400)),
            ("2d", Duration::from_secs(172_800)),
            ("1m30s", Duration::from_secs(90)),
            ("500ms", Duration::from_millis(500)),
            ("1h0m5s", Duration::from_secs(3_605)),
            ("1d2h3m4s5ms", Duration::from_millis(93_784_005)),
            ("  45s\n", Duration::from_secs(45)),
            ("0s", Duration::ZERO),
            ("007m", Duration::from_secs(420)),
            ("18446744073709551615", Duration::from_secs(u64::MAX)),
        ];
        for (text, expected) in cases {
            assert_eq!(parse_duration(text), Ok(expected), "duration `{text}`");
        }
    }

    #[test]
    fn invalid_durations_have_exact_messages() {
        let cases = [
            (
                "",
                "empty duration: expected a duration like `300`, `5m` or `1h30m`",
            ),
            (
                "   ",
                "empty duration: expected a duration like `300`, `5m` or `1h30m`",
            ),
            (
                "5x",
                "unknown unit `x` in duration `5x`: expected one of ms, s, m, h, d",
            ),
            (
                "5M",
                "unknown unit `M` in duration `5M`: expected one of ms, s, m, h, d",
            ),
            (
                "30s1m",
                "unit `m` is out of order in duration `30s1m`: \
                 expected units in the order d, h, m, s, ms, each at most once",
            ),
            (
                "1m1m",
                "unit `m` is out of order in duration `1m1m`: \
                 expected units in the order d, h, m, s, ms, each at most once",
            ),
            (
                "-5m",
                "negative duration `-5m`: expected a duration like `300`, `5m` or `1h30m`",
            ),
            (
                "-300",
                "negative duration `-300`: expected a duration like `300`, `5m` or `1h30m`",
            ),
            (
                "1.5h",
                "fractional value in duration `1.5h`: expected whole numbers, as in `1h30m` \
                 instead of `1.5h`",
            ),
            (
                "1h30",
                "missing unit after `30` in duration `1h30`: expected one of ms, s, m, h, d",
            ),
            (
                "m",
                "expected a number before `m` in duration `m`: \
                 expected a duration like `300`, `5m` or `1h30m`",
            ),
            (
                "1h 30m",
                "unexpected space in duration `1h 30m`: \
                 expected a duration like `300`, `5m` or `1h30m`",
            ),
            (
                "5m!",
                "expected a number before `!` in duration `5m!`: \
                 expected a duration like `300`, `5m` or `1h30m`",
            ),
            (
                "5+",
                "unexpected `+` after `5` in duration `5+`: \
                 expected a duration like `300`, `5m` or `1h30m`",
            ),
            (
                "18446744073709551616",
                "duration `18446744073709551616` is too large: expected at most \
                 18446744073709551615 seconds",
            ),
            (
                "99999999999999999999d",
                "duration `99999999999999999999d` is too large: expected at most \
                 18446744073709551615 seconds",
            ),
            (
                "213503982334602d",
                "duration `213503982334602d` is too large: expected at most \
                 18446744073709551615 seconds",
            ),
        ];
        for (text, message) in cases {
            match parse_duration(text) {
                Ok(value) => panic!("expected `{text}` to be rejected, got {value:?}"),
                Err(err) => assert_eq!(err.to_string(), message, "duration `{text}`"),
            }
        }
    }

    #[test]
    fn durations_format_compactly() {
        let cases = [
            (Duration::from_secs(5_400), "1h30m"),
            (Duration::from_secs(300), "5m"),
            (Duration::from_millis(300), "300ms"),
            (Duration::ZERO, "0s"),
            (Duration::from_nanos(999_999), "0s"),
            (Duration::from_secs(3_605), "1h5s"),
            (Duration::from_secs(172_800), "2d"),
            (Duration::from_millis(90_500), "1m30s500ms"),
        ];
        for (duration, text) in cases {
            assert_eq!(format_duration(duration), text);
        }
    }

    #[test]
    fn formatted_durations_parse_back() {
        let durations = [
            Duration::ZERO,
            Duration::from_millis(1),
            Duration::from_millis(93_784_005),
            Duration::from_secs(u64::MAX),
            Duration::from_millis(u64::MAX),
        ];
        for duration in durations {
            assert_eq!(parse_duration(&format_duration(duration)), Ok(duration));
        }
    }

    #[test]
    fn odd_inputs_never_panic() {
        let inputs = [
            "",
            " ",
            "\u{3000}",
            "ms",
            "5ms5",
            "5µs",
            "5 m",
            "日本",
            "5分",
            "🦀",
            "99999999999999999999",
            "99999999999999999999ms",
            "1d99999999999999999h",
            "0x10",
            "1e3",
            "+5",
            "5m-",
            "\u{0}",
            "é5m",
        ];
        for input in inputs {
            assert!(
                parse_duration(input).is_err(),
                "`{input}` should be rejected"
            );
        }
    }
}
