#!/usr/bin/env bash
# call 2: DiffRatio-DiJS and VSD continue (each run resumes from its last checkpoint)
set -u
export PYTHONPATH=$PWD/core:$PWD/plugins PYTHONUNBUFFERED=1
mkdir -p $OUT/c2
python benchmarks/quality.py train --runs runs/quality --gpus 0,1 --methods diffratio-dijs,vsd --pretrain-steps 0 \
  --every 500 --seconds $((500 - SECONDS)) --set root='runs/keep/fashion' >> $OUT/c2/q-train.txt 2>&1
cp runs/quality/*.log $OUT/c2/ 2>/dev/null
tail -n 4 $OUT/c2/q-train.txt; grep -h "stopped by" runs/quality/*.log | tail -n 3
cd $OUT && tar czf c2.tgz c2 && rm -rf c2; echo "end at ${SECONDS}s"
