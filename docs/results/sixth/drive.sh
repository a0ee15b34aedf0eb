#!/usr/bin/env bash
# Background driver (started with setsid by c1.sh, so it runs across the calls of one lease): the Fashion-MNIST
# pretraining on GPU 0, then two one-step runs (DiffRatio-DiJS as the recipe is, and with generator.sigma_init = 1;
# both compiled), one per GPU, until the epoch in runs/keep/train_end, then every evaluation until runs/keep/eval_end, and the report.
set -u
export PYTHONPATH=$PWD/core:$PWD/plugins PYTHONUNBUFFERED=1
K=runs/keep; L=$K/drive; mkdir -p $L
D="--set root='runs/keep/fashion'"
st() { echo "$(date +%T) $*" >> $L/state; }
st "pretraining"
python benchmarks/quality.py train --runs runs/quality --gpus 0 --pretrain-only --pretrain-steps 3000 \
  --pretrain-seconds 360 $D > $L/q-pre.txt 2>&1
S=$(( $(cat $K/train_end) - $(date +%s) ))
st "one-step runs for at most $S s"
python benchmarks/quality.py train --runs runs/quality --gpus 0,1 --methods diffratio-dijs \
  --variant "sigma_init-1: generator.sigma_init=1.0" --recipe-set strategy.compile=true --pretrain-steps 3000 --every 1000 --seconds $S $D > $L/q-train.txt 2>&1 &
TP=$!
# watchdog: call 2 may move train_end earlier (the runs then get SIGTERM, checkpoint and exit)
while kill -0 $TP 2>/dev/null; do
  [ "$(date +%s)" -ge "$(cat $K/train_end)" ] && pkill -TERM -f "diffratio train" && sleep 20
  sleep 5
done
st "evaluation"
while [ ! -f $K/fid16.pt ]; do sleep 2; done
E=$(( $(cat $K/eval_end) - $(date +%s) )); [ $E -lt 30 ] && E=30
timeout $E python benchmarks/quality.py evaluate --runs runs/quality --gpus 0,1 --weights $K/fid16.pt \
  --kinds final,curve --study-curves --at-steps 4000,8000,12000 > $L/q-eval.txt 2>&1
st "evaluation exited with $?"
python benchmarks/quality.py report --runs runs/quality > $L/report.md 2>&1
cp runs/quality/*.log runs/quality/eval/results-*.jsonl $L/ 2>/dev/null
st "done"
