//! `schedule next CRON [--timezone TZ] [--from RFC3339] [--count N]`: the next fire times of
//! an expression, one RFC 3339 instant with offset a line — a plan to read before
//! committing a schedule.

use std::io::Write as _;

use anyhow::{Context as _, Result};
use chrono::{DateTime, SecondsFormat, Utc};
use clap::Args;

use super::{Context, EXIT_OK};
use crate::cron::{parse_time_zone, CronSchedule};

/// Arguments of `schedule next`.
#[derive(Debug, Args)]
pub struct NextArgs {
    /// The crontab expression, e.g. "0 2 * * *".
    pub cron: String,
    /// IANA time zone the expression is read in (default: scheduler.timezone, else UTC).
    #[arg(long)]
    pub timezone: Option<String>,
    /// Start after this instant (RFC 3339; default: now).
    #[arg(long)]
    pub from: Option<String>,
    /// How many fire times.
    #[arg(long, default_value_t = 5)]
    pub count: usize,
}

/// Runs `schedule next`: prints each fire time as an RFC 3339 instant with the offset of
/// the zone at that instant (`2026-03-29T03:00:00+02:00`), nothing else, one a line.
pub fn run(context: &Context, args: &NextArgs) -> Result<u8> {
    let schedule = CronSchedule::parse(&args.cron)
        .map_err(|e| anyhow::anyhow!("`{}` is not a valid cron expression: {e}", args.cron))?;
    let zone_name = args
        .timezone
        .clone()
        .unwrap_or_else(|| context.config.config.scheduler.timezone.clone());
    let zone = parse_time_zone(&zone_name).map_err(|e| anyhow::anyhow!("--timezone: {e}"))?;
    let mut at = match &args.from {
        Some(text) => DateTime::parse_from_rfc3339(text)
            .with_context(|| {
                format!(
                    "--from `{text}` is not an RFC 3339 instant (e.g. 2026-03-29T00:00:00+01:00)"
                )
            })?
            .with_timezone(&Utc),
        None => Utc::now(),
    };
    let mut out = std::io::stdout().lock();
    for _ in 0..args.count {
        let Some(next) = schedule.next_fire(at, zone) else {
            break;
        };
        let line = next
            .with_timezone(&zone)
            .to_rfc3339_opts(SecondsFormat::Secs, false);
        writeln!(out, "{line}")?;
        at = next;
    }
    out.flush()?;
    Ok(EXIT_OK)
}
