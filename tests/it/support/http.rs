//! The one HTTP client of the tests: requests with or without the API token and with any
//! header (Host, Origin, Content-Type, signatures), every status taken as an answer, JSON
//! bodies decoded and error shapes checked; and the same answers to requests sent byte for
//! byte over a socket ([`raw_request`]), for paths and headers no client would send.

use std::fs;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::Path;

use hmac::{Hmac, Mac};
use serde_json::Value;
use sha2::Sha256;

use super::{eventually, DEADLINE};

/// A webhook signature as GitHub sends it in `X-Hub-Signature-256`: `sha256=<hex
/// HMAC-SHA256>`, computed here, independently of the server's code.
pub(crate) fn sign(secret: &str, body: &[u8]) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(secret.as_bytes()).unwrap();
    mac.update(body);
    format!("sha256={}", hex::encode(mac.finalize().into_bytes()))
}

/// An agent that takes every status as an answer and gives up after [`DEADLINE`].
pub(crate) fn agent() -> ureq::Agent {
    ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(DEADLINE))
        .build()
        .new_agent()
}

/// The address (`host:port`) of the server running in `dir`, from its `data/server.json`.
pub(crate) fn server_address(dir: &Path) -> String {
    let info = fs::read_to_string(dir.join("data/server.json")).expect("server.json");
    let info: Value = serde_json::from_str(&info).unwrap();
    info["address"].as_str().expect("address").to_owned()
}

/// The base URL (`http://host:port`) of the server running in `dir`.
pub(crate) fn server_url(dir: &Path) -> String {
    format!("http://{}", server_address(dir))
}

/// One HTTP answer, whatever its status.
#[derive(Debug)]
pub(crate) struct Reply {
    pub(crate) status: u16,
    pub(crate) content_type: String,
    pub(crate) location: Option<String>,
    /// Every header, names in lower case.
    pub(crate) headers: Vec<(String, String)>,
    pub(crate) text: String,
}

impl Reply {
    fn from(mut response: ureq::http::Response<ureq::Body>) -> Result<Reply, ureq::Error> {
        let headers: Vec<(String, String)> = response
            .headers()
            .iter()
            .map(|(name, value)| {
                let value = String::from_utf8_lossy(value.as_bytes()).into_owned();
                (name.as_str().to_owned(), value)
            })
            .collect();
        let header = |name: &str| {
            headers
                .iter()
                .find(|(n, _)| n == name)
                .map(|(_, v)| v.clone())
        };
        let content_type = header("content-type").unwrap_or_default();
        let location = header("location");
        Ok(Reply {
            status: response.status().as_u16(),
            content_type,
            location,
            text: response
                .body_mut()
                .with_config()
                .limit(64 << 20)
                .read_to_string()?,
            headers,
        })
    }

    /// A header's value (`name` in lower case).
    pub(crate) fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }

    /// The body as JSON, or as a JSON string when it is no JSON (`/metrics`, logs).
    pub(crate) fn json_or_text(&self) -> Value {
        serde_json::from_str(&self.text).unwrap_or_else(|_| Value::String(self.text.clone()))
    }

    /// The status and [`Reply::json`], whatever they are.
    pub(crate) fn into_parts(self) -> (u16, Value) {
        (self.status, self.json_or_text())
    }

    /// Asserts the status and returns the body as JSON.
    #[track_caller]
    pub(crate) fn expect(self, status: u16) -> Value {
        self.json(status)
    }

    /// The body as JSON, after checking the status and the content type.
    #[track_caller]
    pub(crate) fn json(&self, status: u16) -> Value {
        assert_eq!(self.status, status, "{self:#?}");
        assert!(
            self.content_type.starts_with("application/json"),
            "{self:#?}"
        );
        serde_json::from_str(&self.text).unwrap_or_else(|e| panic!("{e}: {self:#?}"))
    }

    /// Asserts an error answer of exactly the shape `{"error": {code, message, details}}`;
    /// returns the error object.
    #[track_caller]
    pub(crate) fn error(&self, status: u16, code: &str) -> Value {
        let body = self.json(status);
        assert_error_shape(&body, &format!("{self:#?}"));
        assert_eq!(body["error"]["code"], code, "{self:#?}");
        body["error"].clone()
    }

    /// Asserts some 4xx answer with the JSON error shape; returns the error object.
    #[track_caller]
    pub(crate) fn client_error(&self) -> Value {
        assert!((400..500).contains(&self.status), "{self:#?}");
        let body = self.json(self.status);
        assert_error_shape(&body, &format!("{self:#?}"));
        body["error"].clone()
    }

    /// Asserts an error answer: the status, the JSON shape and the code; returns the
    /// message.
    #[track_caller]
    pub(crate) fn expect_error(self, status: u16, code: &str) -> String {
        let body = self.expect(status);
        let error = &body["error"];
        assert_eq!(error["code"], code, "{body}");
        assert!(error.get("details").is_some(), "{body}");
        let message = error["message"].as_str().unwrap_or_default().to_owned();
        assert!(!message.is_empty(), "{body}");
        message
    }
}

