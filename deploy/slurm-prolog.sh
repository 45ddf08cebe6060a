#!/bin/sh
# Slurm prolog (runs as root): make sure this machine runs a swarm-dl node, as the unprivileged
# service user `swarm-dl`, before the job starts; then (optionally) fetch the model the job asks
# for: `sbatch --export=ALL,SWARM_DL_MODEL=org/model job.sh`.
# Install as Prolog=/etc/slurm/prolog.d/swarm-dl.sh, with the user made by swarm-dl.sysusers.conf.
# Jobs read the model with HF_HUB_CACHE=/var/cache/swarm-dl/hub (or HF_HOME=/var/cache/swarm-dl).
set -eu
export HF_HOME="${HF_HOME:-/var/cache/swarm-dl}"
if ! swarm-dl status >/dev/null 2>&1; then
    if command -v systemctl >/dev/null 2>&1 && systemctl cat swarm-dl >/dev/null 2>&1; then
        systemctl start swarm-dl
    else
        # No unit installed: start the node by hand, still as the service user, never as root.
        install -d -o swarm-dl -g swarm-dl -m 0755 "$HF_HOME" /var/log/swarm-dl
        setpriv --reuid=swarm-dl --regid=swarm-dl --init-groups --no-new-privs \
            env HF_HOME="$HF_HOME" nohup swarm-dl join --listen /ip4/0.0.0.0/tcp/4001 \
            >>/var/log/swarm-dl/join.log 2>&1 &
    fi
    swarm-dl status --wait 30 >/dev/null
fi
if [ -n "${SWARM_DL_MODEL:-}" ]; then
    # Root may ask the node for downloads; they run inside it, so the files keep being served
    # to the job's other nodes after the prolog ends.
    swarm-dl get "$SWARM_DL_MODEL" --quiet >/dev/null
fi
