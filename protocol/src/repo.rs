//! Repo ids, repo types and repo paths, validated the way the Hub and `huggingface_hub` do.

use serde::{Deserialize, Serialize};
use std::fmt;
use std::str::FromStr;

/// The kind of Hub repo.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum RepoType {
    /// A model (the default).
    #[default]
    Model,
    /// A dataset.
    Dataset,
    /// A space.
    Space,
}

impl RepoType {
    /// All repo types.
    pub const ALL: [RepoType; 3] = [RepoType::Model, RepoType::Dataset, RepoType::Space];

    /// `model`, `dataset` or `space`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Model => "model",
            Self::Dataset => "dataset",
            Self::Space => "space",
        }
    }

    /// The segment in API URLs: `models`, `datasets`, `spaces`.
    pub fn api_segment(self) -> &'static str {
        match self {
            Self::Model => "models",
            Self::Dataset => "datasets",
            Self::Space => "spaces",
        }
    }

    /// Prefix of resolve URLs: empty for models, `datasets/`, `spaces/`.
    pub fn url_prefix(self) -> &'static str {
        match self {
            Self::Model => "",
            Self::Dataset => "datasets/",
            Self::Space => "spaces/",
        }
    }
}

impl FromStr for RepoType {
    type Err = RepoIdError;
    fn from_str(s: &str) -> Result<Self, RepoIdError> {
        match s {
            "model" | "models" => Ok(Self::Model),
            "dataset" | "datasets" => Ok(Self::Dataset),
            "space" | "spaces" => Ok(Self::Space),
            other => Err(RepoIdError(format!("unknown repo type '{other}' (expected model, dataset or space)"))),
        }
    }
}

impl fmt::Display for RepoType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A malformed repo id, repo type or repo path.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct RepoIdError(pub String);

/// A repo id, `name` or `namespace/name`, valid by the Hub's rules.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct RepoId(String);

impl RepoId {
    /// Validates like `huggingface_hub.utils.validate_repo_id`: one or two parts of
    /// `[A-Za-z0-9_.-]`, not starting or ending with `-` or `.`, no `--` or `..`, at most 96 chars.
    pub fn parse(s: &str) -> Result<Self, RepoIdError> {
        let bad = |why: &str| Err(RepoIdError(format!("invalid repo id '{}': {why}", Printable(s))));
        if s.is_empty() {
            return bad("it is empty");
        }
        if s.len() > 96 {
            return bad("longer than 96 characters");
        }
        if s.contains("--") || s.contains("..") {
            return bad("'--' and '..' are not allowed");
        }
        let parts: Vec<&str> = s.split('/').collect();
        if parts.len() > 2 {
            return bad("expected 'name' or 'namespace/name'");
        }
        for p in &parts {
            if p.is_empty() {
                return bad("expected 'name' or 'namespace/name'");
            }
            if !p.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.')) {
                return bad("only letters, digits, '-', '_' and '.' are allowed");
            }
            if p.starts_with(['-', '.']) || p.ends_with(['-', '.']) {
                return bad("a part cannot start or end with '-' or '.'");
            }
        }
        Ok(Self(s.to_owned()))
    }

    /// The id as written.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The cache folder name, e.g. `models--org--name` (`huggingface_hub.repo_folder_name`).
    pub fn folder_name(&self, repo_type: RepoType) -> String {
        let mut out = format!("{}s", repo_type.as_str());
        for part in self.0.split('/') {
            out.push_str("--");
            out.push_str(part);
        }
        out
    }

    /// Inverse of [`RepoId::folder_name`]: `models--org--name` → (model, `org/name`).
    pub fn from_folder_name(name: &str) -> Option<(RepoType, RepoId)> {
        let (ty, rest) = name.split_once("--")?;
        let ty = RepoType::from_str(ty).ok()?;
        let id = RepoId::parse(&rest.replace("--", "/")).ok()?;
        Some((ty, id))
    }
}

impl TryFrom<String> for RepoId {
    type Error = RepoIdError;
    fn try_from(s: String) -> Result<Self, RepoIdError> {
        Self::parse(&s)
    }
}

impl From<RepoId> for String {
    fn from(r: RepoId) -> String {
        r.0
    }
}

impl fmt::Display for RepoId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for RepoId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "RepoId({})", self.0)
    }
}