/// A small client of the API.
#[derive(Clone)]
pub(crate) struct Api {
    base: String,
    agent: ureq::Agent,
    token: Option<String>,
}

impl Api {
    /// A client of the server at `address` (`host:port`), sending `token` when given.
    pub(crate) fn new(address: &str, token: Option<&str>) -> Api {
        Api {
            base: format!("http://{address}"),
            agent: agent(),
            token: token.map(str::to_owned),
        }
    }

    /// A client, without a token, of the server at `base` (`http://host:port`).
    pub(crate) fn at(base: &str) -> Api {
        Api {
            base: base.trim_end_matches('/').to_owned(),
            agent: agent(),
            token: None,
        }
    }

    /// A client, without a token, of the server running in `dir` (at the address its
    /// `data/server.json` gives).
    pub(crate) fn of_project(dir: &Path) -> Api {
        Api::new(&server_address(dir), None)
    }

    /// A request to build: any method, header and body.
    pub(crate) fn request(&self, method: &'static str, path: &str) -> Request<'_> {
        Request {
            api: self,
            method,
            url: format!("{}{path}", self.base),
            headers: Vec::new(),
            body: None,
        }
    }

    /// GET (with the token, when the client has one).
    pub(crate) fn get(&self, path: &str) -> Reply {
        self.request("GET", path).send()
    }

    /// POST with `Content-Type: application/json` (an empty body when `body` is empty).
    pub(crate) fn post(&self, path: &str, body: &str) -> Reply {
        self.post_as(path, "application/json", body)
    }

    /// POST with the given content type, which is sent even with an empty body (every
    /// request that changes something must say `application/json`).
    pub(crate) fn post_as(&self, path: &str, content_type: &str, body: &str) -> Reply {
        self.request("POST", path)
            .header("Content-Type", content_type)
            .body(body)
            .send()
    }

    /// POST of a JSON body with extra headers (a webhook delivery's signature and event).
    pub(crate) fn post_with(
        &self,
        path: &str,
        headers: &[(&str, &str)],
        body: impl AsRef<[u8]>,
    ) -> Reply {
        self.post_request(path, headers, body).send()
    }

    /// The request [`Api::post_with`] sends, for a caller that expects no answer at times.
    pub(crate) fn post_request(
        &self,
        path: &str,
        headers: &[(&str, &str)],
        body: impl AsRef<[u8]>,
    ) -> Request<'_> {
        let mut request = self
            .request("POST", path)
            .header("Content-Type", "application/json");
        for (name, value) in headers {
            request = request.header(name, value);
        }
        request.body(body.as_ref())
    }

    /// DELETE, saying `Content-Type: application/json` as every state change must.
    pub(crate) fn delete(&self, path: &str) -> Reply {
        self.request("DELETE", path)
            .header("Content-Type", "application/json")
            .send()
    }

    /// Starts a run; asserts the 202 and its Location; returns the run id.
    #[track_caller]
    pub(crate) fn execute(&self, workflow: &str, body: &str) -> String {
        let reply = self.post(&format!("/api/workflows/{workflow}/execute"), body);
        let location = reply.location.clone();
        let accepted = reply.expect(202);
        let id = accepted["run_id"].as_str().expect("run_id").to_owned();
        assert!(id.starts_with("run_"), "{accepted}");
        assert_eq!(accepted["workflow_id"], workflow, "{accepted}");
        assert_eq!(location, Some(format!("/api/runs/{id}")));
        id
    }

