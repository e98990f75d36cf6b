//! Bearer-token authentication: which requests may pass.
//!
//! [`Guard`] holds the SHA-256 digests of the accepted tokens, from
//! `auth.tokens_file` (reloaded when the file changes) and from the variable
//! named by `auth.tokens_env`, and decides whether an `authorization`
//! header value carries one of them. Several tokens are accepted at once so
//! they can be rotated. The presented token is hashed and compared with
//! every digest in constant time, so neither the time taken nor an early
//! exit tells how much of a guess was right.
//!
//! This module knows neither HTTP nor gRPC: `server::admin` turns a
//! [`Denial`] into a 401 and `server::grpc` into `UNAUTHENTICATED`.

use std::{
    path::PathBuf,
    sync::{Arc, RwLock},
    time::Duration,
};

use sha2::{Digest as _, Sha256};
use subtle::ConstantTimeEq;
use tokio_util::sync::CancellationToken;

use crate::{
    config::AuthConfig,
    metrics::{Metrics, RejectReason, ReloadOutcome, ReloadSource},
    watch,
};

/// Shortest accepted token, in bytes: shorter ones can be guessed.
pub const MIN_TOKEN_LEN: usize = 16;

/// A token list that cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The token file could not be read.
    #[error("cannot read {path}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// A token is malformed; `at` names where it is (a line number, or an
    /// index in a list) and never the token itself.
    #[error("{at}: {reason}")]
    Token {
        /// Where the token is.
        at: String,
        /// What is wrong with it.
        reason: &'static str,
    },
}

/// The SHA-256 digest of an accepted token. Only digests are kept, so a
/// memory dump or a `Debug` print shows no token.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct Digest([u8; 32]);

impl std::fmt::Debug for Digest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Digest(..)")
    }
}

impl Digest {
    /// The digest of `token`.
    pub fn of(token: &str) -> Self {
        Self(Sha256::digest(token.as_bytes()).into())
    }
}

/// Checks one token: at least [`MIN_TOKEN_LEN`] bytes of visible ASCII,
/// since it travels in an HTTP header.
fn check(token: &str) -> Result<(), &'static str> {
    if !token.bytes().all(|b| b.is_ascii_graphic()) {
        return Err("a token must be visible ASCII without spaces");
    }
    if token.len() < MIN_TOKEN_LEN {
        return Err("a token must be at least 16 characters long");
    }
    Ok(())
}

/// Parses a token file: one token per line; blank lines and lines starting
/// with `#` are ignored, surrounding whitespace is trimmed.
///
/// # Errors
/// [`Error::Token`] naming the line of a malformed token.
pub fn parse_file(text: &str) -> Result<Vec<Digest>, Error> {
    let mut out = Vec::new();
    for (idx, line) in text.lines().enumerate() {
        let token = line.trim();
        if token.is_empty() || token.starts_with('#') {
            continue;
        }
        check(token).map_err(|reason| Error::Token {
            at: format!("line {}", idx + 1),
            reason,
        })?;
        out.push(Digest::of(token));
    }
    Ok(out)
}

/// Parses a comma-separated token list, as held by the variable named by
/// `auth.tokens_env`; empty entries are ignored.
///
/// # Errors
/// [`Error::Token`] naming the position of a malformed token.
pub fn parse_list(text: &str) -> Result<Vec<Digest>, Error> {
    let mut out = Vec::new();
    for (idx, token) in text.split(',').map(str::trim).enumerate() {
        if token.is_empty() {
            continue;
        }
        check(token).map_err(|reason| Error::Token {
            at: format!("token {}", idx + 1),
            reason,
        })?;
        out.push(Digest::of(token));
    }
    Ok(out)
}

/// Reads and parses a token file.
///
/// # Errors
/// [`Error::Read`] or [`Error::Token`].
pub fn read_file(path: &std::path::Path) -> Result<Vec<Digest>, Error> {
    let text = std::fs::read_to_string(path).map_err(|source| Error::Read {
        path: path.to_path_buf(),
        source,
    })?;
    parse_file(&text)
}

/// Why a request was refused. The messages tell the client what to send,
/// never which tokens exist.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Denial {
    /// No `authorization` header.
    Missing,
    /// An `authorization` header with another scheme than Bearer.
    NotBearer,
    /// A bearer token that is not accepted.
    Invalid,
}

