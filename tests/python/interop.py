"""The real huggingface_hub judging swarm-dl's cache and stand-in. Called by tests/tests/interop.rs.

Usage: interop.py MODE ARGS...   (HF_ENDPOINT points at the stand-in where the Hub is needed)
  check-cache CACHE REPO TYPE     verify_repo_checksums + scan_cache_dir, both clean
  check-local DIR REPO TYPE       verify_repo_checksums on a local dir
  snapshot CACHE REPO TYPE        snapshot_download into CACHE; prints the path
  snapshot-local DIR REPO TYPE CACHE  snapshot_download(local_dir=DIR); prints the path
Offline checks set HF_HUB_OFFLINE=1 in the environment and use `snapshot` modes with
local_files_only=True (LOCAL_ONLY=1).
"""
import os
import sys

from huggingface_hub import HfApi, scan_cache_dir, snapshot_download

mode, *args = sys.argv[1:]
local_only = os.environ.get("LOCAL_ONLY") == "1"


def fail(msg):
    print(msg, file=sys.stderr)
    sys.exit(1)


if mode == "check-cache":
    cache, repo, rtype = args
    v = HfApi().verify_repo_checksums(repo, repo_type=rtype, cache_dir=cache)
    if v.mismatches or v.missing_paths or v.checked_count == 0:
        fail(f"verify_repo_checksums: {v}")
    info = scan_cache_dir(cache)
    if info.warnings:
        fail(f"scan_cache_dir warnings: {info.warnings}")
    print(f"checked {v.checked_count} files; repos {[r.repo_id for r in info.repos]}")
elif mode == "check-local":
    local, repo, rtype = args
    v = HfApi().verify_repo_checksums(repo, repo_type=rtype, local_dir=local)
    if v.mismatches or v.missing_paths or v.checked_count == 0:
        fail(f"verify_repo_checksums: {v}")
    print(f"checked {v.checked_count} files")
elif mode == "snapshot":
    cache, repo, rtype = args
    print(snapshot_download(repo, repo_type=rtype, cache_dir=cache, local_files_only=local_only))
elif mode == "snapshot-local":
    local, repo, rtype, cache = args
    print(snapshot_download(repo, repo_type=rtype, local_dir=local, cache_dir=cache, local_files_only=local_only))
else:
    fail(f"unknown mode {mode}")
