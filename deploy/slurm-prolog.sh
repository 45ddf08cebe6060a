#!/bin/sh
# Slurm prolog: make sure this node runs a swarm-dl node before the job starts, then (optionally)
# fetch the model the job asks for: `sbatch --export=ALL,SWARM_DL_MODEL=org/model job.sh`.
# Install as Prolog=/etc/slurm/prolog.d/swarm-dl.sh; the job then reads the model from HF_HOME.
set -eu
export HF_HOME="${HF_HOME:-/var/cache/huggingface}"
if ! swarm-dl status >/dev/null 2>&1; then
    nohup swarm-dl join --listen /ip4/0.0.0.0/tcp/4001 >/var/log/swarm-dl.log 2>&1 &
    swarm-dl status --wait 30 >/dev/null
fi
if [ -n "${SWARM_DL_MODEL:-}" ]; then
    # Runs inside the node above, so the files keep being served to the job's other nodes.
    swarm-dl get "$SWARM_DL_MODEL" --quiet >/dev/null
fi
