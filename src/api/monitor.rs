//! `GET /api/system/metrics`: the latest system sample and the samples since a time, one
//! point per step — recent raw samples for short ranges, the persisted downsampled history
//! for longer ones.

use std::time::Duration;

use axum::extract::{Query, State};
use axum::Json;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::json;
use utoipa::{IntoParams, ToSchema};

use super::error::ErrorBody;
use super::{ApiError, AppState};
use crate::monitor::history::HistoryPoint;
use crate::monitor::system::SystemSample;

/// How far back and how fine. Unknown parameters are refused.
#[derive(Debug, Deserialize, Default, IntoParams)]
#[serde(default, deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct SystemMetricsQuery {
    /// From when: an RFC 3339 time (`2025-01-31T12:00:00Z`) or a duration back from now
    /// (`30m`, `1h`, `7d`). Default `1h`.
    #[param(
        pattern = r"^([0-9]{1,6}|([0-9]{1,6}d)?([0-9]{1,6}h)?([0-9]{1,6}m)?([0-9]{1,6}s)?([0-9]{1,6}ms)?|[0-9]{4}-(0[1-9]|1[0-2])-(0[1-9]|1[0-9]|2[0-8])[Tt]([01][0-9]|2[0-3]):[0-5][0-9]:[0-5][0-9](\.[0-9]{1,9})?([Zz]|[+-]([01][0-9]|2[0-3]):[0-5][0-9]))$"
    )]
    since: Option<String>,
    /// The width of a point, a duration (`10s`, `5m`). Default: the finest the source has
    /// (the sample interval for recent ranges, `monitoring.history_step` for longer ones);
    /// never finer than that. Above zero.
    #[param(
        pattern = r"^([1-9][0-9]{0,5}|([1-9][0-9]{0,5}d)?([1-9][0-9]{0,5}h)?([1-9][0-9]{0,5}m)?([1-9][0-9]{0,5}s)?([1-9][0-9]{0,5}ms)?)$"
    )]
    step: Option<String>,
}

/// System metrics over time.
#[derive(Debug, Serialize, ToSchema)]
pub struct SystemMetrics {
    /// The latest sample (`null` until the first is taken, within a second of the start).
    latest: Option<SystemSample>,
    /// The points since `since`, oldest first: the mean of each metric over the point and
    /// the largest CPU figure (`cpu_percent_max`).
    points: Vec<HistoryPoint>,
    /// The width of a point, seconds.
    step_seconds: f64,
    /// The start of the range, RFC 3339.
    since: String,
    /// Where the points come from: `raw` (recent samples) or `history` (the persisted
    /// downsampled points).
    source: String,
}

/// The default range.
const DEFAULT_SINCE: Duration = Duration::from_secs(3600);

/// Reads `since`: an RFC 3339 time or a duration back from `now`.
fn parse_since(text: &str, now: DateTime<Utc>) -> Result<DateTime<Utc>, ApiError> {
    // Blanks around it are refused below (a duration would otherwise read through them).
    let padded = text.trim() != text;
    // A `+` of an offset arrives as a space when the query string was not encoded.
    for candidate in [text.to_owned(), text.replace(' ', "+")] {
        if let Ok(at) = DateTime::parse_from_rfc3339(&candidate) {
            return Ok(at.with_timezone(&Utc));
        }
    }
    if let Some(back) = (!padded)
        .then(|| crate::duration::parse_duration(text).ok())
        .flatten()
    {
        let back = chrono::TimeDelta::from_std(back).unwrap_or(chrono::TimeDelta::MAX);
        return Ok(now
            .checked_sub_signed(back)
            .unwrap_or(DateTime::<Utc>::MIN_UTC));
    }
    Err(ApiError::bad_request(format!(
        "`since` must be an RFC 3339 time such as 2025-01-31T12:00:00Z or a duration back from now such as 30m, 1h or 7d; got `{text}`"
    ))
    .with_details(json!({"parameter": "since", "value": text})))
}

/// Reads `step`: a duration above zero.
fn parse_step(text: &str) -> Result<Duration, ApiError> {
    let invalid = |why: String| {
        ApiError::bad_request(format!("`step` {why}"))
            .with_details(json!({"parameter": "step", "value": text}))
    };
    if text.trim() != text {
        return Err(invalid(format!(
            "must be a duration such as 10s or 5m, without blanks around it; got `{text}`"
        )));
    }
    match crate::duration::parse_duration(text) {
        Ok(step) if step.is_zero() => Err(invalid(format!(
            "must be a duration above zero such as 10s or 5m; got `{text}`"
        ))),
        Ok(step) => Ok(step),
        Err(err) => Err(invalid(format!(
            "must be a duration such as 10s or 5m; got `{text}`: {err}"
        ))),
    }
}

