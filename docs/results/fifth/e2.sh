#!/usr/bin/env bash
# call 2: the one-step runs continue for $1 seconds (each resumes from its last checkpoint)
set -u
export PYTHONPATH=$PWD/core:$PWD/plugins PYTHONUNBUFFERED=1
mkdir -p $OUT/e2
python benchmarks/quality.py train --runs runs/quality $(cat runs/keep/runs.txt) --variant "seed1: run.seed=1" \
  --pretrain-steps 0 --every 500 --seconds $1 --set root='runs/keep/fashion' >> $OUT/e2/q-train.txt 2>&1
cp runs/quality/*.log $OUT/e2/ 2>/dev/null
tail -n 6 $OUT/e2/q-train.txt; grep -h "stopped by" runs/quality/*.log | tail -n 4
cd $OUT && tar czf e2.tgz e2 && rm -rf e2; echo "end at ${SECONDS}s"
