#!/usr/bin/env bash
# Call 4 (issue 6): the compiled bf16-weights step on 1, 2 and 4 GPUs (ZeRO-2 scaling, same host), and the
# 2-GPU test case of compile_scope = "blocks" with bf16 weights (train, resume, SIGTERM stop on NCCL).
set -u
python -m pip install --no-deps -q .device/w1/*.whl 2>&1 | grep -v -i warn | tail -2
export PYTHONPATH=$PWD/core:$PWD/plugins PYTHONUNBUFFERED=1
mkdir -p $OUT/g4 && nvidia-smi --query-gpu=index,name,memory.total,driver_version --format=csv > $OUT/g4/gpu.txt
pack() { (cd $OUT && tar czf g4.tgz g4); }
trap pack EXIT
ARGS="recipes/imagenet512.toml --steps 6 --warmup 4 --set dataset.name=synthetic-latents --methods diffratio"
V="bf16w-nc-cblocks: run.batch_size=16 strategy.precision='bf16-weights' strategy.engine_config.bf16.check_grad_overflow=false strategy.compile=true strategy.compile_scope='blocks'"
( CUDA_VISIBLE_DEVICES=0,1 timeout 230 python -m pytest -q -p no:cacheprovider -m gpu tests/test_strategies_dist.py \
    -k "compile-blocks" -rA > $OUT/g4/gpu-test-compile-blocks.txt 2>&1; pack ) &
CUDA_VISIBLE_DEVICES=2,3 timeout 200 torchrun --standalone --nproc_per_node 2 benchmarks/throughput.py $ARGS \
  --variant "$V" --out $OUT/g4/tp-2gpu.md > $OUT/g4/tp-2gpu.txt 2>&1; pack
wait
CUDA_VISIBLE_DEVICES=0,1,2,3 timeout 200 torchrun --standalone --nproc_per_node 4 benchmarks/throughput.py $ARGS \
  --variant "$V" --out $OUT/g4/tp-4gpu.md > $OUT/g4/tp-4gpu.txt 2>&1; pack
CUDA_VISIBLE_DEVICES=0 timeout 150 python benchmarks/throughput.py $ARGS --variant "$V" --out $OUT/g4/tp-1gpu.md \
  > $OUT/g4/tp-1gpu.txt 2>&1; pack
tail -n 4 $OUT/g4/gpu-test-compile-blocks.txt; cat $OUT/g4/tp-*.md 2>/dev/null | grep "^| [a-z]"; echo "end at ${SECONDS}s"
