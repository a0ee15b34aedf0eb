#!/usr/bin/env bash
# Session of 2026-11-27 (23:40 UTC), call 1 on a 2-GPU host: Fashion-MNIST pretraining (GPU 0) beside a profile
# of the ImageNet-512 DiffRatio step at batch 16 and 24 (GPU 1, issue 6); then DiffRatio-DiJS (w = 1) and VSD
# (sigma^2), one per GPU, from that pretraining, checkpoints every 500 updates (issue 5's long runs).
set -u
python -m pip install --no-deps -q .device/w1/*.whl 2>&1 | grep -v -i warn | tail -2
export PYTHONPATH=$PWD/core:$PWD/plugins PYTHONUNBUFFERED=1
mkdir -p $OUT/c1 && nvidia-smi --query-gpu=index,name,memory.total,driver_version --format=csv | tee $OUT/c1/gpu.txt
mkdir -p runs/keep && cp -r .device/data/fashion runs/keep/ && cp .device/fidA/* runs/keep/
D="--set root='runs/keep/fashion'"
( CUDA_VISIBLE_DEVICES=1 timeout 300 python benchmarks/throughput.py recipes/imagenet512.toml --steps 6 --warmup 2 \
    --set dataset.name=synthetic-latents --methods diffratio \
    --variant 'b16: run.batch_size=16' --variant 'b24: run.batch_size=24' \
    --profile $OUT/c1 --profile-steps 2 --out $OUT/c1/tp-profile.md > $OUT/c1/tp-profile.txt 2>&1 ) &
python benchmarks/quality.py train --runs runs/quality --gpus 0 --pretrain-only --pretrain-steps 3000 \
  --pretrain-seconds 330 $D > $OUT/c1/q-pre.txt 2>&1
wait
echo "one-step start at ${SECONDS}s"
python benchmarks/quality.py train --runs runs/quality --gpus 0,1 --methods diffratio-dijs,vsd --pretrain-steps 3000 \
  --every 500 --seconds $((505 - SECONDS)) $D >> $OUT/c1/q-train.txt 2>&1
cp runs/quality/*.log $OUT/c1/ 2>/dev/null
tail -n 3 $OUT/c1/q-pre.txt; cat $OUT/c1/tp-profile.md; tail -n 4 $OUT/c1/tp-profile.txt; head -n 14 $OUT/c1/*diffratio.md
tail -n 6 $OUT/c1/q-train.txt; grep -h "stopped by" runs/quality/*.log | tail -n 3
cd $OUT && tar czf c1.tgz c1 && rm -rf c1; echo "end at ${SECONDS}s"
