//! The local control protocol: what `swarm-dl get` and `swarm-dl status` ask of the `join` node
//! of their cache, over the node's Unix socket (`<cache>/.locks/swarm-dl/control.sock`).
//!
//! One request per connection: a single JSON object on one line, at most [`MAX_REQUEST_BYTES`]
//! with its newline. The node answers with newline-delimited JSON lines (its own types, in
//! `swarm-node`). Any local user who can reach the socket can send a request, so the node decodes
//! requests only with [`decode_request`], which bounds the size and checks every name before the
//! node acts on it; what a caller may do is then decided by its uid (`SO_PEERCRED`), not here.

use crate::repo::{Printable, RepoId, RepoType, check_revision};
use serde::{Deserialize, Serialize};
use std::fmt;

/// Longest request, newline included.
pub const MAX_REQUEST_BYTES: usize = 64 * 1024;
/// Most include or exclude patterns in one request.
pub const MAX_PATTERNS: usize = 1024;
/// Longest pattern, endpoint or token.
pub const MAX_FIELD_BYTES: usize = 4096;

/// A request to a node.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case", deny_unknown_fields)]
pub enum ControlRequest {
    /// The node's status (any caller).
    Status,
    /// Download into the node's cache (callers the node allows to).
    Get(GetParams),
    /// Ask the swarm's nodes (and this one) to download a repo now (callers the node allows to
    /// download).
    Preheat(PreheatParams),
}

/// A preheat asked of a node: every node it reaches (or those named) downloads the repo into its
/// own cache, with its own Hub.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PreheatParams {
    /// model, dataset or space.
    pub repo_type: RepoType,
    /// The repo id.
    pub repo_id: RepoId,
    /// Branch, tag, `refs/pr/N`, short or full commit.
    pub revision: String,
    /// Include patterns.
    pub include: Vec<String>,
    /// Exclude patterns.
    pub exclude: Vec<String>,
    /// Peer ids of the nodes to ask; empty for every connected peer.
    pub nodes: Vec<String>,
}

/// Most nodes a preheat may name.
pub const MAX_PREHEAT_NODES: usize = 4096;
/// Most patterns a preheat may carry (each kind); what crosses the wire to peers.
pub const MAX_PREHEAT_PATTERNS: usize = 64;

impl PreheatParams {
    /// Checks every field, as for a download, with the tighter bounds of the peer message.
    pub fn validate(&self) -> Result<(), ControlDecodeError> {
        let invalid = |what: String| Err(ControlDecodeError::Invalid(what));
        check_revision(&self.revision).map_err(|e| ControlDecodeError::Invalid(e.to_string()))?;
        for (name, patterns) in [("include", &self.include), ("exclude", &self.exclude)] {
            if patterns.len() > MAX_PREHEAT_PATTERNS {
                return invalid(format!("more than {MAX_PREHEAT_PATTERNS} {name} patterns"));
            }
            if let Some(p) = patterns.iter().find(|p| p.len() > 512 || p.chars().any(char::is_control)) {
                return invalid(format!("{name} pattern '{}' is too long or has control characters", Printable(p)));
            }
        }
        if self.nodes.len() > MAX_PREHEAT_NODES
            || self.nodes.iter().any(|n| n.len() > 128 || !n.chars().all(|c| c.is_ascii_alphanumeric()))
        {
            return invalid("the nodes named are not peer ids".into());
        }
        Ok(())
    }
}

