#!/usr/bin/env bash
# toy2d, DiJS, seeds 0-3, on the recipe with the ratio estimator's lr at 3e-4: the generator's lr (the
# recipe's 1e-4) at 5e-5 and 2e-4, now that the estimator moves less per step. Two runs at a time. Final
# lines: toy2d_probes_1128.md.
source /work/venv/bin/activate; export OMP_NUM_THREADS=1
cd /work/main
run() { local name=$1 seed=$2; shift 2
  /usr/bin/time -f "%e" -o /tmp/tr3/$name-$seed.wall dr-train recipes/toy2d.toml --no-progress --run-dir /tmp/tr3/runs/$name-$seed \
    --set run.seed=$seed --set loggers.tensorboard=false "$@" > /tmp/tr3/$name-$seed.log 2>&1; }
for lr in 5e-5 2e-4; do
  for pair in "0 1" "2 3"; do
    set -- $pair
    run glr$lr $1 --set method.generator_optimizer.lr=$lr &
    run glr$lr $2 --set method.generator_optimizer.lr=$lr &
    wait
  done
done
