#!/usr/bin/env bash
# Run a benchmark on a quiet machine: one benchmark at a time (flock on $QUIET_LOCK), every
# background process group listed in $QUIET_PIDS_FILE (one PGID per line, as
# `python -m model.experiments.queue --pids-file F` writes them) paused with SIGSTOP while it
# runs, and every other process moved to the last CPU, so the CPUs the benchmark pins its server
# to are its alone; each process's own affinity and the paused groups are restored afterwards,
# whatever the command's exit status.
#   QUIET_PIDS_FILE=runs/queue.pids loadtest/quiet.sh python -m loadtest.runner --mode full
set -u
pids_file=${QUIET_PIDS_FILE:-runs/queue.pids}
lock=${QUIET_LOCK:-/tmp/plr-bench.lock}
last_cpu=$(( $(nproc) - 1 ))
exec 9>"$lock"
flock 9
pids=$(grep -E '^[0-9]+$' "$pids_file" 2>/dev/null || true)
for p in $pids; do kill -STOP -- "-$p" 2>/dev/null || kill -STOP "$p" 2>/dev/null; done
saved=$(mktemp)
if [ "$last_cpu" -gt 0 ]; then
  for p in $(ls /proc | grep -E '^[0-9]+$'); do
    [ "$p" = "$$" ] && continue
    mask=$(taskset -p "$p" 2>/dev/null | awk '{print $NF}') || continue
    [ -n "$mask" ] || continue
    taskset -a -p -c "$last_cpu" "$p" >/dev/null 2>&1 && echo "$p $mask" >>"$saved"
  done
fi
echo "[quiet.sh] paused: ${pids:-none}; loadavg $(cut -d' ' -f1-3 /proc/loadavg)" >&2
"$@"; rc=$?
while read -r p mask; do taskset -a -p "$mask" "$p" >/dev/null 2>&1; done <"$saved"
rm -f "$saved"
for p in $pids; do kill -CONT -- "-$p" 2>/dev/null || kill -CONT "$p" 2>/dev/null; done
echo "[quiet.sh] resumed" >&2
exit $rc
