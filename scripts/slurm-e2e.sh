#!/usr/bin/env bash
# A real Slurm run of csv-agent, end to end, on this one machine:
#
#   1. installs slurmctld, slurmd, slurm-client and munge if absent (apt-get);
#   2. writes a single-node cluster configuration under a scratch directory
#      (its own munge key and socket, its own ports, state and logs) and starts
#      munged, slurmctld and slurmd;
#   3. runs `csv-agent run` once, in one process, on the bundled datasets
#      (the reference), then deploy/slurm/submit.sh 4 … on the same selection,
#      waits for the array and the merge job (bounded), and checks that the
#      merged output has the same episode ids and verdicts;
#   4. submits the same run again, cancels one array task on purpose while it
#      runs, checks that the merge job never runs and that `merge --check`
#      names the task's shard, repairs it with the same command for that task
#      alone (submit.sh --tasks), and checks the repaired merge the same way;
#   5. stops every daemon it started (trap on EXIT, failures included).
#
# Must run as root (it starts daemons and writes Slurm's state). Prints the
# wall time of the Slurm run and the merged episode count.
#
# Environment: CSV_AGENT_BIN (default target/debug/csv-agent, else
# target/release/csv-agent, else built with cargo build), E2E_QUESTIONS
# (--max-questions per dataset, default 6; 0 = the whole catalog),
# E2E_SHARDS (default 4), E2E_SBATCH_ARGS (extra sbatch options, e.g.
# --cpus-per-task=2), E2E_REPAIR=0 skips the kill-and-repair part,
# E2E_PROCTRACK=cgroup uses Slurm's cgroup plugins (proctrack/cgroup,
# task/cgroup) instead of proctrack/linuxproc, E2E_TIMEOUT (seconds per
# wait, default 600), E2E_KEEP=1 keeps the scratch directory.
set -euo pipefail

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
QUESTIONS=${E2E_QUESTIONS:-6}
TIMEOUT=${E2E_TIMEOUT:-600}
SHARDS=${E2E_SHARDS:-4}
PROCTRACK=${E2E_PROCTRACK:-linuxproc}
STARTED_AT=$(date +%s)

say() { echo "slurm-e2e: $*" >&2; }
die() { say "FAILED: $*"; exit 1; }

[ "$(id -u)" = 0 ] || die "run as root (it starts munged, slurmctld and slurmd)"

# ---------------------------------------------------------------- packages
if ! command -v slurmctld >/dev/null || ! command -v slurmd >/dev/null \
  || ! command -v sbatch >/dev/null || ! command -v munged >/dev/null; then
  say "installing slurmctld slurmd slurm-client munge"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  # policy-rc.d keeps the packages' own services from starting: this
  # script starts its own daemons with its own configuration.
  POLICY=/usr/sbin/policy-rc.d
  ADDED_POLICY=0
  if [ ! -e "$POLICY" ]; then
    printf '#!/bin/sh\nexit 101\n' > "$POLICY"
    chmod +x "$POLICY"
    ADDED_POLICY=1
  fi
  apt-get install -y -qq slurmctld slurmd slurm-client munge >/dev/null
  [ "$ADDED_POLICY" = 0 ] || rm -f "$POLICY"
fi

# ------------------------------------------------------------------ binary
BIN=${CSV_AGENT_BIN:-}
if [ -z "$BIN" ]; then
  for candidate in "$REPO/target/debug/csv-agent" "$REPO/target/release/csv-agent"; do
    if [ -x "$candidate" ]; then BIN=$candidate; break; fi
  done
fi
if [ -z "$BIN" ]; then
  say "building csv-agent (cargo build --locked)"
  (cd "$REPO" && cargo build --locked -q)
  BIN=$REPO/target/debug/csv-agent
fi
BIN=$(realpath "$BIN")
say "binary $BIN"