impl Denial {
    /// The message for the client.
    pub fn message(self) -> &'static str {
        match self {
            Denial::Missing => {
                "missing bearer token: send the header \"authorization: Bearer <token>\""
            }
            Denial::NotBearer => "the authorization header must use the Bearer scheme",
            Denial::Invalid => "invalid bearer token",
        }
    }
}

/// Decides which requests may pass; cheap to clone.
#[derive(Clone)]
pub struct Guard(Arc<Inner>);

struct Inner {
    enabled: bool,
    protect_metrics: bool,
    protect_health: bool,
    file: Option<PathBuf>,
    reload_interval: Duration,
    env: Vec<Digest>,
    /// The token file's digests; replaced whole on reload.
    from_file: RwLock<Arc<Vec<Digest>>>,
    /// The file's stamp when `from_file` was read.
    stamp: watch::Stamp,
    metrics: Metrics,
}

impl Guard {
    /// A guard for `cfg`, reading the token file once now.
    ///
    /// # Errors
    /// When the token file cannot be read or holds a malformed token.
    pub fn new(cfg: &AuthConfig, metrics: Metrics) -> Result<Self, Error> {
        let paths: Vec<PathBuf> = cfg.tokens_file.iter().cloned().collect();
        let stamp = watch::Stamp::of(&paths);
        let from_file = match &cfg.tokens_file {
            Some(path) => read_file(path)?,
            None => Vec::new(),
        };
        Ok(Self(Arc::new(Inner {
            enabled: cfg.enabled(),
            protect_metrics: cfg.protect_metrics,
            protect_health: cfg.protect_health,
            file: cfg.tokens_file.clone(),
            reload_interval: cfg.reload_interval,
            env: cfg.env_tokens.clone(),
            from_file: RwLock::new(Arc::new(from_file)),
            stamp,
            metrics,
        })))
    }

    /// Whether any token is configured; without one every request passes.
    pub fn enabled(&self) -> bool {
        self.0.enabled
    }

    /// Whether `/metrics` needs a token.
    pub fn protects_metrics(&self) -> bool {
        self.0.enabled && self.0.protect_metrics
    }

    /// Whether `/healthz`, `/readyz` and the gRPC health and reflection
    /// services need a token.
    pub fn protects_health(&self) -> bool {
        self.0.enabled && self.0.protect_health
    }

    /// Checks the value of a request's `authorization` header and counts a
    /// refusal in `driftd_ingest_rejected_total{reason="unauthenticated"}`.
    ///
    /// # Errors
    /// The [`Denial`] when the request may not pass.
    pub fn check(&self, authorization: Option<&[u8]>) -> Result<(), Denial> {
        if !self.0.enabled {
            return Ok(());
        }
        let res = self.verify(authorization);
        if let Err(denial) = res {
            self.0.metrics.reject(RejectReason::Unauthenticated);
            tracing::debug!(reason = ?denial, "Request refused: no valid bearer token");
        }
        res
    }

    fn verify(&self, authorization: Option<&[u8]>) -> Result<(), Denial> {
        let value = authorization.ok_or(Denial::Missing)?;
        let value = std::str::from_utf8(value).map_err(|_| Denial::NotBearer)?;
        let (scheme, token) = value.trim().split_once(' ').ok_or(Denial::NotBearer)?;
        if !scheme.eq_ignore_ascii_case("bearer") {
            return Err(Denial::NotBearer);
        }
        let presented = Digest::of(token.trim());
        let from_file = self
            .0
            .from_file
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        // No early exit: every digest is compared whatever matched before.
        let mut found = subtle::Choice::from(0u8);
        for d in from_file.iter().chain(&self.0.env) {
            found |= d.0.ct_eq(&presented.0);
        }
        if bool::from(found) {
            Ok(())
        } else {
            Err(Denial::Invalid)
        }
    }

    /// Reloads the token file whenever it changes, until `cancel` fires. A
    /// file that cannot be read or holds a malformed token is logged and
    /// counted, and the tokens read before stay in force; a file without
    /// tokens is applied, so every request is refused until one is added.
    pub async fn watch(self, cancel: CancellationToken) {
        let Some(path) = self.0.file.clone() else {
            return;
        };
        let guard = self.clone();
        watch::on_change(
            vec![path.clone()],
            self.0.stamp.clone(),
            self.0.reload_interval,
            cancel,
            move || guard.reload(&path),
        )
        .await;
    }

