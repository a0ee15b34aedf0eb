#!/usr/bin/env bash
# call 3: ZeRO-2 ImageNet-512 throughput on 4 GPUs (the 1-GPU baseline ran in call 1 on this machine),
# then every evaluation of benchmarks/quality.py (FID-10k, precision/recall, curves, verifier), 4 GPUs.
set -u
export PYTHONPATH=$PWD/core:$PWD/plugins PYTHONUNBUFFERED=1
cat .device/fidB/* >> runs/keep/fid16.part.aa && mv runs/keep/fid16.part.aa runs/keep/fid16.pt && sha1sum runs/keep/fid16.pt
timeout 100 torchrun --standalone --nproc_per_node 4 benchmarks/throughput.py recipes/imagenet512.toml --steps 10 \
  --warmup 2 --set dataset.name=synthetic-latents --set run.batch_size=16 --methods diffratio --out $OUT/tp4.md > $OUT/tp4.txt 2>&1
echo "eval start at ${SECONDS}s"
timeout $((470 - SECONDS)) python benchmarks/quality.py evaluate --runs runs/quality --gpus 0,1,2,3 \
  --weights runs/keep/fid16.pt > $OUT/q-eval.txt 2>&1
python benchmarks/quality.py report --runs runs/quality > $OUT/q-report.md
tar czf $OUT/eval.tgz runs/quality/eval/*.jsonl runs/quality/eval/*.npz 2>/dev/null
cat $OUT/tp4.md | tail -n 3; tail -n 5 $OUT/q-eval.txt; head -n 12 $OUT/q-report.md; echo "end at ${SECONDS}s"
