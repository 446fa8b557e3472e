//! The API client the command line uses while a server holds the store: the same commands,
//! the same output, through the server's REST API (found through `server.json`).

use std::collections::BTreeMap;
use std::fmt;

use anyhow::{Context as _, Result};
use percent_encoding::{utf8_percent_encode, AsciiSet, NON_ALPHANUMERIC};
use serde_json::Value;

use super::Context;
use crate::config::process_file::{self, ServerInfo};
use crate::model::{RunRecord, StepRecord};
use crate::store::{ObjectKey, ObjectRecord, RunFilter};

/// What is left as it is in a path segment or a query value: RFC 3986's unreserved
/// characters. Everything else (`/`, `?`, `#`, `%`, spaces, non-ASCII) is percent-encoded.
const UNRESERVED: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'.')
    .remove(b'_')
    .remove(b'~');

/// A request path of the API, built from segments and query pairs, each percent-encoded:
/// the only way a command names what it asks the server for, so an id or name with a space,
/// a slash or a `?` reaches the server as the one segment it is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiPath(String);

impl ApiPath {
    /// `/api/` followed by `segments`, each encoded as one path segment.
    pub fn api<S: AsRef<str>>(segments: &[S]) -> ApiPath {
        let mut path = String::from("/api");
        for segment in segments {
            path.push('/');
            path.extend(utf8_percent_encode(segment.as_ref(), UNRESERVED));
        }
        ApiPath(path)
    }

    /// The path with one more query pair, its name and value encoded.
    pub fn query(mut self, name: &str, value: impl fmt::Display) -> ApiPath {
        self.0.push(if self.0.contains('?') { '&' } else { '?' });
        self.0.extend(utf8_percent_encode(name, UNRESERVED));
        self.0.push('=');
        self.0
            .extend(utf8_percent_encode(&value.to_string(), UNRESERVED));
        self
    }
}

impl fmt::Display for ApiPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// An error answer from the server, shown whole: its message, then each diagnostic its
/// details carry, one a line.
#[derive(Debug, thiserror::Error)]
#[error("{message}{}", diagnostic_lines(details))]
pub struct ApiFailure {
    /// HTTP status.
    pub status: u16,
    /// The error code (`not_found`, `invalid`, ...).
    pub code: String,
    /// The server's message (or the body itself, when it is not the API's error shape).
    pub message: String,
    /// The error's `details`.
    pub details: Value,
}

/// `details.diagnostics` of an error answer, one `file:line:col: error: ...` a line.
fn diagnostic_lines(details: &Value) -> String {
    let Some(diagnostics) = details.get("diagnostics") else {
        return String::new();
    };
    serde_json::from_value::<Vec<crate::diagnostics::Diagnostic>>(diagnostics.clone())
        .map(|list| {
            list.iter()
                .map(|d| format!("\n  {}", d.one_line()))
                .collect()
        })
        .unwrap_or_default()
}

impl ApiFailure {
    /// Whether `err` is the server's 404.
    pub fn is_not_found(err: &anyhow::Error) -> bool {
        err.downcast_ref::<ApiFailure>()
            .is_some_and(|f| f.status == 404)
    }
}

/// A client for the server of this project's data directory.
pub struct ApiClient {
    /// The server.
    pub info: ServerInfo,
    token: Option<String>,
    agent: ureq::Agent,
}

impl ApiClient {
    /// The client for the running server, or `None` when no server runs.
    pub fn for_context(context: &Context) -> Result<Option<ApiClient>> {
        let Some(info) = process_file::read(&context.data_dir()) else {
            return Ok(None);
        };
        // The configured token; else the one a server on a non-loopback address generated
        // in the data directory (sent to a server without a token, it is ignored).
        let token = match &context.config.config.server.api_token {
            Some(reference) => Some(crate::config::secrets::resolve_api_token(
                reference,
                &context.config.project_dir,
            )?),
            None => crate::config::api_token::read(&context.data_dir()),
        };
        let agent = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .build()
            .into();
        tracing::debug!(server = %info.url(), "going through the running server");
        Ok(Some(ApiClient { info, token, agent }))
    }

    fn url(&self, path: &ApiPath) -> String {
        format!("{}{path}", self.info.url())
    }

    fn answer(
        &self,
        response: Result<ureq::http::Response<ureq::Body>, ureq::Error>,
    ) -> Result<Value> {
        let mut response = response.with_context(|| {
            format!(
                "the server (PID {}) does not answer at {}",
                self.info.pid,
                self.info.url()
            )
        })?;
        let status = response.status().as_u16();
        let text = response.body_mut().read_to_string().unwrap_or_default();
        let value: Value = serde_json::from_str(&text).unwrap_or(Value::String(text));
        if status >= 400 {
            let error = &value["error"];
            let message = match (error["message"].as_str(), &value) {
                (Some(message), _) => message.to_owned(),
                (None, Value::String(text)) if !text.trim().is_empty() => {
                    format!("the server answered {status}: {}", text.trim())
                }
                (None, Value::String(_)) => format!("the server answered {status}"),
                (None, other) => format!("the server answered {status}: {other}"),
            };
            return Err(ApiFailure {
                status,
                code: error["code"].as_str().unwrap_or("error").to_owned(),
                message,
                details: error.get("details").cloned().unwrap_or_default(),
            }
            .into());
        }
        Ok(value)
    }

