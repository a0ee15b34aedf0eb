#!/usr/bin/env bash
# toy2d: generator.sigma_init (the recipe: 2.5) at 1.0, 5.0 and 0.5 with DiJS, then 1.0 with KL and reverse KL;
# seeds 0-3, two runs at a time, averaged energy-distance metric. Ran 2026-11-28 07:02-07:25 UTC on this
# project's CPU machine (as three scripts in that order; merged here). Final lines: toy2d_probes_1128.md.
source /work/venv/bin/activate; export OMP_NUM_THREADS=1
cd /work/main
run() { local name=$1 seed=$2; shift 2
  /usr/bin/time -f "%e" -o /tmp/tr2/$name-$seed.wall dr-train recipes/toy2d.toml --no-progress --run-dir /tmp/tr2/runs/$name-$seed \
    --set run.seed=$seed --set loggers.tensorboard=false "$@" > /tmp/tr2/$name-$seed.log 2>&1; }
mkdir -p /tmp/tr2
for s in 1.0 5.0 0.5; do
  for pair in "0 1" "2 3"; do
    set -- $pair
    run si$s $1 --set generator.sigma_init=$s &
    run si$s $2 --set generator.sigma_init=$s &
    wait
  done
done
for d in kl reverse-kl; do
  for pair in "0 1" "2 3"; do
    set -- $pair
    run si1.0-$d $1 --set generator.sigma_init=1.0 --set divergence.name=$d &
    run si1.0-$d $2 --set generator.sigma_init=1.0 --set divergence.name=$d &
    wait
  done
done
