//! Where a git source may be: the URL, branch and path checks the configuration schema
//! uses as formats and the git source applies before it fetches. No IO.

use std::path::{Component, Path};

/// The kinds of location a git source may have.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UrlKind {
    /// `https://`.
    Https,
    /// `http://`.
    Http,
    /// `file://`.
    File,
    /// A path on this machine.
    Path,
}

/// Checks where a repository is: a supported URL scheme or a local path.
pub fn check_url(url: &str) -> Result<UrlKind, String> {
    const EXPECTED: &str = "expected an https:// or file:// URL or a local path";
    let trimmed = url.trim();
    if trimmed.is_empty() {
        return Err(format!("the git source URL is empty: {EXPECTED}"));
    }
    if trimmed != url {
        return Err(format!(
            "the git source URL `{url}` has surrounding spaces: {EXPECTED}"
        ));
    }
    if let Some((scheme, rest)) = url.split_once("://") {
        let kind = match scheme.to_ascii_lowercase().as_str() {
            "https" => UrlKind::Https,
            "http" => UrlKind::Http,
            "file" => UrlKind::File,
            "ssh" | "git+ssh" | "ssh+git" => {
                return Err(format!(
                    "ssh URLs are not supported (`{}`): {EXPECTED}, e.g. https with a token",
                    redact_url(url)
                ))
            }
            other => {
                return Err(format!(
                    "unsupported URL scheme `{other}` in `{}`: {EXPECTED}",
                    redact_url(url)
                ))
            }
        };
        if rest.is_empty() || (kind != UrlKind::File && rest.starts_with('/')) {
            return Err(format!(
                "`{}` names no repository: {EXPECTED}",
                redact_url(url)
            ));
        }
        return Ok(kind);
    }
    // `user@host:path` is git's scp-like ssh syntax.
    if let Some((before, _)) = url.split_once(':') {
        if before.contains('@') && !before.contains('/') {
            return Err(format!(
                "ssh URLs are not supported (`{url}`): {EXPECTED}, e.g. https with a token"
            ));
        }
    }
    Ok(UrlKind::Path)
}

/// Checks a branch name the way git does (`refs/heads/<name>` must be a valid reference).
pub fn check_branch(branch: &str) -> Result<(), String> {
    if branch.is_empty() {
        return Err("the branch name is empty".to_owned());
    }
    if !git2::Reference::is_valid_name(&format!("refs/heads/{branch}")) {
        return Err(format!("`{branch}` is not a valid git branch name"));
    }
    Ok(())
}

/// Checks the path of the manifests inside the repository: relative, staying inside it.
pub fn check_path(path: &str) -> Result<(), String> {
    let p = Path::new(path);
    if path.is_empty() {
        return Err("the path is empty: use `.` for the top of the repository".to_owned());
    }
    if p.is_absolute() || p.components().any(|c| matches!(c, Component::ParentDir)) {
        return Err(format!(
            "`{path}` must be a directory relative to the top of the repository, without `..`"
        ));
    }
    Ok(())
}

/// A URL without the user and password it may carry (`https://user:token@host/...`), for
/// logs and status.
pub fn redact_url(url: &str) -> String {
    if let Some((scheme, rest)) = url.split_once("://") {
        let authority_end = rest.find('/').unwrap_or(rest.len());
        if let Some(at) = rest[..authority_end].rfind('@') {
            return format!("{scheme}://***@{}", &rest[at + 1..]);
        }
    }
    url.to_owned()
}
