#!/usr/bin/env bash
# Pretrain (edm) then DiffRatio on MNIST or Fashion-MNIST, then one-step and Heun sample grids.
#   bash benchmarks/images_chain.sh mnist|fashion-mnist [PRETRAIN_SECONDS] [DIFFRATIO_SECONDS] [--set K=V ...]
# Each stage is stopped with SIGTERM at its time limit (the run then checkpoints and the chain goes on).
# Environment: RUNS (default runs), OUT (copies of logs and pictures), DATA_SETS (extra --set for both
# stages, e.g. the data path), PRE_SETS / DR_SETS (extra --set for one stage), HEUN_NUM (Heun samples).
set -uo pipefail
ds=$1; pre_s=${2:-270}; dr_s=${3:-270}; shift 3 || shift $#
runs=${RUNS:-runs}; out=${OUT:-$runs/out}; mkdir -p "$out"
py=(python -m diffratio)
read -r -a data_sets <<< "${DATA_SETS:-}"
read -r -a pre_sets <<< "${PRE_SETS:-}"
read -r -a dr_sets <<< "${DR_SETS:-}"
log() { echo "[$(date +%H:%M:%S)] $*"; }

log "pretraining $ds (limit ${pre_s}s)"
timeout -s TERM "$pre_s" "${py[@]}" train "recipes/$ds-pretrain.toml" --run-dir "$runs/$ds-pretrain" \
  --no-progress --set 'loggers.console={}' "${data_sets[@]}" "${pre_sets[@]}" "$@" 2>&1 | tee "$out/$ds-pretrain.log"
log "diffratio $ds (limit ${dr_s}s)"
timeout -s TERM "$dr_s" "${py[@]}" train "recipes/$ds.toml" --run-dir "$runs/$ds" --no-progress \
  --set 'loggers.console={}' --set "method.init=\"$runs/$ds-pretrain\"" "${data_sets[@]}" "${dr_sets[@]}" "$@" 2>&1 \
  | tee "$out/$ds.log"
log "sampling"
"${py[@]}" sample "$runs/$ds" --num 10000 --out "$out/$ds-onestep.npz" --grid "$out/$ds-onestep.png"
"${py[@]}" sample "$runs/$ds-pretrain" --num "${HEUN_NUM:-100}" --out "$out/$ds-heun35.npz" --grid "$out/$ds-heun35.png"
cp "$runs/$ds/run.json" "$out/$ds-run.json"; cp "$runs/$ds-pretrain/run.json" "$out/$ds-pretrain-run.json"
log "done"
