#!/usr/bin/env bash
# toy2d: two ratio-estimator steps per generator step (method.ratio_steps=2), the recipe otherwise as it is,
# averaged energy-distance metric; DiJS seeds 0-3, then KL and reverse KL seeds 0-3; two runs at a time.
# Ran 2026-11-28 04:59-05:05 UTC on this project's CPU machine; stopped by hand after the DiJS runs (worse
# than the recipe on 3 of 4 seeds), during the first KL pair, so only the DiJS lines were recorded
source /work/venv/bin/activate; export OMP_NUM_THREADS=1
cd /work/main
run() { local name=$1 seed=$2; shift 2
  /usr/bin/time -f "%e" -o /tmp/tr/$name-$seed.wall dr-train recipes/toy2d.toml --no-progress --run-dir /tmp/tr/runs/$name-$seed \
    --set run.seed=$seed --set loggers.tensorboard=false --set method.ratio_steps=2 "$@" > /tmp/tr/$name-$seed.log 2>&1; }
for pair in "dijs 0 dijs 1" "dijs 2 dijs 3" "kl 0 kl 1" "reverse-kl 0 reverse-kl 1" "kl 2 kl 3" "reverse-kl 2 reverse-kl 3"; do
  set -- $pair
  run $1 $2 --set divergence.name=$1 &
  run $3 $4 --set divergence.name=$3 &
  wait
done
echo done > /tmp/tr/DONE
