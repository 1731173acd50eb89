#!/usr/bin/env bash
# Pipeline throughput of this checkout against an earlier commit, measured
# in one session on one machine: both `cargo bench --bench pipeline`
# executables are built, then run alternately (base, this, base, this, …),
# one run each per round, so that the machine's drift hits both alike.
# Prints every round, the medians and their ratio.
#
#   scripts/bench-pipeline-compare.sh BASE_COMMIT [ROUNDS]   (default 5)
#
# The base is exported with `git archive` into target/bench-base/<commit>
# and built there with its own target directory (seeded from this
# checkout's target/release, so only what changed is rebuilt).
set -euo pipefail

if [ $# -lt 1 ]; then
  echo "usage: $0 BASE_COMMIT [ROUNDS]" >&2
  exit 2
fi
ROOT=$(cd "$(dirname "$0")/.." && pwd)
cd "$ROOT"
BASE=$(git rev-parse --verify "$1^{commit}") || { echo "$0: no commit $1" >&2; exit 2; }
ROUNDS=${2:-5}
case "$ROUNDS" in ''|*[!0-9]*|0) echo "$0: ROUNDS must be a positive number" >&2; exit 2 ;; esac

SRC="$ROOT/target/bench-base/$BASE"
TARGET="$ROOT/target/bench-base/target"
if [ ! -f "$SRC/Cargo.toml" ]; then
  mkdir -p "$SRC"
  git archive "$BASE" | tar -x -C "$SRC"
fi
if [ ! -d "$TARGET/release" ] && [ -d "$ROOT/target/release" ]; then
  mkdir -p "$TARGET"
  cp -a "$ROOT/target/release" "$TARGET/"
fi

# The path of the bench executable cargo reports for a build.
bench_exe() {
  sed -n 's/^ *Executable benches\/pipeline.rs (\(.*\))$/\1/p' "$1" | tail -1
}
log=$(mktemp)
trap 'rm -f "$log"' EXIT
echo "building the base ($BASE) …" >&2
(cd "$SRC" && CARGO_TARGET_DIR="$TARGET" cargo bench --locked --bench pipeline --no-run) >"$log" 2>&1 \
  || { cat "$log" >&2; exit 1; }
base_exe=$(bench_exe "$log")
case "$base_exe" in /*) ;; *) base_exe="$SRC/$base_exe" ;; esac
echo "building this checkout …" >&2
cargo bench --locked --bench pipeline --no-run >"$log" 2>&1 || { cat "$log" >&2; exit 1; }
this_exe=$(bench_exe "$log")
case "$this_exe" in /*) ;; *) this_exe="$ROOT/$this_exe" ;; esac
for exe in "$base_exe" "$this_exe"; do
  [ -x "$exe" ] || { echo "$0: no bench executable at $exe" >&2; exit 1; }
done

# episodes/s of one run of a bench executable (run from its own tree).
rate() {
  local dir=$1 exe=$2 out
  out=$(cd "$dir" && "$exe" --runs 1 2>/dev/null) || { echo "$0: $exe failed" >&2; return 1; }
  echo "$out" | sed -n 's/^median: .*, \([0-9.]*\) episodes\/s$/\1/p'
}

base_rates=()
this_rates=()
printf '%5s %14s %14s\n' round "base ep/s" "this ep/s"
for i in $(seq 1 "$ROUNDS"); do
  b=$(rate "$SRC" "$base_exe")
  t=$(rate "$ROOT" "$this_exe")
  base_rates+=("$b")
  this_rates+=("$t")
  printf '%5s %14s %14s\n' "$i" "$b" "$t"
done
python3 - "${base_rates[*]}" "${this_rates[*]}" "$BASE" <<'EOF'
import statistics, sys
base = [float(x) for x in sys.argv[1].split()]
this = [float(x) for x in sys.argv[2].split()]
mb, mt = statistics.median(base), statistics.median(this)
ratios = sorted(t / b for b, t in zip(base, this))
print(f"median episodes/s: base {mb:.2f} ({sys.argv[3][:12]}), this {mt:.2f}")
print(f"ratio of medians: {mt / mb:.2f}x; per-round ratios {', '.join(f'{r:.2f}' for r in ratios)}")
EOF
