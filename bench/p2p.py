#!/usr/bin/env python3
"""Peer-to-peer benchmark: two swarm-dl nodes on loopback.

Node A (`swarm-dl join`) holds a repo; node B downloads it with A as its only peer
(mDNS off, A given with --peer), so every byte crosses the libp2p connection
(TCP + Noise + yamux), is checked against A's signed chunk record and written to B's cache.

Scenarios:
  p2p-1file   one 1 GiB file: B's `get` runs its own embedded node.
  p2p-repo    a repo of 4 x 256 MiB shards plus small files: B is a `join` node too, and
              `get` runs inside it through the control API (the way a cluster node works).
For each run: wall time, MiB/s, CPU seconds of A and of B (user+sys), peak RSS of A and B,
bytes B took from peers vs the Hub, and the file bytes the Hub stand-in served during the run.

With --private, both nodes share a swarm key (a private swarm). CPU is also given per GiB moved:
A's per GiB served, B's per GiB received.

With --phases, one more p2p-repo run is sampled with `perf record` on both nodes, and their CPU
is split by phase (whole-file sha256, chunk BLAKE3, encryption, copies, page cache, ...), in
CPU-seconds per GiB. Symbols need a build that keeps them: `cargo build --profile profiling`
(target/profiling/swarm-dl), given with --binary.

Usage: python3 bench/p2p.py [--size-mib 1024] [--repeat 3] [--private] [--binary PATH] [--phases [--keep-perf DIR]]
Needs: a release build (built here unless --binary names one); perf for --phases.
"""
import argparse
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request

import machine

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
OUT = os.path.join(ROOT, "bench", "out")
BIN = os.path.join(ROOT, "target", "release", "swarm-dl")
KEY = []  # ["--swarm-key", FILE] with --private


def random_file(path, size):
    if os.path.exists(path) and os.path.getsize(path) == size:
        return
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "wb") as f:
        subprocess.run(["head", "-c", str(size), "/dev/urandom"], stdout=f, check=True)


def make_repos(size_mib):
    hub = os.path.join(OUT, f"p2p-hub-{size_mib}")
    one = os.path.join(hub, "bench", "one-file")
    random_file(os.path.join(one, "model.safetensors"), size_mib << 20)
    repo = os.path.join(hub, "bench", "sharded")
    shard = (size_mib << 20) // 4
    for i in range(4):
        random_file(os.path.join(repo, f"model-0000{i + 1}-of-00004.safetensors"), shard)
    with open(os.path.join(repo, "config.json"), "w") as f:
        f.write('{"architectures": ["Bench"]}\n')
    with open(os.path.join(repo, "tokenizer.json"), "w") as f:
        f.write(json.dumps({"vocab": [f"t{i}" for i in range(5000)]}))
    return hub


def env_for(work):
    env = {k: v for k, v in os.environ.items() if not k.startswith(("HF_", "SWARM_DL"))}
    env["HF_HOME"] = os.path.join(work, "hf-home")
    return env