/// A download asked of a node. It always lands in the node's cache: a caller that wants plain
/// files in a folder of its own copies them from there itself, with its own rights.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GetParams {
    /// model, dataset or space.
    pub repo_type: RepoType,
    /// The repo id.
    pub repo_id: RepoId,
    /// Branch, tag, `refs/pr/N`, short or full commit.
    pub revision: String,
    /// Include patterns.
    pub include: Vec<String>,
    /// Exclude patterns.
    pub exclude: Vec<String>,
    /// Hub URL.
    pub endpoint: String,
    /// The caller's Hub token: used for this download only, never logged or written to disk.
    pub token: Option<String>,
    /// Attempts per request.
    pub retries: u32,
    /// Read timeout, milliseconds.
    pub read_timeout_ms: u64,
    /// Requests in flight.
    pub max_workers: u32,
    /// Total download rate cap (bytes/s); the node's own cap applies when unset.
    pub max_download_rate: Option<u64>,
    /// How long to wait for a first peer, milliseconds (`get --peer-wait`), as an embedded node
    /// would.
    #[serde(default)]
    pub peer_wait_ms: u64,
    /// `include` holds files named on the command line: one that is not in the repo is an
    /// error.
    #[serde(default)]
    pub named: bool,
    /// Fetch again even files the cache has (`--force-download`).
    #[serde(default)]
    pub force: bool,
}

impl fmt::Debug for GetParams {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("GetParams")
            .field("repo_type", &self.repo_type)
            .field("repo_id", &self.repo_id)
            .field("revision", &Printable(&self.revision).to_string())
            .field("include", &self.include)
            .field("exclude", &self.exclude)
            .field("endpoint", &self.endpoint)
            .field("token", &self.token.as_ref().map(|_| "<redacted>"))
            .field("retries", &self.retries)
            .field("read_timeout_ms", &self.read_timeout_ms)
            .field("max_workers", &self.max_workers)
            .field("max_download_rate", &self.max_download_rate)
            .field("peer_wait_ms", &self.peer_wait_ms)
            .field("named", &self.named)
            .field("force", &self.force)
            .finish()
    }
}

/// Why a request was refused before the node looked at it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ControlDecodeError {
    /// Longer than [`MAX_REQUEST_BYTES`].
    #[error("request longer than {MAX_REQUEST_BYTES} bytes")]
    TooLong,
    /// Not a request.
    #[error("malformed request: {0}")]
    Malformed(String),
    /// A field is out of bounds or not a valid name.
    #[error("invalid request: {0}")]
    Invalid(String),
}

/// Decodes and checks one request (the bytes of its line, with or without the newline).
pub fn decode_request(bytes: &[u8]) -> Result<ControlRequest, ControlDecodeError> {
    if bytes.len() > MAX_REQUEST_BYTES {
        return Err(ControlDecodeError::TooLong);
    }
    let req: ControlRequest =
        serde_json::from_slice(bytes).map_err(|e| ControlDecodeError::Malformed(e.to_string()))?;
    match &req {
        ControlRequest::Get(g) => g.validate()?,
        ControlRequest::Preheat(p) => p.validate()?,
        ControlRequest::Status => {}
    }
    Ok(req)
}

/// Encodes a request as one line, newline included.
pub fn encode_request(req: &ControlRequest) -> Vec<u8> {
    let mut out = serde_json::to_vec(req).unwrap_or_default();
    out.push(b'\n');
    out
}

