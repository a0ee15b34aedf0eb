#!/usr/bin/env bash
# call 4: the FID-10k evaluations call 3 had no time for: VSD's final generator, and all methods at 2500 updates
set -u
export PYTHONPATH=$PWD/core:$PWD/plugins PYTHONUNBUFFERED=1
i=0
for j in vsd:2832 vsd:2500 diffratio-dijs:2500 diffratio-reverse-kl:2500; do
  r=${j%%:*}; s=${j##*:}
  echo "[{\"kind\": \"final\", \"run\": \"$r\", \"step\": $s, \"num\": 10000, \"key\": \"kind=final/run=$r/step=$s/num=10000\", \"cost\": 1}]" > runs/quality/eval/jobs-x$i.json
  CUDA_VISIBLE_DEVICES=$i timeout 125 python benchmarks/quality.py _worker --runs runs/quality --weights runs/keep/fid16.pt \
    --jobs runs/quality/eval/jobs-x$i.json --out runs/quality/eval/results-x$i.jsonl > $OUT/w$i.txt 2>&1 &
  i=$((i+1))
done
wait
cat runs/quality/eval/results-x*.jsonl > $OUT/results-x.jsonl; tail -n 2 $OUT/w*.txt
