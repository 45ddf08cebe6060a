//! The command line, as clap sees it. Raw values only: [`crate::settings`] resolves them
//! (flag > environment > default) into the typed settings `swarm-node` receives.

use clap::{Args, Parser, Subcommand};
use std::net::SocketAddr;
use std::path::PathBuf;

/// Peer-assisted downloader for the Hugging Face Hub.
#[derive(Debug, Parser)]
#[command(name = "swarm-dl", version, about, propagate_version = true)]
pub struct Cli {
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
    /// Config file (TOML; keys are long flag names) [default: $XDG_CONFIG_HOME/swarm-dl/config.toml,
    /// else /etc/swarm-dl/config.toml]; `none` reads none. Flags and environment variables beat it.
    #[arg(long, global = true, value_name = "FILE", env = "SWARM_DL_CONFIG", hide_env_values = true)]
    pub config: Option<PathBuf>,
    /// Read and write file data through the page cache. On Linux it goes around it by default
    /// (O_DIRECT): far less CPU per byte on VMs, and no eviction of other programs' cached
    /// files, but a file just downloaded is not left in memory for its first load.
    #[arg(long, global = true, env = "SWARM_DL_PAGE_CACHE", hide_env_values = true,
          value_parser = clap::builder::FalseyValueParser::new())]
    pub page_cache: bool,
}

/// Subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Download a repo (or part of it) into the Hugging Face cache or a local dir.
    Get(GetArgs),
    /// Inspect and tidy the Hugging Face cache.
    #[command(subcommand)]
    Cache(CacheCommand),
    /// Serve a folder or a HF cache with the Hub's HTTP API.
    #[command(subcommand)]
    Hub(HubCommand),
    /// Run a swarm node: serve this cache's files to peers and run `get`s for this machine.
    Join(JoinArgs),
    /// Show the node serving a cache dir: peers, files, transfers.
    Status(StatusArgs),
    /// Ask every node of the swarm (or those named) to download a repo now, through this
    /// cache's node: warm a cluster before the job that needs the model starts.
    Preheat(PreheatArgs),
    /// Make a private swarm key (give the same file to every node with --swarm-key).
    Keygen(KeygenArgs),
    /// See the swarm work on this machine: a Hub stand-in, three nodes, their downloads.
    Demo(DemoArgs),
    /// The config file and the effective settings.
    #[command(subcommand)]
    Config(ConfigCommand),
}

/// `swarm-dl config …`.
#[derive(Debug, Subcommand)]
pub enum ConfigCommand {
    /// Print each setting's effective value and where it came from (flag, env, file, default);
    /// the token is never shown.
    Show(ConfigShowArgs),
}

/// `swarm-dl config show`.
#[derive(Debug, Args)]
pub struct ConfigShowArgs {
    /// Print JSON.
    #[arg(long)]
    pub json: bool,
    /// A command line whose settings to show, e.g. `get org/model --max-workers 4` [default:
    /// those of `join`, then the keys only `get` has].
    #[arg(trailing_var_arg = true, allow_hyphen_values = true, value_name = "COMMAND")]
    pub command: Vec<String>,
}

impl Command {
    /// Whether the command was asked for JSON output (errors are then JSON on stdout too).
    pub fn json(&self) -> bool {
        match self {
            Self::Get(a) => a.json,
            Self::Cache(CacheCommand::Ls(d)) => d.json,
            Self::Cache(CacheCommand::Verify { dir, .. } | CacheCommand::Clean { dir, .. }) => dir.json,
            Self::Hub(HubCommand::Serve(a)) => a.json,
            Self::Join(a) => a.json,
            Self::Status(a) => a.json,
            Self::Preheat(a) => a.json,
            Self::Config(ConfigCommand::Show(a)) => a.json,
            Self::Keygen(_) | Self::Demo(_) => false,
        }
    }
}

