#!/usr/bin/env bash
# toy2d: a SiLU hidden layer of 64 in the ratio estimator's head (ratio.head_hidden=64; a small gain in the
# estimator's accuracy in results/estimator_bias.md), the recipe otherwise as it is, averaged
# energy-distance metric; DiJS seeds 0-3, two runs at a time on this project's CPU machine (ran 2026-11-28
# 05:09-05:14 UTC)
source /work/venv/bin/activate; export OMP_NUM_THREADS=1
cd /work/main
run() { local name=$1 seed=$2; shift 2
  /usr/bin/time -f "%e" -o /tmp/th/$name-$seed.wall dr-train recipes/toy2d.toml --no-progress --run-dir /tmp/th/runs/$name-$seed \
    --set run.seed=$seed --set loggers.tensorboard=false --set ratio.head_hidden=64 "$@" > /tmp/th/$name-$seed.log 2>&1; }
for pair in "0 1" "2 3"; do
  set -- $pair
  run dijs $1 &
  run dijs $2 &
  wait
done
echo done > /tmp/th/DONE
