#!/usr/bin/env bash
# Call 3 (carry .device/s12): wait for the driver's end (at most until T0 + $1 s), bring everything back.
set -u
K=runs/keep; mkdir -p $OUT/c3
while ! grep -q done $K/drive/state && [ "$(date +%s)" -lt $(( $(cat $K/T0) + $1 )) ]; do sleep 3; done
cp runs/quality/*.log runs/quality/eval/results-*.jsonl $K/drive/* $OUT/c3/ 2>/dev/null
python benchmarks/quality.py report --runs runs/quality > $OUT/c3/report-now.md 2>&1
cat $K/drive/state; tail -n 4 $K/drive/q-eval.txt; head -n 40 $OUT/c3/report-now.md
cd $OUT && tar czf c3.tgz c3 && rm -rf c3
