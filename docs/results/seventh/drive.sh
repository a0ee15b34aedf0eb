#!/usr/bin/env bash
# Background driver (started with setsid by c1.sh; one H200): while the Fashion-MNIST pretraining runs, the
# ImageNet-512 peak-memory rows (issue 6; their speeds are not measurements: the card is shared), then one
# compiled DiffRatio-DiJS run with generator.sigma_init = 0.5 (issue 5) on the whole card until train_end,
# then every evaluation until eval_end, and the report.
set -u
export PYTHONPATH=$PWD/core:$PWD/plugins PYTHONUNBUFFERED=1
K=runs/keep; L=$K/drive; mkdir -p $L $L/mem
D="--set root='runs/keep/fashion'"
st() { echo "$(date +%T) $*" >> $L/state; }
bash .device/s11/mem.sh > $L/mem/mem.out 2>&1 &
MEM=$!
st "pretraining (memory rows beside it)"
python benchmarks/quality.py train --runs runs/quality --gpus 0 --pretrain-only --pretrain-steps 3000 \
  --pretrain-seconds 600 $D > $L/q-pre.txt 2>&1
S=$(( $(cat $K/train_end) - $(date +%s) ))
st "one-step run for at most $S s"
python benchmarks/quality.py train --runs runs/quality --gpus 0 --methods none \
  --variant "sigma_init-0.5: generator.sigma_init=0.5" --recipe-set strategy.compile=true --pretrain-steps 3000 \
  --every 1000 --seconds $S $D > $L/q-train.txt 2>&1 &
TP=$!
while kill -0 $TP 2>/dev/null; do
  [ "$(date +%s)" -ge "$(cat $K/train_end)" ] && pkill -TERM -f "diffratio train" && sleep 20
  sleep 5
done
kill -0 $MEM 2>/dev/null && st "memory rows still running: stopped" && pkill -TERM -f throughput.py
st "evaluation"
while [ ! -f $K/fid16.pt ]; do sleep 2; done
E=$(( $(cat $K/eval_end) - $(date +%s) )); [ $E -lt 30 ] && E=30
timeout $E python benchmarks/quality.py evaluate --runs runs/quality --gpus 0 --weights $K/fid16.pt \
  --kinds final,curve --study-curves --at-steps 4000,6000,8000 > $L/q-eval.txt 2>&1
st "evaluation exited with $?"
python benchmarks/quality.py report --runs runs/quality > $L/report.md 2>&1
cp runs/quality/*.log runs/quality/eval/results-*.jsonl $L/ 2>/dev/null
st "done"
