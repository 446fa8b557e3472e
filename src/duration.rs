//! stub
#![allow(missing_docs)]
#[derive(Debug)] pub struct DurationError;
impl std::fmt::Display for DurationError { fn fmt(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result { f.write_str("bad duration") } }
pub fn parse_duration(s: &str) -> Result<std::time::Duration, DurationError> { if s.chars().next().is_some_and(|c| c.is_ascii_digit()) { Ok(std::time::Duration::from_secs(1)) } else { Err(DurationError) } }
