//! What can go wrong talking to the Hub, each case a sentence a user can act on.

use reqwest::StatusCode;
use reqwest::header::HeaderMap;
use swarm_protocol::repo::RepoType;

/// What a request was about, so an error can name it.
#[derive(Debug, Clone, Default)]
pub struct Subject {
    /// Repo id.
    pub repo: String,
    /// Repo type.
    pub repo_type: RepoType,
    /// Revision asked for, if any.
    pub revision: Option<String>,
    /// Path in the repo, if any.
    pub path: Option<String>,
}

/// A Hub failure, final (retries, if any, are already spent).
#[derive(Debug, thiserror::Error)]
pub enum HubError {
    /// The endpoint is not a usable http(s) URL.
    #[error("invalid Hub endpoint '{0}': expected an http:// or https:// URL")]
    InvalidEndpoint(String),
    /// No such repo, or it is private and we may not see it.
    #[error("{} '{}' not found at {endpoint}: check the repo id and --repo-type{}", .subject.repo_type, .subject.repo, if *.authenticated { "" } else { ", or pass --token if it is private" })]
    RepoNotFound {
        /// Which repo.
        subject: Subject,
        /// Whether a token was sent.
        authenticated: bool,
        /// The endpoint asked.
        endpoint: String,
    },
    /// A gated repo, and our token (or its absence) does not open it.
    #[error("{} '{}' is gated: {}", .subject.repo_type, .subject.repo, if *.authenticated { "your token is not on its access list; request access on the repo's Hub page" } else { "accept its conditions on the Hub, then pass a token with --token or HF_TOKEN" })]
    Gated {
        /// Which repo.
        subject: Subject,
        /// Whether a token was sent.
        authenticated: bool,
    },
    /// The revision does not exist in this repo.
    #[error("revision '{}' not found in {} '{}': check the branch, tag or commit", .subject.revision.as_deref().unwrap_or("main"), .subject.repo_type, .subject.repo)]
    RevisionNotFound {
        /// Which repo and revision.
        subject: Subject,
    },
    /// The file does not exist at this revision.
    #[error("file '{}' not found in {} '{}' at revision '{}'", .subject.path.as_deref().unwrap_or(""), .subject.repo_type, .subject.repo, .subject.revision.as_deref().unwrap_or("main"))]
    EntryNotFound {
        /// Which file.
        subject: Subject,
    },
    /// The token was rejected.
    #[error("the Hub rejected the token ({message}): check --token, HF_TOKEN or the token file")]
    BadToken {
        /// Server's message.
        message: String,
    },
    /// 403 for another reason.
    #[error("access to {url} was refused ({message}): check that your token has read access")]
    Forbidden {
        /// Redacted URL.
        url: String,
        /// Server's message.
        message: String,
    },
    /// Any other final HTTP status.
    #[error("the Hub answered {status} for {url}{}", fmt_message(.message))]
    Status {
        /// Redacted URL.
        url: String,
        /// Status.
        status: StatusCode,
        /// Server's message.
        message: String,
    },
    /// Retries exhausted.
    #[error(
        "cannot reach {url} after {attempts} attempt{} (last error: {last}): check the network, or --endpoint / HF_ENDPOINT", if *.attempts == 1 { "" } else { "s" }
    )]
    Unreachable {
        /// Redacted URL.
        url: String,
        /// Attempts made.
        attempts: u32,
        /// Last failure.
        last: String,
        /// The last failure was an answer ("try later"), not silence: the Hub is there.
        answered: bool,
    },
    /// The answer does not follow the Hub protocol.
    #[error("unexpected answer from {url}: {what}")]
    Malformed {
        /// Redacted URL.
        url: String,
        /// What was wrong.
        what: String,
    },
}

fn fmt_message(m: &str) -> String {
    if m.is_empty() { String::new() } else { format!(": {m}") }
}

impl HubError {
    /// A stable name for the kind of failure (`--json` output, scripts).
    pub fn kind(&self) -> &'static str {
        match self {
            Self::InvalidEndpoint(_) => "usage",
            Self::RepoNotFound { .. } => "repo_not_found",
            Self::Gated { .. } => "gated_repo",
            Self::RevisionNotFound { .. } => "revision_not_found",
            Self::EntryNotFound { .. } => "entry_not_found",
            Self::BadToken { .. } => "bad_token",
            Self::Forbidden { .. } => "forbidden",
            Self::Status { .. } => "hub_error",
            Self::Unreachable { answered: true, .. } => "hub_error",
            Self::Unreachable { answered: false, .. } => "hub_unreachable",
            Self::Malformed { .. } => "hub_protocol",
        }
    }

    /// Maps a final (non-retryable) error status to an error, the way `hf_raise_for_status` does:
    /// `X-Error-Code` first, then 401 on a repo URL meaning "not found or private".
    pub fn from_status(
        status: StatusCode,
        headers: &HeaderMap,
        url: &str,
        subject: &Subject,
        authenticated: bool,
        endpoint: &str,
    ) -> Self {
        let header = |k: &str| headers.get(k).and_then(|v| v.to_str().ok()).unwrap_or("").to_owned();
        let code = header("x-error-code");
        let message = header("x-error-message");
        let subject = subject.clone();
        match code.as_str() {
            "RevisionNotFound" => return Self::RevisionNotFound { subject },
            "EntryNotFound" => return Self::EntryNotFound { subject },
            "GatedRepo" => {
                return Self::Gated { subject, authenticated };
            }
            "RepoNotFound" => {
                return Self::RepoNotFound { subject, authenticated, endpoint: endpoint.to_owned() };
            }
            _ => {}
        }
        match status.as_u16() {
            401 if message == "Invalid credentials in Authorization header" => Self::BadToken { message },
            401 => Self::RepoNotFound { subject, authenticated, endpoint: endpoint.to_owned() },
            403 => Self::Forbidden { url: url.to_owned(), message },
            _ => Self::Status { url: url.to_owned(), status, message },
        }
    }
}

/// A URL fit for messages: no query string (signed CDN URLs carry credentials there) and no
/// user info.
pub fn redact(url: &url::Url) -> String {
    let mut u = url.clone();
    u.set_query(None);
    let _ = u.set_username("");
    let _ = u.set_password(None);
    u.to_string()
}
