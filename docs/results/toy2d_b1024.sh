#!/usr/bin/env bash
# toy2d, seeds 0-3: batch 1024 for 2000 steps on two threads (about the recipe's two minutes alone on a
# 2-core machine), with the ratio estimator's lr of 3e-4 (the recipe's since 2026-11-28). One run at a time.
# Final lines: toy2d_probes_1128.md.
source /work/venv/bin/activate
cd /work/main
run() { local name=$1 seed=$2; shift 2
  /usr/bin/time -f "%e" -o /tmp/tr3/$name-$seed.wall dr-train recipes/toy2d.toml --no-progress --run-dir /tmp/tr3/runs/$name-$seed \
    --set run.seed=$seed --set loggers.tensorboard=false "$@" > /tmp/tr3/$name-$seed.log 2>&1; }
for d in ${DIVS:-dijs}; do
  for seed in 0 1 2 3; do
    run b1024s2000-$d $seed --set run.batch_size=1024 --set run.steps=2000 --set strategy.threads=2 --set divergence.name=$d
  done
done
