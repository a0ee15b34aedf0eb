#!/usr/bin/env bash
# toy2d, DiJS, seeds 0-3: the ratio estimator's learning rate (the recipe's 1e-3) at 3e-4 and 3e-3, after
# toy2d_between_modes.py found the estimator's gradient error on the modes a third of the push between them.
# Two runs at a time. Final lines: toy2d_probes_1128.md.
source /work/venv/bin/activate; export OMP_NUM_THREADS=1
cd /work/main
run() { local name=$1 seed=$2; shift 2
  /usr/bin/time -f "%e" -o /tmp/tr3/$name-$seed.wall dr-train recipes/toy2d.toml --no-progress --run-dir /tmp/tr3/runs/$name-$seed \
    --set run.seed=$seed --set loggers.tensorboard=false "$@" > /tmp/tr3/$name-$seed.log 2>&1; }
for lr in 3e-4 3e-3; do
  for pair in "0 1" "2 3"; do
    set -- $pair
    run rlr$lr $1 --set method.ratio_optimizer.lr=$lr &
    run rlr$lr $2 --set method.ratio_optimizer.lr=$lr &
    wait
  done
done