# ------------------------------------------------------- scratch and trap
mkdir -p "$REPO/target"
WORK=$(mktemp -d "$REPO/target/slurm-e2e.XXXXXX")
chmod 755 "$WORK"
PIDS=()
cleanup() {
  local status=$?
  set +e
  if [ -n "${SLURM_CONF:-}" ] && [ -f "${SLURM_CONF}" ]; then
    # Jobs first (their csv-agent processes and jails), then the daemons.
    scancel --quiet --full -u root >/dev/null 2>&1
    sleep 1
  fi
  for ((i = ${#PIDS[@]} - 1; i >= 0; i--)); do
    kill -TERM "${PIDS[$i]}" 2>/dev/null
  done
  for pid in "${PIDS[@]}"; do
    for _ in $(seq 1 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    kill -KILL "$pid" 2>/dev/null
    wait "$pid" 2>/dev/null
  done
  if [ "$status" != 0 ]; then
    for log in "$WORK"/log/*.log "$WORK"/out*/slurm/*.out; do
      [ -f "$log" ] || continue
      say "--- tail of $log"
      tail -n 30 "$log" >&2
    done
  fi
  if [ "${E2E_KEEP:-0}" = 1 ] || [ "$status" != 0 ]; then
    say "scratch directory kept: $WORK"
  else
    rm -rf "$WORK"
  fi
  say "daemons stopped; exit $status after $(( $(date +%s) - STARTED_AT )) s"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# ------------------------------------------------------------------ munge
mkdir -p "$WORK/munge" "$WORK/log" "$WORK/state" "$WORK/spool"
chmod 700 "$WORK/munge"
dd if=/dev/urandom of="$WORK/munge/munge.key" bs=1024 count=1 status=none
chmod 400 "$WORK/munge/munge.key"
MUNGE_SOCKET=$WORK/munge/munge.socket
munged --foreground --force --key-file="$WORK/munge/munge.key" --socket="$MUNGE_SOCKET" \
  --pid-file="$WORK/munge/munged.pid" --seed-file="$WORK/munge/munged.seed" \
  --log-file="$WORK/log/munged.log" 2>>"$WORK/log/munged.log" &
PIDS+=($!)
for _ in $(seq 1 50); do [ -S "$MUNGE_SOCKET" ] && break; sleep 0.1; done
[ -S "$MUNGE_SOCKET" ] || die "munged did not start"
munge --socket="$MUNGE_SOCKET" -n | unmunge --socket="$MUNGE_SOCKET" >/dev/null || die "munge round trip"

# ------------------------------------------------------------------ slurm
free_port() {
  local p=$1
  while ss -Htln "sport = :$p" | grep -q .; do p=$((p + 1)); done
  echo "$p"
}
CTLD_PORT=$(free_port 26817)
SLURMD_PORT=$(free_port $((CTLD_PORT + 1)))
NODE=$(hostname -s)
CPUS=$(nproc)
MEM_MB=$(( $(awk '/^MemTotal:/ {print $2}' /proc/meminfo) / 1024 - 1024 ))
export SLURM_CONF=$WORK/slurm.conf
cat > "$SLURM_CONF" <<CONF
# single-node cluster of scripts/slurm-e2e.sh
ClusterName=csvagent-e2e
SlurmctldHost=$NODE(127.0.0.1)
SlurmctldPort=$CTLD_PORT
SlurmdPort=$SLURMD_PORT
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket=$MUNGE_SOCKET
SlurmUser=root
SlurmdUser=root
StateSaveLocation=$WORK/state
SlurmdSpoolDir=$WORK/spool
SlurmctldPidFile=$WORK/slurmctld.pid
SlurmdPidFile=$WORK/slurmd.pid
SlurmctldLogFile=$WORK/log/slurmctld.log
SlurmdLogFile=$WORK/log/slurmd.log
$(if [ "$PROCTRACK" = cgroup ]; then
  echo "ProctrackType=proctrack/cgroup"
  echo "TaskPlugin=task/cgroup,task/affinity"
else
  echo "# The jail makes its own cgroups; Slurm tracks processes by /proc here."
  echo "ProctrackType=proctrack/linuxproc"
  echo "TaskPlugin=task/none"
fi)
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
MpiDefault=none
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
ReturnToService=2
MinJobAge=3600
KillWait=10
NodeName=$NODE NodeAddr=127.0.0.1 CPUs=$CPUS RealMemory=$MEM_MB State=UNKNOWN
PartitionName=e2e Nodes=$NODE Default=YES MaxTime=INFINITE State=UP
CONF
if [ "$PROCTRACK" = cgroup ]; then
  cat > "$WORK/cgroup.conf" <<CONF
CgroupPlugin=autodetect
ConstrainCores=yes
ConstrainRAMSpace=yes
CONF
fi
slurmctld -D -c -f "$SLURM_CONF" >"$WORK/log/slurmctld.stdout" 2>&1 &
PIDS+=($!)
slurmd -D -N "$NODE" -f "$SLURM_CONF" >"$WORK/log/slurmd.stdout" 2>&1 &
PIDS+=($!)
deadline=$(( $(date +%s) + 60 ))
until sinfo -h -N -o '%T' 2>/dev/null | grep -qx idle; do
  [ "$(date +%s)" -lt "$deadline" ] || die "the node did not become idle in 60 s: $(sinfo -N 2>&1)"
  sleep 0.5
done
say "cluster up: node $NODE, $CPUS CPUs, ${MEM_MB} MB, ports $CTLD_PORT/$SLURMD_PORT"

# ------------------------------------------------------------------ helpers
job_state() { scontrol show job -o "$1" 2>/dev/null | grep -o 'JobState=[A-Z_]*' | head -n 1 | cut -d= -f2; }
# Wait until every job of an id (all array tasks) has left the queue.
wait_gone() {
  local id=$1 deadline=$(( $(date +%s) + TIMEOUT ))
  while squeue -h -j "$id" -o '%i' 2>/dev/null | grep -q .; do
    [ "$(date +%s)" -lt "$deadline" ] || die "job $id still queued after $TIMEOUT s: $(squeue 2>&1)"
    sleep 1
  done
}
# Episode ids and verdicts of two outputs are the same.
same_verdicts() {
  python3 - "$1" "$2" <<'PY'
import json, sys
def verdicts(d):
    with open(f"{d}/episodes.jsonl") as f:
        return {(e["episode_id"], e["verified"]) for e in map(json.loads, f)}
a, b = verdicts(sys.argv[1]), verdicts(sys.argv[2])
if a != b:
    print(f"differ: {len(a - b)} only in {sys.argv[1]}, {len(b - a)} only in {sys.argv[2]}", file=sys.stderr)
    sys.exit(1)
print(len(a))
PY
}

SELECT=(--datasets "$REPO/datasets")
[ "$QUESTIONS" = 0 ] || SELECT+=(--max-questions "$QUESTIONS")
export CSV_AGENT_BIN=$BIN
export CSV_AGENT_SBATCH_ARGS=${E2E_SBATCH_ARGS:-}
# The image, located (or built) once for every job: as on a cluster, on
# storage the nodes share, never built per node.
CSV_AGENT_IMAGE=$("$BIN" image path | tail -n 1)
export CSV_AGENT_IMAGE
say "image $CSV_AGENT_IMAGE"

# ------------------------------------------- what the jail finds in a Slurm step
say "csv-agent doctor in a Slurm step, as root:"
srun --ntasks=1 "$BIN" doctor >&2 || die "doctor in a Slurm step (as root) found a layer missing"


# ------------------------------------------------- the reference: one process
t0=$(date +%s.%N)
"$BIN" run "${SELECT[@]}" --out "$WORK/single" >"$WORK/log/single.log" 2>&1 \
  || die "the single-process run failed: $(tail -n 20 "$WORK/log/single.log")"
t1=$(date +%s.%N)
SINGLE_EPISODES=$(wc -l < "$WORK/single/episodes.jsonl")
SINGLE_WALL=$(python3 -c "print(f'{$t1 - $t0:.1f}')")
say "single process: $SINGLE_EPISODES episodes in ${SINGLE_WALL} s"

# ------------------------------------------------------ the Slurm run, clean
t0=$(date +%s.%N)
SUBMIT=$("$REPO/deploy/slurm/submit.sh" "$SHARDS" "$WORK/out" "${SELECT[@]}") || die "submit.sh failed"
echo "$SUBMIT" >&2
ARRAY=$(echo "$SUBMIT" | awk '/^array job:/ {print $3}')
MERGE=$(echo "$SUBMIT" | awk '/^merge job:/ {print $3}')
[ -n "$ARRAY" ] && [ -n "$MERGE" ] || die "submit.sh did not print both job ids"
wait_gone "$ARRAY"
wait_gone "$MERGE"
t1=$(date +%s.%N)
[ "$(job_state "$MERGE")" = COMPLETED ] || die "merge job $MERGE ended $(job_state "$MERGE")"
for ((i = 0; i < SHARDS; i++)); do
  [ "$(job_state "${ARRAY}_$i")" = COMPLETED ] || die "array task ${ARRAY}_$i ended $(job_state "${ARRAY}_$i")"
done
MERGED=$(same_verdicts "$WORK/single" "$WORK/out/merged") || die "merged output differs from the single-process run"
SLURM_WALL=$(python3 -c "print(f'{$t1 - $t0:.1f}')")
for ((i = 0; i < SHARDS; i++)); do
  python3 -c "import json; s = json.load(open('$WORK/out/shard-$i/summary.json')); print(f'slurm-e2e: shard $i/$SHARDS: {s[\"episodes\"]} episodes in {s[\"elapsed\"]:.1f} s')" >&2
done
say "Slurm run: $SHARDS array tasks + merge in $SLURM_WALL s; merged $MERGED episodes = the single-process run (ids and verdicts)"

if [ "${E2E_REPAIR:-1}" = 0 ]; then
  say "PASSED (no repair part) in $(( $(date +%s) - STARTED_AT )) s: Slurm run wall $SLURM_WALL s, $MERGED merged episodes; single process $SINGLE_EPISODES episodes in $SINGLE_WALL s"
  exit 0
fi

# ------------------------------------- the Slurm run, one task killed, repaired
SUBMIT=$("$REPO/deploy/slurm/submit.sh" "$SHARDS" "$WORK/out2" "${SELECT[@]}") || die "submit.sh failed"
ARRAY2=$(echo "$SUBMIT" | awk '/^array job:/ {print $3}')
MERGE2=$(echo "$SUBMIT" | awk '/^merge job:/ {print $3}')
VICTIM=2
deadline=$(( $(date +%s) + TIMEOUT ))
# Cancel task 2 once it has recorded its start (mid-run, not before).
until [ -f "$WORK/out2/shard-$VICTIM/run.json" ] && [ "$(job_state "${ARRAY2}_$VICTIM")" = RUNNING ]; do
  [ "$(date +%s)" -lt "$deadline" ] || die "task ${ARRAY2}_$VICTIM never ran"
  state=$(job_state "${ARRAY2}_$VICTIM")
  case "$state" in COMPLETED|FAILED|CANCELLED) die "task ${ARRAY2}_$VICTIM ended ($state) before it could be cancelled";; esac
  sleep 0.2
done
scancel "${ARRAY2}_$VICTIM"
say "cancelled array task ${ARRAY2}_$VICTIM while it ran"
wait_gone "$ARRAY2"
wait_gone "$MERGE2"
state=$(job_state "$MERGE2")
[ "$state" != COMPLETED ] || die "the merge job ran although task $VICTIM was cancelled"
[ ! -e "$WORK/out2/merged/episodes.jsonl" ] || die "a merged output exists although task $VICTIM was cancelled"
say "merge job $MERGE2 did not run ($state)"
DIRS=()
for ((i = 0; i < SHARDS; i++)); do DIRS+=("$WORK/out2/shard-$i"); done
set +e
CHECK=$("$BIN" merge --check "${DIRS[@]}")
code=$?
set -e
echo "$CHECK" >&2
[ "$code" = 1 ] || die "merge --check exited $code on a set with a cancelled shard (expected 1)"
echo "$CHECK" | grep -q "shard $VICTIM/$SHARDS .*incomplete" || die "merge --check did not name shard $VICTIM/$SHARDS as incomplete"
# The repair: the same command, for the cancelled task alone.
SUBMIT=$("$REPO/deploy/slurm/submit.sh" --tasks "$VICTIM" "$SHARDS" "$WORK/out2" "${SELECT[@]}") || die "repair submission failed"
echo "$SUBMIT" >&2
ARRAY3=$(echo "$SUBMIT" | awk '/^array job:/ {print $3}')
MERGE3=$(echo "$SUBMIT" | awk '/^merge job:/ {print $3}')
wait_gone "$ARRAY3"
wait_gone "$MERGE3"
[ "$(job_state "$MERGE3")" = COMPLETED ] || die "merge job $MERGE3 after the repair ended $(job_state "$MERGE3")"
"$BIN" merge --check "${DIRS[@]}" >/dev/null || die "merge --check still finds gaps after the repair"
REPAIRED=$(same_verdicts "$WORK/single" "$WORK/out2/merged") || die "the repaired merge differs from the single-process run"
say "repaired: task $VICTIM rerun alone, merged $REPAIRED episodes = the single-process run"

SHARD_TIME=$(python3 -c "import json; print(round(json.load(open('$WORK/out/merged/summary.json'))['elapsed'], 1))")
say "PASSED in $(( $(date +%s) - STARTED_AT )) s: Slurm run wall $SLURM_WALL s ($SHARDS tasks, ${CPUS} CPUs), $MERGED merged episodes (shard time summed $SHARD_TIME s); single process $SINGLE_EPISODES episodes in $(python3 -c "print(f'{$SINGLE_WALL:.1f}')") s"
