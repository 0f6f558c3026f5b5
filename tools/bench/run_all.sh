#!/usr/bin/env bash
# Run every benchmark on SQLite and PostgreSQL, one after the other, keeping each one's printed
# output and JSON in OUT (default $TMPDIR/terra-bench-results). Usage: tools/bench/run_all.sh [OUT] [MEMORY_SECONDS]
# Run it from the repository root on an otherwise idle machine; it takes about 25 minutes plus
# twice MEMORY_SECONDS (default 600).
set -u
cd "$(dirname "$0")/../.."
OUT=${1:-${TMPDIR:-/tmp}/terra-bench-results}
MEMORY_SECONDS=${2:-600}
PY=.venv/bin/python
mkdir -p "$OUT"
for db in sqlite postgresql; do
  for bench in status webhooks wakeup flow scale; do
    echo "== $bench on $db: $(uptime)" | tee "$OUT/$bench-$db.txt"
    $PY -m tools.bench.$bench --db "$db" --json "$OUT/$bench-$db.json" 2>&1 | grep --line-buffered -v '^INFO  \[alembic' | tee -a "$OUT/$bench-$db.txt"
  done
done
for db in sqlite postgresql; do
  echo "== memory on $db: $(uptime)" | tee "$OUT/memory-$db.txt"
  $PY -m tools.bench.memory --db "$db" --duration "$MEMORY_SECONDS" --json "$OUT/memory-$db.json" 2>&1 \
    | grep --line-buffered -v '^INFO  \[alembic' | tee -a "$OUT/memory-$db.txt"
done
