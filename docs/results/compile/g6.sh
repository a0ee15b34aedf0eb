#!/usr/bin/env bash
# Call 6 (issue 6): eager DiffRatio rows after DiT's residual stream is made contiguous (was channel-major).
set -u
python -m pip install --no-deps -q .device/w1/*.whl 2>&1 | grep -v -i warn | tail -2
export PYTHONPATH=$PWD/core:$PWD/plugins PYTHONUNBUFFERED=1
mkdir -p $OUT/g6 && nvidia-smi --query-gpu=index,name,memory.total,driver_version --format=csv > $OUT/g6/gpu.txt
B="run.batch_size=16"; W="strategy.precision='bf16-weights'"; NC="strategy.engine_config.bf16.check_grad_overflow=false"
timeout 185 python benchmarks/throughput.py recipes/imagenet512.toml --steps 6 --warmup 2 --set dataset.name=synthetic-latents \
  --methods diffratio --variant "bf16w-nc: $B $W $NC" --variant "autocast: $B" --out $OUT/g6/tp.md > $OUT/g6/tp.txt 2>&1
cat $OUT/g6/gpu.txt; grep "^| [a-z]" $OUT/g6/tp.md; grep "images/s, " $OUT/g6/tp.txt; echo "end at ${SECONDS}s"
