//! The config file: one layer of settings under the flags and the environment, over the
//! built-in defaults (flag > environment > file > default, as uv does it).
//!
//! The file is TOML. Its keys are the long flag names (`max-workers = 16`, `peer = ["/ip4/…"]`)
//! and a key applies to every command that has that flag. It is the first of:
//! `--config FILE`, `$SWARM_DL_CONFIG`, `$XDG_CONFIG_HOME/swarm-dl/config.toml` (default
//! `~/.config`), `/etc/swarm-dl/config.toml`.
//!
//! How a file value takes its place between the environment and the default:
//! - For a flag that clap reads (with or without an `env = …`), the file value becomes the flag's
//!   default ([`apply`]), so clap's own order does the rest and clap's parser checks the value.
//! - For the three settings whose environment variables `huggingface_hub` defines
//!   (`cache-dir`, `endpoint`, `token`), [`crate::settings`] reads the file after those variables.
//!
//! Every value is checked when the file is loaded: a bad file is one sentence naming the file, the
//! key and what is allowed, before any work.

use anyhow::{Context as _, anyhow, bail};
use std::collections::BTreeMap;
use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

/// Where a setting's value came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    /// A command-line flag.
    Flag,
    /// An environment variable.
    Env(String),
    /// The config file.
    File,
    /// Built in.
    Default,
}

impl std::fmt::Display for Source {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Flag => f.write_str("flag"),
            Self::Env(k) => write!(f, "env {k}"),
            Self::File => f.write_str("file"),
            Self::Default => f.write_str("default"),
        }
    }
}

/// Which layer reads a key's file value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Layer {
    /// The file value becomes the flag's clap default.
    Clap,
    /// [`crate::settings`] reads it after the environment.
    Settings,
}

/// What a key holds, for type checks and for the sentence that says what is allowed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Text,
    Number,
    Bool,
    List,
}

impl Kind {
    fn example(self, key: &str) -> String {
        match self {
            Self::Text => format!("a string, as in {key} = \"…\""),
            Self::Number => format!("a number, as in {key} = 8"),
            Self::Bool => format!("true or false, as in {key} = true"),
            Self::List => format!("a list of strings, as in {key} = [\"…\"]"),
        }
    }
}

/// A check of one value; its error says what is allowed.
type Check = fn(&str) -> Result<(), String>;

/// One key of the config file.
struct Key {
    name: &'static str,
    kind: Kind,
    layer: Layer,
    /// A check beyond clap's parser (rates, schedules), with the allowed values in its error.
    check: Option<Check>,
}

const fn key(name: &'static str, kind: Kind) -> Key {
    Key { name, kind, layer: Layer::Clap, check: None }
}

fn rate(s: &str) -> Result<(), String> {
    swarm_node::throttle::parse_rate(s).map(drop)
}

fn schedule(s: &str) -> Result<(), String> {
    s.parse::<swarm_node::schedule::Schedule>().map(drop)
}

fn listen(s: &str) -> Result<(), String> {
    if s.eq_ignore_ascii_case("off") || s.parse::<std::net::SocketAddr>().is_ok() {
        Ok(())
    } else {
        Err(format!("'{s}' is not an address: write e.g. 127.0.0.1:8008, or off"))
    }
}

fn multiaddr(s: &str) -> Result<(), String> {
    s.trim()
        .parse::<swarm_node::swarm::libp2p::Multiaddr>()
        .map(drop)
        .map_err(|e| format!("'{s}' is not a multiaddr ({e}); write e.g. /ip4/10.0.0.2/tcp/4001"))
}

