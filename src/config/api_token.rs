//! The API token in force: the configured one (`server.api_token`), or — when the server
//! listens on a non-loopback address without one — a token it generates once and keeps in
//! `<data>/api-token` (256 random bits as hex, mode 0600, written atomically and reused on
//! every start), where the local command line finds it. `--insecure` runs without any.

use std::io::Write as _;
use std::os::unix::fs::{OpenOptionsExt as _, PermissionsExt as _};
use std::path::{Path, PathBuf};

use anyhow::{bail, Context as _};

/// The file of the generated token in the data directory.
pub const FILE: &str = "api-token";

/// Where the token of this server comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ApiToken {
    /// No token: a loopback address, or `--insecure`.
    None,
    /// `server.api_token`.
    Configured(String),
    /// Generated for a non-loopback address, kept in `<data>/api-token`.
    Generated(String),
}

impl ApiToken {
    /// The token, if there is one.
    pub fn value(&self) -> Option<&str> {
        match self {
            ApiToken::None => None,
            ApiToken::Configured(token) | ApiToken::Generated(token) => Some(token),
        }
    }
}

/// The generated token's path in a data directory.
pub fn path(data_dir: &Path) -> PathBuf {
    data_dir.join(FILE)
}

/// Whether `host` (as given to `start --host`) is a loopback address or `localhost`.
pub fn is_loopback(host: &str) -> bool {
    host.eq_ignore_ascii_case("localhost")
        || host
            .trim_start_matches('[')
            .trim_end_matches(']')
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

/// The token a server started with these settings uses: the configured one (resolved by
/// the caller) wins; otherwise a non-loopback `host` gets the generated one, unless
/// `insecure`.
pub fn decide(
    configured: Option<String>,
    host: &str,
    insecure: bool,
    data_dir: &Path,
) -> anyhow::Result<ApiToken> {
    if let Some(token) = configured {
        return Ok(ApiToken::Configured(token));
    }
    if is_loopback(host) || insecure {
        return Ok(ApiToken::None);
    }
    Ok(ApiToken::Generated(load_or_create(data_dir)?))
}

/// Checks a token read from a reference: an empty or blank one is refused (it would let
/// anyone in who sends an empty credential).
pub fn check_not_blank(token: String, reference: &str) -> anyhow::Result<String> {
    let token = token.trim().to_owned();
    if token.is_empty() {
        bail!(
            "the API token reference `{reference}` gives an empty token: put a long random value there (e.g. `openssl rand -hex 32`), or remove server.api_token"
        );
    }
    Ok(token)
}

/// The generated token of a data directory, when there is one (what the local command line
/// sends when no token is configured).
pub fn read(data_dir: &Path) -> Option<String> {
    let text = std::fs::read_to_string(path(data_dir)).ok()?;
    let token = text.trim();
    (!token.is_empty()).then(|| token.to_owned())
}

/// The token kept in `<data>/api-token`, generated (256 random bits, hex) when there is
/// none. Written to a temporary file of mode 0600 and linked into place (which fails
/// rather than replace a file), so no reader sees half of it and a file another start
/// created meanwhile wins.
pub fn load_or_create(data_dir: &Path) -> anyhow::Result<String> {
    let target = path(data_dir);
    if target.exists() {
        let mode = std::fs::metadata(&target)
            .with_context(|| format!("cannot read {}", target.display()))?
            .permissions()
            .mode();
        if mode & 0o077 != 0 {
            std::fs::set_permissions(&target, std::fs::Permissions::from_mode(0o600))
                .with_context(|| format!("cannot make {} private (mode 0600)", target.display()))?;
            tracing::warn!(file = %target.display(), "the API token file could be read by others: its mode is now 0600");
        }
        return read(data_dir).with_context(|| {
            format!(
                "{} holds no token: remove it and start again to generate one",
                target.display()
            )
        });
    }
    std::fs::create_dir_all(data_dir)
        .with_context(|| format!("cannot create {}", data_dir.display()))?;
    let mut bytes = [0u8; 32];
    getrandom::fill(&mut bytes)
        .map_err(|err| anyhow::anyhow!("cannot generate an API token: no randomness ({err})"))?;
    let token = hex::encode(bytes);
    let temporary = data_dir.join(format!(".{FILE}.{}", std::process::id()));
    let written = (|| -> std::io::Result<()> {
        let mut file = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&temporary)?;
        // A file left by an earlier try with this PID keeps its mode: set it again.
        file.set_permissions(std::fs::Permissions::from_mode(0o600))?;
        file.write_all(format!("{token}\n").as_bytes())?;
        file.sync_all()?;
        // Another start racing this one: the first file linked into place wins.
        std::fs::hard_link(&temporary, &target)
    })();
    let _ = std::fs::remove_file(&temporary);
    match written {
        Ok(()) => Ok(token),
        Err(err) if err.kind() == std::io::ErrorKind::AlreadyExists => {
            read(data_dir).with_context(|| format!("{} holds no token", target.display()))
        }
        Err(err) => {
            Err(err).with_context(|| format!("cannot write the API token to {}", target.display()))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_once_private_and_reused() {
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("data");
        let first = load_or_create(&data).unwrap();
        assert_eq!(first.len(), 64, "{first}");
        assert!(first.chars().all(|c| c.is_ascii_hexdigit()), "{first}");
        let mode = std::fs::metadata(path(&data)).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        assert_eq!(load_or_create(&data).unwrap(), first);
        assert_eq!(read(&data).as_deref(), Some(first.as_str()));
        // No temporary file stays.
        let names: Vec<_> = std::fs::read_dir(&data)
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, vec![std::ffi::OsString::from(FILE)]);
        // Another directory, another token.
        assert_ne!(load_or_create(&dir.path().join("other")).unwrap(), first);
    }

    #[test]
    fn who_gets_which_token() {
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path();
        assert_eq!(
            decide(Some("t".into()), "0.0.0.0", false, data).unwrap(),
            ApiToken::Configured("t".into())
        );
        assert_eq!(
            decide(None, "127.0.0.1", false, data).unwrap(),
            ApiToken::None
        );
        assert_eq!(
            decide(None, "localhost", false, data).unwrap(),
            ApiToken::None
        );
        assert_eq!(decide(None, "::1", false, data).unwrap(), ApiToken::None);
        assert_eq!(decide(None, "0.0.0.0", true, data).unwrap(), ApiToken::None);
        assert!(!path(data).exists());
        let generated = decide(None, "0.0.0.0", false, data).unwrap();
        assert!(
            matches!(generated, ApiToken::Generated(ref t) if t.len() == 64),
            "{generated:?}"
        );
    }

    #[test]
    fn blank_tokens_are_refused() {
        for blank in ["", "  ", "\n\t\n"] {
            let err = check_not_blank(blank.into(), "file:secrets/token").unwrap_err();
            assert!(
                err.to_string()
                    .contains("`file:secrets/token` gives an empty token"),
                "{err}"
            );
        }
        assert_eq!(check_not_blank(" abc\n".into(), "env:X").unwrap(), "abc");
    }
}
