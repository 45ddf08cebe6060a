//! The commands: each resolves its settings, calls `swarm-node`, prints the result.

use crate::args::{
    CacheCommand, Command, ConfigCommand, ConfigShowArgs, GetArgs, HubCommand, KeygenArgs, ServeArgs, SwarmArgs,
};
#[cfg(unix)]
use crate::args::{JoinArgs, PreheatArgs, StatusArgs};
use crate::output::outln;
use crate::progress::Display;
use crate::settings;
use anyhow::{Context as _, anyhow};
use indicatif::DecimalBytes as Bytes;
use std::path::Path;
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;
use std::time::Duration;
use swarm_node::cache::local_dir::LocalDir;
use swarm_node::cache::trust;
use swarm_node::cache::{HubCache, scan};
#[cfg(unix)]
use swarm_node::control::{ControlClient, ControlPolicy, ControlServer};
#[cfg(unix)]
use swarm_node::endpoint::{EndpointConfig, EndpointError, HubEndpoint};
use swarm_node::fetch::progress::Progress;
use swarm_node::fetch::{self, GetRequest};
use swarm_node::http::{HubServer, HubServerConfig};
use swarm_node::hub::{HubClient, RepoRef};
use swarm_node::swarm::libp2p::{Multiaddr, identity::Keypair};
use swarm_node::swarm::{self, Node, NodeConfig};
#[cfg(unix)]
use swarm_protocol::control::GetParams;

/// Runs one command.
pub async fn run(cmd: Command) -> anyhow::Result<ExitCode> {
    match cmd {
        Command::Get(a) => get(a).await,
        Command::Cache(CacheCommand::Ls(d)) => cache_ls(settings::cache_dir(d.cache_dir), d.json),
        Command::Cache(CacheCommand::Verify { repo, repair, endpoint, token, dir }) => {
            let hub = if repair { Some(settings::HubSettings::resolve(endpoint, token, 7)?) } else { None };
            cache_verify(settings::cache_dir(dir.cache_dir), repo, dir.json, hub).await
        }
        Command::Cache(CacheCommand::Clean { dry_run, dir }) => {
            cache_clean(settings::cache_dir(dir.cache_dir), dry_run, dir.json)
        }
        Command::Hub(HubCommand::Serve(a)) => serve(a).await,
        #[cfg(unix)]
        Command::Join(a) => join(a).await,
        #[cfg(unix)]
        Command::Status(a) => status(a).await,
        #[cfg(unix)]
        Command::Preheat(a) => preheat(a).await,
        #[cfg(not(unix))]
        Command::Join(_) | Command::Status(_) | Command::Preheat(_) => Err(anyhow!(
            "join, status and preheat talk to a node through a Unix socket and are not available on Windows yet; `swarm-dl get` runs its own node there"
        )),
        Command::Keygen(a) => keygen(a),
        Command::Demo(a) => crate::demo::run(a).await,
        Command::Config(ConfigCommand::Show(a)) => config_show(&a),
    }
}

/// `config show`: each setting, its value and where it came from.
fn config_show(a: &ConfigShowArgs) -> anyhow::Result<ExitCode> {
    let shown = crate::config::show(&a.command)?;
    let file = crate::config::loaded().map(|f| f.path.display().to_string());
    if a.json {
        outln!("{}", serde_json::json!({ "file": file, "settings": shown }))?;
        return Ok(ExitCode::SUCCESS);
    }
    match &file {
        Some(f) => outln!("config file: {f}")?,
        None => outln!(
            "config file: none (looked for --config, $SWARM_DL_CONFIG, {}, /etc/swarm-dl/config.toml)",
            settings::xdg_config_home().join("swarm-dl/config.toml").display()
        )?,
    }
    let width = shown.iter().map(|s| s.value.as_deref().map_or(5, str::len)).max().unwrap_or(0).min(48);
    for s in &shown {
        let value = s.value.as_deref().unwrap_or("unset");
        outln!("{:<18} {value:<width$}  {}", s.key, s.source)?;
    }
    Ok(ExitCode::SUCCESS)
}

/// The node settings shared by `join` and the node `get` runs for itself.
fn node_config(cache_root: &Path, a: &SwarmArgs, key: Keypair) -> anyhow::Result<NodeConfig> {
    let mut cfg = NodeConfig::new(cache_root.to_path_buf(), key);
    if !a.listen.is_empty() {
        cfg.listen = a.listen.iter().map(|s| parse_multiaddr(s, "--listen")).collect::<anyhow::Result<_>>()?;
    }
    cfg.peers = a
        .peer
        .iter()
        .filter(|s| !s.trim().is_empty())
        .map(|s| parse_multiaddr(s.trim(), "--peer"))
        .collect::<anyhow::Result<_>>()?;
    cfg.swarm_key = a.swarm_key.as_deref().map(swarm::read_swarm_key).transpose()?;
    cfg.mdns = !a.no_mdns;
    cfg.max_upload_rate = a.max_upload_rate.as_deref().map(settings::parse_rate).transpose()?;
    cfg.ban_time = Duration::from_secs(a.ban_time);
    Ok(cfg)
}

