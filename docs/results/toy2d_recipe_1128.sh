#!/usr/bin/env bash
# The toy2d recipe as changed on 2026-11-28 (batch 1024, 2000 steps, two threads; the energy-distance metric
# with the expected floor): the README's command exactly as written (seed 0, DiJS), then DiJS with seeds 4-7,
# one run at a time. Final lines: toy2d_probes_1128.md.
source /work/venv/bin/activate
cd /tmp/tr4
/usr/bin/time -f "%e" -o recipe.wall dr-train /work/main/recipes/toy2d.toml > recipe.log 2>&1   # -> runs/toy2d
for seed in 4 5 6 7; do
  /usr/bin/time -f "%e" -o dijs-$seed.wall dr-train /work/main/recipes/toy2d.toml --no-progress \
    --run-dir runs/dijs-$seed --set run.seed=$seed --set loggers.tensorboard=false > dijs-$seed.log 2>&1
done
