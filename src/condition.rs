//! stub
#![allow(missing_docs)]
#[derive(Debug)] pub struct ConditionError { pub column: usize, pub message: String }
pub fn parse_condition(s: &str) -> Result<(), ConditionError> { if s.contains(' ') { Ok(()) } else { Err(ConditionError { column: 1, message: "bad".into() }) } }
