#!/usr/bin/env bash
# toy2d batch-size question: DiJS seeds 0-3 at batch 512 and 1024 (3000 steps), two runs at a time
source /work/venv/bin/activate; export OMP_NUM_THREADS=1
cd /work/main
run() { local name=$1 seed=$2; shift 2
  /usr/bin/time -f "%e" -o /tmp/tb/$name-$seed.wall dr-train recipes/toy2d.toml --no-progress --run-dir /tmp/tb/runs/$name-$seed \
    --set run.seed=$seed --set loggers.tensorboard=false "$@" > /tmp/tb/$name-$seed.log 2>&1; }
for seed in 0 1 2 3; do
  run b512 $seed --set run.batch_size=512 &
  run b1024 $seed --set run.batch_size=1024 &
  wait
done
echo done > /tmp/tb/DONE
