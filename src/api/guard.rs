//! The request guard: what every request must show before any handler runs, so that a web
//! page the user visits (another origin, or a DNS name rebound to this machine) cannot drive
//! or read the server, and the API token guards reads as well as writes.
//!
//! In order, answered with the JSON error shape:
//! 1. **Host** (421 `host_not_allowed`): one of the server's own names — `localhost`,
//!    `127.0.0.1`, `[::1]`, the bound address (any IP address when bound to a wildcard
//!    address: a rebinding attack needs a name), the machine's host name — without a port or
//!    with the bound port, or one of `server.allowed_hosts`.
//! 2. **Origin** (403 `origin_not_allowed`), when the request carries one and changes
//!    something (any method but GET, HEAD, OPTIONS and TRACE) or opens `/ws`: the server's
//!    own origins (`http://<allowed host>:<bound port>`, or exactly the request's own
//!    `http://<Host>`, which step 1 allowed), or one of `server.allowed_origins`.
//!    `Origin: null` (sandboxed frames, files) is refused.
//! 3. **Token** (401 `unauthorized`), when one is in force: every route of `/api` and `/ws`
//!    whatever the method, `/metrics` with `server.metrics_auth`. `Authorization: Bearer`
//!    (the scheme in any case), or `/ws?token=` for browsers, compared in constant time.
//! 4. **Content-Type** (415 `unsupported_media_type`): every POST, PUT, PATCH and DELETE
//!    says `application/json`, even with an empty body — the one content type a page cannot
//!    send across origins without asking first (CORS preflight).
//!
//! Webhook receivers under `/hooks/` pass untouched (senders such as GitHub bring their own
//! Host and Origin; the receivers check signatures). `/healthz` and `/readyz` skip the Host
//! check: probes (Kubernetes, load balancers) address a pod or machine by an IP or a name of
//! their own, and both answers are read-only and say nothing but "up" and "ready".

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use axum::extract::{Request, State};
use axum::http::{header, HeaderMap, Method, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use serde_json::json;
use subtle::ConstantTimeEq;

use super::ApiError;

/// What the guard needs to know: the bound address, the token in force and the allowlists
/// of the configuration. Built once the listener is bound.
#[derive(Debug, Clone)]
pub struct Guard {
    port: u16,
    /// Names (lowercase, IPv6 in brackets) accepted without a port or with the bound port.
    own_hosts: Vec<String>,
    /// Bound to 0.0.0.0 or `::`: any IP address is one of the server's own.
    any_ip: bool,
    /// `server.allowed_hosts`, parsed.
    extra_hosts: Vec<(String, Option<u16>)>,
    /// `*` in `server.allowed_hosts`.
    any_host: bool,
    /// `server.allowed_origins`, normalized (lowercase, no trailing slash).
    extra_origins: Vec<String>,
    token: Option<String>,
    metrics_auth: bool,
}

/// The settings of [`Guard::new`] besides the bound address.
#[derive(Debug, Clone, Default)]
pub struct GuardSettings {
    /// The API token in force (configured or generated), if any.
    pub token: Option<String>,
    /// `server.allowed_hosts`.
    pub allowed_hosts: Vec<String>,
    /// `server.allowed_origins`.
    pub allowed_origins: Vec<String>,
    /// `server.metrics_auth`.
    pub metrics_auth: bool,
    /// The machine's host name, when it has one.
    pub hostname: Option<String>,
}

impl Guard {
    /// The guard of a server listening on `bound`.
    pub fn new(bound: SocketAddr, settings: GuardSettings) -> Guard {
        let mut own_hosts: Vec<String> =
            vec!["localhost".into(), "127.0.0.1".into(), "[::1]".into()];
        let bound_ip = bound.ip();
        let hostname = settings.hostname.as_deref().map(normalize_name);
        for host in [Some(ip_host(bound_ip)), hostname].into_iter().flatten() {
            if !host.is_empty() && !own_hosts.contains(&host) {
                own_hosts.push(host);
            }
        }
        let mut extra_hosts = Vec::new();
        let mut any_host = false;
        for entry in &settings.allowed_hosts {
            if entry.trim() == "*" {
                any_host = true;
            } else if let Some(parsed) = split_host(entry.trim()) {
                extra_hosts.push(parsed);
            }
        }
        Guard {
            port: bound.port(),
            own_hosts,
            any_ip: bound_ip.is_unspecified(),
            extra_hosts,
            any_host,
            extra_origins: settings
                .allowed_origins
                .iter()
                .map(|o| o.trim().trim_end_matches('/').to_ascii_lowercase())
                .collect(),
            token: settings.token,
            metrics_auth: settings.metrics_auth,
        }
    }

    /// The server's own origins, for messages (with the bound port).
    pub fn own_origins(&self) -> Vec<String> {
        self.own_hosts
            .iter()
            .map(|host| format!("http://{host}:{}", self.port))
            .collect()
    }

    /// Checks a request; the error is the answer it gets instead of the handler's.
    pub fn check(
        &self,
        method: &Method,
        path: &str,
        query: Option<&str>,
        headers: &HeaderMap,
    ) -> Result<(), ApiError> {
        if path.starts_with("/hooks/") {
            return Ok(());
        }
        let probe = path == "/healthz" || path == "/readyz";
        if !probe {
            self.check_host(headers)?;
        }
        let changes = !matches!(
            *method,
            Method::GET | Method::HEAD | Method::OPTIONS | Method::TRACE
        );
        if changes || path == "/ws" {
            self.check_origin(headers, !probe)?;
        }
        if self.token.is_some() && self.needs_token(path) {
            self.check_token(path, query, headers)?;
        }
        if matches!(
            *method,
            Method::POST | Method::PUT | Method::PATCH | Method::DELETE
        ) {
            check_content_type(method, path, headers)?;
        }
        Ok(())
    }

    fn needs_token(&self, path: &str) -> bool {
        path == "/api"
            || path.starts_with("/api/")
            || path == "/ws"
            || (self.metrics_auth && path == "/metrics")
    }

    fn check_host(&self, headers: &HeaderMap) -> Result<(), ApiError> {
        let Some(given) = headers.get(header::HOST) else {
            return Err(ApiError::new(
                StatusCode::MISDIRECTED_REQUEST,
                "host_not_allowed",
                format!(
                    "the request has no Host header; this server answers to {} (server.allowed_hosts adds names)",
                    self.own_hosts.join(", ")
                ),
            )
            .with_details(json!({"host": null, "allowed": self.own_hosts})));
        };
        let text = String::from_utf8_lossy(given.as_bytes()).into_owned();
        if split_host(&text).is_some_and(|(host, port)| self.host_allowed(&host, port)) {
            return Ok(());
        }
        Err(ApiError::new(
            StatusCode::MISDIRECTED_REQUEST,
            "host_not_allowed",
            format!(
                "the Host `{}` is not a name this server answers to ({}, with or without port {}); to reach it by that name, add it to server.allowed_hosts",
                text.chars().take(200).collect::<String>(),
                self.own_hosts.join(", "),
                self.port
            ),
        )
        .with_details(json!({"host": text, "allowed": self.own_hosts, "port": self.port})))
    }

    /// A Host (name and port) the server answers to.
    fn host_allowed(&self, host: &str, port: Option<u16>) -> bool {
        self.any_host || self.own_host(host, port) || self.extra_host(host, port)
    }

    fn own_host(&self, host: &str, port: Option<u16>) -> bool {
        let name_ok = self.own_hosts.iter().any(|own| own == host) || (self.any_ip && is_ip(host));
        name_ok && port.is_none_or(|p| p == self.port)
    }

    fn extra_host(&self, host: &str, port: Option<u16>) -> bool {
        self.extra_hosts
            .iter()
            .any(|(name, wanted)| name == host && (wanted.is_none() || *wanted == port))
    }

    /// `host_checked`: the request's Host passed [`Guard::check_host`], so an Origin equal
    /// to it is the server's own.
    fn check_origin(&self, headers: &HeaderMap, host_checked: bool) -> Result<(), ApiError> {
        let Some(given) = headers.get(header::ORIGIN) else {
            // Not from a browser page (curl, the CLI, scripts): nothing to check here.
            return Ok(());
        };
        let text = String::from_utf8_lossy(given.as_bytes()).into_owned();
        // The page came from the very host and port the request went to (the Host, already
        // checked): same origin, however the server was reached (a tunnel, a port mapping).
        let request_host = headers
            .get(header::HOST)
            .filter(|_| host_checked)
            .and_then(|h| split_host(&String::from_utf8_lossy(h.as_bytes())));
        let same_origin = request_host.is_some_and(|host| {
            text.to_ascii_lowercase()
                .strip_prefix("http://")
                .and_then(split_host)
                .is_some_and(|origin| origin == host)
        });
        if same_origin || self.origin_allowed(&text) {
            return Ok(());
        }
        let mut allowed = self.own_origins();
        allowed.extend(self.extra_origins.iter().cloned());
        Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "origin_not_allowed",
            format!(
                "requests from pages of `{}` are refused: only the server's own origins ({}) may change things or open /ws; to allow another, add it to server.allowed_origins",
                text.chars().take(200).collect::<String>(),
                allowed.join(", ")
            ),
        )
        .with_details(json!({"origin": text, "allowed": allowed})))
    }

    fn origin_allowed(&self, origin: &str) -> bool {
        let normalized = origin.trim().trim_end_matches('/').to_ascii_lowercase();
        if normalized == "null" {
            return false;
        }
        if self.extra_origins.contains(&normalized) {
            return true;
        }
        let Some(authority) = normalized.strip_prefix("http://") else {
            return false;
        };
        let Some((host, port)) = split_host(authority) else {
            return false;
        };
        // An origin leaves out the scheme's default port.
        port.unwrap_or(80) == self.port
            && (self.own_hosts.contains(&host)
                || (self.any_ip && is_ip(&host))
                || self
                    .extra_hosts
                    .iter()
                    .any(|(name, wanted)| *name == host && wanted.is_none_or(|p| p == self.port)))
    }

    fn check_token(
        &self,
        path: &str,
        query: Option<&str>,
        headers: &HeaderMap,
    ) -> Result<(), ApiError> {
        let Some(token) = self.token.as_deref() else {
            return Ok(());
        };
        let given = bearer(headers).or_else(|| {
            // A browser cannot set headers on a WebSocket: `/ws?token=` instead.
            (path == "/ws").then(|| query_token(query)).flatten()
        });
        match given {
            Some(given) if bool::from(given.as_bytes().ct_eq(token.as_bytes())) => Ok(()),
            Some(_) => Err(ApiError::unauthorized("the bearer token is not the configured API token")),
            None => Err(ApiError::unauthorized(
                "this route needs `Authorization: Bearer <token>` (the server has an API token: server.api_token, or the one generated in the data directory's api-token file)",
            )),
        }
    }
}

