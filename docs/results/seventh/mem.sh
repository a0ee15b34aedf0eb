#!/usr/bin/env bash
# ImageNet-512 peak GPU memory with benchmarks/throughput.py (peak read right after the timed steps), batch 16,
# bf16 weights, overflow check off; one call per variant (each row in its own process), most wanted first.
set -u
export PYTHONPATH=$PWD/core:$PWD/plugins PYTHONUNBUFFERED=1
O=runs/keep/drive/mem
W="run.batch_size=16 strategy.precision='bf16-weights' strategy.engine_config.bf16.check_grad_overflow=false"
CB="strategy.compile=true strategy.compile_scope='blocks'"; CK="backbone.activation_checkpointing=true"
TP="python benchmarks/throughput.py recipes/imagenet512.toml --steps 3 --warmup 2 --set dataset.name=synthetic-latents"
row() {  # LABEL METHODS OVERRIDES...
  local label=$1 methods=$2; shift 2
  echo "$(date +%T) $label start"
  timeout 300 $TP --methods $methods --variant "$label: $*" --out $O/$label.md > $O/$label.txt 2>&1
  echo "$(date +%T) $label exit $?"
}
row cblocks-ckpt diffratio,vsd $W $CB $CK
row enc7-cblocks-ckpt diffratio $W $CB $CK backbone.encoder_depth=7
row cblocks diffratio,vsd $W $CB
row eager diffratio,vsd $W
row eager-ckpt diffratio,vsd $W $CK
row b32-cblocks-ckpt diffratio $W $CB $CK run.batch_size=32
echo "$(date +%T) all done"
