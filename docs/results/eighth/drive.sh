#!/usr/bin/env bash
# Background driver (started with setsid by c1.sh): issue 5's last build item, VSD, KL and reverse KL (and
# DiJS, the control, where a 4th card is lent) for at least 20 GPU-minutes each, compiled, from ONE
# Fashion-MNIST pretraining; then every evaluation until eval_end, and the report. $1: GPUs (e.g. 0,1,2,3),
# $2: methods (e.g. vsd,diffratio-kl,diffratio-reverse-kl,diffratio-dijs).
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
python benchmarks/quality.py train --runs runs/quality --gpus $1 --methods $2 --recipe-set strategy.compile=true \
  --pretrain-steps 3000 --every 1000 --seconds $S $D > $L/q-train.txt 2>&1 &
TP=$!
while kill -0 $TP 2>/dev/null; do
  [ "$(date +%s)" -ge "$(cat $K/train_end)" ] && pkill -TERM -f "diffratio train" && sleep 20
  sleep 5
done
st "evaluation"
while [ ! -f $K/fid16.pt ]; do sleep 2; done
E=$(( $(cat $K/eval_end) - $(date +%s) )); [ $E -lt 30 ] && E=30
timeout $E python benchmarks/quality.py evaluate --runs runs/quality --gpus $1 --weights $K/fid16.pt \
  --kinds final,curve --at-steps 4000,8000 > $L/q-eval.txt 2>&1
st "evaluation exited with $?"
python benchmarks/quality.py report --runs runs/quality > $L/report.md 2>&1
cp runs/quality/*.log runs/quality/eval/results-*.jsonl $L/ 2>/dev/null
st "done"
