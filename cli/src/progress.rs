//! Progress on a terminal: a total bar, a line of counts, and one bar per file in flight,
//! redrawn from the download's counters ten times a second. Rates and the ETA are over the
//! last seconds ([`swarm_node::rate`]), sizes are decimal (MB, as the rate flags take them),
//! and no line is wider than 80 columns. Nothing is drawn when stderr is not a terminal or
//! with `--quiet`.

use indicatif::{DecimalBytes, MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};
use std::collections::HashMap;
use std::io::IsTerminal as _;
use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;
use std::time::{Duration, Instant};
use swarm_node::fetch::progress::Progress;
use swarm_node::rate::RateWindow;

const MAX_FILE_BARS: usize = 8;
/// No line is wider.
pub const WIDTH: usize = 80;

/// Draws until dropped.
#[derive(Debug)]
pub struct Display {
    task: Option<tokio::task::JoinHandle<()>>,
    multi: Option<MultiProgress>,
}

impl Display {
    /// Starts drawing `progress` if stderr is a terminal and not `quiet`.
    pub fn start(progress: Arc<Progress>, quiet: bool) -> Self {
        if quiet || !std::io::stderr().is_terminal() {
            return Self { task: None, multi: None };
        }
        let multi = MultiProgress::with_draw_target(ProgressDrawTarget::stderr_with_hz(10));
        let style = ProgressStyle::with_template("{msg}").unwrap_or_else(|_| ProgressStyle::default_bar());
        let line = move |m: &MultiProgress| m.add(ProgressBar::new(0).with_style(style.clone()));
        let (total, counts) = (line(&multi), line(&multi));
        let m = multi.clone();
        let task = tokio::spawn(async move {
            let mut bars: HashMap<String, (ProgressBar, RateWindow)> = HashMap::new();
            let mut window = RateWindow::default();
            loop {
                let now = Instant::now();
                let (done, all) = (progress.bytes_done.load(Relaxed), progress.bytes_total.load(Relaxed));
                window.push(now, done);
                total.set_message(total_line(done, all, window.rate(), window.eta(all.saturating_sub(done))));
                counts.set_message(counts_line(
                    progress.files_done.load(Relaxed),
                    progress.files_total.load(Relaxed),
                    progress.from_hub.load(Relaxed),
                    progress.from_peers.load(Relaxed),
                ));
                let active = progress.active_files();
                bars.retain(|path, (bar, _)| {
                    let keep = active.iter().take(MAX_FILE_BARS).any(|f| &f.path == path);
                    if !keep {
                        bar.finish_and_clear();
                        m.remove(bar);
                    }
                    keep
                });
                for f in active.iter().take(MAX_FILE_BARS) {
                    let (bar, w) = bars.entry(f.path.clone()).or_insert_with(|| (line(&m), RateWindow::default()));
                    let done = f.done.load(Relaxed);
                    w.push(now, done);
                    bar.set_message(file_line(&f.path, done, f.size, w.rate()));
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        });
        Self { task: Some(task), multi: Some(multi) }
    }
}

impl Drop for Display {
    fn drop(&mut self) {
        if let Some(t) = self.task.take() {
            t.abort();
        }
        if let Some(m) = self.multi.take() {
            let _ = m.clear();
        }
    }
}

/// `[=====>     ]`, `width` inside the brackets.
fn bar(done: u64, total: u64, width: usize) -> String {
    let filled = if total == 0 { 0 } else { ((done.min(total) as f64 / total as f64) * width as f64) as usize };
    let mut s = String::with_capacity(width + 2);
    s.push('[');
    for i in 0..width {
        s.push(if i < filled {
            '='
        } else if i == filled {
            '>'
        } else {
            ' '
        });
    }
    if filled >= width {
        s.pop();
        s.push('=');
    }
    s.push(']');
    s
}

/// `3m05s`.
fn duration(d: Duration) -> String {
    let s = d.as_secs();
    match s {
        0..60 => format!("{s}s"),
        60..3600 => format!("{}m{:02}s", s / 60, s % 60),
        _ => format!("{}h{:02}m", s / 3600, (s % 3600) / 60),
    }
}

/// At most [`WIDTH`] characters.
fn fit(mut s: String) -> String {
    if let Some((i, _)) = s.char_indices().nth(WIDTH) {
        s.truncate(i);
    }
    s
}

/// `total [===>   ] 1.20 GB/4.00 GB 42.00 MB/s eta 1m07s`: no rate or ETA until there is one.
pub fn total_line(done: u64, total: u64, rate: Option<f64>, eta: Option<Duration>) -> String {
    let mut s = format!("total {} {}/{}", bar(done, total, 20), DecimalBytes(done), DecimalBytes(total));
    if let Some(r) = rate {
        s += &format!(" {}/s", DecimalBytes(r as u64));
    }
    if let Some(e) = eta.filter(|_| done < total) {
        s += &format!(" eta {}", duration(e));
    }
    fit(s)
}

/// `files 3/10 · Hub 1.20 GB · peers 4.00 GB`.
pub fn counts_line(files_done: u64, files: u64, hub: u64, peers: u64) -> String {
    fit(format!("files {files_done}/{files} · Hub {} · peers {}", DecimalBytes(hub), DecimalBytes(peers)))
}

/// `  …/model-00001.safetensors [===>  ] 1.20 GB/4.00 GB 42.00 MB/s`; a file with nothing yet
/// says `waiting`, and no rate.
pub fn file_line(path: &str, done: u64, size: u64, rate: Option<f64>) -> String {
    const NAME: usize = 22;
    let n = path.chars().count();
    let name = if n <= NAME {
        path.to_owned()
    } else {
        format!("…{}", path.chars().skip(n - (NAME - 1)).collect::<String>())
    };
    let mut s = format!("  {name:<NAME$} {} {}/{}", bar(done, size, 16), DecimalBytes(done), DecimalBytes(size));
    match rate {
        _ if done == 0 => s += " waiting",
        Some(r) => s += &format!(" {}/s", DecimalBytes(r as u64)),
        None => {}
    }
    fit(s)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_read_as_expected() {
        assert_eq!(
            total_line(1_200_000_000, 4_000_000_000, Some(42e6), Some(Duration::from_secs(67))),
            "total [======>             ] 1.20 GB/4.00 GB 42.00 MB/s eta 1m07s"
        );
        assert_eq!(total_line(0, 4_000_000_000, None, None), "total [>                   ] 0 B/4.00 GB");
        assert_eq!(counts_line(3, 10, 1_200_000_000, 4e9 as u64), "files 3/10 · Hub 1.20 GB · peers 4.00 GB");
        assert_eq!(
            file_line("org-weights/model-00001-of-00004.safetensors", 500_000_000, 500_000_000, Some(8.5e6)),
            "  …-of-00004.safetensors [================] 500.00 MB/500.00 MB 8.50 MB/s"
        );
        assert_eq!(
            file_line("config.json", 0, 1000, None),
            "  config.json            [>               ] 0 B/1.00 kB waiting"
        );
        assert_eq!(duration(Duration::from_secs(7322)), "2h02m");
    }

    #[test]
    fn no_line_is_wider_than_80_columns() {
        let big = 999_999_999_999_999;
        let long = "a/".repeat(60) + "file.bin";
        for line in [
            total_line(big, big, Some(9.9e14), Some(Duration::from_secs(10_000_000))),
            total_line(big - 1, big, Some(1.0), Some(Duration::from_secs(10_000_000))),
            counts_line(1_000_000, 1_000_000, big, big),
            file_line(&long, big - 1, big, Some(9.9e14)),
            file_line("日本語のファイル名がとても長い場合のテスト.safetensors", 1, big, Some(1.0)),
        ] {
            assert!(line.chars().count() <= WIDTH, "{} columns: {line}", line.chars().count());
        }
    }
}
