#!/usr/bin/env bash
# call 3: the runs continue for $1 seconds, then every evaluation within $2 s of the call's start (finals with
# precision/recall, the FID curves of both, FID-10k of each at 4000, 5000 and 6000 updates, the verifier rows
# N in {1,2,4,8,16} x {best,sir} on the decayed DiJS run at its own sigma) on two GPUs, and the report
set -u
export PYTHONPATH=$PWD/core:$PWD/plugins PYTHONUNBUFFERED=1
mkdir -p $OUT/d3
[ -f runs/keep/fid16.pt ] || { cat .device/fidB/* >> runs/keep/fid16.part.aa && mv runs/keep/fid16.part.aa runs/keep/fid16.pt; }
sha1sum runs/keep/fid16.pt | tee $OUT/d3/fid-sha1.txt
python benchmarks/quality.py train --runs runs/quality --gpus 0,1 --methods diffratio-dijs \
  --variant "decay60: run.steps=6000 method.generator_optimizer.lr_decay='cosine' method.generator_optimizer.lr_decay_start=0.6" \
  --pretrain-steps 0 --every 500 --seconds $1 --set root='runs/keep/fashion' >> $OUT/d3/q-train.txt 2>&1
echo "evaluation start at ${SECONDS}s"
timeout $(($2 - SECONDS)) python benchmarks/quality.py evaluate --runs runs/quality --gpus 0,1 \
  --weights runs/keep/fid16.pt --kinds final,curve,verifier --study-curves --at-steps 4000,5000,6000 \
  --verified study-decay60 > $OUT/d3/q-eval.txt 2>&1
python benchmarks/quality.py report --runs runs/quality > $OUT/d3/report.md 2>&1
cp runs/quality/*.log runs/quality/eval/results-*.jsonl $OUT/d3/ 2>/dev/null
tail -n 5 $OUT/d3/q-eval.txt; cat $OUT/d3/report.md | head -90
cd $OUT && tar czf d3.tgz d3 && rm -rf d3; echo "end at ${SECONDS}s"