/// How a node joins the swarm (`join`, and the node `get` runs when no `join` node is running).
#[derive(Debug, Args)]
pub struct SwarmArgs {
    /// Address to listen on for peers, repeatable [default: /ip4/0.0.0.0/tcp/0].
    #[arg(long, value_name = "MULTIADDR")]
    pub listen: Vec<String>,
    /// A peer to dial, with or without /p2p/<id> (repeatable; the env var is comma-separated).
    #[arg(long, value_name = "MULTIADDR", env = "SWARM_DL_PEERS", hide_env_values = true, value_delimiter = ',')]
    pub peer: Vec<String>,
    /// Private swarm key file (`swarm-dl keygen`): only nodes with the same key exchange bytes.
    #[arg(long, value_name = "FILE", env = "SWARM_DL_SWARM_KEY", hide_env_values = true)]
    pub swarm_key: Option<PathBuf>,
    /// No LAN discovery by mDNS (peers come from --peer and the DHT only).
    #[arg(long)]
    pub no_mdns: bool,
    /// Cap the rate served to peers, bytes per second (same units as --max-download-rate).
    #[arg(long, env = "SWARM_DL_MAX_UPLOAD_RATE", hide_env_values = true, value_name = "RATE")]
    pub max_upload_rate: Option<String>,
    /// Seconds a peer caught sending false data stays banned.
    #[arg(long, default_value_t = 3600, value_name = "SECS")]
    pub ban_time: u64,
}

/// `swarm-dl join`.
#[derive(Debug, Args)]
pub struct JoinArgs {
    /// Hub cache directory to serve and download into [env: HF_HUB_CACHE, else $HF_HOME/hub].
    #[arg(long)]
    pub cache_dir: Option<PathBuf>,
    #[command(flatten)]
    pub swarm: SwarmArgs,
    /// Let members of this group (name or gid) run downloads through this node; other users
    /// may only read its status. Root and the node's own user may always do both.
    #[arg(long, value_name = "GROUP", env = "SWARM_DL_CONTROL_GROUP", hide_env_values = true)]
    pub control_group: Option<String>,
    /// The Hub that downloads asked by --control-group members use [env: HF_ENDPOINT, else
    /// https://huggingface.co].
    #[arg(long)]
    pub endpoint: Option<String>,
    /// Cap what all the downloads this node runs pull together, Hub and peers (same units as get).
    #[arg(long, env = "SWARM_DL_MAX_DOWNLOAD_RATE", hide_env_values = true, value_name = "RATE")]
    pub max_download_rate: Option<String>,
    /// Serve Prometheus metrics at http://ADDR/metrics (off unless given; `status` shows where).
    #[arg(long, value_name = "ADDR")]
    pub metrics_listen: Option<SocketAddr>,
    /// Serve a Hub-compatible endpoint here, so that unmodified clients download through the
    /// swarm with HF_ENDPOINT=http://ADDR; `off` turns it off.
    #[arg(long, value_name = "ADDR|off", default_value = swarm_node::endpoint::DEFAULT_LISTEN, env = "SWARM_DL_HUB_LISTEN", hide_env_values = true)]
    pub hub_listen: String,
    /// Attempts per Hub request in the downloads the Hub endpoint runs.
    #[arg(long, env = "SWARM_DL_RETRIES", hide_env_values = true, default_value_t = swarm_node::hub::RetryPolicy::default().max_attempts,
          value_parser = clap::value_parser!(u32).range(1..))]
    pub retries: u32,
    /// Caps by local day and time, e.g. "mon-fri 08:00-19:00 50M; sat,sun 20M/5M; * 0": the
    /// first matching rule sets the download cap (and the upload cap, after a `/`; `0` is no
    /// cap); outside every rule --max-download-rate and --max-upload-rate apply.
    #[arg(long, value_name = "SPEC", env = "SWARM_DL_RATE_SCHEDULE", hide_env_values = true)]
    pub rate_schedule: Option<String>,
    /// Accept preheats from peers of an open swarm (members of a private swarm may always
    /// ask): any node that reaches this one can then make it download public repos.
    #[arg(long)]
    pub accept_preheat: bool,
    /// Let --hub-listen use an address other than loopback: every host that reaches it can
    /// then make this node download public repos (the Hub still checks each caller's token).
    #[arg(long)]
    pub hub_listen_public: bool,
    /// Print the node's addresses as one JSON line when ready.
    #[arg(long)]
    pub json: bool,
}

