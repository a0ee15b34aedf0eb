#!/usr/bin/env bash
# toy2d, DiJS, seeds 0-3, after toy2d_ratio_lr.sh (3e-4 better than the recipe's 1e-3 on three seeds, 3e-3
# worse): the ratio estimator's learning rate at 1e-4, and 3e-4 together with generator.sigma_init = 1.0.
# Two runs at a time. Final lines: toy2d_probes_1128.md.
source /work/venv/bin/activate; export OMP_NUM_THREADS=1
cd /work/main
run() { local name=$1 seed=$2; shift 2
  /usr/bin/time -f "%e" -o /tmp/tr3/$name-$seed.wall dr-train recipes/toy2d.toml --no-progress --run-dir /tmp/tr3/runs/$name-$seed \
    --set run.seed=$seed --set loggers.tensorboard=false "$@" > /tmp/tr3/$name-$seed.log 2>&1; }
for pair in "0 1" "2 3"; do
  set -- $pair
  run rlr1e-4 $1 --set method.ratio_optimizer.lr=1e-4 &
  run rlr1e-4 $2 --set method.ratio_optimizer.lr=1e-4 &
  wait
done
for pair in "0 1" "2 3"; do
  set -- $pair
  run rlr3e-4-si1 $1 --set method.ratio_optimizer.lr=3e-4 --set generator.sigma_init=1.0 &
  run rlr3e-4-si1 $2 --set method.ratio_optimizer.lr=3e-4 --set generator.sigma_init=1.0 &
  wait
done
