#!/usr/bin/env bash
# toy2d, DiJS, seeds 0-3, after toy2d_weighting.sh: w = snr together with generator.sigma_init = 1.0 (each
# alone was the better of its probe), and schedule.p_mean = -1.5 (p_mean = 0 was much worse); then the recipe
# itself at seed 0 for toy2d_between_modes.py. Two runs at a time. Final lines: toy2d_probes_1128.md.
source /work/venv/bin/activate; export OMP_NUM_THREADS=1
cd /work/main
run() { local name=$1 seed=$2; shift 2
  /usr/bin/time -f "%e" -o /tmp/tr3/$name-$seed.wall dr-train recipes/toy2d.toml --no-progress --run-dir /tmp/tr3/runs/$name-$seed \
    --set run.seed=$seed --set loggers.tensorboard=false "$@" > /tmp/tr3/$name-$seed.log 2>&1; }
for pair in "0 1" "2 3"; do
  set -- $pair
  run snr-si1 $1 --set "schedule.generator_weighting='snr'" --set generator.sigma_init=1.0 &
  run snr-si1 $2 --set "schedule.generator_weighting='snr'" --set generator.sigma_init=1.0 &
  wait
done
for pair in "0 1" "2 3"; do
  set -- $pair
  run pmean-1.5 $1 --set schedule.p_mean=-1.5 &
  run pmean-1.5 $2 --set schedule.p_mean=-1.5 &
  wait
done
run recipe 0
