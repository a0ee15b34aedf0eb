#!/usr/bin/env bash
# toy2d, DiJS, seeds 0-3, on the recipe with the ratio estimator's lr at 3e-4: Adam's beta1 for the estimator
# at 0.9 (the recipe's 0.0), to average its gradient noise over steps, and at 0.5. Two runs at a time. Final
# lines: toy2d_probes_1128.md.
source /work/venv/bin/activate; export OMP_NUM_THREADS=1
cd /work/main
run() { local name=$1 seed=$2; shift 2
  /usr/bin/time -f "%e" -o /tmp/tr3/$name-$seed.wall dr-train recipes/toy2d.toml --no-progress --run-dir /tmp/tr3/runs/$name-$seed \
    --set run.seed=$seed --set loggers.tensorboard=false "$@" > /tmp/tr3/$name-$seed.log 2>&1; }
for b in 0.9 0.5; do
  for pair in "0 1" "2 3"; do
    set -- $pair
    run rb1-$b $1 --set "method.ratio_optimizer.betas=[$b, 0.99]" &
    run rb1-$b $2 --set "method.ratio_optimizer.betas=[$b, 0.99]" &
    wait
  done
done
