#!/usr/bin/env bash
# Issue 6, second call: ImageNet-512 on one GPU at batch 16 (batch 32 does not fit one 80 GB card without
# ZeRO partitioning), xformers and ZeRO-3 rows, ZeRO-2 on two GPUs at the same per-GPU batch, GPU tests.
set -u
python -m pip install --no-deps -q .device/wheels/*.whl 2>&1 | grep -v -i warn | tail -2
export PYTHONPATH=$PWD/core:$PWD/plugins
export LD_LIBRARY_PATH=$(python -c "import nvidia,os;print(os.path.join(list(nvidia.__path__)[0],'cuda_runtime','lib'))"):${LD_LIBRARY_PATH:-}
nvidia-smi --query-gpu=index,name,memory.total,driver_version --format=csv | tee $OUT/gpu.txt
T="benchmarks/throughput.py recipes/imagenet512.toml --steps 10 --warmup 2 --set dataset.name=synthetic-latents --set run.batch_size=16"
CUDA_VISIBLE_DEVICES=0 timeout 110 python $T --methods diffratio,vsd --out $OUT/tp1-methods.md > $OUT/tp1-methods.txt 2>&1
CUDA_VISIBLE_DEVICES=0 timeout 110 python $T --methods diffratio --variant 'xformers: backbone.attention=xformers' \
  --variant 'zero3: strategy.zero_stage=3' --out $OUT/tp1-variants.md > $OUT/tp1-variants.txt 2>&1
timeout 90 torchrun --standalone --nproc_per_node 2 $T --methods diffratio --variant 'zero2: strategy.zero_stage=2' \
  --out $OUT/tp2-zero2.md > $OUT/tp2-zero2.txt 2>&1
timeout 150 python -m pytest -q -p no:cacheprovider -m gpu tests/test_strategies_dist.py -x -rA > $OUT/gpu-tests.txt 2>&1
cat $OUT/*.md; tail -n 5 $OUT/gpu-tests.txt
