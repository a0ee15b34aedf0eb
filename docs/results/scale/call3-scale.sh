#!/usr/bin/env bash
# Issue 6 on a 2-GPU host: ImageNet-512 throughput on one GPU (GPU 0) while GPU 1 runs the Fashion-MNIST
# A/B of the engine's per-step check, then ZeRO-2 on both GPUs, then the 2-GPU strategy tests.
set -u
python -m pip install --no-deps -q .device/wheels/*.whl 2>&1 | grep -v -i warn | tail -2
export PYTHONPATH=$PWD/core:$PWD/plugins
export LD_LIBRARY_PATH=$(python -c "import nvidia,os;print(os.path.join(list(nvidia.__path__)[0],'cuda_runtime','lib'))"):${LD_LIBRARY_PATH:-}
nvidia-smi --query-gpu=index,name,memory.total,driver_version --format=csv | tee $OUT/gpu.txt
T="python benchmarks/throughput.py recipes/imagenet512.toml --steps 10 --warmup 2 --set dataset.name=synthetic-latents"
( CUDA_VISIBLE_DEVICES=1 OUT=$OUT/ab STEPS=300 COMPILED_S=0 timeout 280 bash benchmarks/images_speed_ab.sh .device/snap . .device/data/fashion > $OUT/ab.txt 2>&1 ) &
ab=$!
( export CUDA_VISIBLE_DEVICES=0
  timeout 150 $T --methods diffratio,vsd --out $OUT/tp-methods.md > $OUT/tp-methods.txt 2>&1
  timeout 125 $T --methods diffratio --variant 'xformers: backbone.attention=xformers' \
     --variant 'zero3: strategy.zero_stage=3' --out $OUT/tp-variants.md > $OUT/tp-variants.txt 2>&1 ) 
wait $ab
timeout 110 torchrun --standalone --nproc_per_node 2 benchmarks/throughput.py recipes/imagenet512.toml --steps 10 \
  --warmup 2 --set dataset.name=synthetic-latents --methods diffratio --variant 'zero2: strategy.zero_stage=2' \
  --out $OUT/tp-2gpu.md > $OUT/tp-2gpu.txt 2>&1
timeout 90 python -m pytest -q -p no:cacheprovider -m gpu tests/test_strategies_dist.py > $OUT/gpu-tests.txt 2>&1
tail -n 4 $OUT/*.txt; cat $OUT/*.md
