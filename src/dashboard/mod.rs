//! The web dashboard: plain HTML, CSS and JavaScript modules under `src/dashboard/assets/`,
//! embedded in the binary (it works offline, nothing is fetched from elsewhere) and served
//! at `/` (the app shell) and `/assets/{path}`.
//!
//! Every asset is one line of [`ASSETS`]. A page is a module `pages/<name>.js`; the shell
//! learns which pages exist from the `dashboard-pages` meta tag that [`index`] fills in from
//! that table, so adding a page is adding its file and its line.
//!
//! Answers carry an `ETag` (a hash of the content) and `Cache-Control: no-cache`, so a
//! browser revalidates and gets `304 Not Modified` while the binary is the same. The shell
//! is sent with a strict Content-Security-Policy: scripts, styles and connections to this
//! origin only, no inline script.

use std::collections::HashMap;
use std::sync::LazyLock;

use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use sha2::{Digest, Sha256};

/// One embedded file: its path under `assets/` and its bytes.
macro_rules! asset {
    ($path:literal) => {
        ($path, include_bytes!(concat!("assets/", $path)) as &[u8])
    };
}

/// Every file the dashboard serves, by path under `/assets/`. A page is `pages/<name>.js`.
pub const ASSETS: &[(&str, &[u8])] = &[
    asset!("index.html"),
    asset!("app.css"),
    asset!("app.js"),
    asset!("favicon.svg"),
    asset!("lib/errors.js"),
    asset!("lib/api.js"),
    asset!("lib/live.js"),
    asset!("lib/ui.js"),
    asset!("lib/dag.js"),
    asset!("lib/yaml.js"),
    asset!("lib/manifest-editor.js"),
    asset!("lib/alert-editor.js"),
    asset!("pages/overview.js"),
    asset!("pages/workflows.js"),
    asset!("pages/runs.js"),
    asset!("pages/tests.js"),
    asset!("pages/schedules.js"),
    asset!("pages/agents.js"),
    asset!("pages/workers.js"),
    asset!("pages/monitoring.js"),
    asset!("pages/alerts.js"),
    asset!("pages/reports.js"),
    asset!("pages/manifests.js"),
    asset!("pages/editor.js"),
    asset!("pages/dashboards.js"),
];

/// The Content-Security-Policy of the shell: everything from this origin only (`'self'`
/// covers the same-origin WebSocket), no inline script or style attribute, no plugins, no
/// framing.
pub const CONTENT_SECURITY_POLICY: &str = "default-src 'self'; script-src 'self'; \
     style-src 'self'; img-src 'self' data:; connect-src 'self'; object-src 'none'; \
     base-uri 'none'; form-action 'self'; frame-ancestors 'none'";

/// The pages there are modules for (`pages/<name>.js`), in table order.
pub fn pages() -> Vec<&'static str> {
    ASSETS
        .iter()
        .filter_map(|(path, _)| path.strip_prefix("pages/")?.strip_suffix(".js"))
        .collect()
}

/// A file ready to serve.
struct Prepared {
    body: Vec<u8>,
    content_type: &'static str,
    etag: String,
}

impl Prepared {
    fn new(path: &str, body: Vec<u8>) -> Prepared {
        let digest = Sha256::digest(&body);
        Prepared {
            content_type: content_type(path),
            etag: format!("\"{}\"", hex::encode(&digest[..12])),
            body,
        }
    }
}

/// The assets, `index.html` with the page list filled in.
static PREPARED: LazyLock<HashMap<&'static str, Prepared>> = LazyLock::new(|| {
    ASSETS
        .iter()
        .map(|&(path, bytes)| {
            let body = if path == "index.html" {
                String::from_utf8_lossy(bytes)
                    .replace("{{PAGES}}", &pages().join(","))
                    .into_bytes()
            } else {
                bytes.to_vec()
            };
            (path, Prepared::new(path, body))
        })
        .collect()
});

/// The content type of a file by its extension.
pub fn content_type(path: &str) -> &'static str {
    match path.rsplit_once('.').map(|(_, ext)| ext) {
        Some("html") => "text/html; charset=utf-8",
        Some("css") => "text/css; charset=utf-8",
        Some("js") => "text/javascript; charset=utf-8",
        Some("json") => "application/json",
        Some("svg") => "image/svg+xml",
        Some("png") => "image/png",
        Some("ico") => "image/x-icon",
        Some("woff2") => "font/woff2",
        _ => "application/octet-stream",
    }
}

