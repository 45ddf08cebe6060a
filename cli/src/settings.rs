//! Resolves raw arguments into settings, once: flag > environment > config file > default, with
//! the environment variables `huggingface_hub` defines meaning what they mean there. This is the
//! only place that reads the environment: `swarm-node` receives typed values. Flags that clap
//! reads get their file values as clap defaults ([`crate::config::apply`]); the settings below
//! read the file themselves, after the environment.

use crate::config::{Source, file_value};
use anyhow::{Context as _, bail};
use std::env;
use std::path::PathBuf;
use std::time::Duration;
use swarm_node::hub::{HubConfig, RetryPolicy, Token};

/// Every environment variable swarm-dl reads, and what it means: the one registry. Variables
/// that clap reads for a flag (`env = …` in `args.rs`) are here too; a test checks it.
pub const ENV_VARS: &[(&str, &str)] = &[
    ("HF_HOME", "Hugging Face home; the cache is $HF_HOME/hub, the token $HF_HOME/token"),
    ("HF_HUB_CACHE", "the Hub cache directory (--cache-dir)"),
    ("HUGGINGFACE_HUB_CACHE", "older name of HF_HUB_CACHE"),
    ("XDG_CACHE_HOME", "HF_HOME defaults to $XDG_CACHE_HOME/huggingface"),
    ("HOME", "HF_HOME defaults to ~/.cache/huggingface"),
    ("HF_TOKEN", "Hub token (--token)"),
    ("HUGGING_FACE_HUB_TOKEN", "older name of HF_TOKEN"),
    ("HF_TOKEN_PATH", "file holding the token (default $HF_HOME/token)"),
    ("HF_ENDPOINT", "Hub URL (--endpoint)"),
    ("HF_HUB_OFFLINE", "answer from the cache (and peers) only (--offline)"),
    ("TRANSFORMERS_OFFLINE", "same as HF_HUB_OFFLINE"),
    ("HF_HUB_DOWNLOAD_TIMEOUT", "seconds without a byte before a connection counts as stalled"),
    ("HF_HUB_DISABLE_SYMLINKS", "copy blobs into snapshots instead of linking them"),
    ("SWARM_DL_LOG", "tracing filter for logs on stderr (default warn)"),
    ("SWARM_DL_PEERS", "peers to dial, comma-separated (--peer)"),
    ("SWARM_DL_SWARM_KEY", "private swarm key file (--swarm-key)"),
    ("SWARM_DL_MAX_UPLOAD_RATE", "cap on bytes served to peers (--max-upload-rate)"),
    ("SWARM_DL_MAX_DOWNLOAD_RATE", "cap on bytes pulled (--max-download-rate)"),
    ("SWARM_DL_MAX_WORKERS", "requests in flight (--max-workers)"),
    ("SWARM_DL_RETRIES", "attempts per request (--retries)"),
    ("SWARM_DL_NO_SWARM", "download from the Hub alone (--no-swarm)"),
    ("SWARM_DL_CONTROL_GROUP", "group whose members may download through a join node (--control-group)"),
    ("SWARM_DL_HUB_LISTEN", "where join serves its Hub endpoint, or off (--hub-listen)"),
    ("SWARM_DL_RATE_SCHEDULE", "caps by local day and time for join (--rate-schedule)"),
    ("SWARM_DL_PAGE_CACHE", "file data through the page cache, not direct I/O (--page-cache)"),
    ("SWARM_DL_CONFIG", "the config file to read (--config; `none` reads none)"),
    ("XDG_CONFIG_HOME", "the user's config file is $XDG_CONFIG_HOME/swarm-dl/config.toml (default ~/.config)"),
];

fn var(k: &str) -> Option<String> {
    debug_assert!(ENV_VARS.iter().any(|(name, _)| *name == k), "{k} is missing from ENV_VARS");
    env::var(k).ok().filter(|v| !v.trim().is_empty())
}

/// `huggingface_hub`'s boolean rule for environment variables (1/ON/YES/TRUE, any case).
fn var_true(k: &str) -> bool {
    var(k).is_some_and(|v| matches!(v.trim().to_ascii_uppercase().as_str(), "1" | "ON" | "YES" | "TRUE"))
}