/// System metrics: the latest sample and the history.
///
/// CPU, memory, disk (the filesystem holding the data directory), network rates, load,
/// process count, and the orchestrator's own CPU and resident memory. Recent ranges are
/// served from the raw samples kept in memory (the last hour at most), longer ones from the
/// history persisted in the store (one point per `monitoring.history_step`, kept for
/// `monitoring.history_retention`), re-bucketed to `step`.
#[utoipa::path(get, path = "/api/system/metrics", tag = "monitoring",
    params(SystemMetricsQuery),
    responses(
        (status = 200, description = "The latest sample and the points since `since`", body = SystemMetrics,
            example = json!({
                "latest": {"at": "2025-01-31T12:00:00Z", "cpu_percent": 12.5, "memory_percent": 41.2,
                    "disk_percent": 63.0, "network_rx_bytes_per_second": 2048.0,
                    "network_tx_bytes_per_second": 1024.0, "load_average": 0.42, "process_count": 212.0,
                    "orchestrator_cpu_percent": 0.3, "orchestrator_rss_bytes": 24117248.0},
                "points": [{"at": "2025-01-31T11:59:00Z", "samples": 6, "cpu_percent": 11.0,
                    "cpu_percent_max": 19.5, "memory_percent": 41.0, "disk_percent": 63.0,
                    "network_rx_bytes_per_second": 1900.0, "network_tx_bytes_per_second": 980.0,
                    "load_average": 0.4, "process_count": 210.0, "orchestrator_cpu_percent": 0.3,
                    "orchestrator_rss_bytes": 24100000.0}],
                "step_seconds": 60.0, "since": "2025-01-31T11:00:00Z", "source": "history"})),
        (status = 400, description = "`since` or `step` does not parse, or a parameter is unknown", body = ErrorBody),
    ))]
pub async fn system_metrics(
    State(state): State<AppState>,
    Query(query): Query<SystemMetricsQuery>,
) -> Result<Json<SystemMetrics>, ApiError> {
    let now = Utc::now();
    // Only an empty value means the default: blanks are no time (the document's patterns).
    let since = match query.since.as_deref() {
        Some(text) if !text.is_empty() => parse_since(text, now)?,
        _ => now - chrono::TimeDelta::from_std(DEFAULT_SINCE).unwrap_or_default(),
    };
    let step = match query.step.as_deref() {
        Some(text) if !text.is_empty() => Some(parse_step(text)?),
        _ => None,
    };
    let series = state.system.query(since, step);
    Ok(Json(SystemMetrics {
        latest: series.latest,
        points: series.points,
        step_seconds: series.step.as_secs_f64(),
        since: since.to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
        source: series.source.to_owned(),
    }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    #[test]
    fn since_reads_times_and_durations_and_says_what_it_expects() {
        let now = Utc.with_ymd_and_hms(2025, 1, 31, 12, 0, 0).unwrap();
        assert_eq!(
            parse_since("1h", now).unwrap(),
            Utc.with_ymd_and_hms(2025, 1, 31, 11, 0, 0).unwrap()
        );
        assert_eq!(
            parse_since("2025-01-31T10:30:00Z", now).unwrap(),
            Utc.with_ymd_and_hms(2025, 1, 31, 10, 30, 0).unwrap()
        );
        // An offset whose `+` became a space in an unencoded query string.
        assert_eq!(
            parse_since("2025-01-31T11:30:00 01:00", now).unwrap(),
            Utc.with_ymd_and_hms(2025, 1, 31, 10, 30, 0).unwrap()
        );
        assert!(parse_since(" 1h", now).is_err());
        assert!(parse_step("5m ").is_err());
        let error = parse_since("yesterday", now).unwrap_err();
        assert_eq!(error.status, axum::http::StatusCode::BAD_REQUEST);
        assert!(error.message.contains("RFC 3339"), "{}", error.message);
        assert!(error.message.contains("`yesterday`"), "{}", error.message);
        assert_eq!(error.details["parameter"], "since");
    }

    #[test]
    fn step_is_a_duration_above_zero() {
        assert_eq!(parse_step("5m").unwrap(), Duration::from_secs(300));
        assert_eq!(parse_step("500ms").unwrap(), Duration::from_millis(500));
        let zero = parse_step("0s").unwrap_err();
        assert!(zero.message.contains("above zero"), "{}", zero.message);
        let bad = parse_step("fast").unwrap_err();
        assert!(bad.message.contains("`fast`"), "{}", bad.message);
        assert_eq!(bad.details["parameter"], "step");
    }
}