fn parse_multiaddr(s: &str, flag: &str) -> anyhow::Result<Multiaddr> {
    s.parse().map_err(|e| anyhow!("{flag} '{s}' is not a multiaddr ({e}); write e.g. /ip4/10.0.0.2/tcp/4001"))
}

/// Says on stderr what kind of swarm a node joins, and so who may fetch what from it.
fn swarm_note(cfg: &NodeConfig) {
    match &cfg.swarm_key {
        None => eprintln!(
            "note: no --swarm-key, so this swarm is open: any swarm-dl node that can reach this one may fetch the public repos of its cache (gated and private repos are never shared; make a key with `swarm-dl keygen FILE`)"
        ),
        Some(key) => eprintln!(
            "note: private swarm (key {}): gated/private repos are shared with members of this swarm",
            key.fingerprint()
        ),
    }
}

#[cfg(unix)]
async fn join(a: JoinArgs) -> anyhow::Result<ExitCode> {
    let cache = HubCache::new(settings::cache_dir(a.cache_dir.clone())).with_copies(settings::copies());
    cache.ensure().with_context(|| format!("cannot use cache '{}'", cache.root().display()))?;
    let state = trust::secure_state_dir(cache.root())
        .with_context(|| format!("refusing to run a node on cache '{}'", cache.root().display()))?;
    let policy = ControlPolicy {
        group: a
            .control_group
            .as_deref()
            .map(trust::group_id)
            .transpose()
            .map_err(|e| anyhow!("--control-group: {e}"))?,
        endpoint: settings::endpoint(a.endpoint.clone()),
    };
    let policy_endpoint = policy.endpoint.clone();
    let (key, lock) = swarm::load_identity(&state)?;
    if lock.is_none() {
        return Err(anyhow!(
            "another swarm-dl node already runs for cache '{}' (see `swarm-dl status`)",
            cache.root().display()
        ));
    }
    let max_download_rate = a.max_download_rate.as_deref().map(settings::parse_rate).transpose()?;
    let mut cfg = node_config(cache.root(), &a.swarm, key)?;
    cfg.max_download_rate = max_download_rate;
    cfg.accept_preheat = a.accept_preheat;
    cfg.rate_schedule = a
        .rate_schedule
        .as_deref()
        .map(str::parse::<swarm_node::schedule::Schedule>)
        .transpose()
        .map_err(|e| anyhow!("--rate-schedule: {e}"))?;
    swarm_note(&cfg);
    let node = Node::start(cfg).await?;
    let handle = node.handle();
    let control = ControlServer::start(handle.clone(), cache.clone(), policy).await?;
    let metrics = match a.metrics_listen {
        Some(addr) => {
            let (bound, task) = swarm_node::metrics::serve(addr, handle.clone())
                .await
                .with_context(|| format!("cannot serve metrics on {addr}"))?;
            handle.set_metrics_url(format!("http://{bound}/metrics"));
            Some((bound, task))
        }
        None => None,
    };
    let hub_endpoint = start_hub_endpoint(&a, &handle, &cache, &policy_endpoint).await?;
    let listen: Vec<String> = handle.listen_addrs().iter().map(|m| m.to_string()).collect();
    if a.json {
        let v = serde_json::json!({
            "peer_id": handle.peer_id().to_string(),
            "listen": listen,
            "control": control.socket(),
            "cache_dir": cache.root(),
            "metrics": metrics.as_ref().map(|(b, _)| format!("http://{b}/metrics")),
            "hub_endpoint": hub_endpoint.as_ref().map(HubEndpoint::url),
        });
        outln!("{v}")?;
    } else {
        outln!("swarm-dl node {} serving '{}'", handle.peer_id(), cache.root().display())?;
        for l in &listen {
            outln!("  listening on {l}")?;
        }
        outln!("  control socket {}", control.socket().display())?;
        if let Some((b, _)) = &metrics {
            outln!("  metrics on http://{b}/metrics")?;
        }
        if let Some(e) = &hub_endpoint {
            outln!("  Hub endpoint {} (HF_ENDPOINT={} for unmodified clients)", e.url(), e.url())?;
        }
    }
    wait_for_signal().await;
    eprintln!("stopping: closing peer connections (verified chunks of unfinished files are kept)");
    control.stop();
    drop(hub_endpoint);
    if let Some((_, task)) = metrics {
        task.abort();
    }
    node.shutdown().await;
    drop(lock);
    Ok(ExitCode::SUCCESS)
}

