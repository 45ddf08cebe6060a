//! The commands: each resolves its settings, calls `swarm-node`, prints the result.

use crate::args::{CacheCommand, Command, GetArgs, HubCommand, ServeArgs};
use crate::progress::Display;
use crate::settings;
use anyhow::{Context as _, anyhow};
use indicatif::HumanBytes;
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;
use swarm_node::cache::local_dir::LocalDir;
use swarm_node::cache::{HubCache, scan};
use swarm_node::fetch::progress::Progress;
use swarm_node::fetch::{self, GetRequest};
use swarm_node::http::{HubServer, HubServerConfig};
use swarm_node::hub::{HubClient, HubConfig, RepoRef, RetryPolicy};
use swarm_protocol::repo::{RepoId, RepoType};

/// Runs one command.
pub async fn run(cmd: Command) -> anyhow::Result<ExitCode> {
    match cmd {
        Command::Get(a) => get(a).await,
        Command::Cache(CacheCommand::Ls(d)) => cache_ls(settings::cache_dir(d.cache_dir), d.json),
        Command::Cache(CacheCommand::Verify { repo, dir }) => {
            cache_verify(settings::cache_dir(dir.cache_dir), repo, dir.json)
        }
        Command::Cache(CacheCommand::Clean { dry_run, dir }) => {
            cache_clean(settings::cache_dir(dir.cache_dir), dry_run, dir.json)
        }
        Command::Hub(HubCommand::Serve(a)) => serve(a).await,
    }
}

async fn get(a: GetArgs) -> anyhow::Result<ExitCode> {
    let repo_type: RepoType = a.repo_type.parse()?;
    let repo = RepoRef { id: RepoId::parse(&a.repo_id)?, ty: repo_type };
    let max_download_rate = a.max_download_rate.as_deref().map(settings::parse_rate).transpose()?;
    let offline = a.offline || swarm_node::offline_from_env();
    let hub = if offline {
        None
    } else {
        Some(HubClient::new(HubConfig {
            endpoint: settings::endpoint(a.endpoint),
            token: settings::token(a.token),
            read_timeout: settings::read_timeout()?,
            retry: RetryPolicy { max_attempts: a.retries, ..RetryPolicy::default() },
            ..HubConfig::default()
        })?)
    };
    // Like `hf download REPO FILE…`: named files replace --include/--exclude, and a single
    // plain file prints its own path.
    let single_file = match a.filenames.as_slice() {
        [one] if !one.ends_with('/') && !one.contains(['*', '?', '[']) => Some(one.clone()),
        _ => None,
    };
    let (include, exclude) = if a.filenames.is_empty() {
        (a.include, a.exclude)
    } else {
        if !a.include.is_empty() || !a.exclude.is_empty() {
            tracing::warn!("--include/--exclude are ignored when files are named");
        }
        (a.filenames, Vec::new())
    };
    let req = GetRequest {
        repo: repo.clone(),
        revision: a.revision.clone(),
        include,
        exclude,
        cache: HubCache::new(settings::cache_dir(a.cache_dir)),
        local_dir: a.local_dir.map(LocalDir::new),
        max_workers: a.max_workers,
        max_download_rate,
    };
    let progress = Arc::new(Progress::default());
    let display = Display::start(progress.clone(), a.quiet);
    let result = tokio::select! {
        r = fetch::get(&req, hub, progress.clone()) => r,
        _ = tokio::signal::ctrl_c() => {
            drop(display);
            eprintln!("interrupted: run the same command again to resume from the verified chunks");
            return Ok(ExitCode::from(130));
        }
    };
    drop(display);
    let out = match result {
        Ok(out) => out,
        Err(e) => {
            let (done, total) = (progress.files_done.load(Relaxed), progress.files_total.load(Relaxed));
            let kept =
                if done > 0 { format!(" ({done} of {total} files are complete and were kept)") } else { String::new() };
            return Err(anyhow!("{e}{kept}"));
        }
    };
    let result_path = match &single_file {
        Some(f) => f.split('/').fold(out.path.clone(), |p, seg| p.join(seg)),
        None => out.path.clone(),
    };
    if a.json {
        let v = serde_json::json!({
            "path": result_path,
            "repo_id": repo.id.as_str(),
            "repo_type": repo.ty.as_str(),
            "revision": a.revision,
            "commit": out.commit,
            "files": out.files,
            "files_fetched": out.files_fetched,
            "bytes": out.bytes_selected,
            "bytes_from_hub": out.bytes_from_hub,
            "bytes_from_peers": progress.from_peers.load(Relaxed),
            "bytes_resumed": out.bytes_resumed,
            "elapsed_s": out.elapsed.as_secs_f64(),
        });
        println!("{v}");
    } else {
        println!("{}", result_path.display());
    }
    if !a.quiet {
        let secs = out.elapsed.as_secs_f64().max(1e-3);
        let moved = out.bytes_from_hub + progress.from_peers.load(Relaxed);
        eprintln!(
            "swarm-dl: {} files ({}) in {:.1}s at {}/s: {} from the Hub, {} from peers, {} resumed, {} already present",
            out.files,
            HumanBytes(out.bytes_selected),
            secs,
            HumanBytes((moved as f64 / secs) as u64),
            HumanBytes(out.bytes_from_hub),
            HumanBytes(progress.from_peers.load(Relaxed)),
            HumanBytes(out.bytes_resumed),
            out.files - out.files_fetched,
        );
    }
    Ok(ExitCode::SUCCESS)
}

