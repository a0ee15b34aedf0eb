#!/usr/bin/env bash
# recipes/toy2d.toml with each built-in divergence; prints the final energy distance, its floor and the
# wall time. Used for docs/results.md:  bash benchmarks/toy2d_divergences.sh [RUNS_DIR]
set -euo pipefail
runs=${1:-runs/toy2d-divergences}
for div in ${DIVS:-dijs reverse-kl kl}; do
  rm -rf "$runs/$div"
  start=$(date +%s.%N)
  dr-train recipes/toy2d.toml --run-dir "$runs/$div" --no-progress --set "divergence.name=$div" > "$runs.$div.log" 2>&1
  end=$(date +%s.%N)
  python - "$runs/$div/metrics.jsonl" "$div" "$start" "$end" <<'PY'
import json, sys
m = json.loads(open(sys.argv[1]).read().splitlines()[-1])
print(f"| {sys.argv[2]} | {m['energy-distance/energy_distance']:.5f} | {m['energy-distance/floor']:.5f} | "
      f"{m['energy-distance/ratio']:.2f} | {m['train_seconds']:.0f} | {float(sys.argv[4]) - float(sys.argv[3]):.0f} |")
PY
done
