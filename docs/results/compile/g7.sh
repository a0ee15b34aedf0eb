#!/usr/bin/env bash
# Call 7 (issue 6), run as one command line on the warm H200 of call 6: the compiled bf16-weights rows of
# DiffRatio and VSD after DiT's residual stream was made contiguous.
mkdir -p $OUT/g7; export PYTHONPATH=$PWD/core:$PWD/plugins PYTHONUNBUFFERED=1
timeout 170 python benchmarks/throughput.py recipes/imagenet512.toml --steps 6 --warmup 4 --set dataset.name=synthetic-latents \
  --methods diffratio,vsd --variant "bf16w-nc-cblocks: run.batch_size=16 strategy.precision='bf16-weights' strategy.engine_config.bf16.check_grad_overflow=false strategy.compile=true strategy.compile_scope='blocks'" \
  --out $OUT/g7/tp.md > $OUT/g7/tp.txt 2>&1
grep "^| [a-z]" $OUT/g7/tp.md; grep "images/s, " $OUT/g7/tp.txt; echo "end at ${SECONDS}s"
