#!/usr/bin/env bash
# Session of 2026-11-27 (21:30 UTC), call 1 on a 4-GPU host: Fashion-MNIST pretraining (GPU 0) beside the
# DeepSpeed compile measurements of issue 6 (GPU 1: ImageNet-512 throughput eager vs compiled; GPUs 2, 3: the
# 2-GPU test case deepspeed-zero2-compile); then the defaults study of issue 5, two runs per GPU.
set -u
python -m pip install --no-deps -q .device/w1/*.whl 2>&1 | grep -v -i warn | tail -2
export PYTHONPATH=$PWD/core:$PWD/plugins PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=index,name,memory.total,driver_version --format=csv | tee $OUT/gpu.txt
mkdir -p runs/keep && cp -r .device/data/fashion runs/keep/ && cp .device/fidA/* runs/keep/
D="--set root='runs/keep/fashion'"
( CUDA_VISIBLE_DEVICES=2,3 timeout 300 python -m pytest -q -p no:cacheprovider -m gpu tests/test_strategies_dist.py \
    -k "compile" -rA > $OUT/gpu-tests.txt 2>&1 ) &
( CUDA_VISIBLE_DEVICES=1 timeout 330 python benchmarks/throughput.py recipes/imagenet512.toml --steps 10 --warmup 3 \
    --set dataset.name=synthetic-latents --set run.batch_size=16 --methods diffratio \
    --variant 'eager: strategy.compile=false' --variant 'compiled: strategy.compile=true' \
    --out $OUT/tp-compile.md > $OUT/tp-compile.txt 2>&1 ) &
python benchmarks/quality.py train --runs runs/quality --gpus 0 --pretrain-only --pretrain-steps 3000 \
  --pretrain-seconds 260 $D > $OUT/q-pre.txt 2>&1
wait
echo "study start at ${SECONDS}s"
bash .device/s/study.sh $((535 - SECONDS)) 3000
tar czf $OUT/logs1.tgz runs/quality/*.log runs/quality/*/run.json 2>/dev/null
tail -n 4 $OUT/gpu-tests.txt; cat $OUT/tp-compile.md; tail -n 5 $OUT/tp-compile.txt; tail -n 12 $OUT/q-train.txt
grep -h "stopped by" runs/quality/*.log | tail -n 9; echo "end at ${SECONDS}s"
