#!/usr/bin/env python3
"""Single-machine benchmark (the Hub path; `get --no-swarm`): swarm-dl get vs huggingface_hub.snapshot_download vs aria2c -x16.

All three download the same repo (a 1 GiB safetensors file plus a config) from
`swarm-dl hub serve` on loopback, (i) unthrottled and (ii) with the data listener capped at
8 MB/s per connection. For each run: wall time, MB/s (10^6 bytes), bytes served by the
stand-in relative to the repo size, and peak RSS of the downloading process.

Usage: python3 bench/single.py [--size-mib N] [--only swarm-dl,hf,aria2c] [--scenarios open,capped]
                               [--binary PATH]
Needs: a release build (built here unless --binary names one), .venv with huggingface_hub (scripts/test makes it), aria2c.
"""
import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.request

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
OUT = os.path.join(ROOT, "bench", "out")
BIN = os.path.join(ROOT, "target", "release", "swarm-dl")
PY = os.path.join(ROOT, ".venv", "bin", "python")
REPO = "bench/model-1g"


def make_repo(size_mib):
    hub = os.path.join(OUT, f"hub-{size_mib}")
    d = os.path.join(hub, REPO)
    f = os.path.join(d, "model.safetensors")
    if not (os.path.exists(f) and os.path.getsize(f) == size_mib << 20):
        os.makedirs(d, exist_ok=True)
        with open(os.path.join(d, "config.json"), "w") as c:
            c.write('{"architectures": ["Bench"]}\n')
        subprocess.run(["head", "-c", str(size_mib << 20), "/dev/urandom"], stdout=open(f, "wb"), check=True)
    size = sum(os.path.getsize(os.path.join(d, n)) for n in os.listdir(d))
    return hub, size


class Hub:
    def __init__(self, hub_dir, rate):
        args = [BIN, "hub", "serve", hub_dir, "--listen", "127.0.0.1:0", "--json"]
        if rate:
            args += ["--data-rate", rate]
        self.p = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
        self.endpoint = json.loads(self.p.stdout.readline())["endpoint"]

    def served(self):
        with urllib.request.urlopen(self.endpoint + "/_swarm-dl/stats") as r:
            s = json.load(r)
        return s["data_bytes"] + s["resolve_bytes"]

    def stop(self):
        self.p.terminate()
        self.p.wait()


def run_measured(args, env=None):
    """Runs a command, returns (seconds, peak RSS in MB, stdout)."""
    t0 = time.monotonic()
    p = subprocess.Popen(args, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    _, status, ru = os.wait4(p.pid, 0)
    dt = time.monotonic() - t0
    out, err = p.stdout.read(), p.stderr.read()
    p.returncode = os.waitstatus_to_exitcode(status)
    if p.returncode != 0:
        sys.exit(f"{args[0]} failed ({p.returncode}): {err.decode()[-2000:]}")
    return dt, ru.ru_maxrss / 1024, out.decode()


def tool_cmd(tool, endpoint, work):
    env = {k: v for k, v in os.environ.items() if not k.startswith("HF_")}
    env["HF_HOME"] = os.path.join(work, "hf-home")
    if tool == "swarm-dl":
        return [BIN, "get", REPO, "--endpoint", endpoint, "--cache-dir", os.path.join(work, "cache"), "--quiet", "--no-swarm"], env
    if tool == "hf":
        env.update(HF_ENDPOINT=endpoint, HF_HUB_DISABLE_XET="1", HF_HUB_DISABLE_PROGRESS_BARS="1", HF_HUB_DISABLE_TELEMETRY="1")
        code = f"from huggingface_hub import snapshot_download; print(snapshot_download({REPO!r}, cache_dir={os.path.join(work, 'cache')!r}))"
        return [PY, "-c", code], env
    if tool == "aria2c":
        url = f"{endpoint}/{REPO}/resolve/main/model.safetensors"
        return ["aria2c", "-x16", "-s16", "-k1M", "--file-allocation=none", "-q", "-d", work, "-o", "model.safetensors", url], env
    raise ValueError(tool)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--size-mib", type=int, default=1024)
    ap.add_argument("--only", default="swarm-dl,hf,aria2c")
    ap.add_argument("--scenarios", default="open,capped")
    ap.add_argument("--repeat", type=int, default=3, help="runs per tool, unthrottled (median reported)")
    ap.add_argument("--binary", help="the swarm-dl to measure (default: a release build of this tree)")
    a = ap.parse_args()
    global BIN
    if a.binary:
        BIN = os.path.abspath(a.binary)
    else:
        subprocess.run(["cargo", "build", "--release", "--quiet", "-p", "swarm-dl"], cwd=ROOT, check=True)
    hub_dir, size = make_repo(a.size_mib)
    tools = [t for t in a.only.split(",") if t]
    if "aria2c" in tools and not shutil.which("aria2c"):
        print("aria2c not installed (apt-get install aria2): skipped", file=sys.stderr)
        tools.remove("aria2c")
    if "hf" in tools and not os.path.exists(PY):
        print(".venv missing (run scripts/test once): huggingface_hub skipped", file=sys.stderr)
        tools.remove("hf")
    scenarios = {"open": None, "capped": "8M"}
    rows = []
    for name in a.scenarios.split(","):
        rate = scenarios[name]
        for tool in tools:
            runs = []
            for _ in range(a.repeat if rate is None else 1):
                hub = Hub(hub_dir, rate)
                work = tempfile.mkdtemp(prefix="swarm-bench-")
                try:
                    # Earlier runs' dirty pages must not be written back during this one.
                    os.sync()
                    before = hub.served()
                    args, env = tool_cmd(tool, hub.endpoint, work)
                    dt, rss, _ = run_measured(args, env)
                    served = hub.served() - before
                finally:
                    hub.stop()
                    shutil.rmtree(work, ignore_errors=True)
                runs.append((dt, served, rss))
            runs.sort()
            dt, served, rss = runs[len(runs) // 2]
            spread = f"{runs[0][0]:.2f}-{runs[-1][0]:.2f}" if len(runs) > 1 else "-"
            label = "unthrottled" if rate is None else f"{rate}B/s per conn"
            rows.append((label, tool, dt, spread, size / dt / 1e6, served / size, max(r[2] for r in runs)))
            print(f"{label:>18}  {tool:<9} {dt:8.2f} s ({spread}) {size / dt / 1e6:9.1f} MB/s  served {served / size:5.3f}x  RSS {rss:6.1f} MB", file=sys.stderr)
    print(f"\nrepo: {size} bytes ({size / 2**20:.0f} MiB); cores: {os.cpu_count()}")
    print("| scenario | tool | wall (s), median | range (s) | MB/s | bytes served / repo | peak RSS (MB) |")
    print("|---|---|---:|---:|---:|---:|---:|")
    for label, tool, dt, spread, mbs, ratio, rss in rows:
        print(f"| {label} | {tool} | {dt:.2f} | {spread} | {mbs:.0f} | {ratio:.3f} | {rss:.0f} |")


if __name__ == "__main__":
    main()
