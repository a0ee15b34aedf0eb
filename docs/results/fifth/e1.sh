#!/usr/bin/env bash
# Session of 2026-11-28 (03:46 UTC), call 1: Fashion-MNIST pretraining (GPU 0); beside it (issue 6) the
# ImageNet-512 throughput of a lighter ratio estimator (backbone.encoder_depth) against the recipe's 14 blocks
# and VSD, the GPU test of bf16-weights, and a profile of the bf16-weights step; then (issue 5) the one-step
# runs from that pretraining, one per GPU: on 4 cards DiffRatio-DiJS (the recipe), the same with run.seed = 1,
# KL and reverse KL; on 2 cards the two DiJS runs.
set -u
python -m pip install --no-deps -q .device/w1/*.whl 2>&1 | grep -v -i warn | tail -2
export PYTHONPATH=$PWD/core:$PWD/plugins PYTHONUNBUFFERED=1
mkdir -p $OUT/e1 && nvidia-smi --query-gpu=index,name,memory.total,driver_version --format=csv | tee $OUT/e1/gpu.txt
NG=$(nvidia-smi -L | wc -l); echo "$NG GPUs"
python -c "import torch, deepspeed; print(torch.__version__, deepspeed.__version__)" > $OUT/e1/versions.txt 2>&1
mkdir -p runs/keep && cp -r .device/data/fashion runs/keep/ && cp .device/fidA/* runs/keep/
D="--set root='runs/keep/fashion'"
TP="python benchmarks/throughput.py recipes/imagenet512.toml --steps 6 --warmup 2 --set dataset.name=synthetic-latents"
BW="strategy.precision='bf16-weights'"
B16="run.batch_size=16"
if [ "$NG" -ge 4 ]; then
  ( export CUDA_VISIBLE_DEVICES=1
    timeout 150 $TP --methods diffratio,vsd --variant "autocast-b16: $B16" --out $OUT/e1/tp-g1a.md > $OUT/e1/tp-g1a.txt 2>&1
    timeout 170 $TP --methods diffratio --variant "bf16w-b16: $B16 $BW" --variant "bf16w-enc7-b16: $B16 $BW backbone.encoder_depth=7" \
      --out $OUT/e1/tp-g1b.md > $OUT/e1/tp-g1b.txt 2>&1 ) &
  ( CUDA_VISIBLE_DEVICES=2,3 timeout 110 python -m pytest -q -p no:cacheprovider -m gpu tests/test_strategies_dist.py \
      -k "bf16-weights" -rA > $OUT/e1/gpu-tests-bf16.txt 2>&1
    ( CUDA_VISIBLE_DEVICES=2 timeout 210 $TP --methods diffratio --variant "autocast-enc7-b16: $B16 backbone.encoder_depth=7" \
        --variant "bf16w-enc4-b16: $B16 $BW backbone.encoder_depth=4" --out $OUT/e1/tp-g2.md > $OUT/e1/tp-g2.txt 2>&1 ) &
    ( CUDA_VISIBLE_DEVICES=3 timeout 210 $TP --methods diffratio --variant "bf16w-b16: $B16 $BW" --profile $OUT/e1 \
        --profile-steps 2 --out $OUT/e1/tp-profile.md > $OUT/e1/tp-profile.txt 2>&1 ) &
    wait ) &
  RUNS="--gpus 0,1,2,3 --methods diffratio-dijs,diffratio-kl,diffratio-reverse-kl"
else
  ( CUDA_VISIBLE_DEVICES=1 timeout 320 $TP --methods diffratio,vsd --variant "autocast-b16: $B16" \
      --variant "bf16w-enc7-b16: $B16 $BW backbone.encoder_depth=7" --out $OUT/e1/tp-g1a.md > $OUT/e1/tp-g1a.txt 2>&1 ) &
  RUNS="--gpus 0,1 --methods diffratio-dijs"
fi
echo "$RUNS" > runs/keep/runs.txt
python benchmarks/quality.py train --runs runs/quality --gpus 0 --pretrain-only --pretrain-steps 3000 \
  --pretrain-seconds 330 $D > $OUT/e1/q-pre.txt 2>&1
wait
echo "one-step start at ${SECONDS}s"
python benchmarks/quality.py train --runs runs/quality $RUNS --variant "seed1: run.seed=1" \
  --pretrain-steps 3000 --every 500 --seconds $((555 - SECONDS)) $D >> $OUT/e1/q-train.txt 2>&1
cp runs/quality/*.log $OUT/e1/ 2>/dev/null
tail -n 3 $OUT/e1/q-pre.txt; cat $OUT/e1/tp-*.md; tail -n 3 $OUT/e1/tp-*.txt; tail -n 15 $OUT/e1/gpu-tests-bf16.txt
head -n 16 $OUT/e1/*diffratio*.md 2>/dev/null | head -40
tail -n 6 $OUT/e1/q-train.txt; grep -h "stopped by" runs/quality/*.log | tail -n 4
cd $OUT && tar czf e1.tgz e1 && rm -rf e1; echo "end at ${SECONDS}s"