/// Runs [`Guard::check`] before the routes.
pub async fn guard(State(guard): State<Arc<Guard>>, request: Request, next: Next) -> Response {
    match guard.check(
        request.method(),
        request.uri().path(),
        request.uri().query(),
        request.headers(),
    ) {
        Ok(()) => next.run(request).await,
        Err(error) => error.into_response(),
    }
}

/// The credentials of `Authorization: Bearer <token>` (the scheme in any case, RFC 7235);
/// None when absent, of another scheme, or empty.
pub fn bearer(headers: &HeaderMap) -> Option<String> {
    let value = headers.get(header::AUTHORIZATION)?.to_str().ok()?.trim();
    let (scheme, credentials) = value.split_once(char::is_whitespace)?;
    let credentials = credentials.trim();
    (scheme.eq_ignore_ascii_case("bearer") && !credentials.is_empty())
        .then(|| credentials.to_owned())
}

/// A non-empty `token` parameter of a query string.
fn query_token(query: Option<&str>) -> Option<String> {
    let query = query?;
    let pairs = axum::extract::Query::<Vec<(String, String)>>::try_from_uri(
        &format!("/?{query}").parse().ok()?,
    )
    .ok()?;
    pairs
        .0
        .into_iter()
        .find(|(name, _)| name == "token")
        .map(|(_, value)| value.trim().to_owned())
        .filter(|value| !value.is_empty())
}

