#!/usr/bin/env bash
set -u
python -m pip install --no-deps -q .device/w1/*.whl 2>&1 | grep -v -i warn | tail -2
export PYTHONPATH=$PWD/core:$PWD/plugins PYTHONUNBUFFERED=1
mkdir -p $OUT/g2; which gcc cc; python -c "import triton, torch; print('triton', triton.__version__, torch.__version__, torch._dynamo.config.suppress_errors, torch._dynamo.config.recompile_limit if hasattr(torch._dynamo.config,'recompile_limit') else torch._dynamo.config.cache_size_limit)"
S="dataset.name=synthetic-latents run.batch_size=16 strategy.precision='bf16-weights' strategy.compile=true"
CUDA_VISIBLE_DEVICES=0 TORCH_LOGS="recompiles,graph_breaks" timeout 250 python .device/s7/gdiag.py diffratio $S strategy.compile_scope='blocks' > $OUT/g2/blocks.txt 2>&1 &
CUDA_VISIBLE_DEVICES=1 TORCH_LOGS="recompiles,graph_breaks" timeout 250 python .device/s7/gdiag.py diffratio $S strategy.compile_scope='blocks' backbone.size='B' > $OUT/g2/blocksB.txt 2>&1 &
wait
for f in $OUT/g2/*.txt; do echo "== $f"; grep -v -i "warn" $f | grep -i "recompil\|limit\|step \|frames\|kernels\|compiled modules\|error\|break\|guard" | cut -c1-300 | head -40; done