/// True for a full 40-hex commit id.
pub fn is_commit(rev: &str) -> bool {
    rev.len() == 40 && rev.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

/// Checks a `/`-separated path inside a repo before it is joined onto a local directory:
/// relative, no empty, `.` or `..` segments, no backslashes, no control characters. The Hub is
/// trusted for content, not for our file system or our terminal: a listing must never write
/// outside the snapshot, nor print escape sequences.
pub fn check_repo_path(path: &str) -> Result<(), RepoIdError> {
    let bad = || Err(RepoIdError(format!("unsafe path in repo listing: '{}'", Printable(path))));
    if path.is_empty() || path.starts_with('/') || path.contains('\\') || path.chars().any(char::is_control) {
        return bad();
    }
    if path.split('/').any(|seg| seg.is_empty() || seg == "." || seg == "..") {
        return bad();
    }
    if path.len() >= 2 && path.as_bytes()[1] == b':' {
        return bad();
    }
    Ok(())
}

/// Checks a revision (branch, tag, `refs/pr/N`, short or full commit) by git's ref-name rules
/// (`git check-ref-format`), before it becomes a path under `refs/` or part of a URL. Every
/// revision the Hub accepts passes; `../x`, control characters and such never do.
pub fn check_revision(rev: &str) -> Result<(), RepoIdError> {
    let bad = |why: &str| Err(RepoIdError(format!("invalid revision '{}': {why}", Printable(rev))));
    if rev.is_empty() {
        return bad("it is empty");
    }
    if rev.len() > 255 {
        return bad("longer than 255 characters");
    }
    if rev == "@" || rev.contains("@{") {
        return bad("'@' alone and '@{' are not allowed");
    }
    if rev.chars().any(|c| c.is_control() || matches!(c, ' ' | '~' | '^' | ':' | '?' | '*' | '[' | '\\')) {
        return bad("control characters, spaces and ~ ^ : ? * [ \\ are not allowed");
    }
    if rev.contains("..") {
        return bad("'..' is not allowed");
    }
    if rev.ends_with('.') {
        return bad("it cannot end with '.'");
    }
    for part in rev.split('/') {
        if part.is_empty() {
            return bad("it cannot start or end with '/' or contain '//'");
        }
        if part.starts_with('.') || part.ends_with(".lock") {
            return bad("a part cannot start with '.' or end with '.lock'");
        }
    }
    Ok(())
}

/// Shows a name from the Hub, a peer or a user with every control character escaped (`\u{1b}`
/// for ESC), so that no name can move the cursor, clear the screen or forge a line on a
/// terminal. Use it wherever such a name is printed or logged.
#[derive(Debug, Clone, Copy)]
pub struct Printable<'a>(pub &'a str);

impl fmt::Display for Printable<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for c in self.0.chars() {
            if c.is_control() {
                write!(f, "{}", c.escape_unicode())?;
            } else {
                fmt::Write::write_char(f, c)?;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn valid_ids() {
        for ok in ["gpt2", "org/name", "a.b_c-d/e.f", "Org123/Model-7B.v2"] {
            RepoId::parse(ok).expect(ok);
        }
    }

    #[test]
    fn invalid_ids() {
        for bad in ["", "a/b/c", "/a", "a/", "a--b", "a..b", "-a", "a.", "a b", "a/b?c", &"x".repeat(97)] {
            assert!(RepoId::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn folder_names_round_trip() {
        let id = RepoId::parse("julien-c/EsperBERTo-small").expect("valid");
        assert_eq!(id.folder_name(RepoType::Model), "models--julien-c--EsperBERTo-small");
        assert_eq!(RepoId::from_folder_name("models--julien-c--EsperBERTo-small"), Some((RepoType::Model, id)));
        let gpt2 = RepoId::parse("glue").expect("valid");
        assert_eq!(gpt2.folder_name(RepoType::Dataset), "datasets--glue");
        assert_eq!(RepoId::from_folder_name(".locks"), None);
    }

    #[test]
    fn repo_paths_cannot_escape() {
        check_repo_path("a/b/c.bin").expect("fine");
        for bad in ["", "/etc/passwd", "../x", "a/../b", "a//b", "./a", "a\\b", "C:x", "a/.", "a\u{1b}[2J.bin", "a\nb"]
        {
            assert!(check_repo_path(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn revisions_follow_git_ref_rules() {
        for ok in ["main", "v1.0", "refs/pr/3", "refs/convert/parquet", "a1b2c3d", &"f".repeat(40), "feature/x-y_z"] {
            check_revision(ok).expect(ok);
        }
        for bad in [
            "",
            "../../../../X",
            "a/../b",
            "..",
            "/main",
            "main/",
            "a//b",
            ".hidden",
            "a/.b",
            "x.lock",
            "x.",
            "@",
            "a@{1}",
            "a b",
            "a~1",
            "a^",
            "a:b",
            "a?",
            "a*",
            "a[",
            "a\\b",
            "a\u{1b}[2J",
            "a\nb",
            "a\u{7f}",
        ] {
            assert!(check_revision(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn printable_escapes_control_characters_only() {
        assert_eq!(Printable("a\u{1b}[2Jb\n").to_string(), "a\\u{1b}[2Jb\\u{a}");
        assert_eq!(Printable("org/modèle-7B").to_string(), "org/modèle-7B");
        let e = RepoId::parse("a\u{1b}]0;x").expect_err("invalid");
        assert!(!e.to_string().contains('\u{1b}'), "{e}");
    }
}
