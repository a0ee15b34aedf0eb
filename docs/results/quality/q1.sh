#!/usr/bin/env bash
# Issue 5/6/7, call 1 on a 4 x H100 host: Fashion-MNIST pretraining (GPU 0) beside the remaining 2-GPU
# strategy tests (GPUs 1, 2) and the 1-GPU ImageNet-512 throughput baseline (GPU 3); then the four
# one-step runs of benchmarks/quality.py, one per GPU, until the call's time is nearly spent.
set -u
python -m pip install --no-deps -q .device/w1/*.whl 2>&1 | grep -v -i warn | tail -2
export PYTHONPATH=$PWD/core:$PWD/plugins PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=index,name,memory.total,driver_version --format=csv | tee $OUT/gpu.txt
mkdir -p runs/keep && cp -r .device/data/fashion runs/keep/ && cp .device/fidA/* runs/keep/
D="--set root='runs/keep/fashion'"
( CUDA_VISIBLE_DEVICES=1,2 timeout 255 python -m pytest -q -p no:cacheprovider -m gpu tests/test_strategies_dist.py \
    -k "ddp-bf16 or zero3" -rA > $OUT/gpu-tests.txt 2>&1 ) &
t1=$!
( CUDA_VISIBLE_DEVICES=3 timeout 200 python benchmarks/throughput.py recipes/imagenet512.toml --steps 10 --warmup 2 \
    --set dataset.name=synthetic-latents --set run.batch_size=16 --methods diffratio --out $OUT/tp1.md > $OUT/tp1.txt 2>&1 ) &
t2=$!
python benchmarks/quality.py train --runs runs/quality --gpus 0,1,2,3 --pretrain-only --pretrain-steps 3000 \
  --pretrain-seconds 250 $D > $OUT/q-pre.txt 2>&1
wait $t1 $t2
echo "one-step start at ${SECONDS}s"
python benchmarks/quality.py train --runs runs/quality --gpus 0,1,2,3 --pretrain-steps 3000 --every 500 \
  --seconds $((540 - SECONDS)) $D > $OUT/q-train.txt 2>&1
tar czf $OUT/logs1.tgz runs/quality/*.log runs/quality/*/metrics.jsonl runs/quality/*/run.json 2>/dev/null
tail -n 3 $OUT/gpu-tests.txt; cat $OUT/tp1.md; tail -n 8 $OUT/q-train.txt; grep -h "finished\|stopped by" runs/quality/*.log | tail; echo "end at ${SECONDS}s"
