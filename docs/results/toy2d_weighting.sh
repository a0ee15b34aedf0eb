#!/usr/bin/env bash
# toy2d, DiJS, seeds 0-3: the generator loss's w(sigma) = snr (sigma^2 / (sigma^2 + sigma_data^2)) instead of
# the recipe's 1, and the sigma distribution moved up (schedule.p_mean = 0, the recipe's -1.0); two runs at a
# time, averaged energy-distance metric. Final lines: toy2d_probes_1128.md.
source /work/venv/bin/activate; export OMP_NUM_THREADS=1
cd /work/main
run() { local name=$1 seed=$2; shift 2
  /usr/bin/time -f "%e" -o /tmp/tr3/$name-$seed.wall dr-train recipes/toy2d.toml --no-progress --run-dir /tmp/tr3/runs/$name-$seed \
    --set run.seed=$seed --set loggers.tensorboard=false "$@" > /tmp/tr3/$name-$seed.log 2>&1; }
mkdir -p /tmp/tr3
for v in "snr schedule.generator_weighting='snr'" "pmean0 schedule.p_mean=0.0"; do
  set -- $v; name=$1; opt=$2
  for pair in "0 1" "2 3"; do
    set -- $pair
    run $name $1 --set "$opt" &
    run $name $2 --set "$opt" &
    wait
  done
done