/// Starts `join`'s Hub endpoint (`--hub-listen`). The default address may be taken (another
/// node on this host): that is a warning, not a failure; an address asked for must work.
#[cfg(unix)]
async fn start_hub_endpoint(
    a: &JoinArgs,
    node: &swarm_node::swarm::NodeHandle,
    cache: &HubCache,
    upstream: &str,
) -> anyhow::Result<Option<HubEndpoint>> {
    if a.hub_listen.eq_ignore_ascii_case("off") {
        return Ok(None);
    }
    let listen: std::net::SocketAddr = a
        .hub_listen
        .parse()
        .map_err(|_| anyhow!("--hub-listen '{}' is not an address: write e.g. 127.0.0.1:8008, or off", a.hub_listen))?;
    if !listen.ip().is_loopback() && !a.hub_listen_public {
        return Err(anyhow!(
            "--hub-listen {listen} is reachable from other hosts, which could then make this node download: add --hub-listen-public to mean it"
        ));
    }
    let cfg = EndpointConfig {
        listen,
        upstream: upstream.to_owned(),
        max_workers: fetch::DEFAULT_MAX_WORKERS as usize,
        peer_wait: fetch::DEFAULT_PEER_WAIT,
        retries: a.retries,
    };
    match HubEndpoint::start(node.clone(), cache.clone(), cfg).await {
        Ok(e) => Ok(Some(e)),
        Err(EndpointError::Bind { addr, source })
            if a.hub_listen == swarm_node::endpoint::DEFAULT_LISTEN
                && source.kind() == std::io::ErrorKind::AddrInUse =>
        {
            eprintln!(
                "warning: {addr} is in use (another node on this host?), so this node serves no Hub endpoint: choose one with --hub-listen ADDR, or --hub-listen off"
            );
            Ok(None)
        }
        Err(e) => Err(e.into()),
    }
}

async fn wait_for_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = tokio::signal::ctrl_c() => {}
                    _ = term.recv() => {}
                }
            }
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}

#[cfg(unix)]
async fn preheat(a: PreheatArgs) -> anyhow::Result<ExitCode> {
    let t = crate::target::parse(&a.repo_id, a.select.repo_type.as_deref(), a.select.revision.as_deref())?;
    if t.path.is_some() {
        return Err(anyhow!("preheat takes a repo, not a file in it: use --include"));
    }
    let root = settings::cache_dir(a.cache_dir);
    let client = ControlClient::locate(&root)
        .await
        .map_err(|e| anyhow!("{e} (preheat asks the swarm through the `swarm-dl join` node of this cache)"))?;
    let params = swarm_node::protocol::control::PreheatParams {
        repo_type: t.repo.ty,
        repo_id: t.repo.id.clone(),
        revision: t.revision,
        include: a.select.include,
        exclude: a.select.exclude,
        nodes: a.nodes,
    };
    let quiet = a.json;
    let mut shown = 0;
    let view = client
        .preheat(params, |v| {
            if !quiet && v.nodes.len() != shown {
                shown = v.nodes.len();
                eprintln!("preheat of {} asked of {} node(s), this one included", v.repo, v.nodes.len());
            }
        })
        .await?;
    let failed = view.nodes.iter().filter(|(_, p)| !p.is_done()).count();
    if a.json {
        outln!("{}", serde_json::to_string(&view)?)?;
    } else {
        for (node, part) in &view.nodes {
            outln!("{node}  {}", describe_part(part))?;
        }
    }
    Ok(if failed == 0 { ExitCode::SUCCESS } else { ExitCode::FAILURE })
}

#[cfg(unix)]
fn describe_part(part: &swarm_node::swarm::preheat::NodePart) -> String {
    use swarm_node::protocol::wire::PreheatState;
    use swarm_node::swarm::preheat::NodePart;
    match part {
        NodePart::Asked => "asked, no answer yet".into(),
        NodePart::Refused(why) => format!("refused: {why}"),
        NodePart::Gone(why) => format!("lost: {why}"),
        NodePart::Progress(p) => {
            let state = match &p.state {
                PreheatState::Running => "running".to_owned(),
                PreheatState::Done => "done".to_owned(),
                PreheatState::Failed(why) => format!("failed: {why}"),
            };
            format!("{state} ({}/{} files, {} of {})", p.files.0, p.files.1, Bytes(p.bytes.0), Bytes(p.bytes.1))
        }
    }
}

