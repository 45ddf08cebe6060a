//! Resolves raw arguments into settings, once: flag > environment > default, with the
//! environment variables `huggingface_hub` defines meaning what they mean there
//! (`shared/reference/hf-hub-protocol.md` §2.1, §3).

use anyhow::{Context as _, bail};
use std::env;
use std::path::PathBuf;
use std::time::Duration;
use swarm_node::hub::Token;

fn var(k: &str) -> Option<String> {
    env::var(k).ok().filter(|v| !v.trim().is_empty())
}

fn home() -> PathBuf {
    var("HOME").map(PathBuf::from).unwrap_or_else(|| PathBuf::from("."))
}

/// `HF_HOME`, else `$XDG_CACHE_HOME/huggingface`, else `~/.cache/huggingface`.
pub fn hf_home() -> PathBuf {
    var("HF_HOME")
        .map(PathBuf::from)
        .or_else(|| var("XDG_CACHE_HOME").map(|x| PathBuf::from(x).join("huggingface")))
        .unwrap_or_else(|| home().join(".cache").join("huggingface"))
}

/// `--cache-dir`, else `HF_HUB_CACHE`, else `HUGGINGFACE_HUB_CACHE`, else `$HF_HOME/hub`.
pub fn cache_dir(flag: Option<PathBuf>) -> PathBuf {
    flag.or_else(|| var("HF_HUB_CACHE").map(PathBuf::from))
        .or_else(|| var("HUGGINGFACE_HUB_CACHE").map(PathBuf::from))
        .unwrap_or_else(|| hf_home().join("hub"))
}

/// `--token`, else `HF_TOKEN`, else `HUGGING_FACE_HUB_TOKEN`, else the token file
/// (`HF_TOKEN_PATH`, default `$HF_HOME/token`).
pub fn token(flag: Option<String>) -> Option<Token> {
    if let Some(t) = flag.or_else(|| var("HF_TOKEN")).or_else(|| var("HUGGING_FACE_HUB_TOKEN")) {
        return Token::new(&t);
    }
    let path = var("HF_TOKEN_PATH").map(PathBuf::from).unwrap_or_else(|| hf_home().join("token"));
    std::fs::read_to_string(path).ok().and_then(|t| Token::new(&t))
}

/// `--endpoint`, else `HF_ENDPOINT`, else the Hub.
pub fn endpoint(flag: Option<String>) -> String {
    flag.or_else(|| var("HF_ENDPOINT"))
        .unwrap_or_else(|| "https://huggingface.co".into())
        .trim_end_matches('/')
        .to_owned()
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
    let t = s.trim().trim_end_matches("/s").trim_end_matches(['B', 'b']);
    let (num, mult) = match t.char_indices().find(|(_, c)| c.is_ascii_alphabetic()) {
        None => (t, 1u64),
        Some((i, _)) => {
            let mult = match &t[i..] {
                "k" | "K" => 1_000,
                "M" | "m" => 1_000_000,
                "G" | "g" => 1_000_000_000,
                "Ki" | "ki" => 1 << 10,
                "Mi" | "mi" => 1 << 20,
                "Gi" | "gi" => 1 << 30,
                other => bail!("unknown unit '{other}' in rate '{s}' (use K, M, G, Ki, Mi or Gi)"),
            };
            (&t[..i], mult)
        }
    };
    let n: f64 = num.trim().parse().with_context(|| format!("'{s}' is not a rate (e.g. 50M)"))?;
    let bytes = (n * mult as f64).round();
    if !(bytes >= 1.0 && bytes < u64::MAX as f64) {
        bail!("rate '{s}' must be at least 1 byte per second");
    }
    Ok(bytes as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

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
