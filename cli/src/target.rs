//! What `get` is asked for, written the ways `huggingface_hub` and `hf download` accept it:
//! `org/name`, `datasets/org/name`, `spaces/org/name`, `hf://datasets/org/name@rev/path`, or a
//! Hub page URL (`https://huggingface.co/org/name/blob/main/config.json`).

use anyhow::{anyhow, bail};
use swarm_node::hub::RepoRef;
use swarm_protocol::repo::{RepoId, RepoType};

/// The repo, revision and files one `get` argument (plus flags) names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    /// The repo.
    pub repo: RepoRef,
    /// `--revision`, `@rev` in the id, or `main`.
    pub revision: String,
    /// A file or folder named inside the id (`hf://org/name/sub/file`), if any.
    pub path: Option<String>,
}

/// Reads `arg` with the `--repo-type` and `--revision` flags (`None` when not given). A type
/// or revision written in the id and a different one in a flag is an error, not a guess.
pub fn parse(arg: &str, type_flag: Option<&str>, revision_flag: Option<&str>) -> anyhow::Result<Target> {
    let flag_type: Option<RepoType> = type_flag.map(str::parse).transpose()?;
    let (rest, url_form) = if let Some(r) = arg.strip_prefix("hf://") {
        (r, Form::Fs)
    } else if let Some(r) = arg.strip_prefix("https://").or_else(|| arg.strip_prefix("http://")) {
        // A Hub page: drop the host.
        let (_, path) = r.split_once('/').ok_or_else(|| anyhow!("'{arg}' names no repo after the host"))?;
        (path, Form::Page)
    } else {
        (arg, Form::Id)
    };
    let rest = rest.trim_end_matches('/');
    let mut segments: Vec<&str> = rest.split('/').collect();
    let id_type = match segments.first().copied() {
        Some("datasets") if segments.len() > 1 => Some(RepoType::Dataset),
        Some("spaces") if segments.len() > 1 => Some(RepoType::Space),
        Some("models") if segments.len() > 1 && url_form != Form::Page => Some(RepoType::Model),
        _ => None,
    };
    if id_type.is_some() {
        segments.remove(0);
    }
    let ty = match (id_type, flag_type) {
        (Some(a), Some(b)) if a != b => bail!("'{arg}' names a {a} but --repo-type says {b}: drop one of them"),
        (a, b) => a.or(b).unwrap_or(RepoType::Model),
    };
    // The id is `org/name` or `name`; in the fs form `@rev` ends it.
    let id_len = match url_form {
        Form::Id => segments.len(),
        _ if segments.first().is_some_and(|s| s.contains('@')) || segments.len() == 1 => 1,
        _ => 2,
    };
    if segments.len() < id_len || id_len == 0 {
        bail!("'{arg}' names no repo");
    }
    let mut id = segments[..id_len].join("/");
    let mut rest: Vec<&str> = segments[id_len..].to_vec();
    let mut id_revision = None;
    if url_form == Form::Fs
        && let Some((name, rev)) = id.clone().split_once('@')
    {
        id = name.to_owned();
        id_revision = Some(decode(rev)?);
    }
    if url_form == Form::Page && !rest.is_empty() {
        // /blob/<rev>/<path>, /resolve/<rev>/<path>, /tree/<rev>[/<path>]
        match rest.as_slice() {
            [kind, rev, path @ ..] if matches!(*kind, "blob" | "resolve" | "tree") => {
                id_revision = Some(decode(rev)?);
                rest = path.to_vec();
            }
            _ => bail!("'{arg}' is not a repo, file or folder page of the Hub"),
        }
    }
    let id = RepoId::parse(&id)?;
    let revision = match (id_revision, revision_flag) {
        (Some(a), Some(b)) if a != b => {
            bail!("'{arg}' names revision '{a}' but --revision says '{b}': drop one of them")
        }
        (a, b) => a.or(b.map(str::to_owned)).unwrap_or_else(|| "main".to_owned()),
    };
    let path = (!rest.is_empty()).then(|| rest.join("/"));
    Ok(Target { repo: RepoRef { id, ty }, revision, path })
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Form {
    /// `org/name`, `datasets/org/name`.
    Id,
    /// `hf://[datasets/]org/name[@rev][/path]`.
    Fs,
    /// `https://host/[datasets/]org/name[/blob/rev/path]`.
    Page,
}

/// `refs%2Fpr%2F1` → `refs/pr/1`, as `huggingface_hub` writes revisions in paths.
fn decode(rev: &str) -> anyhow::Result<String> {
    let s = percent_encoding::percent_decode_str(rev)
        .decode_utf8()
        .map_err(|_| anyhow!("revision '{rev}' is not valid UTF-8 once decoded"))?;
    if s.is_empty() {
        bail!("an empty revision after '@'");
    }
    Ok(s.into_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(arg: &str, ty: Option<&str>, rev: Option<&str>) -> (String, RepoType, String, Option<String>) {
        let t = parse(arg, ty, rev).unwrap_or_else(|e| panic!("{arg}: {e}"));
        (t.repo.id.as_str().to_owned(), t.repo.ty, t.revision, t.path)
    }

    fn err(arg: &str, ty: Option<&str>, rev: Option<&str>) -> String {
        parse(arg, ty, rev).expect_err(arg).to_string()
    }

    #[test]
    fn ids_as_huggingface_hub_writes_them() {
        let main = || "main".to_owned();
        assert_eq!(t("org/m", None, None), ("org/m".into(), RepoType::Model, main(), None));
        assert_eq!(t("gpt2", None, None), ("gpt2".into(), RepoType::Model, main(), None));
        assert_eq!(t("org/ds", Some("dataset"), Some("v1")), ("org/ds".into(), RepoType::Dataset, "v1".into(), None));
        assert_eq!(t("datasets/org/ds", None, None), ("org/ds".into(), RepoType::Dataset, main(), None));
        assert_eq!(t("spaces/org/app", Some("space"), None), ("org/app".into(), RepoType::Space, main(), None));
        assert_eq!(t("models/org/m", None, None), ("org/m".into(), RepoType::Model, main(), None));
        // A model may be called `datasets`: alone it is a name, not a prefix.
        assert_eq!(t("datasets", None, None), ("datasets".into(), RepoType::Model, main(), None));
    }

    #[test]
    fn hf_urls_carry_type_revision_and_path() {
        assert_eq!(
            t("hf://datasets/org/ds@v2/data/train.parquet", None, None),
            ("org/ds".into(), RepoType::Dataset, "v2".into(), Some("data/train.parquet".into()))
        );
        assert_eq!(
            t("hf://org/m@refs%2Fpr%2F3/config.json", None, None),
            ("org/m".into(), RepoType::Model, "refs/pr/3".into(), Some("config.json".into()))
        );
        assert_eq!(
            t("hf://org/m/sub/", None, None),
            ("org/m".into(), RepoType::Model, "main".into(), Some("sub".into()))
        );
        assert_eq!(t("hf://gpt2@main", None, None), ("gpt2".into(), RepoType::Model, "main".into(), None));
        assert_eq!(
            t("https://huggingface.co/datasets/org/ds/blob/v1/a/b.json", None, None),
            ("org/ds".into(), RepoType::Dataset, "v1".into(), Some("a/b.json".into()))
        );
        assert_eq!(
            t("https://huggingface.co/org/m", None, None),
            ("org/m".into(), RepoType::Model, "main".into(), None)
        );
        assert_eq!(
            t("https://huggingface.co/org/m/tree/refs%2Fpr%2F1", None, None),
            ("org/m".into(), RepoType::Model, "refs/pr/1".into(), None)
        );
    }

    #[test]
    fn contradictions_and_junk_are_refused() {
        assert!(err("datasets/org/ds", Some("model"), None).contains("names a dataset but --repo-type says model"));
        assert!(err("hf://org/m@v1", None, Some("v2")).contains("names revision 'v1' but --revision says 'v2'"));
        assert!(err("org/m/extra", None, None).contains("invalid repo id"));
        assert!(err("hf://org/m@", None, None).contains("empty revision"));
        assert!(
            err("https://huggingface.co/org/m/commits/main", None, None).contains("not a repo, file or folder page")
        );
        assert!(err("org/m", Some("modle"), None).contains("modle"));
        // Same value twice is fine.
        assert_eq!(t("hf://org/m@v1", None, Some("v1")).2, "v1");
    }
}