class Proc:
    """A long-running swarm-dl process that prints one JSON line when ready."""

    def __init__(self, args, env):
        self.p = subprocess.Popen([BIN] + args, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, env=env, text=True)
        self.info = json.loads(self.p.stdout.readline())

    def cpu(self):
        with open(f"/proc/{self.p.pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        tick = os.sysconf("SC_CLK_TCK")
        return (int(fields[11]) + int(fields[12])) / tick

    def peak_rss_mb(self):
        with open(f"/proc/{self.p.pid}/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
        return 0.0

    def stop(self):
        self.p.terminate()
        self.p.wait()


def hub_served(endpoint):
    with urllib.request.urlopen(endpoint + "/_swarm-dl/stats") as r:
        s = json.load(r)
    return s["data_bytes"] + s["resolve_bytes"]


def run_get(args, env):
    t0 = time.monotonic()
    p = subprocess.Popen([BIN] + args, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    _, status, ru = os.wait4(p.pid, 0)
    dt = time.monotonic() - t0
    out, err = p.stdout.read().decode(), p.stderr.read().decode()
    if os.waitstatus_to_exitcode(status) != 0:
        sys.exit(f"get failed: {err[-2000:]}")
    return dt, ru.ru_utime + ru.ru_stime, ru.ru_maxrss / 1024, json.loads(out)


# Where a node's CPU goes, by the symbol perf sampled: first match wins.
PHASES = [
    ("whole-file sha256 (the ETag check)", r"sha2::|sha256_block|sha256::"),
    ("chunk hash (BLAKE3)", r"blake3"),
    ("encryption (Noise: AES-256-GCM since 2026-12-03, ChaCha20-Poly1305 before)",
     r"chacha|poly1305|aes_|aesni|_aes|gcm|ghash|snow::"),
    ("kernel: page cache writes", r"copy_folio_from_iter|ext4_|block_|mark_buffer|folio"),
    ("kernel: copies to and from sockets and files", r"_copy_to_iter|_copy_from_iter|skb_|copy_page_to_iter|tcp_|__skb"),
    ("user copies and zeroing (memmove, memset)", r"memmove|memset|memcpy"),
    ("yamux, libp2p, tokio, allocator", r"yamux|libp2p|multistream|tokio|futures|malloc|_int_free|free|calloc|mio|epoll"),
]


def perf_start(pid, path):
    return subprocess.Popen(["perf", "record", "-F", "499", "-p", str(pid), "-o", path, "--quiet"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def perf_phases(path, pids=None):
    """Share of samples per phase (the rest under "other"); with `pids`, of those processes'
    samples only, as shares of theirs."""
    only = ["--pid", ",".join(str(p) for p in pids), "--percentage", "relative"] if pids else []
    out = subprocess.run(["perf", "report", "-i", path, "--no-children", "--sort", "symbol", "--stdio", *only],
                         capture_output=True, text=True).stdout
    shares = {name: 0.0 for name, _ in PHASES}
    shares["other (kernel scheduling, syscalls, the rest)"] = 0.0
    for line in out.splitlines():
        m = re.match(r"\s+([0-9.]+)%\s+\[[.k]\]\s+(.*)", line)
        if not m:
            continue
        pct, sym = float(m.group(1)), m.group(2)
        name = next((n for n, rx in PHASES if re.search(rx, sym)), "other (kernel scheduling, syscalls, the rest)")
        shares[name] += pct / 100
    return shares


def one_run(scenario, hub, work, phases=False):
    env = env_for(work)
    repo = "bench/one-file" if scenario == "p2p-1file" else "bench/sharded"
    cache_a, cache_b = os.path.join(work, "a"), os.path.join(work, "b")
    # Seed A from the Hub alone, then let the page cache settle.
    subprocess.run([BIN, "get", repo, "--endpoint", hub.info["endpoint"], "--cache-dir", cache_a, "--no-swarm", "--quiet"],
                   env=env, check=True, stdout=subprocess.DEVNULL)
    subprocess.run(["sync"], check=True)
    swarm = ["--no-mdns", "--listen", "/ip4/127.0.0.1/tcp/0"] + KEY
    a = Proc(["join", "--cache-dir", cache_a, "--json"] + swarm, env)
    b = None
    try:
        peer = a.info["listen"][0]
        served0 = hub_served(hub.info["endpoint"])
        cpu_a0 = a.cpu()
        get = ["get", repo, "--endpoint", hub.info["endpoint"], "--cache-dir", cache_b, "--json", "--quiet"]
        if scenario == "p2p-1file":
            dt, cpu_b, rss_b, out = run_get(get + swarm + ["--peer", peer, "--peer-wait", "5"], env)
        else:
            b = Proc(["join", "--cache-dir", cache_b, "--json", "--peer", peer] + swarm, env)
            perf = [perf_start(a.p.pid, os.path.join(work, "a.perf")), perf_start(b.p.pid, os.path.join(work, "b.perf"))] if phases else []
            time.sleep(0.5 if phases else 0)
            cpu_b0 = b.cpu()
            dt, cpu_get, _, out = run_get(get, env)
            cpu_b = b.cpu() - cpu_b0 + cpu_get
            rss_b = b.peak_rss_mb()
            for p in perf:
                p.send_signal(2)
                p.wait()
        served = hub_served(hub.info["endpoint"]) - served0
        gib = out["bytes_from_peers"] / (1 << 30)
        return {
            "cpu_a_gib": (a.cpu() - cpu_a0) / gib if gib else 0.0,
            "cpu_b_gib": cpu_b / gib if gib else 0.0,
            "wall_s": dt,
            "mib_s": out["bytes"] / dt / (1 << 20),
            "cpu_a_s": a.cpu() - cpu_a0,
            "cpu_b_s": cpu_b,
            "rss_a_mb": a.peak_rss_mb(),
            "rss_b_mb": rss_b,
            "from_peers": out["bytes_from_peers"] / out["bytes"],
            "hub_file_bytes": served,
            "phases": (perf_phases(os.path.join(work, "a.perf")), perf_phases(os.path.join(work, "b.perf"))) if phases else None,
        }
    finally:
        a.stop()
        if b:
            b.stop()


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--size-mib", type=int, default=1024)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--private", action="store_true", help="both nodes in a private swarm (one swarm key)")
    ap.add_argument("--binary", default=None, help="swarm-dl binary to measure (default: the release build, built here)")
    ap.add_argument("--phases", action="store_true", help="one more p2p-repo run under perf: CPU per GiB by phase")
    ap.add_argument("--keep-perf", metavar="DIR", help="with --phases: keep a.perf and b.perf in DIR (for perf report -i)")
    args = ap.parse_args()
    global BIN
    if args.binary is None:
        subprocess.run(["cargo", "build", "--release", "--locked", "-p", "swarm-dl"], cwd=ROOT, check=True)
    else:
        BIN = args.binary
    if args.phases and "no symbols" in subprocess.run(["nm", BIN], capture_output=True, text=True).stderr:
        sys.exit(f"{BIN} has no symbols, so --phases could not tell sha256, BLAKE3 and encryption apart: "
                 "build `cargo build --profile profiling` and pass --binary target/profiling/swarm-dl")
    if args.private:
        key = os.path.join(tempfile.mkdtemp(prefix="swarm-dl-p2p-key-"), "swarm.key")
        subprocess.run([BIN, "keygen", key], check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        KEY.extend(["--swarm-key", key])
    hub_dir = make_repos(args.size_mib)
    probe = [machine.page_cache_cost(OUT)]
    env = env_for(tempfile.gettempdir())
    hub = Proc(["hub", "serve", hub_dir, "--listen", "127.0.0.1:0", "--json"], env)
    rows = []
    try:
        for scenario in ["p2p-1file", "p2p-repo"]:
            runs = []
            for _ in range(args.repeat):
                work = tempfile.mkdtemp(prefix="swarm-dl-p2p-", dir=OUT)
                try:
                    runs.append(one_run(scenario, hub, work))
                finally:
                    shutil.rmtree(work, ignore_errors=True)
            med = sorted(runs, key=lambda r: r["wall_s"])[len(runs) // 2]
            walls = [r["wall_s"] for r in runs]
            rows.append((scenario, med, min(walls), max(walls), max(r["rss_a_mb"] for r in runs), max(r["rss_b_mb"] for r in runs)))
        sampled = None
        if args.phases:
            work = tempfile.mkdtemp(prefix="swarm-dl-p2p-", dir=OUT)
            try:
                sampled = one_run("p2p-repo", hub, work, phases=True)
                if args.keep_perf:
                    os.makedirs(args.keep_perf, exist_ok=True)
                    for f in ("a.perf", "b.perf"):
                        shutil.copy(os.path.join(work, f), os.path.join(args.keep_perf, f))
            finally:
                shutil.rmtree(work, ignore_errors=True)
    finally:
        hub.stop()
    probe.append(machine.page_cache_cost(OUT))
    swarm = "private swarm" if args.private else "open swarm"
    print("\n" + machine.describe(*probe))
    print(f"\n{args.size_mib} MiB over loopback, {swarm}, {args.repeat} runs each; median run shown (wall range in brackets)\n")
    print("| scenario | wall s (range) | MiB/s | CPU A s | CPU B s | CPU-s/GiB A serving | CPU-s/GiB B receiving | peak RSS A MB | peak RSS B MB | from peers | Hub file bytes |")
    print("|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for s, m, lo, hi, ra, rb in rows:
        print(f"| {s} | {m['wall_s']:.2f} ({lo:.2f}–{hi:.2f}) | {m['mib_s']:.0f} | {m['cpu_a_s']:.2f} | {m['cpu_b_s']:.2f} "
              f"| {m['cpu_a_gib']:.2f} | {m['cpu_b_gib']:.2f} | {ra:.0f} | {rb:.0f} | {m['from_peers']:.3f} | {m['hub_file_bytes']} |")
    if sampled:
        pa, pb = sampled["phases"]
        print(f"\nCPU by phase, one p2p-repo run under perf (A served, B received, {sampled['wall_s']:.2f} s): "
              f"share of samples, and CPU-seconds per GiB\n")
        print("| phase | A serving % | A CPU-s/GiB | B receiving % | B CPU-s/GiB |")
        print("|---|---:|---:|---:|---:|")
        for name in pa:
            print(f"| {name} | {100 * pa[name]:.1f} | {pa[name] * sampled['cpu_a_gib']:.2f} "
                  f"| {100 * pb[name]:.1f} | {pb[name] * sampled['cpu_b_gib']:.2f} |")
        print(f"| total | 100 | {sampled['cpu_a_gib']:.2f} | 100 | {sampled['cpu_b_gib']:.2f} |")


if __name__ == "__main__":
    main()