fn cache_ls(root: std::path::PathBuf, json: bool) -> anyhow::Result<ExitCode> {
    let repos = if root.is_dir() {
        scan::list(&root).with_context(|| format!("cannot read cache '{}'", root.display()))?
    } else {
        Vec::new()
    };
    if json {
        println!("{}", serde_json::to_string(&repos)?);
        return Ok(ExitCode::SUCCESS);
    }
    if repos.is_empty() {
        eprintln!("no repos in cache '{}'", root.display());
        return Ok(ExitCode::SUCCESS);
    }
    println!("{:<48} {:<8} {:>11} {:>9} {:>10}", "REPO", "TYPE", "SIZE", "REVISIONS", "INCOMPLETE");
    for r in &repos {
        println!(
            "{:<48} {:<8} {:>11} {:>9} {:>10}",
            r.repo_id,
            r.repo_type.as_str(),
            HumanBytes(r.size_on_disk).to_string(),
            r.revisions.len(),
            r.incomplete.len()
        );
        for rev in &r.revisions {
            let refs = if rev.refs.is_empty() { "-".to_owned() } else { rev.refs.join(",") };
            println!(
                "    {}  {:<24} {:>5} files {:>11}",
                &rev.commit,
                refs,
                rev.files,
                HumanBytes(rev.size).to_string()
            );
        }
        for inc in &r.incomplete {
            println!(
                "    incomplete {}  {} of {} verified",
                inc.path.display(),
                HumanBytes(inc.verified_bytes),
                HumanBytes(inc.size)
            );
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn cache_verify(root: std::path::PathBuf, repo: Option<String>, json: bool) -> anyhow::Result<ExitCode> {
    if !root.is_dir() {
        return Err(anyhow!("cache '{}' does not exist", root.display()));
    }
    let checks =
        scan::verify(&root, repo.as_deref()).with_context(|| format!("cannot read cache '{}'", root.display()))?;
    if let Some(r) = &repo
        && checks.is_empty()
    {
        return Err(anyhow!("repo '{r}' has no blobs in cache '{}'", root.display()));
    }
    let bad: Vec<_> = checks.iter().filter(|c| c.status != "ok").collect();
    if json {
        println!("{}", serde_json::to_string(&checks)?);
    } else {
        for c in &bad {
            println!("{} {} {}", c.status, c.path.display(), c.detail.as_deref().unwrap_or(""));
        }
        eprintln!("{} blobs checked, {} bad", checks.iter().filter(|c| c.status != "missing").count(), bad.len());
    }
    Ok(if bad.is_empty() { ExitCode::SUCCESS } else { ExitCode::FAILURE })
}

fn cache_clean(root: std::path::PathBuf, dry_run: bool, json: bool) -> anyhow::Result<ExitCode> {
    if !root.is_dir() {
        eprintln!("nothing to clean: cache '{}' does not exist", root.display());
        return Ok(ExitCode::SUCCESS);
    }
    let items = scan::clean(&root, dry_run).with_context(|| format!("cannot clean cache '{}'", root.display()))?;
    if json {
        println!("{}", serde_json::to_string(&items)?);
        return Ok(ExitCode::SUCCESS);
    }
    let verb = if dry_run { "would remove" } else { "removed" };
    for i in &items {
        let what = if i.in_use { "in use, kept" } else { verb };
        println!("{what} {} ({})", i.path.display(), HumanBytes(i.bytes));
    }
    let freed: u64 = items.iter().filter(|i| i.removed).map(|i| i.bytes).sum();
    eprintln!(
        "{verb} {} incomplete downloads ({}); {} in use",
        items.iter().filter(|i| i.removed).count(),
        HumanBytes(freed),
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
        println!(
            "{}",
            serde_json::json!({ "endpoint": server.endpoint(), "data_url": format!("http://{}", server.data_addr) })
        );
    } else {
        println!("{}", server.endpoint());
    }
    eprintln!("serving the Hub API on {} (data on http://{}); Ctrl-C stops", server.endpoint(), server.data_addr);
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
    let s = &server.stats;
    eprintln!(
        "served {} API and {} resolve requests, {} of file data",
        s.api_requests.load(Relaxed),
        s.resolve_requests.load(Relaxed),
        HumanBytes(s.file_bytes())
    );
    Ok(ExitCode::SUCCESS)
}