#[cfg(unix)]
async fn status(a: StatusArgs) -> anyhow::Result<ExitCode> {
    let root = settings::cache_dir(a.cache_dir);
    let deadline = std::time::Instant::now() + Duration::from_secs_f64(a.wait.max(0.0));
    let client = loop {
        let why = match ControlClient::locate(&root).await {
            Ok(c) => break c,
            Err(why) => why,
        };
        if std::time::Instant::now() >= deadline {
            return Err(why.into());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let s = client.status().await?;
    if a.json {
        outln!("{}", serde_json::to_string(&s)?)?;
        return Ok(ExitCode::SUCCESS);
    }
    outln!("node      {} ({} swarm)", s.peer_id, if s.open_swarm { "open" } else { "private" })?;
    for l in &s.listen {
        outln!("listening {l}")?;
    }
    outln!("files     {} held ({}), {} in progress", s.files_held, Bytes(s.bytes_held), s.in_progress.len())?;
    for f in &s.in_progress {
        let name = if f.name.is_empty() { &f.etag } else { &f.name };
        let rate = f.rate.map(|r| format!(", {}/s", Bytes(r as u64))).unwrap_or_default();
        outln!(
            "          {name} ({}/{} chunks, {} of {}{rate})",
            f.chunks_held,
            f.chunks,
            Bytes(f.bytes),
            Bytes(f.size)
        )?;
    }
    outln!(
        "traffic   in {} ({}/s), out {} ({}/s)",
        Bytes(s.bytes_in),
        Bytes(s.rate_in),
        Bytes(s.bytes_out),
        Bytes(s.rate_out)
    )?;
    outln!("peers     {}", s.peers.len())?;
    for p in &s.peers {
        outln!("          {} {} in {} out {}", p.id, p.address, Bytes(p.bytes_in), Bytes(p.bytes_out))?;
    }
    if !s.banned.is_empty() {
        outln!("banned    {}", s.banned.join(", "))?;
    }
    if s.hub_takeovers > 0 {
        outln!("takeovers {} chunks fetched from the Hub for nodes that left or stalled", s.hub_takeovers)?;
    }
    if s.endgame_duplicates > 0 {
        outln!("endgame   {} chunks asked of a second source because the first was slow", s.endgame_duplicates)?;
    }
    if let Some(e) = &s.hub_endpoint {
        outln!("hub       {e} (HF_ENDPOINT for unmodified clients)")?;
    }
    for v in &s.preheats {
        let by = v.asked_by.as_deref().map_or_else(|| "asked here".to_owned(), |p| format!("asked by {p}"));
        outln!("preheat   {} at {} ({by})", v.repo, v.revision)?;
        for (node, part) in &v.nodes {
            outln!("  {node}  {}", describe_part(part))?;
        }
    }
    if let Some(m) = &s.metrics {
        outln!("metrics   {m}")?;
    }
    if s.handshake_failures > 0 {
        outln!(
            "handshake {} connections failed in the handshake (a different --swarm-key, or none?)",
            s.handshake_failures
        )?;
    }
    Ok(ExitCode::SUCCESS)
}

fn keygen(a: KeygenArgs) -> anyhow::Result<ExitCode> {
    if a.file.exists() && !a.force {
        return Err(anyhow!(
            "'{}' exists: pass --force to replace it (nodes with the old key will no longer talk to this one)",
            a.file.display()
        ));
    }
    let key = swarm::new_swarm_key();
    let fingerprint = key.fingerprint();
    swarm::write_private(&a.file, key.to_key_file().as_bytes())
        .with_context(|| format!("cannot write '{}'", a.file.display()))?;
    outln!("{}", a.file.display())?;
    eprintln!(
        "swarm key written (fingerprint {fingerprint}); copy it to every node and pass --swarm-key {}",
        a.file.display()
    );
    Ok(ExitCode::SUCCESS)
}

/// A failed command: what kind of failure (the `kind` of `--json` errors) and one sentence.
#[derive(Debug)]
pub struct Failure {
    kind: String,
    message: String,
}

impl std::fmt::Display for Failure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for Failure {}

fn failure(kind: impl Into<String>, message: impl Into<String>) -> anyhow::Error {
    anyhow::Error::new(Failure { kind: kind.into(), message: message.into() })
}

/// The `kind` of a failed command's `--json` error: the first typed cause that names one.
pub fn error_kind(e: &anyhow::Error) -> &str {
    for c in e.chain() {
        if let Some(f) = c.downcast_ref::<Failure>() {
            return &f.kind;
        }
        if let Some(f) = c.downcast_ref::<fetch::FetchError>() {
            return f.kind();
        }
        if let Some(h) = c.downcast_ref::<swarm_node::hub::HubError>() {
            return h.kind();
        }
        #[cfg(unix)]
        if let Some(c) = c.downcast_ref::<swarm_node::control::ControlError>() {
            return c.kind();
        }
        if c.downcast_ref::<swarm_protocol::repo::RepoIdError>().is_some() {
            return "usage";
        }
        if c.downcast_ref::<swarm_node::swarm::NodeError>().is_some() {
            return "node";
        }
    }
    "error"
}

async fn get(a: GetArgs) -> anyhow::Result<ExitCode> {
    let target = crate::target::parse(&a.repo_id, a.select.repo_type.as_deref(), a.select.revision.as_deref())
        .map_err(|e| failure("usage", e.to_string()))?;
    let repo = target.repo.clone();
    let revision = target.revision.clone();
    let max_download_rate = a.max_download_rate.as_deref().map(settings::parse_rate).transpose()?;
    let offline = a.offline || settings::offline();
    if offline && a.force_download {
        return Err(failure("usage", "--force-download needs the Hub, but offline mode (HF_HUB_OFFLINE) is on"));
    }
    // The Hub settings, resolved once: for this process's client, or for the node it asks.
    let hub_settings = settings::HubSettings::resolve(a.endpoint.clone(), a.token.clone(), a.retries)?;
    let hub = if offline { None } else { Some(HubClient::new(hub_settings.config())?) };
    // Like `hf download REPO FILE…`: named files replace --include/--exclude, and a single
    // plain file prints its own path. A path inside the id (`hf://org/m/file`) is one of them.
    let filenames: Vec<String> = target.path.iter().cloned().chain(a.filenames).collect();
    let single_file = match filenames.as_slice() {
        [one] if !one.ends_with('/') && !one.contains(['*', '?', '[']) => Some(one.clone()),
        _ => None,
    };
    let named = !filenames.is_empty();
    let (include, exclude) = if named {
        if !a.select.include.is_empty() || !a.select.exclude.is_empty() {
            tracing::warn!("--include/--exclude are ignored when files are named");
        }
        (filenames, Vec::new())
    } else {
        (a.select.include, a.select.exclude)
    };
    let cache_root = settings::cache_dir(a.cache_dir);
    let mut req = GetRequest {
        repo: repo.clone(),
        revision: revision.clone(),
        include,
        named,
        force: a.force_download,
        exclude,
        cache: HubCache::new(cache_root.clone()).with_copies(settings::copies()),
        local_dir: a.local_dir.map(LocalDir::new),
        max_workers: a.max_workers as usize,
        max_download_rate,
        node: None,
        peer_wait: Duration::from_secs_f64(a.peer_wait.clamp(0.0, 600.0)),

        lock_held: None,
    };
    if a.dry_run {
        let swarm = !a.no_swarm;
        let plan = fetch::plan(&req, hub).await?;
        return print_plan(&plan, &repo, &revision, swarm, a.json);
    }
    let progress = Arc::new(Progress::default());
    let display = Display::start(progress.clone(), a.quiet);
    let run = async {
        if hub.is_none() {
            // Offline: the cache first; peers (trusting their metadata, and saying so) only if
            // the cache cannot answer.
            match fetch::get(&req, None, progress.clone()).await {
                Err(fetch::FetchError::Offline(why)) if !a.no_swarm => tracing::info!(%why, "asking peers"),
                other => return other.map_err(|e| local_failure(e, &progress)),
            }
        } else if a.no_swarm {
            return fetch::get(&req, hub, progress.clone()).await.map_err(|e| local_failure(e, &progress));
        } else {
            #[cfg(unix)]
            if let Some(client) = ControlClient::find(&cache_root).await {
                tracing::info!(node = %client.file.peer_id, "downloading through the running swarm-dl node");
                let g = GetParams {
                    repo_type: repo.ty,
                    repo_id: repo.id.clone(),
                    revision: req.revision.clone(),
                    include: req.include.clone(),
                    exclude: req.exclude.clone(),
                    endpoint: hub_settings.endpoint.clone(),
                    token: hub_settings.token.as_ref().map(|t| t.expose().to_owned()),
                    retries: hub_settings.retries,
                    read_timeout_ms: u64::try_from(hub_settings.read_timeout.as_millis()).unwrap_or(u64::MAX),
                    max_workers: u32::try_from(req.max_workers).unwrap_or(u32::MAX),
                    max_download_rate: req.max_download_rate,
                    peer_wait_ms: u64::try_from(req.peer_wait.as_millis()).unwrap_or(u64::MAX),
                    named: req.named,
                    force: req.force,
                };
                // The node's sentence says what it kept.
                let out = client.get(g, &progress).await.map_err(|e| failure(e.kind().to_owned(), e.to_string()))?;
                // The node wrote its cache; the folder asked for is written here, with our rights.
                return fetch::publish_local_dir(&req, out).map_err(|e| local_failure(e, &progress));
            }
        }
        let state = match trust::secure_state_dir(&cache_root) {
            Ok(state) => state,
            Err(e) => {
                tracing::warn!("not joining the swarm from this cache ({e}); downloading from the Hub alone");
                return fetch::get(&req, hub, progress.clone()).await.map_err(|e| local_failure(e, &progress));
            }
        };
        let (key, _lock) = match swarm::load_identity(&state) {
            Ok(k) => k,
            Err(e) => {
                tracing::warn!(error = %e, "using a throwaway node identity");
                (Keypair::generate_ed25519(), None)
            }
        };
        let cfg = node_config(&cache_root, &a.swarm, key)?;
        if !a.quiet {
            swarm_note(&cfg);
        }
        let node = Node::start(cfg).await.map_err(|e| failure("node", e.to_string()))?;
        req.node = Some(node.handle());
        let r = fetch::get(&req, hub, progress.clone()).await.map_err(|e| local_failure(e, &progress));
        // Peers still downloading may need chunks only this node holds: stay while they are.
        node.handle().linger_while_needed(Duration::from_secs(15)).await;
        node.shutdown().await;
        r
    };
    let result = tokio::select! {
        r = run => r,
        // Ctrl-C or SIGTERM: dropping the download saves each partial file's state (what was
        // written, chunk by chunk) before the process ends.
        _ = wait_for_signal() => {
            drop(display);
            eprintln!("interrupted: run the same command again to resume where it stopped");
            return Ok(ExitCode::from(130));
        }
    };
    drop(display);
    let out = result?;
    let result_path = match &single_file {
        Some(f) => f.split('/').fold(out.path.clone(), |p, seg| p.join(seg)),
        None => out.path.clone(),
    };
    if a.json {
        let v = serde_json::json!({
            "path": result_path,
            "repo_id": repo.id.as_str(),
            "repo_type": repo.ty.as_str(),
            "revision": revision,
            "commit": out.commit,
            "files": out.files,
            "files_fetched": out.files_fetched,
            "bytes": out.bytes_selected,
            "bytes_from_hub": out.bytes_from_hub,
            "bytes_from_peers": out.bytes_from_peers,
            "chunks_taken_over": out.chunks_taken_over,
            "chunks_duplicated": out.chunks_duplicated,
            "bytes_resumed": out.bytes_resumed,
            "elapsed_s": out.elapsed.as_secs_f64(),
        });
        outln!("{v}")?;
    } else {
        outln!("{}", result_path.display())?;
    }
    if !a.quiet {
        eprintln!("swarm-dl: {}", summary(&out));
    }
    Ok(ExitCode::SUCCESS)
}

/// A failure in this process: files completed before it were kept, and the sentence says so.
fn local_failure(e: fetch::FetchError, progress: &Progress) -> anyhow::Error {
    let (done, total) = (progress.files_done.load(Relaxed), progress.files_total.load(Relaxed));
    let kept = if done > 0 { format!(" ({done} of {total} files are complete and were kept)") } else { String::new() };
    failure(e.kind(), format!("{e}{kept}"))
}

/// `n file` or `n files`.
fn count(n: usize, what: &str) -> String {
    if n == 1 { format!("1 {what}") } else { format!("{n} {what}s") }
}

/// The line a `get` ends with on stderr.
fn summary(out: &fetch::GetOutcome) -> String {
    let secs = out.elapsed.as_secs_f64().max(1e-3);
    let moved = out.bytes_from_hub + out.bytes_from_peers;
    format!(
        "{} ({}) in {:.1}s at {}/s: {} from the Hub, {} from peers, {} resumed, {} already present",
        count(out.files, "file"),
        Bytes(out.bytes_selected),
        secs,
        Bytes((moved as f64 / secs) as u64),
        Bytes(out.bytes_from_hub),
        Bytes(out.bytes_from_peers),
        Bytes(out.bytes_resumed),
        out.files - out.files_fetched,
    )
}

/// `get --dry-run`: each selected file, what would happen to it, and the totals.
fn print_plan(plan: &fetch::Plan, repo: &RepoRef, revision: &str, swarm: bool, json: bool) -> anyhow::Result<ExitCode> {
    let left = |f: &fetch::PlannedFile| f.size - f.verified.min(f.size);
    let to_fetch: u64 = plan.files.iter().map(left).sum();
    let source = if swarm { "peers first, then the Hub" } else { "the Hub" };
    if json {
        let v = serde_json::json!({
            "repo_id": repo.id.as_str(),
            "repo_type": repo.ty.as_str(),
            "revision": revision,
            "commit": plan.commit,
            "path": plan.path,
            "source": if swarm { "swarm" } else { "hub" },
            "bytes_to_fetch": to_fetch,
            "files": plan.files,
        });
        outln!("{v}")?;
        return Ok(ExitCode::SUCCESS);
    }
    outln!("{} '{}' at '{}' = commit {}", repo.ty, repo.id, revision, plan.commit)?;
    for f in &plan.files {
        let what = match f.action {
            "resume" => format!("resume ({} of {} verified)", Bytes(f.verified), Bytes(f.size)),
            other => other.to_owned(),
        };
        outln!("  {:<28} {:>10}  {}", what, Bytes(f.size).to_string(), f.path)?;
    }
    let fetching = plan.files.iter().filter(|f| left(f) > 0).count();
    outln!(
        "would fetch {} of {} ({}) from {source}, into {}",
        count(fetching, "file"),
        count(plan.files.len(), "file"),
        Bytes(to_fetch),
        plan.path.display()
    )?;
    Ok(ExitCode::SUCCESS)
}

fn cache_ls(root: std::path::PathBuf, json: bool) -> anyhow::Result<ExitCode> {
    let repos = if root.is_dir() {
        scan::list(&root).with_context(|| format!("cannot read cache '{}'", root.display()))?
    } else {
        Vec::new()
    };
    if json {
        outln!("{}", serde_json::to_string(&repos)?)?;
        return Ok(ExitCode::SUCCESS);
    }
    if repos.is_empty() {
        eprintln!("no repos in cache '{}'", root.display());
        return Ok(ExitCode::SUCCESS);
    }
    outln!("{:<48} {:<8} {:>11} {:>9} {:>10}", "REPO", "TYPE", "SIZE", "REVISIONS", "INCOMPLETE")?;
    for r in &repos {
        outln!(
            "{:<48} {:<8} {:>11} {:>9} {:>10}",
            r.repo_id,
            r.repo_type.as_str(),
            Bytes(r.size_on_disk).to_string(),
            r.revisions.len(),
            r.incomplete.len()
        )?;
        for rev in &r.revisions {
            let refs = if rev.refs.is_empty() { "-".to_owned() } else { rev.refs.join(",") };
            outln!("    {}  {:<24} {:>5} files {:>11}", &rev.commit, refs, rev.files, Bytes(rev.size).to_string())?;
        }
        for inc in &r.incomplete {
            outln!(
                "    incomplete {}  {} of {} verified",
                inc.path.display(),
                Bytes(inc.verified_bytes),
                Bytes(inc.size)
            )?;
        }
    }
    Ok(ExitCode::SUCCESS)
}

async fn cache_verify(
    root: std::path::PathBuf,
    repo: Option<String>,
    json: bool,
    repair: Option<settings::HubSettings>,
) -> anyhow::Result<ExitCode> {
    if !root.is_dir() {
        return Err(anyhow!("cache '{}' does not exist", root.display()));
    }
    let scan_now = |root: &Path| {
        scan::verify(root, repo.as_deref()).with_context(|| format!("cannot read cache '{}'", root.display()))
    };
    let mut checks = scan_now(&root)?;
    if let Some(r) = &repo
        && checks.is_empty()
    {
        return Err(anyhow!("repo '{r}' has no blobs in cache '{}'", root.display()));
    }
    if let Some(hub) = repair
        && checks.iter().any(|c| c.status != "ok")
    {
        repair_cache(&root, &checks, &hub).await?;
        checks = scan_now(&root)?;
    }
    let bad: Vec<_> = checks.iter().filter(|c| c.status != "ok").collect();
    if json {
        outln!("{}", serde_json::to_string(&checks)?)?;
    } else {
        for c in &bad {
            outln!("{} {} {}", c.status, c.path.display(), c.detail.as_deref().unwrap_or(""))?;
        }
        eprintln!("{} blobs checked, {} bad", checks.iter().filter(|c| c.status != "missing").count(), bad.len());
    }
    Ok(if bad.is_empty() { ExitCode::SUCCESS } else { ExitCode::FAILURE })
}

/// `cache verify --repair`: moves the bad blobs aside (`<blob>.corrupt`), then fetches every
/// snapshot file left without its blob again from the Hub, commit by commit.
async fn repair_cache(root: &Path, checks: &[scan::BlobCheck], hub: &settings::HubSettings) -> anyhow::Result<()> {
    for c in checks.iter().filter(|c| matches!(c.status, "mismatch" | "unreadable")) {
        let aside = swarm_node::cache::corrupt_path(&c.path);
        std::fs::rename(&c.path, &aside).with_context(|| format!("cannot move '{}' aside", c.path.display()))?;
        eprintln!("moved {} aside to {}", c.path.display(), aside.display());
    }
    // Snapshot entries whose blob is gone, by repo and commit.
    let mut todo: std::collections::HashMap<(RepoRef, String), Vec<String>> = std::collections::HashMap::new();
    let repos: std::collections::HashSet<(swarm_protocol::repo::RepoType, String)> =
        checks.iter().map(|c| (c.repo_type, c.repo_id.clone())).collect();
    for (ty, id) in repos {
        let repo = RepoRef { id: swarm_protocol::repo::RepoId::parse(&id)?, ty };
        let snapshots = root.join(repo.id.folder_name(ty)).join("snapshots");
        for path in scan::dangling(&root.join(repo.id.folder_name(ty))) {
            // snapshots/<commit>/<path in the repo>
            let Ok(rel) = path.strip_prefix(&snapshots) else { continue };
            let mut parts = rel.components().map(|c| c.as_os_str().to_string_lossy().into_owned());
            let Some(commit) = parts.next() else { continue };
            todo.entry((repo.clone(), commit)).or_default().push(parts.collect::<Vec<_>>().join("/"));
        }
    }
    let client = HubClient::new(hub.config())?;
    for ((repo, commit), files) in todo {
        let req = GetRequest {
            repo: repo.clone(),
            revision: commit.clone(),
            include: files.clone(),
            named: true,
            force: false,
            exclude: Vec::new(),
            cache: HubCache::new(root.to_path_buf()).with_copies(settings::copies()),
            local_dir: None,
            max_workers: 8,
            max_download_rate: None,
            node: None,
            peer_wait: Duration::ZERO,

            lock_held: None,
        };
        let out = fetch::get(&req, Some(client.clone()), Arc::new(Progress::default()))
            .await
            .map_err(|e| failure(e.kind(), format!("cannot repair {} '{}' at {commit}: {e}", repo.ty, repo.id)))?;
        eprintln!(
            "fetched {} of {} '{}' at {commit} again ({})",
            count(out.files_fetched, "file"),
            repo.ty,
            repo.id,
            Bytes(out.bytes_from_hub)
        );
    }
    Ok(())
}

fn cache_clean(root: std::path::PathBuf, dry_run: bool, json: bool) -> anyhow::Result<ExitCode> {
    if !root.is_dir() {
        eprintln!("nothing to clean: cache '{}' does not exist", root.display());
        return Ok(ExitCode::SUCCESS);
    }
    let items = scan::clean(&root, dry_run).with_context(|| format!("cannot clean cache '{}'", root.display()))?;
    if json {
        outln!("{}", serde_json::to_string(&items)?)?;
        return Ok(ExitCode::SUCCESS);
    }
    let verb = if dry_run { "would remove" } else { "removed" };
    for i in &items {
        let what = if i.in_use { "in use, kept" } else { verb };
        outln!("{what} {} ({})", i.path.display(), Bytes(i.bytes))?;
    }
    let freed: u64 = items.iter().filter(|i| i.removed).map(|i| i.bytes).sum();
    let count = |kind| items.iter().filter(|i| i.removed && i.kind == kind).count();
    eprintln!(
        "{verb} {} incomplete downloads, {} corrupt blobs moved aside and {} chunk manifests of blobs no longer cached ({}); {} in use",
        count(scan::CleanKind::Incomplete),
        count(scan::CleanKind::Corrupt),
        count(scan::CleanKind::Manifest),
        Bytes(freed),
        items.iter().filter(|i| i.in_use).count()
    );
    Ok(ExitCode::SUCCESS)
}

async fn serve(a: ServeArgs) -> anyhow::Result<ExitCode> {
    let cfg = HubServerConfig {
        dir: a.dir,
        listen: a.listen,
        data_listen: a.data_listen,
        data_public_url: a.data_url,
        gated: a.gated,
        tokens: a.token,
        page_size: a.page_size,
        data_rate: a.data_rate.as_deref().map(settings::parse_rate).transpose()?,
    };
    let server = HubServer::start(cfg).await?;
    if a.json {
        outln!(
            "{}",
            serde_json::json!({ "endpoint": server.endpoint(), "data_url": format!("http://{}", server.data_addr) })
        )?;
    } else {
        outln!("{}", server.endpoint())?;
    }
    eprintln!("serving the Hub API on {} (data on http://{}); Ctrl-C stops", server.endpoint(), server.data_addr);
    wait_for_signal().await;
    let s = &server.stats;
    eprintln!(
        "served {} API and {} resolve requests, {} of file data",
        s.api_requests.load(Relaxed),
        s.resolve_requests.load(Relaxed),
        Bytes(s.file_bytes())
    );
    Ok(ExitCode::SUCCESS)
}
