#!/usr/bin/env bash
# Session of 2026-11-28 (02:07 UTC), call 1 on a 2-GPU host (4-GPU hosts were not lent): Fashion-MNIST
# pretraining (GPU 0) beside the ImageNet-512 throughput of DeepSpeed's bf16 weights against autocast (GPU 1,
# issue 6); then two one-step runs from that pretraining, one per GPU (issue 5): DiffRatio-DiJS as the recipe
# is, and with a cosine decay of the generator's lr over the last 40% of 6000 updates.
set -u
python -m pip install --no-deps -q .device/w1/*.whl 2>&1 | grep -v -i warn | tail -2
export PYTHONPATH=$PWD/core:$PWD/plugins PYTHONUNBUFFERED=1
mkdir -p $OUT/d1 && nvidia-smi --query-gpu=index,name,memory.total,driver_version --format=csv | tee $OUT/d1/gpu.txt
git log -1 --format='%H %cd' > $OUT/d1/commit.txt 2>/dev/null; python -c "import torch; print(torch.__version__)" >> $OUT/d1/commit.txt
mkdir -p runs/keep && cp -r .device/data/fashion runs/keep/ && cp .device/fidA/* runs/keep/
D="--set root='runs/keep/fashion'"
TP="python benchmarks/throughput.py recipes/imagenet512.toml --steps 6 --warmup 2 --set dataset.name=synthetic-latents"
BW="strategy.precision='bf16-weights'"
if grep -q bf16-weights plugins/diffratio_builtins/strategies/deepspeed.py; then
  ( CUDA_VISIBLE_DEVICES=1 timeout 310 $TP --methods diffratio,vsd --variant 'autocast-b16: run.batch_size=16' \
      --variant "bf16w-b16: run.batch_size=16 $BW" --out $OUT/d1/tp.md > $OUT/d1/tp.txt 2>&1 ) &
fi
python benchmarks/quality.py train --runs runs/quality --gpus 0 --pretrain-only --pretrain-steps 3000 \
  --pretrain-seconds 330 $D > $OUT/d1/q-pre.txt 2>&1
wait
echo "one-step start at ${SECONDS}s"
python benchmarks/quality.py train --runs runs/quality --gpus 0,1 --methods diffratio-dijs \
  --variant "decay60: run.steps=6000 method.generator_optimizer.lr_decay='cosine' method.generator_optimizer.lr_decay_start=0.6" \
  --pretrain-steps 3000 --every 500 --seconds $((500 - SECONDS)) $D >> $OUT/d1/q-train.txt 2>&1
cp runs/quality/*.log $OUT/d1/ 2>/dev/null
tail -n 3 $OUT/d1/q-pre.txt; cat $OUT/d1/tp.md; tail -n 3 $OUT/d1/tp.txt
tail -n 6 $OUT/d1/q-train.txt; grep -h "stopped by" runs/quality/*.log | tail -n 4
cd $OUT && tar czf d1.tgz d1 && rm -rf d1; echo "end at ${SECONDS}s"
