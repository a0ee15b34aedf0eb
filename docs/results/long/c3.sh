#!/usr/bin/env bash
# call 3: the runs continue for $1 seconds, then every evaluation (finals with precision/recall, the FID curves,
# the verifier rows N in {1,2,4,8,16} x {best,sir} on DiffRatio-DiJS) on both GPUs, and the report
set -u
export PYTHONPATH=$PWD/core:$PWD/plugins PYTHONUNBUFFERED=1
mkdir -p $OUT/c3
[ -f runs/keep/fid16.pt ] || { cat .device/fidB/* >> runs/keep/fid16.part.aa && mv runs/keep/fid16.part.aa runs/keep/fid16.pt; }
sha1sum runs/keep/fid16.pt | tee $OUT/c3/fid-sha1.txt
python benchmarks/quality.py train --runs runs/quality --gpus 0,1 --methods diffratio-dijs,vsd --pretrain-steps 0 \
  --every 500 --seconds $1 --set root='runs/keep/fashion' >> $OUT/c3/q-train.txt 2>&1
echo "evaluation start at ${SECONDS}s"
timeout $(($2 - SECONDS)) python benchmarks/quality.py evaluate --runs runs/quality --gpus 0,1 \
  --weights runs/keep/fid16.pt --kinds final,curve,verifier > $OUT/c3/q-eval.txt 2>&1
python benchmarks/quality.py report --runs runs/quality > $OUT/c3/report.md 2>&1
cp runs/quality/*.log runs/quality/eval/results-*.jsonl $OUT/c3/ 2>/dev/null
tail -n 5 $OUT/c3/q-eval.txt; cat $OUT/c3/report.md | head -80
cd $OUT && tar czf c3.tgz c3 && rm -rf c3; echo "end at ${SECONDS}s"
