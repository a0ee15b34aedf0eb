#!/usr/bin/env bash
# Call 3 (issue 6): the same rows with throughput.py counting FLOPs last (the count had turned compiled code
# back to eager before the timed steps). GPU 0: DiffRatio bf16w eager/blocks/model; GPU 1: VSD; GPU 2: more
# DiffRatio rows; GPU 3: profile of the compiled DiffRatio step, then VSD's autocast row.
set -u
python -m pip install --no-deps -q .device/w1/*.whl 2>&1 | grep -v -i warn | tail -2
export PYTHONPATH=$PWD/core:$PWD/plugins PYTHONUNBUFFERED=1
mkdir -p $OUT/g3 && nvidia-smi --query-gpu=index,name,memory.total,driver_version --format=csv > $OUT/g3/gpu.txt
pack() { (cd $OUT && tar czf g3.tgz g3); }
trap pack EXIT
TP="python benchmarks/throughput.py recipes/imagenet512.toml --steps 6 --warmup 4 --set dataset.name=synthetic-latents"
B="run.batch_size=16"; W="strategy.precision='bf16-weights'"; NC="strategy.engine_config.bf16.check_grad_overflow=false"
CB="strategy.compile=true strategy.compile_scope='blocks'"; CM="strategy.compile=true strategy.compile_scope='model'"
( CUDA_VISIBLE_DEVICES=0 timeout 440 $TP --methods diffratio --variant "bf16w-nc: $B $W $NC" \
    --variant "bf16w-nc-cblocks: $B $W $NC $CB" --variant "bf16w-nc-cmodel: $B $W $NC $CM" \
    --out $OUT/g3/tp-dr.md > $OUT/g3/tp-dr.txt 2>&1; pack ) &
( CUDA_VISIBLE_DEVICES=1 timeout 440 $TP --methods vsd --variant "bf16w-nc: $B $W $NC" \
    --variant "bf16w-nc-cblocks: $B $W $NC $CB" --variant "autocast-cblocks: $B $CB" \
    --out $OUT/g3/tp-vsd.md > $OUT/g3/tp-vsd.txt 2>&1; pack ) &
( CUDA_VISIBLE_DEVICES=2 timeout 440 $TP --methods diffratio --variant "autocast: $B" --variant "autocast-cblocks: $B $CB" \
    --variant "bf16w-nc-enc7-cblocks: $B $W $NC $CB backbone.encoder_depth=7" \
    --out $OUT/g3/tp-dr2.md > $OUT/g3/tp-dr2.txt 2>&1; pack ) &
( CUDA_VISIBLE_DEVICES=3 timeout 200 $TP --methods diffratio --variant "prof-bf16w-nc-cblocks: $B $W $NC $CB" \
    --profile $OUT/g3 --profile-steps 2 --out $OUT/g3/tp-prof.md > $OUT/g3/tp-prof.txt 2>&1; pack
  CUDA_VISIBLE_DEVICES=3 timeout 200 $TP --methods vsd --variant "autocast: $B" \
    --out $OUT/g3/tp-vsd2.md > $OUT/g3/tp-vsd2.txt 2>&1; pack ) &
wait
cat $OUT/g3/tp-*.md 2>/dev/null | grep "^| [a-z]"; grep -h "images/s, " $OUT/g3/tp-*.txt; echo "end at ${SECONDS}s"