/// `HF_HUB_OFFLINE` (or `TRANSFORMERS_OFFLINE`): no network.
pub fn offline() -> bool {
    var_true("HF_HUB_OFFLINE") || var_true("TRANSFORMERS_OFFLINE")
}

/// `HF_HUB_DISABLE_SYMLINKS`: snapshots hold copies.
pub fn copies() -> bool {
    var_true("HF_HUB_DISABLE_SYMLINKS")
}

/// How to reach the Hub: resolved once per command, for this process's client or for the
/// `join` node it asks to download.
#[derive(Debug, Clone)]
pub struct HubSettings {
    /// `--endpoint`, `HF_ENDPOINT`, or the Hub.
    pub endpoint: String,
    /// The token (never shown).
    pub token: Option<Token>,
    /// `HF_HUB_DOWNLOAD_TIMEOUT`.
    pub read_timeout: Duration,
    /// Attempts per request.
    pub retries: u32,
}

impl HubSettings {
    /// Resolves the flags against the environment.
    pub fn resolve(endpoint_flag: Option<String>, token_flag: Option<String>, retries: u32) -> anyhow::Result<Self> {
        Ok(Self { endpoint: endpoint(endpoint_flag), token: token(token_flag), read_timeout: read_timeout()?, retries })
    }

    /// The Hub client's configuration.
    pub fn config(&self) -> HubConfig {
        HubConfig {
            endpoint: self.endpoint.clone(),
            token: self.token.clone(),
            read_timeout: self.read_timeout,
            retry: RetryPolicy { max_attempts: self.retries, ..RetryPolicy::default() },
            ..HubConfig::default()
        }
    }
}

fn home() -> PathBuf {
    var("HOME").map(PathBuf::from).unwrap_or_else(|| PathBuf::from("."))
}

/// `$SWARM_DL_CONFIG`: the config file named in the environment.
pub fn config_env() -> Option<PathBuf> {
    var("SWARM_DL_CONFIG").map(PathBuf::from)
}

/// `$XDG_CONFIG_HOME`, else `~/.config`.
pub fn xdg_config_home() -> PathBuf {
    var("XDG_CONFIG_HOME").map(PathBuf::from).unwrap_or_else(|| home().join(".config"))
}

/// `HF_HOME`, else `$XDG_CACHE_HOME/huggingface`, else `~/.cache/huggingface`.
pub fn hf_home() -> PathBuf {
    var("HF_HOME")
        .map(PathBuf::from)
        .or_else(|| var("XDG_CACHE_HOME").map(|x| PathBuf::from(x).join("huggingface")))
        .unwrap_or_else(|| home().join(".cache").join("huggingface"))
}

/// The first of `candidates` that is set, with its source.
fn first<T>(candidates: impl IntoIterator<Item = (Option<T>, Source)>) -> Option<(T, Source)> {
    candidates.into_iter().find_map(|(v, s)| v.map(|v| (v, s)))
}

fn env(k: &'static str) -> (Option<String>, Source) {
    (var(k), Source::Env(k.into()))
}

/// `--cache-dir`, else `HF_HUB_CACHE`, else `HUGGINGFACE_HUB_CACHE`, else `$HF_HOME/hub` when
/// `HF_HOME` is set, else the config file's `cache-dir`, else `$HF_HOME/hub` by its defaults.
pub fn cache_dir_from(flag: Option<PathBuf>) -> (PathBuf, Source) {
    let path = |(v, s): (Option<String>, Source)| (v.map(PathBuf::from), s);
    first([
        (flag, Source::Flag),
        path(env("HF_HUB_CACHE")),
        path(env("HUGGINGFACE_HUB_CACHE")),
        (var("HF_HOME").map(|h| PathBuf::from(h).join("hub")), Source::Env("HF_HOME".into())),
        (file_value("cache-dir").map(PathBuf::from), Source::File),
    ])
    .unwrap_or_else(|| (hf_home().join("hub"), Source::Default))
}

/// The cache directory ([`cache_dir_from`]).
pub fn cache_dir(flag: Option<PathBuf>) -> PathBuf {
    cache_dir_from(flag).0
}