    /// Polls a run until it reaches a final state; returns `{"run", "steps"}`.
    pub(crate) fn wait_finished(&self, run: &str) -> Value {
        eventually(&format!("run {run} to finish"), || {
            let shown = self.get(&format!("/api/runs/{run}")).expect(200);
            let status = shown["run"]["status"].as_str().unwrap_or_default();
            (status != "queued" && status != "running").then_some(shown)
        })
    }

    /// [`Api::execute`] then [`Api::wait_finished`]: `{"run", "steps"}` of the ended run.
    #[track_caller]
    pub(crate) fn run_to_end(&self, workflow: &str, body: &str) -> Value {
        let run = self.execute(workflow, body);
        self.wait_finished(&run)
    }

    /// The ids `GET /api/workflows` lists.
    pub(crate) fn workflow_ids(&self) -> Vec<String> {
        let listed = self.get("/api/workflows").expect(200);
        listed["workflows"]
            .as_array()
            .unwrap()
            .iter()
            .map(|w| w["id"].as_str().unwrap().to_owned())
            .collect()
    }
}

/// A request being built by [`Api::request`].
pub(crate) struct Request<'a> {
    api: &'a Api,
    method: &'static str,
    url: String,
    headers: Vec<(String, String)>,
    body: Option<Vec<u8>>,
}

impl Request<'_> {
    /// Adds a header (`Host` and `Origin` included).
    pub(crate) fn header(mut self, name: &str, value: &str) -> Self {
        self.headers.push((name.to_owned(), value.to_owned()));
        self
    }

    /// The body (for POST, PUT and PATCH; none is sent when it is empty).
    pub(crate) fn body(mut self, body: impl Into<Vec<u8>>) -> Self {
        self.body = Some(body.into());
        self
    }

    /// Sends it; `Err` when no answer came (refused, reset, timed out).
    pub(crate) fn try_send(self) -> Result<Reply, ureq::Error> {
        let mut headers = self.headers;
        if let Some(token) = &self.api.token {
            headers.push(("Authorization".to_owned(), format!("Bearer {token}")));
        }
        let agent = &self.api.agent;
        let url = self.url;
        let response = match self.method {
            "GET" | "DELETE" | "HEAD" => {
                let mut request = match self.method {
                    "GET" => agent.get(url),
                    "DELETE" => agent.delete(url),
                    _ => agent.head(url),
                };
                for (name, value) in &headers {
                    request = request.header(name, value);
                }
                request.call()
            }
            "POST" | "PUT" | "PATCH" => {
                let mut request = match self.method {
                    "POST" => agent.post(url),
                    "PUT" => agent.put(url),
                    _ => agent.patch(url),
                };
                for (name, value) in &headers {
                    request = request.header(name, value);
                }
                match self.body.filter(|body| !body.is_empty()) {
                    Some(body) => request.send(&body[..]),
                    None => request.send_empty(),
                }
            }
            other => panic!("no such method in the tests: {other}"),
        }?;
        Reply::from(response)
    }

    /// Sends it; an answer must come.
    #[track_caller]
    pub(crate) fn send(self) -> Reply {
        let what = format!("{} {}", self.method, self.url);
        self.try_send()
            .unwrap_or_else(|e| panic!("{what}: no HTTP answer: {e}"))
    }
}

/// `{"error": {"code", "message", "details"}}` and nothing else; a non-empty message.
#[track_caller]
pub(crate) fn assert_error_shape(body: &Value, context: &str) {
    let outer = body.as_object().unwrap_or_else(|| panic!("{context}"));
    assert_eq!(outer.len(), 1, "{context}");
    let error = body["error"]
        .as_object()
        .unwrap_or_else(|| panic!("{context}"));
    let mut keys: Vec<&str> = error.keys().map(String::as_str).collect();
    keys.sort_unstable();
    assert_eq!(keys, ["code", "details", "message"], "{context}");
    assert!(
        error["code"].as_str().is_some_and(|c| !c.is_empty()),
        "{context}"
    );
    assert!(
        error["message"]
            .as_str()
            .is_some_and(|m| !m.trim().is_empty()),
        "{context}"
    );
}