impl GetParams {
    /// Checks every field: names by the Hub's and git's rules, sizes and counts within bounds.
    pub fn validate(&self) -> Result<(), ControlDecodeError> {
        let invalid = |what: String| Err(ControlDecodeError::Invalid(what));
        check_revision(&self.revision).map_err(|e| ControlDecodeError::Invalid(e.to_string()))?;
        for (name, patterns) in [("include", &self.include), ("exclude", &self.exclude)] {
            if patterns.len() > MAX_PATTERNS {
                return invalid(format!("more than {MAX_PATTERNS} {name} patterns"));
            }
            if let Some(p) = patterns.iter().find(|p| p.len() > MAX_FIELD_BYTES || p.chars().any(char::is_control)) {
                return invalid(format!("{name} pattern '{}' is too long or has control characters", Printable(p)));
            }
        }
        let e = &self.endpoint;
        if e.len() > MAX_FIELD_BYTES
            || !(e.starts_with("http://") || e.starts_with("https://"))
            || e.chars().any(|c| c.is_control() || c.is_whitespace())
        {
            return invalid(format!("endpoint '{}' is not an http(s) URL", Printable(e)));
        }
        if let Some(t) = &self.token
            && (t.is_empty() || t.len() > MAX_FIELD_BYTES || !t.bytes().all(|b| b.is_ascii_graphic()))
        {
            return invalid("the token is empty, too long or not printable ASCII".into());
        }
        if !(1..=100).contains(&self.retries) {
            return invalid(format!("retries {} is not within 1..=100", self.retries));
        }
        if !(1..=3_600_000).contains(&self.read_timeout_ms) {
            return invalid(format!("read timeout {} ms is not within 1 ms..1 h", self.read_timeout_ms));
        }
        if !(1..=4096).contains(&self.max_workers) {
            return invalid(format!("max workers {} is not within 1..=4096", self.max_workers));
        }
        if self.max_download_rate == Some(0) {
            return invalid("a download rate of 0".into());
        }
        if self.peer_wait_ms > 600_000 {
            return invalid(format!("a peer wait of {} ms (at most 10 min)", self.peer_wait_ms));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn get() -> GetParams {
        GetParams {
            repo_type: RepoType::Model,
            repo_id: RepoId::parse("org/model").expect("valid"),
            revision: "main".into(),
            include: vec!["*.json".into()],
            exclude: Vec::new(),
            endpoint: "https://huggingface.co".into(),
            token: Some("hf_abc".into()),
            retries: 7,
            read_timeout_ms: 10_000,
            max_workers: 32,
            max_download_rate: None,
            peer_wait_ms: 500,
            named: false,
            force: true,
        }
    }

    #[test]
    fn requests_round_trip() {
        for req in [ControlRequest::Status, ControlRequest::Get(get())] {
            let line = encode_request(&req);
            assert_eq!(line.last(), Some(&b'\n'));
            assert_eq!(decode_request(&line), Ok(req));
        }
        assert_eq!(decode_request(br#"{"op":"status"}"#), Ok(ControlRequest::Status));
    }

    #[test]
    fn bad_requests_are_refused_with_a_reason() {
        let mut long = encode_request(&ControlRequest::Get(get()));
        long.resize(MAX_REQUEST_BYTES + 1, b' ');
        assert_eq!(decode_request(&long), Err(ControlDecodeError::TooLong));
        for raw in [&b"{}"[..], b"not json", br#"{"op":"shutdown"}"#] {
            assert!(matches!(decode_request(raw), Err(ControlDecodeError::Malformed(_))), "{raw:?}");
        }
        let cases: [fn(&mut GetParams); 8] = [
            |g| g.revision = "../../../../etc".into(),
            |g| g.revision = "main\u{1b}[2J".into(),
            |g| g.include = vec!["a\nb".into()],
            |g| g.endpoint = "file:///etc/passwd".into(),
            |g| g.token = Some("hf_\nx".into()),
            |g| g.retries = 0,
            |g| g.max_workers = 0,
            |g| g.max_download_rate = Some(0),
        ];
        for break_it in cases {
            let mut g = get();
            break_it(&mut g);
            let line = encode_request(&ControlRequest::Get(g));
            assert!(matches!(decode_request(&line), Err(ControlDecodeError::Invalid(_))));
        }
        // A repo id is checked as it is decoded.
        let raw = br#"{"op":"get","repo_type":"model","repo_id":"../x","revision":"main","include":[],"exclude":[],"endpoint":"http://h","token":null,"retries":1,"read_timeout_ms":1,"max_workers":1,"max_download_rate":null}"#;
        assert!(matches!(decode_request(raw), Err(ControlDecodeError::Malformed(_))));
    }

    #[test]
    fn the_token_never_shows_in_debug_output() {
        let shown = format!("{:?}", ControlRequest::Get(get()));
        assert!(!shown.contains("hf_abc"), "{shown}");
        assert!(shown.contains("<redacted>"));
    }
}
