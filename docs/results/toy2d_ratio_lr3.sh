#!/usr/bin/env bash
# toy2d, seeds 0-3: the ratio estimator's learning rate 3e-4 (the recipe's 1e-3) with KL and reverse KL, after
# DiJS read 2.36 / 2.11 / 2.33 / 3.07 with it (toy2d_ratio_lr.sh). Two runs at a time. Final lines:
# toy2d_probes_1128.md.
source /work/venv/bin/activate; export OMP_NUM_THREADS=1
cd /work/main
run() { local name=$1 seed=$2; shift 2
  /usr/bin/time -f "%e" -o /tmp/tr3/$name-$seed.wall dr-train recipes/toy2d.toml --no-progress --run-dir /tmp/tr3/runs/$name-$seed \
    --set run.seed=$seed --set loggers.tensorboard=false "$@" > /tmp/tr3/$name-$seed.log 2>&1; }
for d in kl reverse-kl; do
  for pair in "0 1" "2 3"; do
    set -- $pair
    run rlr3e-4-$d $1 --set method.ratio_optimizer.lr=3e-4 --set divergence.name=$d &
    run rlr3e-4-$d $2 --set method.ratio_optimizer.lr=3e-4 --set divergence.name=$d &
    wait
  done
done
