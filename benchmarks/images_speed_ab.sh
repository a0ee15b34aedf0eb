#!/usr/bin/env bash
# A/B of the training step of two commits on the same GPU, runs interleaved (Fashion-MNIST recipes,
# eager pretraining and eager DiffRatio, STEPS each (default 500), then the second commit's DiffRatio
# compiled for COMPILED_S seconds (default 200; 0 skips it)).
# Make the two trees with git archive, e.g. for the step before issue 8 against HEAD:
#   mkdir -p .device/old .device/snap && git archive c1e049b | tar -x -C .device/old
#   git archive HEAD | tar -x -C .device/snap && cp benchmarks/log_speed.py .device/old/benchmarks/
#   bash benchmarks/images_speed_ab.sh .device/old .device/snap .device/data/fashion   # writes $OUT/ab.md
set -u
root=$PWD; a=$(realpath "$1"); b=$(realpath "$2"); data="--set dataset.root=$(realpath "$3")"
out=${OUT:-runs/ab/out}; mkdir -p "$out"; out=$(realpath "$out"); runs=/tmp/ab
one() {  # TREE NAME STAGE RECIPE STEPS [extra --set]
  local tree=$1 name=$2 stage=$3 recipe=$4 steps=$5; shift 5
  cd "$tree"
  echo "[$(date +%H:%M:%S)] $name $stage" >&2
  PYTHONPATH=$PWD/core:$PWD/plugins python -m diffratio train "recipes/$recipe" --run-dir "$runs/$name-$stage" \
    --no-progress --set 'loggers.console={}' --set run.sample_every=0 $data --set run.steps="$steps" "$@" \
    > "$out/$name-$stage.log" 2>&1
  cd "$root"
}
steps=${STEPS:-500}; compiled_s=${COMPILED_S:-200}
for t in "a $a" "b $b"; do
  set -- $t; one "$2" "$1" pretrain-eager fashion-mnist-pretrain.toml "$steps" --set strategy.compile=false
done
for t in "a $a" "b $b"; do
  set -- $t; one "$2" "$1" diffratio-eager fashion-mnist.toml "$steps" --set "method.init=\"$runs/$1-pretrain-eager\""
done
if [ "$compiled_s" -gt 0 ]; then
  one "$b" b diffratio-compiled fashion-mnist.toml 400 --set "method.init=\"$runs/b-pretrain-eager\"" \
    --set strategy.compile=true &
  pid=$!; ( sleep "$compiled_s"; kill -TERM $pid 2>/dev/null ) & wait $pid
fi
python "$b/benchmarks/log_speed.py" "$out"/*.log | tee "$out/ab.md"
