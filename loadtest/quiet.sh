#!/usr/bin/env bash
# Run a benchmark on a quiet machine: one benchmark at a time (flock on $QUIET_LOCK), every
# background process group listed in $QUIET_PIDS_FILE (one PGID per line, as
# `python -m model.experiments.queue --pids-file F` writes them) paused with SIGSTOP while it
# runs, and every other process moved to the last CPU, so the CPUs the benchmark pins its server
# to are its alone; each process's own affinity and the paused groups are restored afterwards,
# whatever the command's exit status, and also when quiet.sh itself is interrupted or killed
# (SIGINT, SIGTERM, SIGHUP; not SIGKILL).
#   QUIET_PIDS_FILE=runs/queue.pids loadtest/quiet.sh python -m loadtest.runner --mode full
set -u
pids_file=${QUIET_PIDS_FILE:-runs/queue.pids}
lock=${QUIET_LOCK:-/tmp/plr-bench.lock}
# Every CPU of the machine, not just those this shell may use (nproc would count those only).
last_cpu=$(( $(nproc --all) - 1 ))
ours=$(printf '%x' $(( 1 << last_cpu )))  # the mask the others get while the command runs
exec 9>"$lock"
flock 9
pids=$(grep -E '^[0-9]+$' "$pids_file" 2>/dev/null || true)
saved=$(mktemp)
restore() {
  # A process is given its own mask back only while it still has the one set here: one that
  # changed since (its owner re-pinned it, or another quiet.sh restored it first) is left alone.
  while read -r p mask; do
    now=$(taskset -p "$p" 2>/dev/null | awk '{print $NF}')
    [ "$now" = "$ours" ] && taskset -a -p "$mask" "$p" >/dev/null 2>&1
  done <"$saved"
  rm -f "$saved"
  for p in $pids; do kill -CONT -- "-$p" 2>/dev/null || kill -CONT "$p" 2>/dev/null; done
}
# Killed or interrupted, it still restores: a benchmark stopped half-way must not leave the
# training paused or every process on one CPU.
trap restore EXIT
for p in $pids; do kill -STOP -- "-$p" 2>/dev/null || kill -STOP "$p" 2>/dev/null; done
if [ "$last_cpu" -gt 0 ]; then
  for p in $(ls /proc | grep -E '^[0-9]+$'); do
    [ "$p" = "$$" ] && continue
    mask=$(taskset -p "$p" 2>/dev/null | awk '{print $NF}') || continue
    [ -n "$mask" ] || continue
    taskset -a -p -c "$last_cpu" "$p" >/dev/null 2>&1 && echo "$p $mask" >>"$saved"
  done
fi
echo "[quiet.sh] paused: ${pids:-none}; loadavg $(cut -d' ' -f1-3 /proc/loadavg)" >&2
# In the background and waited for, so that a signal to this script is handled at once (bash
# runs traps only between commands): the command is stopped (SIGTERM: a background command of a
# script ignores SIGINT, and its stdin is /dev/null), then the EXIT trap restores.
"$@" &
child=$!
trap 'kill -TERM "$child" 2>/dev/null; wait "$child"; exit 130' INT
trap 'kill -TERM "$child" 2>/dev/null; wait "$child"; exit 143' TERM HUP
wait "$child"; rc=$?
trap - INT TERM HUP
restore
trap - EXIT
echo "[quiet.sh] resumed" >&2
exit $rc
