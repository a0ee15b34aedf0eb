#!/usr/bin/env bash
# recipes/toy2d.toml once per divergence and seed, one run at a time; prints a markdown table of the final
# energy distance, its floor, their ratio, the seconds of training and the wall seconds, with the thread count.
#   bash benchmarks/toy2d_divergences.sh [RUNS_DIR]
#   SEEDS="0 1 2 3" DIVS="dijs kl reverse-kl" THREADS=2 bash benchmarks/toy2d_divergences.sh
# Defaults: SEEDS=0, DIVS="dijs reverse-kl kl", THREADS = the recipe's strategy.threads.
set -euo pipefail
runs=${1:-runs/toy2d-divergences}
mkdir -p "$runs"
threads=()
[ -n "${THREADS:-}" ] && threads=(--set "strategy.threads=$THREADS")
echo "| divergence | seed | threads | energy distance | floor | ratio | training s | wall s |"
echo "|---|---|---|---|---|---|---|---|"
for div in ${DIVS:-dijs reverse-kl kl}; do
  for seed in ${SEEDS:-0}; do
    dir="$runs/$div-$seed"
    rm -rf "$dir"
    start=$(date +%s.%N)
    dr-train recipes/toy2d.toml --run-dir "$dir" --no-progress --set "divergence.name=$div" \
      --set "run.seed=$seed" "${threads[@]}" > "$dir.log" 2>&1
    end=$(date +%s.%N)
    python - "$dir" "$div" "$seed" "$start" "$end" <<'PY'
import json, sys
from pathlib import Path
run, div, seed, start, end = sys.argv[1:]
m = json.loads(Path(run, "metrics.jsonl").read_text().splitlines()[-1])
threads = json.loads(Path(run, "run.json").read_text())["config"]["strategy"]["threads"]
print(f"| {div} | {seed} | {threads} | {m['energy-distance/energy_distance']:.5f} | "
      f"{m['energy-distance/floor']:.5f} | {m['energy-distance/ratio']:.2f} | {m['train_seconds']:.0f} | "
      f"{float(end) - float(start):.0f} |")
PY
  done
done
