"""What this machine charges for memory, printed beside benchmark figures.

On a VM whose balloon reports free pages to the host (virtio-balloon free page reporting), the
first touch of a page the host has taken back costs a fault in the host. Writing a file into the
page cache then costs up to ten times the CPU it costs when the memory was freed a moment ago,
and a receiving node's CPU moves with it. `page_cache_cost` measures it now, so that figures
taken on different days can be told apart from changes in the code.

The probe writes 1 GiB: the kernel hands out the pages freed last first, and 256 MiB found only
those (0.35 CPU-s/GiB before a run whose page cache writes, under perf, cost about 7).
"""
import os
import resource
import subprocess

PROBE_MIB = 1024


def page_cache_cost(directory):
    """CPU seconds (user + system) per GiB that `dd` spends writing a new file into the page cache."""
    path = os.path.join(directory, "page-cache-probe")
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    subprocess.run(["dd", "if=/dev/zero", f"of={path}", "bs=1M", f"count={PROBE_MIB}", "status=none"], check=True)
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    os.remove(path)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return cpu * 1024 / PROBE_MIB


def describe(before, after):
    return (f"machine: writing into fresh page cache cost {before:.2f} CPU-s/GiB before the runs and "
            f"{after:.2f} after (on the 2-core VM of the README: about 0.3 when memory was just "
            "freed, 4 to 6 when its host had taken the memory back)")


def main():
    """How soon freed memory goes back to the host: the page cache cost of rewriting a file at
    increasing delays after deleting it (on a VM without free page reporting, all stay low)."""
    import argparse
    import tempfile
    import time

    ap = argparse.ArgumentParser(description=main.__doc__)
    ap.add_argument("--dir", default=tempfile.gettempdir(), help="where to write (needs 1 GiB free)")
    ap.add_argument("--delays", default="0,1,3,10,30", help="seconds to wait after the delete, comma-separated")
    args = ap.parse_args()
    print(f"first write: {page_cache_cost(args.dir):.2f} CPU-s/GiB", flush=True)
    for d in [float(x) for x in args.delays.split(",")]:
        time.sleep(d)
        print(f"rewritten {d:g} s after the delete: {page_cache_cost(args.dir):.2f} CPU-s/GiB", flush=True)


if __name__ == "__main__":
    main()
