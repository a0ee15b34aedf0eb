#!/usr/bin/env bash
# This session's last 277 s of device time (2 x H200): activation checkpointing on the ImageNet-512 step, DiffRatio
# on GPU 0 and VSD on GPU 1 at once (one run per card: timings valid), bf16 weights, overflow check off, compiled
# blocks, batch 16; the rows without checkpointing are those of the previous session (docs/results.md s. 5).
set -u
python -m pip install --no-deps -q .device/w1/*.whl 2>&1 | grep -v -i warn | tail -2
export PYTHONPATH=$PWD/core:$PWD/plugins PYTHONUNBUFFERED=1
mkdir -p $OUT/m0 && nvidia-smi --query-gpu=index,name,memory.total,driver_version --format=csv > $OUT/m0/gpu.txt
V="b16-ckpt: run.batch_size=16 strategy.precision='bf16-weights' strategy.engine_config.bf16.check_grad_overflow=false strategy.compile=true strategy.compile_scope='blocks' backbone.activation_checkpointing=true"
TP="python benchmarks/throughput.py recipes/imagenet512.toml --steps 6 --warmup 3 --set dataset.name=synthetic-latents"
for m in diffratio vsd; do
  g=$([ $m = diffratio ] && echo 0 || echo 1)
  CUDA_VISIBLE_DEVICES=$g timeout $1 $TP --methods $m --variant "$V" --out $OUT/m0/tp-$m.md > $OUT/m0/tp-$m.txt 2>&1 &
done
wait; (cd $OUT && tar czf m0.tgz m0); grep -h "^| [a-z]" $OUT/m0/tp-*.md; tail -n 4 $OUT/m0/tp-*.txt; echo "end at ${SECONDS}s"