/// Every key the file may hold: the registry.
const KEYS: &[Key] = &[
    Key { name: "cache-dir", kind: Kind::Text, layer: Layer::Settings, check: None },
    Key { name: "endpoint", kind: Kind::Text, layer: Layer::Settings, check: None },
    Key { name: "token", kind: Kind::Text, layer: Layer::Settings, check: None },
    key("max-workers", Kind::Number),
    key("retries", Kind::Number),
    Key { name: "max-download-rate", kind: Kind::Text, layer: Layer::Clap, check: Some(rate) },
    Key { name: "max-upload-rate", kind: Kind::Text, layer: Layer::Clap, check: Some(rate) },
    Key { name: "listen", kind: Kind::List, layer: Layer::Clap, check: Some(multiaddr) },
    Key { name: "peer", kind: Kind::List, layer: Layer::Clap, check: Some(multiaddr) },
    key("swarm-key", Kind::Text),
    key("no-mdns", Kind::Bool),
    key("ban-time", Kind::Number),
    key("control-group", Kind::Text),
    key("metrics-listen", Kind::Text),
    Key { name: "hub-listen", kind: Kind::Text, layer: Layer::Clap, check: Some(listen) },
    key("hub-listen-public", Kind::Bool),
    Key { name: "rate-schedule", kind: Kind::Text, layer: Layer::Clap, check: Some(schedule) },
    key("accept-preheat", Kind::Bool),
    key("no-swarm", Kind::Bool),
    key("peer-wait", Kind::Number),
    key("page-cache", Kind::Bool),
];

/// A value from the file, as text for clap's parsers.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Raw {
    One(String),
    Many(Vec<String>),
}

/// A loaded, checked config file.
#[derive(Debug, Clone)]
pub struct ConfigFile {
    /// Where it is.
    pub path: PathBuf,
    values: BTreeMap<&'static str, Raw>,
}

impl ConfigFile {
    /// The text value of a key, if the file sets it.
    pub fn get(&self, key: &str) -> Option<&str> {
        match self.values.get(key)? {
            Raw::One(v) => Some(v),
            Raw::Many(_) => None,
        }
    }

    /// Parses and checks `text`, the contents of `path`.
    fn parse(path: &Path, text: &str) -> anyhow::Result<Self> {
        let at = |k: &str| format!("config file '{}', key '{k}'", path.display());
        let table: toml::Table = text.parse().map_err(|e: toml::de::Error| {
            let line = e.span().map(|s| text[..s.start.min(text.len())].lines().count().max(1));
            let line = line.map(|l| format!(", line {l}")).unwrap_or_default();
            anyhow!("config file '{}' is not valid TOML{line}: {}", path.display(), e.message().trim())
        })?;
        let mut values = BTreeMap::new();
        for (k, v) in &table {
            let Some(key) = KEYS.iter().find(|key| key.name == k) else {
                let known: Vec<&str> = KEYS.iter().map(|k| k.name).collect();
                bail!("{}: unknown key (the keys are the long flag names: {})", at(k), known.join(", "));
            };
            let raw = match (key.kind, v) {
                (Kind::Text, toml::Value::String(s)) => Raw::One(s.clone()),
                (Kind::Number, toml::Value::Integer(i)) => Raw::One(i.to_string()),
                (Kind::Number, toml::Value::Float(f)) => Raw::One(f.to_string()),
                (Kind::Bool, toml::Value::Boolean(b)) => Raw::One(b.to_string()),
                (Kind::List, toml::Value::Array(items)) => Raw::Many(
                    items
                        .iter()
                        .map(|i| i.as_str().map(str::to_owned))
                        .collect::<Option<_>>()
                        .ok_or_else(|| anyhow!("{}: must be {}", at(k), key.kind.example(k)))?,
                ),
                // One string where a list is expected is a list of one, as on the command line.
                (Kind::List, toml::Value::String(s)) => Raw::Many(vec![s.clone()]),
                _ => bail!("{}: must be {}", at(k), key.kind.example(k)),
            };
            if let Some(check) = key.check {
                let items = match &raw {
                    Raw::One(v) => std::slice::from_ref(v),
                    Raw::Many(v) => v.as_slice(),
                };
                for item in items {
                    check(item).map_err(|e| anyhow!("{}: {e}", at(k)))?;
                }
            }
            values.insert(key.name, raw);
        }
        Ok(Self { path: path.to_path_buf(), values })
    }
}

/// The file this process loaded, if any ([`load`] sets it once).
static LOADED: OnceLock<Option<ConfigFile>> = OnceLock::new();