fn check_content_type(method: &Method, path: &str, headers: &HeaderMap) -> Result<(), ApiError> {
    let given = headers
        .get(header::CONTENT_TYPE)
        .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned());
    let essence = given
        .as_deref()
        .and_then(|v| v.split(';').next())
        .map(str::trim)
        .unwrap_or_default();
    if essence.eq_ignore_ascii_case("application/json") {
        return Ok(());
    }
    Err(ApiError::new(
        StatusCode::UNSUPPORTED_MEDIA_TYPE,
        "unsupported_media_type",
        format!(
            "{method} {path} needs `Content-Type: application/json`, even with an empty body; {}",
            match &given {
                Some(given) => format!("got `{}`", given.chars().take(100).collect::<String>()),
                None => "the request has none".to_owned(),
            }
        ),
    )
    .with_details(json!({"content_type": given, "expected": "application/json"})))
}

/// A host as the guard compares it: an IPv4 address, an IPv6 address in brackets, or a
/// lowercase name without its trailing dot.
fn ip_host(ip: IpAddr) -> String {
    match ip {
        IpAddr::V4(v4) => v4.to_string(),
        IpAddr::V6(v6) => format!("[{v6}]"),
    }
}

fn normalize_name(name: &str) -> String {
    name.trim().trim_end_matches('.').to_ascii_lowercase()
}

