#!/usr/bin/env bash
# Images/s and peak GPU memory of the Fashion-MNIST recipes (pretraining, then DiffRatio), eager and compiled.
#   DATA_SETS="--set dataset.root=.device/data/fashion" bash benchmarks/images_speed.sh [PRE_STEPS] [DR_STEPS]
# Each stage is a short dr-train run of the real recipe (step counts lowered); the table is printed by
# benchmarks/log_speed.py from the console logs (median of the 100-step windows after the first).
set -euo pipefail
pre_steps=${1:-800}; dr_steps=${2:-800}
runs=${RUNS:-runs/speed}; out=${OUT:-$runs/out}; mkdir -p "$out"
read -r -a data_sets <<< "${DATA_SETS:-}"
train() {  # NAME RECIPE [--set ...]
  local name=$1 recipe=$2; shift 2
  echo "[$(date +%H:%M:%S)] $name" >&2
  python -m diffratio train "recipes/$recipe" --run-dir "$runs/$name" --no-progress \
    --set 'loggers.console={}' --set run.sample_every=0 "${data_sets[@]}" "$@" > "$out/$name.log" 2>&1
}
train pretrain-eager fashion-mnist-pretrain.toml --set run.steps="$pre_steps" --set strategy.compile=false
train pretrain-compiled fashion-mnist-pretrain.toml --set run.steps="$pre_steps" --set strategy.compile=true
init="method.init=\"$runs/pretrain-compiled\""
train diffratio-eager fashion-mnist.toml --set run.steps="$dr_steps" --set "$init"
train diffratio-compiled fashion-mnist.toml --set run.steps="$dr_steps" --set "$init" --set strategy.compile=true
python benchmarks/log_speed.py "$out"/pretrain-eager.log "$out"/pretrain-compiled.log \
  "$out"/diffratio-eager.log "$out"/diffratio-compiled.log | tee "$out/speed.md"