/// The loaded config file.
pub fn loaded() -> Option<&'static ConfigFile> {
    LOADED.get().and_then(Option::as_ref)
}

/// A value the file gives to a setting that [`crate::settings`] resolves.
pub fn file_value(key: &str) -> Option<&'static str> {
    debug_assert!(KEYS.iter().any(|k| k.name == key && k.layer == Layer::Settings), "{key} is not a settings key");
    loaded()?.get(key)
}

/// `--config FILE` or `--config=FILE` in the arguments, before any `--`.
fn config_flag(args: &[OsString]) -> Option<PathBuf> {
    let mut it = args.iter().skip(1);
    while let Some(a) = it.next() {
        let s = a.to_string_lossy();
        if s == "--" {
            break;
        }
        if s == "--config" {
            return it.next().map(PathBuf::from);
        }
        if let Some(v) = s.strip_prefix("--config=") {
            return Some(PathBuf::from(v));
        }
    }
    None
}

/// Which file to read: (path, whether it was named, so must exist).
fn locate(args: &[OsString]) -> Option<(PathBuf, bool)> {
    if let Some(p) = config_flag(args) {
        return Some((p, true));
    }
    if let Some(p) = crate::settings::config_env() {
        return Some((p, true));
    }
    let user = crate::settings::xdg_config_home().join("swarm-dl").join("config.toml");
    [user, PathBuf::from("/etc/swarm-dl/config.toml")].into_iter().find(|p| p.is_file()).map(|p| (p, false))
}

/// Finds, reads and checks the config file (once per process); `None` when there is none.
pub fn load(args: &[OsString]) -> anyhow::Result<Option<&'static ConfigFile>> {
    let file = match locate(args) {
        None => None,
        Some((path, _)) if path.as_os_str() == "none" => None,
        Some((path, named)) => match std::fs::read_to_string(&path) {
            Ok(text) => Some(ConfigFile::parse(&path, &text)?),
            Err(e) if !named && e.kind() == std::io::ErrorKind::NotFound => None,
            Err(e) => return Err(e).with_context(|| format!("cannot read config file '{}'", path.display())),
        },
    };
    Ok(LOADED.get_or_init(|| file).as_ref())
}

/// Makes the file's values the defaults of the flags of the same name, in every subcommand,
/// after checking each with the flag's own parser.
pub fn apply(mut cmd: clap::Command, file: Option<&ConfigFile>) -> anyhow::Result<clap::Command> {
    let Some(file) = file else { return Ok(cmd) };
    for (name, raw) in &file.values {
        if KEYS.iter().any(|k| k.name == *name && k.layer == Layer::Settings) {
            continue;
        }
        let names: Vec<String> = cmd.get_subcommands().map(|s| s.get_name().to_owned()).collect();
        for sub in names {
            cmd = apply_to(cmd, &sub, name, raw, &file.path)?;
        }
        // A global switch lives on the top command (clap copies it to the subcommands later).
        let global = cmd.get_arguments().find(|a| a.get_long() == Some(&**name)).map(|a| a.get_id().clone());
        if let (Some(id), Raw::One(v)) = (global, raw) {
            let v = v.clone();
            cmd = cmd.mut_arg(id, |a| a.default_value(v));
        }
    }
    Ok(cmd)
}

fn apply_to(cmd: clap::Command, sub: &str, key: &str, raw: &Raw, path: &Path) -> anyhow::Result<clap::Command> {
    let Some(sc) = cmd.find_subcommand(sub) else { return Ok(cmd) };
    let Some(arg) = sc.get_arguments().find(|a| a.get_long() == Some(key)) else { return Ok(cmd) };
    let values: Vec<String> = match raw {
        Raw::One(v) => vec![v.clone()],
        Raw::Many(v) => v.clone(),
    };
    // The flag's own parser checks each value, as if it had been typed (a switch's value is a
    // TOML boolean, which the type check already saw).
    if arg.get_action().takes_values() {
        for v in &values {
            let probe = clap::Command::new("swarm-dl")
                .no_binary_name(true)
                .arg(arg.clone().env(clap::builder::Resettable::Reset));
            probe.try_get_matches_from([OsString::from(format!("--{key}={v}"))]).map_err(|e| {
                let msg = e.to_string();
                let first = msg.lines().next().unwrap_or_default().trim_start_matches("error: ");
                anyhow!("config file '{}', key '{key}': {first}", path.display())
            })?;
        }
    }
    let id = arg.get_id().clone();
    Ok(cmd.mut_subcommand(sub, |s| {
        s.mut_arg(id, |a| {
            let values: Vec<clap::builder::OsStr> =
                values.iter().map(|v| clap::builder::OsStr::from(clap::builder::Str::from(v.clone()))).collect();
            a.default_values(values)
        })
    }))
}

