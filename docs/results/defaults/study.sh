#!/usr/bin/env bash
# the defaults study of issue 5: DiffRatio-DiJS as recipes/fashion-mnist.toml (run diffratio-dijs) and seven
# one-change variants, two runs per GPU, from the shared pretraining; $1 seconds, $2 pretraining steps
python benchmarks/quality.py train --runs runs/quality --gpus 0,1,2,3 --per-gpu 2 --methods diffratio-dijs \
  --pretrain-steps $2 --every 500 --seconds $1 --set root='runs/keep/fashion' \
  --variant 'p-edm: schedule.p_mean=-1.2 schedule.p_std=1.2' \
  --variant 'p_mean-0: schedule.p_mean=0.0' \
  --variant "w-one: schedule.generator_weighting='one'" \
  --variant 'sigma_init-1: generator.sigma_init=1.0' \
  --variant 'ratio_steps-2: method.ratio_steps=2' \
  --variant 'gen_lr-1e-4: method.generator_optimizer.lr=1e-4' \
  --variant 'ratio_lr-3e-4: method.ratio_optimizer.lr=3e-4' >> $OUT/q-train.txt 2>&1
