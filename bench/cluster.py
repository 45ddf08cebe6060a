#!/usr/bin/env python3
"""Cluster benchmark: N nodes pull one repo through a shaped uplink (root; network namespaces).

A Hub host runs `swarm-dl hub serve` behind an uplink shaped with tc (a token bucket on its
egress); N node hosts sit on a LAN bridge. For each N, all nodes start at once and we measure
the makespan (first start -> last finish), the file bytes the Hub served relative to the repo
size, and the Hub API requests; first with `swarm-dl get` in a private swarm (mDNS discovery,
peers first, cooperative Hub fetching, shared metadata), then with N parallel `huggingface_hub.snapshot_download` as the
baseline. The bound is repo size / uplink rate.

Scenarios (--scenarios, comma-separated) vary the start order, discovery, swarm and get mode;
--runs K repeats each and reports the worst run (and the median). --binary measures another build
(e.g. an older commit's, for a before/after).

Usage: sudo python3 bench/cluster.py [--size-mib 512] [--uplink-mbit 400] [--nodes 1,2,4,8]
           [--scenarios together,join,join-private,seed-last,staggered,endpoint] [--runs 5] [--skip-baseline]
           [--log DIR] [--perf DIR] [--binary PATH]
--log keeps the nodes' logs and a timeline of each run (uplink MB/s and cores busy, twice a
second), and prints when the last chunk landed from the Hub and from a peer and when the last file
was verified; --perf splits the nodes' CPU by phase (with a `--profile profiling` build).
Raises the kernel's neighbour-table limits while it runs (see raise_neighbour_limits).
Needs: root, iproute2 (ip, tc), perf for --perf, a release build (built here), .venv with huggingface_hub
(scripts/test makes it).
"""
import argparse
import datetime
import json
import os
import resource
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time

import machine
import p2p

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
OUT = os.path.join(ROOT, "bench", "out")
BIN = os.path.join(ROOT, "target", "release", "swarm-dl")
PY = os.path.join(ROOT, ".venv", "bin", "python")
REPO = "bench/cluster-model"
PREFIX = f"sdb{os.getpid() % 10000}"


def ip(*args):
    subprocess.run(["ip", *args], check=True)


def ns(i):
    return f"{PREFIX}-h{i}"


def addr(i):
    return f"10.78.0.{i + 1}"


NEIGH_LIMIT = "/proc/sys/net/ipv4/neigh/default/gc_thresh{}"


