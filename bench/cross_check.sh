#!/usr/bin/env bash
# The numerics and format tests under every CPU kernel set this machine supports and with 1 and
# 2 threads: a result that depends on the CPU or the thread count fails here, not on a
# contributor's machine. Usage: bench/cross_check.sh [extra pytest args]
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
TESTS="tests/quant tests/files/test_format_golden.py tests/files/test_coding.py
       tests/files/test_artifact.py tests/files/test_artifact_corrupt.py tests/run/test_evaluate.py
       tests/files/test_export.py"
caps="default"
grep -qw avx2 /proc/cpuinfo && caps="$caps avx2"
grep -qw avx512f /proc/cpuinfo && caps="$caps avx512"
status=0
for cap in $caps; do
  for threads in 1 2; do
    printf 'ATEN_CPU_CAPABILITY=%-8s threads=%s: ' "$cap" "$threads"
    if ATEN_CPU_CAPABILITY=$cap DIFFQ_TEST_THREADS=$threads OMP_NUM_THREADS=$threads \
        $PY -m pytest -q -p no:cacheprovider $TESTS "$@" > /tmp/cross_check.log 2>&1; then
      tail -1 /tmp/cross_check.log
    else
      status=1; echo "FAILED"; grep -E "^(FAILED|ERROR)" /tmp/cross_check.log || tail -20 /tmp/cross_check.log
    fi
  done
done
exit $status
