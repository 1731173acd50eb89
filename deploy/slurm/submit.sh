#!/usr/bin/env bash
# Submit a sharded csv-agent run to Slurm: an array of N tasks (one shard
# each, deploy/slurm/csv-agent.sbatch) and a merge job that waits for all of
# them (--dependency=afterok) and writes OUT/merged.
#
#   deploy/slurm/submit.sh [--tasks LIST] N OUT [run flags...]
#
#   N        shard count (array tasks 0..N-1)
#   OUT      the set's directory, on storage every node sees; shards go to
#            OUT/shard-<i>, Slurm's logs to OUT/slurm/, the result to OUT/merged
#   --tasks  submit only these array indices (Slurm syntax: 2 or 1,3 or 0-2),
#            still as shards of N: the repair of failed tasks is the same
#            command with --tasks (the merge job is submitted again too)
#   run flags  passed to every `csv-agent run` (not --shard or --out)
#
# Environment:
#   CSV_AGENT_BIN          the binary (default: csv-agent from PATH), same path on every node
#   CSV_AGENT_IMAGE        a ready Python image on shared storage; when unset it is
#                          located (built once if needed) here with `csv-agent image path`,
#                          so CSV_AGENT_CACHE_DIR should then be on shared storage
#   CSV_AGENT_SBATCH_ARGS  extra sbatch options for every job, e.g.
#                          "--partition=cpu --cpus-per-task=8 --mem=16G --time=04:00:00"
#
# Prints both job ids ("array job: ID", "merge job: ID"); exits 0 when both
# were accepted, 1 when Slurm refused a submission, 2 on bad arguments.
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
usage() { sed -n '5,18p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//' >&2; exit 2; }
fail() { echo "submit.sh: $*" >&2; exit 2; }

TASKS=""
if [ "${1:-}" = "--tasks" ]; then
  [ "$#" -ge 2 ] || usage
  TASKS=$2
  shift 2
fi
[ "$#" -ge 2 ] || usage
N=$1
OUT=$2
shift 2
[[ "$N" =~ ^[1-9][0-9]*$ ]] || fail "N must be a positive shard count, got '$N'"
[[ -z "$TASKS" || "$TASKS" =~ ^[0-9,-]+$ ]] || fail "--tasks takes array indices like 2 or 1,3 or 0-2, got '$TASKS'"
[ -n "$TASKS" ] || TASKS="0-$((N - 1))"
for a in "$@"; do
  case "$a" in
    --shard|--shard=*|--out|--out=*) fail "run flags may not set $a: each array task sets its own shard and OUT/shard-<i>" ;;
  esac
done
command -v sbatch >/dev/null || fail "sbatch not found: run this on a Slurm login node"

BIN=${CSV_AGENT_BIN:-$(command -v csv-agent || true)}
[ -n "$BIN" ] && [ -x "$BIN" ] || fail "no csv-agent binary: put it on PATH or set CSV_AGENT_BIN"
BIN=$(realpath "$BIN")
OUT=$(realpath -m "$OUT")
case "$OUT$BIN" in *,*) fail "paths with a comma cannot pass through sbatch --export" ;; esac

# The image: built or located once, here, and used by every node.
if [ -z "${CSV_AGENT_IMAGE:-}" ]; then
  echo "submit.sh: locating the Python image (building it once if needed)…" >&2
  CSV_AGENT_IMAGE=$("$BIN" image path | tail -n 1)
fi
CSV_AGENT_IMAGE=$(realpath "$CSV_AGENT_IMAGE")
[ -f "$CSV_AGENT_IMAGE/ready.json" ] || fail "CSV_AGENT_IMAGE=$CSV_AGENT_IMAGE is not a ready image (no ready.json)"
case "$CSV_AGENT_IMAGE" in
  /tmp|/tmp/*) fail "the image may not live under /tmp (the jail mounts its own /tmp): $CSV_AGENT_IMAGE" ;;
  *,*) fail "paths with a comma cannot pass through sbatch --export" ;;
esac

mkdir -p "$OUT/slurm"
read -r -a EXTRA <<< "${CSV_AGENT_SBATCH_ARGS:-}"
EXPORT="ALL,OUT=$OUT,CSV_AGENT_SHARDS=$N,CSV_AGENT_IMAGE=$CSV_AGENT_IMAGE,CSV_AGENT_BIN=$BIN"

if ! ARRAY=$(sbatch --parsable "${EXTRA[@]}" --array="$TASKS" --export="$EXPORT" \
      --output="$OUT/slurm/shard-%a-job-%A.out" "$HERE/csv-agent.sbatch" "$@"); then
  echo "submit.sh: sbatch refused the array job" >&2
  exit 1
fi
ARRAY=${ARRAY%%;*}
if ! MERGE=$(sbatch --parsable "${EXTRA[@]}" --dependency="afterok:$ARRAY" --export="$EXPORT" \
      --kill-on-invalid-dep=yes --output="$OUT/slurm/merge-job-%j.out" "$HERE/merge.sbatch"); then
  echo "submit.sh: sbatch refused the merge job; the array $ARRAY is queued, merge later with: csv-agent merge $OUT/shard-* --out $OUT/merged" >&2
  exit 1
fi
MERGE=${MERGE%%;*}
echo "array job: $ARRAY (tasks $TASKS of $N shards into $OUT/shard-<i>)"
echo "merge job: $MERGE (after every task succeeded: $OUT/merged)"