    /// The token's header value, when there is one.
    fn authorization(&self) -> Option<String> {
        self.token.as_ref().map(|token| format!("Bearer {token}"))
    }

    /// GET a JSON document.
    pub fn get(&self, path: &ApiPath) -> Result<Value> {
        let mut request = self.agent.get(&self.url(path));
        if let Some(value) = self.authorization() {
            request = request.header("Authorization", &value);
        }
        self.answer(request.call())
    }

    /// POST a JSON body.
    pub fn post(&self, path: &ApiPath, body: &Value) -> Result<Value> {
        let mut request = self
            .agent
            .post(&self.url(path))
            .header("Content-Type", "application/json");
        if let Some(value) = self.authorization() {
            request = request.header("Authorization", &value);
        }
        self.answer(request.send(body.to_string()))
    }

    /// DELETE, answered with a JSON document. It says `Content-Type: application/json`, as
    /// every request that changes something must, though it has no body.
    pub fn delete(&self, path: &ApiPath) -> Result<Value> {
        let mut request = self
            .agent
            .delete(&self.url(path))
            .header("Content-Type", "application/json");
        if let Some(value) = self.authorization() {
            request = request.header("Authorization", &value);
        }
        self.answer(request.call())
    }

    /// Every object record.
    pub fn objects(&self) -> Result<BTreeMap<ObjectKey, ObjectRecord>> {
        let value = self.get(&ApiPath::api(&["manifests"]).query("full", true))?;
        let records: Vec<ObjectRecord> = serde_json::from_value(value["records"].clone())
            .context("the server's object records are not in the expected shape")?;
        Ok(records.into_iter().map(|r| (r.key.clone(), r)).collect())
    }

    /// The runs `filter` matches, newest first, whole records, at most `limit` (and at most
    /// the server's largest page, 10,000).
    pub fn runs(&self, filter: &RunFilter, limit: usize) -> Result<Vec<RunRecord>> {
        let mut path = ApiPath::api(&["runs"])
            .query("full", true)
            .query("limit", limit.clamp(1, 10_000));
        if let Some(workflow) = &filter.workflow {
            path = path.query("workflow", workflow);
        }
        if let Some(status) = filter.status {
            path = path.query("status", status.as_str());
        }
        let value = self.get(&path)?;
        serde_json::from_value(value["runs"].clone())
            .context("the server's runs are not in the expected shape")
    }

    /// What was reported of a run to its GitHub commit; `None` when nothing is, or the
    /// server has no such run.
    pub fn commit_status(
        &self,
        id: &str,
    ) -> Result<Option<crate::triggers::commit_status::CommitStatusReport>> {
        match self.get(&ApiPath::api(&["runs", id])) {
            Ok(value) => match value.get("commit_status") {
                Some(report) => Ok(Some(
                    serde_json::from_value(report.clone())
                        .context("the server's commit status is not in the expected shape")?,
                )),
                None => Ok(None),
            },
            Err(err) if ApiFailure::is_not_found(&err) => Ok(None),
            Err(err) => Err(err),
        }
    }

    /// One run and its steps; `None` when the server has no such run.
    pub fn run(&self, id: &str) -> Result<Option<(RunRecord, Vec<StepRecord>)>> {
        match self.get(&ApiPath::api(&["runs", id])) {
            Ok(value) => Ok(Some(
                serde_json::from_value::<(RunRecord, Vec<StepRecord>)>(Value::Array(vec![
                    value["run"].clone(),
                    value["steps"].clone(),
                ]))
                .context("the server's run is not in the expected shape")?,
            )),
            Err(err) if ApiFailure::is_not_found(&err) => Ok(None),
            Err(err) => Err(err),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::ApiPath;

    #[test]
    fn every_segment_and_query_value_is_encoded() {
        assert_eq!(
            ApiPath::api(&["workflows", "Unit Tests", "execute"]).to_string(),
            "/api/workflows/Unit%20Tests/execute"
        );
        assert_eq!(
            ApiPath::api(&["runs", "a/b?c#d%e", "cancel"]).to_string(),
            "/api/runs/a%2Fb%3Fc%23d%25e/cancel"
        );
        assert_eq!(
            ApiPath::api(&["alerts", "wf_ok-1.2~x", "é"]).to_string(),
            "/api/alerts/wf_ok-1.2~x/%C3%A9"
        );
        assert_eq!(
            ApiPath::api(&["runs"])
                .query("status", "a&b=c")
                .query("limit", 5)
                .to_string(),
            "/api/runs?status=a%26b%3Dc&limit=5"
        );
    }
}
