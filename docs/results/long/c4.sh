#!/usr/bin/env bash
# call 4: FID-10k of DiffRatio-DiJS and VSD at the same 4000 updates, and the verifier sigma sweep (SIR, N = 8)
set -u
export PYTHONPATH=$PWD/core:$PWD/plugins PYTHONUNBUFFERED=1
mkdir -p $OUT/c4
i=0
for j in vsd:4000 diffratio-dijs:4000; do
  r=${j%%:*}; s=${j##*:}
  echo "[{\"kind\": \"final\", \"run\": \"$r\", \"step\": $s, \"num\": 10000, \"key\": \"kind=final/run=$r/step=$s/num=10000\", \"cost\": 1}]" > runs/quality/eval/jobs-x$i.json
  CUDA_VISIBLE_DEVICES=$i timeout 150 python benchmarks/quality.py _worker --runs runs/quality --weights runs/keep/fid16.pt \
    --jobs runs/quality/eval/jobs-x$i.json --out runs/quality/eval/results-x$i.jsonl > $OUT/c4/w$i.txt 2>&1 &
  i=$((i+1))
done
timeout 170 python benchmarks/quality.py evaluate --runs runs/quality --gpus 0,1 --weights runs/keep/fid16.pt \
  --kinds sigma > $OUT/c4/q-eval.txt 2>&1
wait
python benchmarks/quality.py report --runs runs/quality > $OUT/c4/report.md 2>&1
cp runs/quality/eval/results-*.jsonl $OUT/c4/; cat runs/quality/eval/results-x*.jsonl; tail -n 12 $OUT/c4/report.md
cd $OUT && tar czf c4.tgz c4 && rm -rf c4; echo "end at ${SECONDS}s"