/// Which revision and files: the selection flags of `get` and `preheat`.
#[derive(Debug, Args)]
pub struct SelectArgs {
    /// Branch, tag, full or short commit, or `refs/pr/N` [default: main].
    #[arg(long)]
    pub revision: Option<String>,
    /// model, dataset or space [default: model, or as the repo id says].
    #[arg(long, visible_alias = "type")]
    pub repo_type: Option<String>,
    /// Only files matching this pattern (fnmatch, like huggingface_hub; repeatable).
    #[arg(long, value_name = "GLOB")]
    pub include: Vec<String>,
    /// Skip files matching this pattern (repeatable).
    #[arg(long, value_name = "GLOB")]
    pub exclude: Vec<String>,
}

/// `swarm-dl preheat`.
#[derive(Debug, Args)]
pub struct PreheatArgs {
    /// The repo, as for `get`: `org/name`, `datasets/org/name`, `hf://…@rev`.
    pub repo_id: String,
    #[command(flatten)]
    pub select: SelectArgs,
    /// Ask only these nodes (peer ids, comma-separated), not every connected peer.
    #[arg(long, value_name = "PEER_ID", value_delimiter = ',')]
    pub nodes: Vec<String>,
    /// Hub cache directory whose node asks [env: HF_HUB_CACHE, else $HF_HOME/hub].
    #[arg(long)]
    pub cache_dir: Option<PathBuf>,
    /// Print the final state as JSON.
    #[arg(long)]
    pub json: bool,
}

/// `swarm-dl status`.
#[derive(Debug, Args)]
pub struct StatusArgs {
    /// Hub cache directory whose node to ask [env: HF_HUB_CACHE, else $HF_HOME/hub].
    #[arg(long)]
    pub cache_dir: Option<PathBuf>,
    /// Print JSON.
    #[arg(long)]
    pub json: bool,
    /// Wait up to this many seconds for the node to be ready.
    #[arg(long, default_value_t = 0.0, value_name = "SECS")]
    pub wait: f64,
}

/// `swarm-dl keygen`.
#[derive(Debug, Args)]
pub struct KeygenArgs {
    /// Where to write the key (mode 0600).
    pub file: PathBuf,
    /// Overwrite an existing file.
    #[arg(long)]
    pub force: bool,
}

/// `swarm-dl demo`.
#[derive(Debug, Args)]
pub struct DemoArgs {
    /// Size of the generated repo, MiB.
    #[arg(long, default_value_t = 200)]
    pub size_mib: u64,
}

/// `swarm-dl get`.
#[derive(Debug, Args)]
pub struct GetArgs {
    /// Repo id: `org/name`, `datasets/org/name`, `spaces/org/name`, or
    /// `hf://[datasets/]org/name[@revision][/path]`.
    pub repo_id: String,
    /// Only these files (paths in the repo; `dir/` for a folder), like `hf download REPO FILE…`.
    /// One plain file: its path is printed instead of the snapshot's.
    pub filenames: Vec<String>,
    #[command(flatten)]
    pub select: SelectArgs,
    /// Hub cache directory [env: HF_HUB_CACHE, else $HF_HOME/hub].
    #[arg(long)]
    pub cache_dir: Option<PathBuf>,
    /// Write plain files here instead of the cache's snapshot (no symlinks).
    #[arg(long, conflicts_with = "cache_dir")]
    pub local_dir: Option<PathBuf>,
    /// Hub token [env: HF_TOKEN, else $HF_HOME/token].
    #[arg(long)]
    pub token: Option<String>,
    /// HTTP requests (and files) in flight at most.
    #[arg(long, env = "SWARM_DL_MAX_WORKERS", hide_env_values = true, default_value_t = swarm_node::fetch::DEFAULT_MAX_WORKERS,
          value_parser = clap::value_parser!(u32).range(1..=4096))]
    pub max_workers: u32,
    /// Hub URL [env: HF_ENDPOINT, else https://huggingface.co].
    #[arg(long)]
    pub endpoint: Option<String>,
    /// Cap the total download rate, bytes per second: 500K, 50M, 1G (×1000) or 64Mi (×1024).
    #[arg(long, env = "SWARM_DL_MAX_DOWNLOAD_RATE", hide_env_values = true, value_name = "RATE")]
    pub max_download_rate: Option<String>,
    /// Attempts per request before giving up (backoff with jitter between them; the count
    /// restarts whenever bytes arrive).
    #[arg(long, env = "SWARM_DL_RETRIES", hide_env_values = true, default_value_t = 7, value_parser = clap::value_parser!(u32).range(1..))]
    pub retries: u32,
    /// Answer from the cache only [env: HF_HUB_OFFLINE].
    #[arg(long)]
    pub offline: bool,
    /// Fetch the selected files again even if the cache has them (a blob that is present is
    /// replaced only once its new copy is verified).
    #[arg(long, conflicts_with = "offline")]
    pub force_download: bool,
    /// Only say what would be fetched, from where, and how much: nothing is downloaded or
    /// written.
    #[arg(long)]
    pub dry_run: bool,
    /// Print only the result.
    #[arg(long, short)]
    pub quiet: bool,
    /// Print the result as JSON.
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub swarm: SwarmArgs,
    /// Download from the Hub alone: no swarm node, no peers.
    #[arg(long, env = "SWARM_DL_NO_SWARM", hide_env_values = true, value_parser = clap::builder::FalseyValueParser::new())]
    pub no_swarm: bool,
    /// Seconds to wait for a first peer before starting (peers that appear later are still
    /// used; while configured --peers are unreachable, the first get waits up to 3 s for them).
    #[arg(long, default_value_t = swarm_node::fetch::DEFAULT_PEER_WAIT.as_secs_f64(), value_name = "SECS")]
    pub peer_wait: f64,
}

