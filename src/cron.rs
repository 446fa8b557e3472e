//! stub
#![allow(missing_docs)]
pub struct CronSchedule;
#[derive(Debug)] pub struct CronError;
impl std::fmt::Display for CronError { fn fmt(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result { f.write_str("bad cron") } }
impl CronSchedule { pub fn parse(s: &str) -> Result<Self, CronError> { if s.split_whitespace().count() >= 5 || s.starts_with('@') { Ok(CronSchedule) } else { Err(CronError) } } }
