//! Which files of a repo a `get` wants: `--include` / `--exclude` patterns with
//! `huggingface_hub`'s semantics (`filter_repo_objects`): `fnmatch` on the `/`-separated path, where
//! `*` also crosses `/`, and a pattern ending in `/` means everything below that folder.

use glob::{MatchOptions, Pattern};

/// Compiled include/exclude patterns.
#[derive(Debug, Clone, Default)]
pub struct Selection {
    include: Vec<Pattern>,
    exclude: Vec<Pattern>,
}

const FNMATCH: MatchOptions =
    MatchOptions { case_sensitive: true, require_literal_separator: false, require_literal_leading_dot: false };

fn compile(patterns: &[String]) -> Result<Vec<Pattern>, String> {
    patterns
        .iter()
        .map(|p| {
            let p = if p.ends_with('/') { format!("{p}*") } else { p.clone() };
            Pattern::new(&p).map_err(|e| format!("invalid pattern '{p}': {e}"))
        })
        .collect()
}

impl Selection {
    /// Compiles the patterns; an empty include list means "everything".
    pub fn new(include: &[String], exclude: &[String]) -> Result<Self, String> {
        Ok(Self { include: compile(include)?, exclude: compile(exclude)? })
    }

    /// Whether `path` is selected.
    pub fn matches(&self, path: &str) -> bool {
        (self.include.is_empty() || self.include.iter().any(|p| p.matches_with(path, FNMATCH)))
            && !self.exclude.iter().any(|p| p.matches_with(path, FNMATCH))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sel(inc: &[&str], exc: &[&str]) -> Selection {
        let v = |x: &[&str]| x.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        Selection::new(&v(inc), &v(exc)).expect("patterns")
    }

    #[test]
    fn fnmatch_semantics() {
        let s = sel(&["*.json"], &[]);
        assert!(s.matches("config.json"));
        assert!(s.matches("sub/dir/tokenizer.json"), "fnmatch's * crosses /");
        assert!(!s.matches("model.safetensors"));
        let s = sel(&["onnx/"], &["*.md"]);
        assert!(s.matches("onnx/model.onnx"));
        assert!(!s.matches("onnx/README.md"));
        assert!(!s.matches("model.onnx"));
        let s = sel(&[], &["*.bin", "[!c]*.txt"]);
        assert!(s.matches("c.txt") && !s.matches("a.txt") && !s.matches("w.bin") && s.matches("x.json"));
        assert!(sel(&[], &[]).matches("anything/at/all.bin"));
    }
}
