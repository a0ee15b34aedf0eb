#!/usr/bin/env bash
# call 2: the four one-step runs of benchmarks/quality.py (the pretraining of call 1 is kept on the machine)
set -u
export PYTHONPATH=$PWD/core:$PWD/plugins PYTHONUNBUFFERED=1
D="--set root='runs/keep/fashion'"
python benchmarks/quality.py train --runs runs/quality --gpus 0,1,2,3 --pretrain-steps 3000 --every 500 \
  --seconds $((555 - SECONDS)) $D > $OUT/q-train.txt 2>&1
tar czf $OUT/logs2.tgz runs/quality/*.log runs/quality/*/metrics.jsonl runs/quality/*/run.json 2>/dev/null
tail -n 8 $OUT/q-train.txt; grep -h "stopped by\|eval " runs/quality/*.log | tail -n 12; echo "end at ${SECONDS}s"