/// Sends one request over a fresh connection, exactly as given: the path is not normalised
/// or re-encoded (`..`, `%2e%2e%2f`, `%00` reach the server as written).
pub(crate) fn raw_request(
    address: &str,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> Reply {
    let mut stream = TcpStream::connect(address).expect("connect to the server");
    stream.set_read_timeout(Some(DEADLINE)).unwrap();
    stream.set_write_timeout(Some(DEADLINE)).unwrap();
    let mut head = format!("{method} {path} HTTP/1.1\r\nHost: {address}\r\nConnection: close\r\n");
    for (name, value) in headers {
        head.push_str(&format!("{name}: {value}\r\n"));
    }
    let chunked = headers
        .iter()
        .any(|(name, _)| name.eq_ignore_ascii_case("transfer-encoding"));
    if !chunked && (!body.is_empty() || method != "GET") {
        head.push_str(&format!("Content-Length: {}\r\n", body.len()));
    }
    head.push_str("\r\n");
    let mut bytes = head.into_bytes();
    bytes.extend_from_slice(body);
    // The server may answer (413) and close before reading everything: a failed write is
    // fine as long as an answer comes.
    let _ = stream.write_all(&bytes);
    let mut raw = Vec::new();
    let _ = stream.read_to_end(&mut raw);
    parse_reply(&raw).unwrap_or_else(|| {
        panic!(
            "no HTTP answer to {method} {path}: {:?}",
            String::from_utf8_lossy(&raw)
        )
    })
}

/// Sends `head` (the request line and header lines, each ended by CRLF, without the blank
/// line), then `Content-Length` and `Connection: close`, then `body`, over a fresh
/// connection exactly as written (a missing or foreign `Host` included); the answer read to
/// its end.
#[track_caller]
pub(crate) fn raw_exchange(address: &str, head: &str, body: &[u8]) -> Reply {
    let mut stream = TcpStream::connect(address).expect("connect to the server");
    stream.set_read_timeout(Some(DEADLINE)).unwrap();
    let mut bytes = format!(
        "{head}Content-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    )
    .into_bytes();
    bytes.extend_from_slice(body);
    stream.write_all(&bytes).expect("send the request");
    let mut raw = Vec::new();
    let _ = stream.read_to_end(&mut raw);
    parse_reply(&raw)
        .unwrap_or_else(|| panic!("no answer to {head:?}: {}", String::from_utf8_lossy(&raw)))
}

/// An HTTP/1.1 answer read to its end: status, headers, body (chunks joined).
pub(crate) fn parse_reply(raw: &[u8]) -> Option<Reply> {
    let split = raw.windows(4).position(|w| w == b"\r\n\r\n")?;
    let head = String::from_utf8_lossy(&raw[..split]).into_owned();
    let mut body = raw[split + 4..].to_vec();
    let mut lines = head.lines();
    let status = lines.next()?.split_whitespace().nth(1)?.parse().ok()?;
    let headers: Vec<(String, String)> = lines
        .filter_map(|line| line.split_once(':'))
        .map(|(name, value)| (name.trim().to_ascii_lowercase(), value.trim().to_owned()))
        .collect();
    let header = |name: &str| {
        headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.clone())
    };
    let chunked = header("transfer-encoding").is_some_and(|v| v.eq_ignore_ascii_case("chunked"));
    if chunked {
        let mut decoded = Vec::new();
        let mut rest = &body[..];
        loop {
            let end = rest.windows(2).position(|w| w == b"\r\n")?;
            let size =
                usize::from_str_radix(std::str::from_utf8(&rest[..end]).ok()?.trim(), 16).ok()?;
            rest = &rest[end + 2..];
            if size == 0 {
                break;
            }
            decoded.extend_from_slice(rest.get(..size)?);
            rest = rest.get(size + 2..)?;
        }
        body = decoded;
    }
    Some(Reply {
        status,
        content_type: header("content-type").unwrap_or_default(),
        location: header("location"),
        text: String::from_utf8_lossy(&body).into_owned(),
        headers,
    })
}

/// A GET answered 200 with JSON.
#[track_caller]
pub(crate) fn get_json(address: &str, path: &str) -> Value {
    raw_request(address, "GET", path, &[], b"").json(200)
}