def raise_neighbour_limits(hosts):
    """Makes room in the kernel's neighbour (ARP) table for a full mesh of `hosts` hosts.

    Network namespaces share one table, with one hard limit for the whole machine (gc_thresh3,
    1,024 by default). 33 hosts that all talk to each other need about 1,100 entries: past the
    limit the kernel logs "neighbor table overflow" and drops the first packet of every new
    neighbour, so at 32 nodes half of one node's dials hung for tens of seconds and the run looked
    like a partial view of the swarm. One host of a real cluster needs one entry per peer.
    Returns the values it changed, for `restore_neighbour_limits`."""
    need = 2 * hosts * hosts
    changed = {}
    for i, floor in ((1, need // 4), (2, need), (3, 2 * need)):
        path = NEIGH_LIMIT.format(i)
        with open(path) as f:
            cur = int(f.read())
        if cur < floor:
            changed[path] = cur
            with open(path, "w") as f:
                f.write(str(floor))
    return changed


def restore_neighbour_limits(changed):
    for path, value in changed.items():
        with open(path, "w") as f:
            f.write(str(value))


class Testbed:
    """Host 0 is the Hub; hosts 1..n are nodes; all on one bridge in a namespace of its own."""

    def __init__(self, n, uplink_mbit):
        self.hosts = n + 1
        self.neigh = raise_neighbour_limits(self.hosts)
        self.lan = f"{PREFIX}-lan"
        ip("netns", "add", self.lan)
        ip("-n", self.lan, "link", "add", "br0", "type", "bridge")
        ip("-n", self.lan, "link", "set", "br0", "up")
        for i in range(self.hosts):
            ip("netns", "add", ns(i))
            ip("link", "add", "eth0", "netns", ns(i), "type", "veth", "peer", "name", f"p{i}", "netns", self.lan)
            ip("-n", self.lan, "link", "set", f"p{i}", "master", "br0", "up")
            ip("-n", ns(i), "addr", "add", f"{addr(i)}/24", "dev", "eth0")
            ip("-n", ns(i), "link", "set", "eth0", "up")
            ip("-n", ns(i), "link", "set", "lo", "up")
            ip("-n", ns(i), "route", "add", "default", "dev", "eth0")
        subprocess.run(["ip", "netns", "exec", ns(0), "tc", "qdisc", "replace", "dev", "eth0", "root", "tbf",
                        "rate", f"{uplink_mbit}mbit", "burst", "256kb", "latency", "100ms"], check=True)

    def close(self):
        for n in [ns(i) for i in range(self.hosts)] + [self.lan]:
            pids = subprocess.run(["ip", "netns", "pids", n], capture_output=True, text=True).stdout.split()
            for p in pids:
                subprocess.run(["kill", "-9", p])
            subprocess.run(["ip", "netns", "del", n])
        restore_neighbour_limits(self.neigh)


def make_repo(size_mib):
    hub = os.path.join(OUT, f"cluster-hub-{size_mib}")
    d = os.path.join(hub, REPO)
    os.makedirs(d, exist_ok=True)
    shard = (size_mib << 20) // 2
    for k in range(2):
        f = os.path.join(d, f"model-0000{k + 1}-of-00002.safetensors")
        if not (os.path.exists(f) and os.path.getsize(f) == shard):
            with open(f, "wb") as out:
                subprocess.run(["head", "-c", str(shard), "/dev/urandom"], stdout=out, check=True)
    with open(os.path.join(d, "config.json"), "w") as f:
        f.write('{"architectures": ["Bench"]}\n')
    size = sum(os.path.getsize(os.path.join(d, n)) for n in os.listdir(d))
    return hub, size


def stats(endpoint):
    code = f"import json,urllib.request;print(urllib.request.urlopen({endpoint + '/_swarm-dl/stats'!r}).read().decode())"
    out = subprocess.run(["ip", "netns", "exec", ns(1), "python3", "-c", code], capture_output=True, text=True, check=True)
    s = json.loads(out.stdout)
    return s["data_bytes"] + s["resolve_bytes"], s["api_requests"]


class UplinkTimeline:
    """Samples, every 0.5 s in a thread, the bytes the Hub host has sent (its shaped eth0) and
    how busy the machine's cores are.

    With --log, each run writes `<scenario>-<n>-uplink.tsv` (seconds since the start, uplink
    MB/s and cores busy over the last half second) and prints when the Hub's data started and
    ended: a makespan far above the bound with the uplink busy to the bound is the tail's
    (spreading the last chunks over the LAN), gaps before it are the Hub work's."""

    def __init__(self, t0):
        self.t0, self.samples, self.stop = t0, [], threading.Event()
        self.thread = threading.Thread(target=self.run, daemon=True)
        self.thread.start()

    @staticmethod
    def sent():
        out = subprocess.run(["ip", "netns", "exec", ns(0), "tc", "-s", "qdisc", "show", "dev", "eth0"],
                             capture_output=True, text=True).stdout
        return int(out.split("Sent ")[1].split()[0]) if "Sent " in out else 0

    @staticmethod
    def cpu():
        with open("/proc/stat") as f:
            v = [int(x) for x in f.readline().split()[1:]]
        return sum(v) - v[3] - v[4], sum(v)  # busy (all but idle and iowait), total

    def run(self):
        while not self.stop.wait(0.5):
            self.samples.append((time.monotonic() - self.t0, self.sent(), *self.cpu()))

    def write(self, path, rate_bytes):
        self.stop.set()
        self.thread.join()
        rows, data = [], []
        cores = os.cpu_count() or 1
        for (t0, b0, u0, a0), (t1, b1, u1, a1) in zip(self.samples, self.samples[1:]):
            rate = (b1 - b0) / (t1 - t0)
            busy = cores * (u1 - u0) / max(1, a1 - a0)
            rows.append(f"{t1:.1f}\t{rate / 1e6:.2f}\t{busy:.2f}")
            if rate >= rate_bytes / 10:  # data, not the requests' and acks' trickle
                data.append((t0, t1))
        hub = f"{data[0][0]:.1f} s to {data[-1][1]:.1f} s" if data else "never"
        slow = sum(t1 - t0 for t0, t1 in zip([d[1] for d in data], [d[0] for d in data[1:]]))
        summary = f"uplink: Hub data from {hub}, idle for {slow:.1f} s in between"
        with open(path, "w") as f:
            f.write(f"# {summary}\n# s\tuplink MB/s\tcores busy\n" + "\n".join(rows) + "\n")
        return summary


def end_of_run(log_dir, scenario, n, wall0):
    """From the nodes' logs (--log): seconds after the start at which the last chunk landed from
    the Hub, the last chunk landed from a peer, and the last file was verified. After the Hub's
    last byte, what is left is the end of the download: spreading the last chunks over the LAN
    and each node's whole-file check. Hub landings are logged once the Hub window has reached
    the end of a file, which is when the last ones land."""
    last = {}
    marks = (("landed near the end", "hub"), ("landed from a peer", "peer"), ("file complete", "verified"))
    for name in sorted(os.listdir(log_dir)):
        if not (name.startswith(f"{scenario}-{n}-") and name.endswith(".log")):
            continue
        with open(os.path.join(log_dir, name), errors="replace") as f:
            for line in f:
                what = next((w for key, w in marks if key in line), None)
                if what and line[:4].isdigit():
                    t = datetime.datetime.fromisoformat(line.split()[0]).timestamp() - wall0
                    last[what] = max(last.get(what, t), t)
    at = {w: f"{last[w]:.2f} s" if w in last else "-" for _, w in marks}
    return (f"end of run: last chunk from the Hub at {at['hub']}, last from a peer at {at['peer']}, "
            f"last file verified at {at['verified']}")


def stop_recorder(recorder):
    """Stops a `perf record` (it writes its file on SIGINT), if one runs."""
    if recorder and recorder.poll() is None:
        recorder.send_signal(signal.SIGINT)
        recorder.wait()


def clean_env(home):
    env = {k: v for k, v in os.environ.items() if not k.startswith(("HF_", "SWARM_DL"))}
    env.update(HF_HOME=os.path.join(home, "hf-home"), HOME=home)
    return env


SCENARIOS = {
    # name: (how the node runs, swarm, delay of host i in seconds)
    "together": ("embedded", "private", lambda i: 0.0),
    "join": ("join", "open", lambda i: 0.0),
    "join-private": ("join", "private", lambda i: 0.0),
    "seed-last": ("join", "open", lambda i: 2.0 if i == 1 else 0.0),
    "staggered": ("join", "open", lambda i: 0.5 * (i - 1)),
    "endpoint": ("endpoint", "open", lambda i: 0.0),
}
SCENARIO_HELP = """together: every node runs `get` (its own node) at the same instant, private swarm, mDNS.
join: every node runs `join --no-mdns --peer <node 1>` and then `get` through it, open swarm.
join-private: the same with a swarm key.
seed-last: as join, but node 1 (the seed every --peer names) starts 2 s after the others.
staggered: as join, nodes starting one every 0.5 s, the seed first.
endpoint: as join, but the client on each host is unmodified `snapshot_download` with
  HF_ENDPOINT set to its own node's Hub endpoint (join --hub-listen)."""


def spawn(i, cmd, env, log=None):
    return subprocess.Popen(["ip", "netns", "exec", ns(i), *cmd], env=env, stdout=subprocess.PIPE,
                            stderr=open(log, "w") if log else subprocess.PIPE, text=True)


def run_round(tool, scenario, n, hub_dir, size, uplink_mbit, work, key_file, binary, log_dir=None, metrics=None,
              perf=None):
    mode, swarm, delay = SCENARIOS[scenario]
    tb = Testbed(n, uplink_mbit)
    recorder = None
    joins = []
    homes = []
    try:
        hub = subprocess.Popen(["ip", "netns", "exec", ns(0), binary, "hub", "serve", hub_dir, "--json",
                                "--listen", f"{addr(0)}:8080", "--data-listen", f"{addr(0)}:8081"],
                               stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
        endpoint = json.loads(hub.stdout.readline())["endpoint"]
        procs = []
        ru0 = resource.getrusage(resource.RUSAGE_CHILDREN)
        t0, wall0 = time.monotonic(), time.time()
        timeline = UplinkTimeline(t0) if log_dir else None
        recorder = subprocess.Popen(["perf", "record", "-a", "-F", "499", "-o", perf, "--quiet"],
                                    stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL) if perf else None
        for i in sorted(range(1, n + 1), key=lambda i: (delay(i) if tool == "swarm-dl" else 0.0, i)):
            if tool == "swarm-dl":
                time.sleep(max(0.0, t0 + delay(i) - time.monotonic()))
            # Short: a join node's control socket path must fit in 107 bytes.
            home = os.path.join(work, f"{tool[0]}{scenario[:3]}{n}-{i}-{time.monotonic_ns() % 10**6}")
            os.makedirs(home, exist_ok=True)
            homes.append(home)
            env = clean_env(home)
            if log_dir:
                env["SWARM_DL_LOG"] = "info,swarm_node::fetch=debug,swarm_node::scheduler=debug"
            cache = os.path.join(home, "cache")
            keys = ["--swarm-key", key_file] if swarm == "private" else []
            if tool == "swarm-dl" and mode in ("join", "endpoint"):
                peer = [] if i == 1 else ["--peer", f"/ip4/{addr(1)}/tcp/4001"]
                scrape = ["--metrics-listen", f"{addr(i)}:9464"] if metrics else []
                j = spawn(i, [binary, "join", "--cache-dir", cache, "--json", "--no-mdns", "--endpoint", endpoint,
                              "--listen", f"/ip4/{addr(i)}/tcp/4001", *peer, *keys, *scrape], env,
                          os.path.join(log_dir, f"{scenario}-{n}-join{i}.log") if log_dir else os.devnull)
                ready = json.loads(j.stdout.readline())  # ready: a get now goes through this node
                joins.append(j)
                cmd = [binary, "get", REPO, "--endpoint", endpoint, "--cache-dir", cache, "--quiet", "--json"]
                if mode == "endpoint":
                    env.update(HF_ENDPOINT=ready["hub_endpoint"], HF_HUB_DISABLE_PROGRESS_BARS="1",
                               HF_HUB_DISABLE_TELEMETRY="1")
                    client_cache = os.path.join(home, "client-cache")
                    cmd = [PY, "-c", f"from huggingface_hub import snapshot_download as s; print(s({REPO!r}, cache_dir={client_cache!r}))"]
            elif tool == "swarm-dl":
                cmd = [binary, "get", REPO, "--endpoint", endpoint, "--cache-dir", cache, "--quiet", "--json", *keys]
            else:
                env.update(HF_ENDPOINT=endpoint, HF_HUB_DISABLE_XET="1", HF_HUB_DISABLE_PROGRESS_BARS="1",
                           HF_HUB_DISABLE_TELEMETRY="1")
                cmd = [PY, "-c", f"from huggingface_hub import snapshot_download as s; print(s({REPO!r}, cache_dir={cache!r}))"]
            procs.append(spawn(i, cmd, env, os.path.join(log_dir, f"{scenario}-{n}-node{i}.log") if log_dir else None))
        ends = []
        dups = takeovers = 0
        for p in procs:
            out, err = p.communicate()
            ends.append(time.monotonic())
            if p.returncode != 0:
                sys.exit(f"{tool} failed on a node: {(err or '(see its log)')[-1500:]}")
            if tool == "swarm-dl" and mode != "endpoint":
                o = json.loads(out.splitlines()[-1])
                dups += o.get("chunks_duplicated", 0)
                takeovers += o.get("chunks_taken_over", 0)
        stop_recorder(recorder)
        if metrics and joins:
            # Each join node's /metrics once every get is done: what an operator's Prometheus sees.
            with open(metrics, "w") as f:
                for i in range(1, len(joins) + 1):
                    body = subprocess.run(["ip", "netns", "exec", ns(i), "curl", "-s", f"http://{addr(i)}:9464/metrics"],
                                          capture_output=True, text=True).stdout
                    f.write(f"# node {i} ({addr(i)})\n{body}\n")
        for j in joins:
            j.terminate()
            j.communicate()
        ru1 = resource.getrusage(resource.RUSAGE_CHILDREN)
        cpu = (ru1.ru_utime - ru0.ru_utime) + (ru1.ru_stime - ru0.ru_stime)
        served, api = stats(endpoint)
        if timeline:
            print(timeline.write(os.path.join(log_dir, f"{scenario}-{n}-uplink.tsv"), uplink_mbit * 1e6 / 8), flush=True)
            print(end_of_run(log_dir, scenario, n, wall0), flush=True)
        hub.terminate()
        hub.wait()
        makespan = max(ends) - t0
        # CPU busy: the nodes' CPU time over what the machine's cores offer in the makespan
        # (near 1.0: CPU, not the uplink, is the limit).
        busy = cpu / ((os.cpu_count() or 1) * makespan)
        phases = p2p.perf_phases(perf, [p.pid for p in joins + procs]) if perf else None
        return {"makespan": makespan, "hub_ratio": served / size, "api": api, "cpu": cpu, "busy": busy, "dups": dups,
                "takeovers": takeovers, "phases": phases}
    finally:
        stop_recorder(recorder)  # a failed run must not leave `perf record -a` running
        for j in joins:
            if j.poll() is None:
                j.kill()
        tb.close()
        # Each round's caches are N copies of the repo: keep them only for this round, or a
        # matrix of runs fills the disk (5 runs x 4 scenarios x 8 nodes x 512 MiB = 80 GiB).
        for h in homes:
            shutil.rmtree(h, ignore_errors=True)


def main():
    ap = argparse.ArgumentParser(epilog=SCENARIO_HELP, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size-mib", type=int, default=512)
    ap.add_argument("--uplink-mbit", type=int, default=400)
    ap.add_argument("--nodes", default="1,2,4,8")
    ap.add_argument("--scenarios", default="together", help="comma-separated: " + ",".join(SCENARIOS))
    ap.add_argument("--runs", type=int, default=1, help="runs per scenario and N; the worst is reported")
    ap.add_argument("--skip-baseline", action="store_true")
    ap.add_argument("--log", help="keep each get's log (info; fetch and scheduler at debug) in this directory, one folder per run")
    ap.add_argument("--metrics", help="join scenarios: write each join node's /metrics after the last run to this file")
    ap.add_argument("--perf", metavar="DIR", help="record each swarm-dl run with `perf record -a` into DIR and split the "
                    "nodes' CPU by phase, in CPU-s per GiB received (needs a binary with symbols: "
                    "`cargo build --profile profiling`; perf's sampling slows the run)")
    ap.add_argument("--binary", default=BIN, help="swarm-dl binary to measure (default: the release build, built here)")
    args = ap.parse_args()
    if os.geteuid() != 0:
        sys.exit("the cluster benchmark builds network namespaces: run it as root")
    for d in (args.log, args.perf):
        if d:
            os.makedirs(d, exist_ok=True)
    scenarios = args.scenarios.split(",")
    for sc in scenarios:
        if sc not in SCENARIOS:
            sys.exit(f"unknown scenario {sc!r}; known: {', '.join(SCENARIOS)}")
    if args.binary == BIN:
        subprocess.run(["cargo", "build", "--release", "--locked", "-p", "swarm-dl"], cwd=ROOT, check=True)
    hub_dir, size = make_repo(args.size_mib)
    bound = size * 8 / (args.uplink_mbit * 1e6)
    work = tempfile.mkdtemp(prefix="swarm-dl-cluster-", dir=OUT)
    key_file = os.path.join(work, "swarm.key")
    subprocess.run([args.binary, "keygen", key_file], check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    rows = []
    probe = [machine.page_cache_cost(OUT)]
    try:
        for n in [int(x) for x in args.nodes.split(",")]:
            cases = [("swarm-dl", sc) for sc in scenarios] + ([] if args.skip_baseline else [("huggingface_hub", "together")])
            for tool, sc in cases:
                runs = []
                for k in range(args.runs):
                    log_dir = os.path.join(args.log, f"run{k + 1}") if args.log else None
                    if log_dir:
                        os.makedirs(log_dir, exist_ok=True)
                    perf = (os.path.join(args.perf, f"{sc}-{n}-run{k + 1}.data")
                            if args.perf and tool == "swarm-dl" else None)
                    r = run_round(tool, sc, n, hub_dir, size, args.uplink_mbit, work, key_file, args.binary, log_dir,
                                  args.metrics, perf)
                    runs.append(r)
                    print(f"N={n} {tool} {sc} run {k + 1}: makespan {r['makespan']:.2f}s ({r['makespan'] / bound:.3f}x bound), "
                          f"Hub bytes {r['hub_ratio']:.3f}x repo, {r['api']} API requests, "
                          f"CPU {r['cpu']:.1f}s ({r['busy']:.0%} of the cores), {r['dups']} endgame duplicates, "
                          f"{r['takeovers']} take-overs", flush=True)
                    if r["phases"]:
                        gib = n * size / 2**30  # received by the nodes; each also serves about as much
                        print(f"  CPU-s per GiB received, by phase ({r['cpu']:.1f} CPU-s over {gib:.1f} GiB): "
                              + "; ".join(f"{name} {share * r['cpu'] / gib:.2f}"
                                          for name, share in r["phases"].items()), flush=True)
                rows.append((n, tool, sc, runs))
    finally:
        shutil.rmtree(work, ignore_errors=True)
    probe.append(machine.page_cache_cost(OUT))
    print("\n" + machine.describe(*probe))
    print(f"\nrepo {size / 2**20:.0f} MiB, uplink {args.uplink_mbit} Mbit/s: bound = repo / uplink = {bound:.1f} s; "
          f"{args.runs} run(s) each: worst (and median)\n")
    print("| N | tool | scenario | makespan s | makespan / bound | Hub bytes / repo | Hub API requests | node CPU s | endgame dups | take-overs |")
    print("|---:|---|---|---:|---:|---:|---:|---:|---:|---:|")
    for n, tool, sc, runs in rows:
        def worst(key):
            return max(r[key] for r in runs)

        def med(key):
            v = sorted(r[key] for r in runs)
            return v[len(v) // 2]
        print(f"| {n} | {tool} | {sc} | {worst('makespan'):.1f} ({med('makespan'):.1f}) "
              f"| {worst('makespan') / bound:.2f} ({med('makespan') / bound:.2f}) "
              f"| {worst('hub_ratio'):.3f} ({med('hub_ratio'):.3f}) | {worst('api')} "
              f"| {worst('cpu'):.1f} ({med('cpu'):.1f}) | {worst('dups') if tool == 'swarm-dl' else ''} "
              f"| {worst('takeovers') if tool == 'swarm-dl' else ''} |")


if __name__ == "__main__":
    main()
