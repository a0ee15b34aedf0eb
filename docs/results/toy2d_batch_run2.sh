#!/usr/bin/env bash
# toy2d batch-size question, part 2: batch 1024 with 1500 steps (the two-minute budget), batch 2048 with 1500
# steps, and KL / reverse KL at batch 1024 (3000 steps); seeds 0-3, two runs at a time
source /work/venv/bin/activate; export OMP_NUM_THREADS=1
cd /work/main
run() { local name=$1 seed=$2; shift 2
  /usr/bin/time -f "%e" -o /tmp/tb/$name-$seed.wall dr-train recipes/toy2d.toml --no-progress --run-dir /tmp/tb/runs/$name-$seed \
    --set run.seed=$seed --set loggers.tensorboard=false "$@" > /tmp/tb/$name-$seed.log 2>&1; }
for seed in 0 1 2 3; do
  run b1024s1500 $seed --set run.batch_size=1024 --set run.steps=1500 &
  run b2048s1500 $seed --set run.batch_size=2048 --set run.steps=1500 &
  wait
done
for seed in 0 1 2 3; do
  run b1024kl $seed --set run.batch_size=1024 --set divergence.name=kl &
  run b1024rkl $seed --set run.batch_size=1024 --set divergence.name=reverse-kl &
  wait
done
echo done > /tmp/tb/DONE2