/// Where the cache is.
#[derive(Debug, Args)]
pub struct CacheDirArg {
    /// Hub cache directory [env: HF_HUB_CACHE, else $HF_HOME/hub].
    #[arg(long)]
    pub cache_dir: Option<PathBuf>,
    /// Print JSON.
    #[arg(long)]
    pub json: bool,
}

/// `swarm-dl cache …`.
#[derive(Debug, Subcommand)]
pub enum CacheCommand {
    /// List repos, revisions, sizes and incomplete downloads.
    Ls(CacheDirArg),
    /// Re-hash blobs against their names; exits 1 on any mismatch.
    Verify {
        /// Only this repo id.
        repo: Option<String>,
        /// Move bad blobs aside and fetch the files that used them again from the Hub (exits 0
        /// when everything could be fetched).
        #[arg(long)]
        repair: bool,
        /// Hub URL for --repair [env: HF_ENDPOINT, else https://huggingface.co].
        #[arg(long, requires = "repair")]
        endpoint: Option<String>,
        /// Hub token for --repair [env: HF_TOKEN, else $HF_HOME/token].
        #[arg(long, requires = "repair")]
        token: Option<String>,
        #[command(flatten)]
        dir: CacheDirArg,
    },
    /// Remove incomplete downloads that no running process holds.
    Clean {
        /// Only say what would be removed.
        #[arg(long)]
        dry_run: bool,
        #[command(flatten)]
        dir: CacheDirArg,
    },
}

/// `swarm-dl hub …`.
#[derive(Debug, Subcommand)]
pub enum HubCommand {
    /// Serve DIR (a HF cache, or DIR/<org>/<name>/<files>) as a Hub-compatible endpoint.
    Serve(ServeArgs),
}

/// `swarm-dl hub serve`.
#[derive(Debug, Args)]
pub struct ServeArgs {
    /// The folder to serve.
    pub dir: PathBuf,
    /// API address.
    #[arg(long, default_value = "127.0.0.1:8080")]
    pub listen: SocketAddr,
    /// Data (CDN) address: LFS files redirect here, as the Hub's do to its CDN.
    #[arg(long, default_value = "127.0.0.1:0")]
    pub data_listen: SocketAddr,
    /// Base URL for LFS redirects, if the data listener is reached through a proxy.
    #[arg(long)]
    pub data_url: Option<String>,
    /// Mark a repo gated: its files need one of the --token values (repeatable).
    #[arg(long, value_name = "REPO_ID")]
    pub gated: Vec<String>,
    /// A token that is valid and has access to gated repos (repeatable).
    #[arg(long)]
    pub token: Vec<String>,
    /// Entries per page of tree listings.
    #[arg(long, default_value_t = 1000)]
    pub page_size: usize,
    /// Per-connection rate cap on the data listener (same units as --max-download-rate).
    #[arg(long, value_name = "RATE")]
    pub data_rate: Option<String>,
    /// Print the endpoints as JSON.
    #[arg(long)]
    pub json: bool,
}