    fn reload(&self, path: &std::path::Path) {
        let metrics = &self.0.metrics;
        match read_file(path) {
            Ok(digests) => {
                let n_tokens = digests.len();
                *self.0.from_file.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(digests);
                metrics.reload(ReloadSource::Tokens, ReloadOutcome::Reloaded);
                if n_tokens == 0 && self.0.env.is_empty() {
                    tracing::warn!(path = %path.display(), "Token file holds no token; every request is refused");
                } else {
                    tracing::info!(path = %path.display(), n_tokens, "Token file reloaded");
                }
            }
            Err(error) => {
                metrics.reload(ReloadSource::Tokens, ReloadOutcome::Failed);
                tracing::warn!(path = %path.display(), error = %error, "Token file not reloaded; the previous tokens stay in force");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const A: &str = "token-a-0123456789abcdef";
    const B: &str = "token-b-0123456789abcdef";

    fn guard(file: Option<PathBuf>, env: &[&str]) -> Guard {
        let cfg = AuthConfig {
            tokens_file: file,
            env_tokens: env.iter().map(|t| Digest::of(t)).collect(),
            protect_metrics: false,
            protect_health: false,
            reload_interval: Duration::from_secs(1),
        };
        Guard::new(&cfg, Metrics::new()).unwrap()
    }

    fn bearer(t: &str) -> Vec<u8> {
        format!("Bearer {t}").into_bytes()
    }

    #[test]
    fn files_skip_blanks_and_comments_and_name_bad_lines() {
        let d = parse_file(&format!("# rotated 2026-01\n\n  {A}  \n{B}\n")).unwrap();
        assert_eq!(d, [Digest::of(A), Digest::of(B)]);
        let err = parse_file(&format!("{A}\nshort\n"))
            .unwrap_err()
            .to_string();
        assert_eq!(err, "line 2: a token must be at least 16 characters long");
        let err = parse_list(&format!("{A}, has space inside it")).unwrap_err();
        assert!(err.to_string().starts_with("token 2: "), "{err}");
        assert_eq!(parse_list(&format!(" {A} ,,{B}")).unwrap().len(), 2);
    }

    #[test]
    fn every_configured_token_passes_and_nothing_else() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("tokens");
        std::fs::write(&path, format!("{A}\n")).unwrap();
        let g = guard(Some(path), &[B]);
        assert!(g.enabled());
        assert_eq!(g.check(Some(&bearer(A))), Ok(()));
        assert_eq!(g.check(Some(&bearer(B))), Ok(()));
        assert_eq!(g.check(Some(format!("bearer  {A}").as_bytes())), Ok(()));
        assert_eq!(g.check(None), Err(Denial::Missing));
        assert_eq!(g.check(Some(b"Basic dXNlcjpwYXNz")), Err(Denial::NotBearer));
        assert_eq!(g.check(Some(A.as_bytes())), Err(Denial::NotBearer));
        assert_eq!(g.check(Some(&bearer(&A[1..]))), Err(Denial::Invalid));
        assert_eq!(g.check(Some(b"Bearer ")), Err(Denial::NotBearer));
        assert_eq!(g.check(Some(&[0xff, 0xfe])), Err(Denial::NotBearer));
        let text = g.0.metrics.encode();
        assert!(
            text.contains("driftd_ingest_rejected_total{reason=\"unauthenticated\"} 6"),
            "{text}"
        );
    }

    #[test]
    fn without_tokens_everything_passes() {
        let g = guard(None, &[]);
        assert!(!g.enabled());
        assert_eq!(g.check(None), Ok(()));
        assert!(!g.protects_metrics());
    }

    #[test]
    fn a_reload_replaces_the_file_tokens_and_a_bad_file_keeps_them() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("tokens");
        std::fs::write(&path, format!("{A}\n")).unwrap();
        let g = guard(Some(path.clone()), &[]);
        std::fs::write(&path, format!("{B}\n")).unwrap();
        g.reload(&path);
        assert_eq!(g.check(Some(&bearer(A))), Err(Denial::Invalid));
        assert_eq!(g.check(Some(&bearer(B))), Ok(()));
        std::fs::write(&path, "short\n").unwrap();
        g.reload(&path);
        assert_eq!(g.check(Some(&bearer(B))), Ok(()));
        std::fs::write(&path, "# none left\n").unwrap();
        g.reload(&path);
        assert_eq!(g.check(Some(&bearer(B))), Err(Denial::Invalid));
    }
}
