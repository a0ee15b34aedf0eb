#!/usr/bin/env bash
# call 3: the runs continue for $1 seconds, then every evaluation within $2 s of the call's start (finals with
# precision/recall, the FID-2k curves, FID-10k at 4000, 5000 and 6000 updates) on all GPUs, and the report
set -u
export PYTHONPATH=$PWD/core:$PWD/plugins PYTHONUNBUFFERED=1
mkdir -p $OUT/e3
[ -f runs/keep/fid16.pt ] || { cat .device/fidB/* >> runs/keep/fid16.part.aa && mv runs/keep/fid16.part.aa runs/keep/fid16.pt; }
sha1sum runs/keep/fid16.pt | tee $OUT/e3/fid-sha1.txt
python benchmarks/quality.py train --runs runs/quality $(cat runs/keep/runs.txt) --variant "seed1: run.seed=1" \
  --pretrain-steps 0 --every 500 --seconds $1 --set root='runs/keep/fashion' >> $OUT/e3/q-train.txt 2>&1
echo "evaluation start at ${SECONDS}s"
G=$(cat runs/keep/runs.txt | awk '{print $2}')
timeout $(($2 - SECONDS)) python benchmarks/quality.py evaluate --runs runs/quality --gpus $G \
  --weights runs/keep/fid16.pt --kinds final,curve --study-curves --at-steps 4000,5000,6000 > $OUT/e3/q-eval.txt 2>&1
python benchmarks/quality.py report --runs runs/quality > $OUT/e3/report.md 2>&1
cp runs/quality/*.log runs/quality/eval/results-*.jsonl $OUT/e3/ 2>/dev/null
tail -n 5 $OUT/e3/q-eval.txt; cat $OUT/e3/report.md | head -90
cd $OUT && tar czf e3.tgz e3 && rm -rf e3; echo "end at ${SECONDS}s"