/// One line of `config show`.
#[derive(Debug, serde::Serialize)]
pub struct Shown {
    /// The key (the long flag name).
    pub key: &'static str,
    /// Its effective value (`null` when unset; the token is never shown).
    pub value: Option<String>,
    /// Where it came from.
    pub source: String,
}

/// Every key's effective value and source, for the command line `line` (e.g. `["get",
/// "org/m", "--max-workers", "4"]`); with no line, for `join` and then `get`'s own keys.
pub fn show(line: &[String]) -> anyhow::Result<Vec<Shown>> {
    let cmd = apply(<crate::args::Cli as clap::CommandFactory>::command(), loaded())?;
    let lines: Vec<Vec<String>> = if line.is_empty() {
        vec![vec!["join".into()], vec!["get".into(), "org/name".into()]]
    } else {
        vec![line.to_vec()]
    };
    let mut out: Vec<Shown> = Vec::new();
    for l in lines {
        let argv = std::iter::once("swarm-dl".to_owned()).chain(l.iter().cloned());
        let m = cmd.clone().try_get_matches_from(argv).map_err(|e| {
            let msg = e.to_string();
            anyhow!("{}", msg.lines().next().unwrap_or_default().trim_start_matches("error: "))
        })?;
        let Some((sub, m)) = m.subcommand() else { bail!("name a command to show its settings, e.g. get org/name") };
        let sc = cmd.find_subcommand(sub).context("subcommand")?;
        for key in KEYS {
            if out.iter().any(|s| s.key == key.name) {
                continue;
            }
            let named = |a: &&clap::Arg| a.get_long() == Some(key.name);
            let Some(arg) = sc.get_arguments().find(named).or_else(|| cmd.get_arguments().find(named)) else {
                continue;
            };
            let id = arg.get_id().as_str();
            let raw = m.get_raw(id).map(|v| v.map(|s| s.to_string_lossy().into_owned()).collect::<Vec<_>>().join(","));
            let from_flag = m.value_source(id) == Some(clap::parser::ValueSource::CommandLine);
            let (value, source) = match key.layer {
                Layer::Settings => {
                    let flag = if from_flag { raw } else { None };
                    crate::settings::shown(key.name, flag)
                }
                Layer::Clap => {
                    let source = match m.value_source(id) {
                        Some(clap::parser::ValueSource::CommandLine) => Source::Flag,
                        Some(clap::parser::ValueSource::EnvVariable) => {
                            Source::Env(arg.get_env().map(|e| e.to_string_lossy().into_owned()).unwrap_or_default())
                        }
                        _ if loaded().is_some_and(|f| f.values.contains_key(key.name)) => Source::File,
                        _ => Source::Default,
                    };
                    (raw.filter(|r| !r.is_empty()), source)
                }
            };
            out.push(Shown { key: key.name, value, source: source.to_string() });
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> anyhow::Result<ConfigFile> {
        ConfigFile::parse(Path::new("/etc/swarm-dl/config.toml"), text)
    }

    fn err(text: &str) -> String {
        format!("{:#}", parse(text).expect_err("refused"))
    }

    #[test]
    fn every_key_is_a_long_flag_of_some_command() {
        let cmd = <crate::args::Cli as clap::CommandFactory>::command();
        for key in KEYS {
            assert!(
                cmd.get_arguments().any(|a| a.get_long() == Some(key.name))
                    || cmd.get_subcommands().any(|s| s.get_arguments().any(|a| a.get_long() == Some(key.name))),
                "config key {} is no command's flag",
                key.name
            );
        }
    }

    #[test]
    fn a_bad_file_is_one_sentence_naming_the_file_the_key_and_what_is_allowed() {
        assert_eq!(
            err("max-worker = 3"),
            "config file '/etc/swarm-dl/config.toml', key 'max-worker': unknown key (the keys are the long flag names: cache-dir, endpoint, token, max-workers, retries, max-download-rate, max-upload-rate, listen, peer, swarm-key, no-mdns, ban-time, control-group, metrics-listen, hub-listen, hub-listen-public, rate-schedule, accept-preheat, no-swarm, peer-wait, page-cache)"
        );
        assert_eq!(
            err("max-workers = \"many\""),
            "config file '/etc/swarm-dl/config.toml', key 'max-workers': must be a number, as in max-workers = 8"
        );
        assert_eq!(
            err("max-download-rate = \"fast\""),
            "config file '/etc/swarm-dl/config.toml', key 'max-download-rate': unknown unit 'fast' in rate 'fast' (use K, M, G, Ki, Mi or Gi)"
        );
        assert!(err("rate-schedule = \"someday 5M\"").contains("key 'rate-schedule': rule 'someday 5M'"));
        assert!(err("peer = [\"10.0.0.2\"]").contains("key 'peer': '10.0.0.2' is not a multiaddr"));
        assert!(err("no-mdns = 1").contains("must be true or false"));
        assert!(err("a = ").starts_with("config file '/etc/swarm-dl/config.toml' is not valid TOML, line 1: "));
        let f = parse("max-workers = 0").expect("types are fine");
        let e = apply(<crate::args::Cli as clap::CommandFactory>::command(), Some(&f)).expect_err("range");
        assert_eq!(
            e.to_string(),
            "config file '/etc/swarm-dl/config.toml', key 'max-workers': invalid value '0' for '--max-workers <MAX_WORKERS>': 0 is not in 1..=4096"
        );
    }

    #[test]
    fn file_values_sit_between_the_environment_and_the_defaults() {
        let f = parse("max-workers = 5\nretries = 2\nno-mdns = true\npeer = \"/ip4/10.0.0.2/tcp/4001\"").expect("file");
        let cmd = apply(<crate::args::Cli as clap::CommandFactory>::command(), Some(&f)).expect("apply");
        let get = |argv: &[&str]| {
            let m = cmd.clone().try_get_matches_from(argv).expect("parse");
            let (_, m) = m.subcommand().expect("sub");
            (
                *m.get_one::<u32>("max_workers").expect("workers"),
                *m.get_one::<u32>("retries").expect("retries"),
                m.get_flag("no_mdns"),
                m.get_many::<String>("peer").map(|p| p.cloned().collect::<Vec<_>>()).unwrap_or_default(),
            )
        };
        assert_eq!(get(&["swarm-dl", "get", "o/m"]), (5, 2, true, vec!["/ip4/10.0.0.2/tcp/4001".to_owned()]));
        assert_eq!(get(&["swarm-dl", "get", "o/m", "--max-workers", "9"]).0, 9, "a flag beats the file");
        let join = cmd.clone().try_get_matches_from(["swarm-dl", "join"]).expect("join");
        assert_eq!(join.subcommand().expect("sub").1.get_one::<u32>("retries"), Some(&2), "join takes it too");
    }

    #[test]
    fn the_config_flag_is_found_before_any_double_dash() {
        let a = |v: &[&str]| config_flag(&v.iter().map(OsString::from).collect::<Vec<_>>());
        assert_eq!(a(&["swarm-dl", "get", "--config", "/x.toml", "o/m"]), Some(PathBuf::from("/x.toml")));
        assert_eq!(a(&["swarm-dl", "--config=/y.toml", "join"]), Some(PathBuf::from("/y.toml")));
        assert_eq!(a(&["swarm-dl", "get", "--", "--config", "/x.toml"]), None);
    }
}