/// `--token`, else `HF_TOKEN`, else `HUGGING_FACE_HUB_TOKEN`, else the file `HF_TOKEN_PATH`
/// names, else the config file's `token`, else the token file `huggingface_hub` logs in to
/// (`$HF_HOME/token`).
pub fn token_from(flag: Option<String>) -> (Option<Token>, Source) {
    let read = |p: PathBuf| std::fs::read_to_string(p).ok();
    // As in huggingface_hub, HF_TOKEN_PATH replaces the default token file.
    let named_path = var("HF_TOKEN_PATH").map(PathBuf::from);
    let default_file = if named_path.is_none() { read(hf_home().join("token")) } else { None };
    let found = first([
        (flag, Source::Flag),
        env("HF_TOKEN"),
        env("HUGGING_FACE_HUB_TOKEN"),
        (named_path.and_then(read), Source::Env("HF_TOKEN_PATH".into())),
        (file_value("token").map(str::to_owned), Source::File),
        (default_file, Source::Default),
    ]);
    match found {
        Some((t, s)) => (Token::new(&t), s),
        None => (None, Source::Default),
    }
}

/// The token ([`token_from`]).
pub fn token(flag: Option<String>) -> Option<Token> {
    token_from(flag).0
}

/// `--endpoint`, else `HF_ENDPOINT`, else the config file's `endpoint`, else the Hub.
pub fn endpoint_from(flag: Option<String>) -> (String, Source) {
    let (v, s) =
        first([(flag, Source::Flag), env("HF_ENDPOINT"), (file_value("endpoint").map(str::to_owned), Source::File)])
            .unwrap_or_else(|| ("https://huggingface.co".into(), Source::Default));
    (v.trim_end_matches('/').to_owned(), s)
}

/// The Hub endpoint ([`endpoint_from`]).
pub fn endpoint(flag: Option<String>) -> String {
    endpoint_from(flag).0
}

/// A setting this module resolves, for `config show` (the token is never shown).
pub fn shown(key: &str, flag: Option<String>) -> (Option<String>, Source) {
    match key {
        "cache-dir" => {
            let (v, s) = cache_dir_from(flag.map(PathBuf::from));
            (Some(v.display().to_string()), s)
        }
        "endpoint" => {
            let (v, s) = endpoint_from(flag);
            (Some(v), s)
        }
        "token" => {
            let (t, s) = token_from(flag);
            (t.map(|_| "(set, not shown)".to_owned()), s)
        }
        _ => (None, Source::Default),
    }
}

/// `HF_HUB_DOWNLOAD_TIMEOUT` (seconds, default 10): the longest silence on a connection.
pub fn read_timeout() -> anyhow::Result<Duration> {
    match var("HF_HUB_DOWNLOAD_TIMEOUT") {
        None => Ok(Duration::from_secs(10)),
        Some(v) => {
            let s: f64 = v
                .trim()
                .parse()
                .with_context(|| format!("HF_HUB_DOWNLOAD_TIMEOUT='{v}' is not a number of seconds"))?;
            if !(s > 0.0 && s.is_finite()) {
                bail!("HF_HUB_DOWNLOAD_TIMEOUT='{v}' must be a positive number of seconds");
            }
            Ok(Duration::from_secs_f64(s))
        }
    }
}

/// Parses a rate: `500K`, `50M`, `1G` (powers of 1000), `64Mi` (powers of 1024), a plain number
/// of bytes; an optional trailing `B` or `/s` is accepted.
pub fn parse_rate(s: &str) -> anyhow::Result<u64> {
    swarm_node::throttle::parse_rate(s).map_err(anyhow::Error::msg)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_variable_a_flag_reads_is_in_the_registry() {
        let args = include_str!("args.rs");
        for part in args.split("env = \"").skip(1) {
            let name = part.split('"').next().unwrap_or_default();
            assert!(ENV_VARS.iter().any(|(k, _)| *k == name), "{name} is read by clap but missing from ENV_VARS");
        }
    }

    #[test]
    fn rates() {
        assert_eq!(parse_rate("50M").ok(), Some(50_000_000));
        assert_eq!(parse_rate("64Mi").ok(), Some(64 << 20));
        assert_eq!(parse_rate("1.5G/s").ok(), Some(1_500_000_000));
        assert_eq!(parse_rate("8MB").ok(), Some(8_000_000));
        assert_eq!(parse_rate("1234").ok(), Some(1234));
        assert!(parse_rate("fast").is_err());
        assert!(parse_rate("0").is_err());
        assert!(parse_rate("5X").is_err());
    }
}
