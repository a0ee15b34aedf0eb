#!/usr/bin/env bash
# call 2: the two one-step runs continue for $1 seconds (each resumes from its last checkpoint)
set -u
export PYTHONPATH=$PWD/core:$PWD/plugins PYTHONUNBUFFERED=1
mkdir -p $OUT/d2
python benchmarks/quality.py train --runs runs/quality --gpus 0,1 --methods diffratio-dijs \
  --variant "decay60: run.steps=6000 method.generator_optimizer.lr_decay='cosine' method.generator_optimizer.lr_decay_start=0.6" \
  --pretrain-steps 0 --every 500 --seconds $1 --set root='runs/keep/fashion' >> $OUT/d2/q-train.txt 2>&1
cp runs/quality/*.log $OUT/d2/ 2>/dev/null
tail -n 6 $OUT/d2/q-train.txt; grep -h "stopped by" runs/quality/*.log | tail -n 4
cd $OUT && tar czf d2.tgz d2 && rm -rf d2; echo "end at ${SECONDS}s"