fn is_ip(host: &str) -> bool {
    let bare = host
        .strip_prefix('[')
        .and_then(|h| h.strip_suffix(']'))
        .unwrap_or(host);
    bare.parse::<IpAddr>().is_ok()
}

/// `host[:port]` (IPv6 in brackets) → (normalized host, port); None when malformed.
fn split_host(text: &str) -> Option<(String, Option<u16>)> {
    let text = text.trim();
    let (host, port) = if let Some(rest) = text.strip_prefix('[') {
        let end = rest.find(']')?;
        let address: std::net::Ipv6Addr = rest[..end].parse().ok()?;
        let after = &rest[end + 1..];
        let port = match after {
            "" => None,
            _ => Some(after.strip_prefix(':')?),
        };
        (format!("[{address}]"), port)
    } else {
        let (host, port) = match text.split_once(':') {
            Some((host, port)) => (normalize_name(host), Some(port)),
            None => (normalize_name(text), None),
        };
        if host.is_empty() || host.contains(|c: char| c.is_whitespace() || "/@[]\\".contains(c)) {
            return None;
        }
        (host, port)
    };
    let port = match port {
        Some(port) => Some(port.parse::<u16>().ok()?),
        None => None,
    };
    Some((host, port))
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    fn guard(bound: &str, token: Option<&str>) -> Guard {
        Guard::new(
            bound.parse().unwrap(),
            GuardSettings {
                token: token.map(str::to_owned),
                allowed_hosts: vec!["ci.example.com".into(), "proxy.example:8443".into()],
                allowed_origins: vec!["https://ci.example.com/".into()],
                metrics_auth: false,
                hostname: Some("Build-Box".into()),
            },
        )
    }

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (name, value) in pairs {
            map.append(*name, HeaderValue::from_str(value).unwrap());
        }
        map
    }

    fn code(result: Result<(), ApiError>) -> Option<(u16, &'static str)> {
        result.err().map(|e| (e.status.as_u16(), e.code))
    }

    #[test]
    fn hosts_the_server_answers_to() {
        let g = guard("127.0.0.1:8080", None);
        for host in [
            "localhost",
            "localhost:8080",
            "LOCALHOST.:8080",
            "127.0.0.1",
            "127.0.0.1:8080",
            "[::1]:8080",
            "build-box",
            "build-box:8080",
            "ci.example.com:1234",
            "proxy.example:8443",
        ] {
            let h = headers(&[("host", host)]);
            assert_eq!(
                code(g.check(&Method::GET, "/api/status", None, &h)),
                None,
                "{host}"
            );
        }
        for host in [
            "rebind.attacker.example:8080",
            "localhost:9999",
            "10.0.0.1:8080",
            "proxy.example:8080",
            "",
            "local host",
            "[::1",
            "localhost:x",
        ] {
            let h = headers(&[("host", host)]);
            assert_eq!(
                code(g.check(&Method::GET, "/api/status", None, &h)),
                Some((421, "host_not_allowed")),
                "{host}"
            );
        }
        assert_eq!(
            code(g.check(&Method::GET, "/", None, &HeaderMap::new())),
            Some((421, "host_not_allowed")),
            "no Host"
        );
        // Probes and webhooks pass whatever their Host.
        let foreign = headers(&[("host", "10.1.2.3:8080"), ("origin", "https://github.com")]);
        assert_eq!(
            code(g.check(&Method::GET, "/healthz", None, &foreign)),
            None
        );
        assert_eq!(code(g.check(&Method::GET, "/readyz", None, &foreign)), None);
        assert_eq!(
            code(g.check(&Method::POST, "/hooks/github", None, &foreign)),
            None
        );
        // A wildcard bind answers to any IP address, never to another name.
        let wild = guard("0.0.0.0:9000", None);
        for (host, ok) in [
            ("192.168.1.20:9000", true),
            ("[fe80::1]:9000", true),
            ("evil.example:9000", false),
        ] {
            let h = headers(&[("host", host)]);
            assert_eq!(
                code(wild.check(&Method::GET, "/api", None, &h)).is_none(),
                ok,
                "{host}"
            );
        }
        // `*` turns the check off.
        let open = Guard::new(
            "127.0.0.1:1".parse().unwrap(),
            GuardSettings {
                allowed_hosts: vec!["*".into()],
                ..GuardSettings::default()
            },
        );
        assert_eq!(
            code(open.check(
                &Method::GET,
                "/api",
                None,
                &headers(&[("host", "x.example")])
            )),
            None
        );
    }

    #[test]
    fn origins_that_may_change_things() {
        let g = guard("127.0.0.1:8080", None);
        let post = |origin: &str| {
            let h = headers(&[
                ("host", "127.0.0.1:8080"),
                ("origin", origin),
                ("content-type", "application/json"),
            ]);
            code(g.check(&Method::POST, "/api/sync", None, &h))
        };
        for origin in [
            "http://127.0.0.1:8080",
            "http://localhost:8080",
            "http://[::1]:8080",
            "http://build-box:8080",
            "https://ci.example.com",
            "http://ci.example.com:8080",
        ] {
            assert_eq!(post(origin), None, "{origin}");
        }
        for origin in [
            "http://evil.example",
            "null",
            "http://127.0.0.1:8081",
            "https://127.0.0.1:8080",
            "http://localhost",
            "file://",
            "http://ci.example.com:9",
            "",
        ] {
            assert_eq!(post(origin), Some((403, "origin_not_allowed")), "{origin}");
        }
        // Same origin as the request's (allowed) Host, e.g. through a tunnel on another port.
        let h = headers(&[
            ("host", "proxy.example:8443"),
            ("origin", "http://proxy.example:8443"),
            ("content-type", "application/json"),
        ]);
        assert_eq!(code(g.check(&Method::POST, "/api/sync", None, &h)), None);
        let h = headers(&[
            ("host", "proxy.example:8443"),
            ("origin", "http://proxy.example:8444"),
            ("content-type", "application/json"),
        ]);
        assert_eq!(
            code(g.check(&Method::POST, "/api/sync", None, &h)),
            Some((403, "origin_not_allowed"))
        );
        // Reads carry no check (a page cannot read a cross-origin answer); /ws does.
        let h = headers(&[
            ("host", "127.0.0.1:8080"),
            ("origin", "http://evil.example"),
        ]);
        assert_eq!(code(g.check(&Method::GET, "/api/status", None, &h)), None);
        assert_eq!(
            code(g.check(&Method::GET, "/ws", None, &h)),
            Some((403, "origin_not_allowed"))
        );
        // Without an Origin (curl, the CLI), nothing to check.
        let h = headers(&[
            ("host", "127.0.0.1:8080"),
            ("content-type", "application/json"),
        ]);
        assert_eq!(code(g.check(&Method::POST, "/api/sync", None, &h)), None);
    }

    #[test]
    fn state_changes_need_a_json_content_type() {
        let g = guard("127.0.0.1:8080", None);
        for method in [Method::POST, Method::PUT, Method::PATCH, Method::DELETE] {
            for (content_type, ok) in [
                (None, false),
                (Some("application/x-www-form-urlencoded"), false),
                (Some("text/plain"), false),
                (Some("multipart/form-data; boundary=x"), false),
                (Some("application/json"), true),
                (Some("Application/JSON; charset=utf-8"), true),
            ] {
                let mut h = headers(&[("host", "127.0.0.1:8080")]);
                if let Some(value) = content_type {
                    h.insert(header::CONTENT_TYPE, HeaderValue::from_str(value).unwrap());
                }
                let got = code(g.check(&method, "/api/silences/x", None, &h));
                assert_eq!(got.is_none(), ok, "{method} {content_type:?}: {got:?}");
                if !ok {
                    assert_eq!(got, Some((415, "unsupported_media_type")));
                }
            }
        }
        let h = headers(&[("host", "127.0.0.1:8080")]);
        assert_eq!(
            code(g.check(&Method::POST, "/hooks/source", None, &h)),
            None
        );
    }

    #[test]
    fn the_token_guards_every_read_when_set() {
        let g = guard("127.0.0.1:8080", Some("s3cret"));
        let with = |auth: Option<&str>| {
            let mut h = headers(&[("host", "localhost:8080")]);
            if let Some(auth) = auth {
                h.insert(header::AUTHORIZATION, HeaderValue::from_str(auth).unwrap());
            }
            h
        };
        for path in [
            "/api",
            "/api/status",
            "/api/runs/x/logs/y",
            "/ws",
            "/api/nope",
        ] {
            for method in [Method::GET, Method::HEAD] {
                assert_eq!(
                    code(g.check(&method, path, None, &with(None))),
                    Some((401, "unauthorized")),
                    "{method} {path}"
                );
                assert_eq!(
                    code(g.check(&method, path, None, &with(Some("Bearer wrong")))),
                    Some((401, "unauthorized"))
                );
                assert_eq!(
                    code(g.check(&method, path, None, &with(Some("Bearer s3cret")))),
                    None
                );
                assert_eq!(
                    code(g.check(&method, path, None, &with(Some("bearer  s3cret ")))),
                    None
                );
                assert_eq!(
                    code(g.check(&method, path, None, &with(Some("BEARER s3cret")))),
                    None
                );
                assert_eq!(
                    code(g.check(&method, path, None, &with(Some("Basic s3cret")))),
                    Some((401, "unauthorized"))
                );
            }
        }
        for path in ["/healthz", "/readyz", "/metrics", "/", "/assets/app.js"] {
            assert_eq!(
                code(g.check(&Method::GET, path, None, &with(None))),
                None,
                "{path}"
            );
        }
        // `/ws?token=`, not empty; only on /ws.
        assert_eq!(
            code(g.check(&Method::GET, "/ws", Some("token=s3cret"), &with(None))),
            None
        );
        assert_eq!(
            code(g.check(&Method::GET, "/ws", Some("token="), &with(None))),
            Some((401, "unauthorized"))
        );
        assert_eq!(
            code(g.check(&Method::GET, "/ws", Some("token=%20"), &with(None))),
            Some((401, "unauthorized"))
        );
        assert_eq!(
            code(g.check(
                &Method::GET,
                "/api/status",
                Some("token=s3cret"),
                &with(None)
            )),
            Some((401, "unauthorized"))
        );
        // /metrics with metrics_auth.
        let closed = Guard::new(
            "127.0.0.1:8080".parse().unwrap(),
            GuardSettings {
                token: Some("s3cret".into()),
                metrics_auth: true,
                ..GuardSettings::default()
            },
        );
        assert_eq!(
            code(closed.check(&Method::GET, "/metrics", None, &with(None))),
            Some((401, "unauthorized"))
        );
        assert_eq!(
            code(closed.check(&Method::GET, "/metrics", None, &with(Some("Bearer s3cret")))),
            None
        );
        // Without a token, reads are open.
        let open = guard("127.0.0.1:8080", None);
        assert_eq!(
            code(open.check(&Method::GET, "/api/status", None, &with(None))),
            None
        );
    }
}
