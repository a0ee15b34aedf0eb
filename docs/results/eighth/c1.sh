#!/usr/bin/env bash
# Call 1 (4 x H200 (or 2: fewer methods), carry .device/w1 .device/data/fashion .device/fidA .device/s12): install, start the driver in
# its own session, watch it for $1 seconds; $4 GPUs, $5 methods (drive.sh). The driver's deadlines count from now: training until +$2 s,
# evaluation until +$3 s.
set -u
python -m pip install --no-deps -q .device/w1/*.whl 2>&1 | grep -v -i warn | tail -2
K=runs/keep; mkdir -p $K $OUT/c1
nvidia-smi --query-gpu=index,name,memory.total,driver_version --format=csv > $OUT/c1/gpu.txt
python -c "import torch; print(torch.__version__)" >> $OUT/c1/gpu.txt
git rev-parse HEAD >> $OUT/c1/gpu.txt 2>/dev/null
cp -r .device/data/fashion $K/ && cp .device/fidA/* $K/
T0=$(date +%s); echo $T0 > $K/T0; echo $((T0 + $2)) > $K/train_end; echo $((T0 + $3)) > $K/eval_end
setsid nohup bash .device/s12/drive.sh $4 $5 > $K/drive.out 2>&1 < /dev/null &
sleep $1
cat $OUT/c1/gpu.txt; cat $K/drive/state; tail -n 3 $K/drive/q-pre.txt; tail -n 8 $K/drive/q-train.txt 2>/dev/null
for f in runs/quality/*.log; do echo "== $f"; grep -v "^\[" $f | tail -n 2; done 2>/dev/null
cp $K/drive/* runs/quality/*.log $OUT/c1/ 2>/dev/null; cd $OUT && tar czf c1.tgz c1 && rm -rf c1