fn serve(prepared: &Prepared, request: &HeaderMap, csp: bool) -> Response {
    let matches = request
        .get(header::IF_NONE_MATCH)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| {
            v.split(',')
                .any(|tag| tag.trim() == prepared.etag || tag.trim() == "*")
        });
    let mut response = if matches {
        StatusCode::NOT_MODIFIED.into_response()
    } else {
        (
            [(header::CONTENT_TYPE, prepared.content_type)],
            prepared.body.clone(),
        )
            .into_response()
    };
    let headers = response.headers_mut();
    if let Ok(etag) = HeaderValue::from_str(&prepared.etag) {
        headers.insert(header::ETAG, etag);
    }
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    headers.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    if csp {
        headers.insert(
            header::CONTENT_SECURITY_POLICY,
            HeaderValue::from_static(CONTENT_SECURITY_POLICY),
        );
        headers.insert(
            header::REFERRER_POLICY,
            HeaderValue::from_static("no-referrer"),
        );
    }
    response
}

/// `GET /`: the app shell.
pub fn index(headers: &HeaderMap) -> Response {
    serve(&PREPARED["index.html"], headers, true)
}

/// `GET /assets/{*path}`: an embedded file; `None` when there is no such asset (the API
/// answers its JSON 404).
pub fn asset(path: &str, headers: &HeaderMap) -> Option<Response> {
    PREPARED
        .get(path)
        .map(|prepared| serve(prepared, headers, path == "index.html"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_asset_is_prepared_with_a_type_and_an_etag() {
        for (path, _) in ASSETS {
            let prepared = &PREPARED[path];
            assert_ne!(prepared.content_type, "application/octet-stream", "{path}");
            assert!(prepared.etag.starts_with('"') && prepared.etag.len() == 26);
            assert!(!prepared.body.is_empty(), "{path} is empty");
        }
        let paths: std::collections::HashSet<_> = ASSETS.iter().map(|(p, _)| p).collect();
        assert_eq!(paths.len(), ASSETS.len(), "an asset is listed twice");
    }

    #[test]
    fn the_shell_lists_the_pages_and_loads_no_inline_script() {
        assert_eq!(&pages()[..3], ["overview", "workflows", "runs"]);
        let html = String::from_utf8(PREPARED["index.html"].body.clone()).unwrap();
        assert!(
            html.contains(r#"<meta name="dashboard-pages" content="overview,workflows,runs"#),
            "{html}"
        );
        assert!(!html.contains("{{PAGES}}"));
        // Every script is an external module (the CSP allows no inline script).
        for piece in html.split("<script").skip(1) {
            let tag = &piece[..piece.find('>').unwrap()];
            assert!(tag.contains("src=\"/assets/"), "inline script: {tag}");
            assert!(piece[piece.find('>').unwrap() + 1..].starts_with("</script>"));
        }
        assert!(!html.contains(" style="), "style attributes break the CSP");
    }

    #[test]
    fn modules_import_only_embedded_modules() {
        // A relative import of a file that is not in the table would 404 in the browser.
        let known: std::collections::HashSet<&str> = ASSETS.iter().map(|(p, _)| *p).collect();
        for (path, bytes) in ASSETS.iter().filter(|(p, _)| p.ends_with(".js")) {
            let text = std::str::from_utf8(bytes).unwrap();
            let dir = path.rsplit_once('/').map_or("", |(d, _)| d);
            for line in text.lines() {
                let line = line.trim();
                if !(line.starts_with("import ") || line.starts_with("} from ")) {
                    continue;
                }
                let Some(spec) = line.split(['"', '\'']).nth(1) else {
                    continue;
                };
                let mut parts: Vec<&str> = if dir.is_empty() {
                    Vec::new()
                } else {
                    dir.split('/').collect()
                };
                for piece in spec.split('/') {
                    match piece {
                        "." => {}
                        ".." => {
                            parts.pop();
                        }
                        other => parts.push(other),
                    }
                }
                let target = parts.join("/");
                assert!(
                    known.contains(target.as_str()),
                    "{path} imports {spec} ({target}), which is not embedded"
                );
            }
        }
    }
}
