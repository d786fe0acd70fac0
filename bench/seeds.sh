#!/bin/bash
# One bench/tradeoff.py call per seed (SEEDS, default "0 1 2") with the given arguments, each
# writing OUT-s<seed>.json and .log. A seed whose JSON exists is skipped, and the JSON appears
# only once its run finished (written to .tmp, then renamed), so an interrupted sweep resumes.
#   bench/seeds.sh OUT [tradeoff.py arguments...]
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
out=$1
shift
for s in ${SEEDS:-0 1 2}; do
  [ -f "$out-s$s.json" ] && continue
  $PY bench/tradeoff.py --seed "$s" "$@" --out "$out-s$s.json.tmp" > "$out-s$s.log" 2>&1 \
    && mv "$out-s$s.json.tmp" "$out-s$s.json"
  echo "$(date +%T) $out seed $s rc=$?"
done
