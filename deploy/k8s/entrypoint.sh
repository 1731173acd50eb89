#!/usr/bin/env bash
# The pod's entrypoint for a sharded csv-agent run on Kubernetes.
#
#   entrypoint.sh shard [run flags...]   one shard: index $JOB_COMPLETION_INDEX of
#                                        $CSV_AGENT_SHARDS into $OUT/shard-<index>
#   entrypoint.sh merge                  every shard joined into $OUT/merged
#                                        (refused, with the gaps named, if one is
#                                        missing or unfinished)
#   entrypoint.sh doctor                 the jail's layers as measured in this pod
#
# Environment:
#   JOB_COMPLETION_INDEX  set by Kubernetes in an Indexed Job (completionMode: Indexed)
#   CSV_AGENT_SHARDS      the shard count N (= the Job's completions)
#   OUT                   the shared volume's mount point (default /out)
#   CSV_AGENT_ARGS        run flags, when none are given as arguments
#   CSV_AGENT_BIN         the binary (default: csv-agent from PATH)
#   CSV_AGENT_IMAGE       the Python image (default: the one built into the container)
#
# Exit status is csv-agent's: 0 done, 1 some question failed (the Job retries
# the index: a rerun resumes and retries them), 2 could not run (the Job's
# podFailurePolicy fails the whole Job: retrying would not help).
set -euo pipefail

fail() { echo "csv-agent-entrypoint: $*" >&2; exit 2; }
BIN=${CSV_AGENT_BIN:-$(command -v csv-agent || true)}
[ -n "$BIN" ] && [ -x "$BIN" ] || fail "no csv-agent binary: put it on PATH or set CSV_AGENT_BIN"
OUT=${OUT:-/out}
MODE=${1:-shard}
[ "$#" -eq 0 ] || shift

shard_count() {
  local n=${CSV_AGENT_SHARDS:-}
  [[ "$n" =~ ^[1-9][0-9]*$ ]] || fail "set CSV_AGENT_SHARDS to the shard count (the Job's completions), got '$n'"
  echo "$n"
}

if [ -z "${CSV_AGENT_IMAGE:-}" ]; then
  # Found by its key in CSV_AGENT_CACHE_DIR (built into the container), never built here.
  CSV_AGENT_IMAGE=$("$BIN" image path | tail -n 1)
  export CSV_AGENT_IMAGE
fi

case "$MODE" in
  shard)
    N=$(shard_count)
    I=${JOB_COMPLETION_INDEX:-}
    [[ "$I" =~ ^[0-9]+$ ]] || fail "JOB_COMPLETION_INDEX is not set: run this in an Indexed Job (completionMode: Indexed)"
    [ "$I" -lt "$N" ] || fail "JOB_COMPLETION_INDEX $I is not below CSV_AGENT_SHARDS $N (completions and CSV_AGENT_SHARDS must agree)"
    if [ "$#" -gt 0 ]; then ARGS=("$@"); else read -r -a ARGS <<< "${CSV_AGENT_ARGS:-}"; fi
    for a in "${ARGS[@]}"; do
      case "$a" in --shard|--shard=*|--out|--out=*) fail "run flags may not set $a: the index decides the shard and its directory" ;; esac
    done
    mkdir -p "$OUT/shard-$I"
    echo "csv-agent-entrypoint: shard $I/$N into $OUT/shard-$I on $(hostname)" >&2
    exec "$BIN" run --shard "$I/$N" --out "$OUT/shard-$I" "${ARGS[@]}"
    ;;
  merge)
    N=$(shard_count)
    DIRS=()
    for ((i = 0; i < N; i++)); do DIRS+=("$OUT/shard-$i"); done
    "$BIN" merge --check "${DIRS[@]}" || fail "the shard set is not complete (see above); rerun the failed indexes"
    exec "$BIN" merge "${DIRS[@]}" --out "$OUT/merged"
    ;;
  doctor)
    exec "$BIN" doctor "$@"
    ;;
  *)
    fail "unknown mode '$MODE' (shard, merge or doctor)"
    ;;
esac
