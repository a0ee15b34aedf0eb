#!/usr/bin/env bash
# Call 5 (issue 6): the compiled bf16-weights rows of DiffRatio and VSD on one H100 (the acceptance's card).
set -u
python -m pip install --no-deps -q .device/w1/*.whl 2>&1 | grep -v -i warn | tail -2
export PYTHONPATH=$PWD/core:$PWD/plugins PYTHONUNBUFFERED=1
mkdir -p $OUT/g5 && nvidia-smi --query-gpu=index,name,memory.total,driver_version --format=csv > $OUT/g5/gpu.txt
V="bf16w-nc-cblocks: run.batch_size=16 strategy.precision='bf16-weights' strategy.engine_config.bf16.check_grad_overflow=false strategy.compile=true strategy.compile_scope='blocks'"
timeout 300 python benchmarks/throughput.py recipes/imagenet512.toml --steps 6 --warmup 4 --set dataset.name=synthetic-latents \
  --methods diffratio,vsd --variant "$V" --out $OUT/g5/tp-h100.md > $OUT/g5/tp-h100.txt 2>&1
(cd $OUT && tar czf g5.tgz g5); cat $OUT/g5/gpu.txt; grep "^| [a-z]" $OUT/g5/tp-h100.md; grep "images/s, " $OUT/g5/tp-h100.txt; echo "end at ${SECONDS}s"
