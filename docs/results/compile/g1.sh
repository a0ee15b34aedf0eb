#!/usr/bin/env bash
# Session of 2026-11-28 (second), call 1 on a 4-GPU host (issue 6): torch.compile with bf16 weights.
# GPUs 0+1: the 2-GPU test case deepspeed-zero2-bf16-weights, then a profile of the compiled step (GPU 0) and
# more compiled rows (GPU 1). GPU 2: DiffRatio rows eager / compiled blocks / compiled model. GPU 3: VSD rows.
set -u
python -m pip install --no-deps -q .device/w1/*.whl 2>&1 | grep -v -i warn | tail -2
export PYTHONPATH=$PWD/core:$PWD/plugins PYTHONUNBUFFERED=1
mkdir -p $OUT/g1 && nvidia-smi --query-gpu=index,name,memory.total,driver_version --format=csv > $OUT/g1/gpu.txt
pack() { (cd $OUT && tar czf g1.tgz g1); }
trap pack EXIT
TP="python benchmarks/throughput.py recipes/imagenet512.toml --steps 6 --warmup 4 --set dataset.name=synthetic-latents"
B="run.batch_size=16"; W="strategy.precision='bf16-weights'"; NC="strategy.engine_config.bf16.check_grad_overflow=false"
CB="strategy.compile=true strategy.compile_scope='blocks'"; CM="strategy.compile=true strategy.compile_scope='model'"
( CUDA_VISIBLE_DEVICES=2 timeout 500 $TP --methods diffratio --variant "bf16w-nc: $B $W $NC" \
    --variant "bf16w-nc-cblocks: $B $W $NC $CB" --variant "bf16w-nc-cmodel: $B $W $NC $CM" \
    --out $OUT/g1/tp-dr.md > $OUT/g1/tp-dr.txt 2>&1; pack ) &
( CUDA_VISIBLE_DEVICES=3 timeout 500 $TP --methods vsd --variant "autocast: $B" --variant "bf16w-nc: $B $W $NC" \
    --variant "bf16w-nc-cblocks: $B $W $NC $CB" --out $OUT/g1/tp-vsd.md > $OUT/g1/tp-vsd.txt 2>&1; pack ) &
CUDA_VISIBLE_DEVICES=0,1 timeout 230 python -m pytest -q -p no:cacheprovider -m gpu tests/test_strategies_dist.py \
  -k "bf16-weights" -rA > $OUT/g1/gpu-test-bf16w.txt 2>&1; tail -n 3 $OUT/g1/gpu-test-bf16w.txt; pack
( CUDA_VISIBLE_DEVICES=0 timeout 270 $TP --methods diffratio --variant "prof-bf16w-nc-cblocks: $B $W $NC $CB" \
    --profile $OUT/g1 --profile-steps 2 --out $OUT/g1/tp-prof.md > $OUT/g1/tp-prof.txt 2>&1; pack ) &
CUDA_VISIBLE_DEVICES=1 timeout 270 $TP --methods diffratio --variant "autocast-cblocks: $B $CB" \
    --variant "bf16w-nc-enc7-cblocks: $B $W $NC $CB backbone.encoder_depth=7" --out $OUT/g1/tp-more.md > $OUT/g1/tp-more.txt 2>&1
wait
cat $OUT/g1/tp-*.md 2>/dev/null | grep "^|"; tail -n 3 $OUT/g1/tp-*.txt; echo "end at ${SECONDS}s"
