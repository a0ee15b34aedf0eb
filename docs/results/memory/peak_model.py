"""The peak-memory model of docs/results.md section 5 ("Where the peak memory goes"), from saved_bytes.md.

peak = activations of the generator step (saved_bytes.md, fp32 at batch 1) x BATCH / 2 (bf16)
       + B bytes per trained parameter (weights, gradients, fp32 master weights, Adam) + 2 per frozen one,
with B fitted on DiffRatio's measured eager peak; with activation checkpointing, one generator block's
activations (recomputed one at a time in the backward pass) are added. The measured peaks are the eager rows of
docs/results.md section 5 (bf16 weights, overflow check off, batch 16, one H200; results/compile/call3).

    python docs/results/memory/peak_model.py
"""

from __future__ import annotations

from pathlib import Path

BATCH, GIB = 16, 2**30
GEN, EST14, EST7 = 674.8e6, 337.5e6, 170.1e6  # parameters (saved_bytes.md)
MEASURED = {"diffratio": 40.97, "diffratio-enc7": 36.32, "vsd": 42.53}  # GiB, eager peaks


def saved() -> dict[tuple[str, str, str], float]:
    """(method with settings, checkpointing, phase) -> GiB saved at batch 1 in fp32."""
    out = {}
    for line in (Path(__file__).parent / "saved_bytes.md").read_text().splitlines()[2:]:
        method, settings, flag, phase, gib, _ = (c.strip() for c in line.strip("|").split("|"))
        key = method + ("-enc7" if "encoder_depth=7" in settings else "")
        out[key, flag, phase] = float(gib)
    return out


def main() -> None:
    s = saved()
    scale = BATCH / 2
    trained = {"diffratio": GEN + EST14, "diffratio-enc7": GEN + EST7, "vsd": 2 * GEN}
    frozen = {"diffratio": 0.0, "diffratio-enc7": 0.0, "vsd": GEN}
    b = (MEASURED["diffratio"] - s["diffratio", "false", "generator_step"] * scale) * GIB / trained["diffratio"]
    block = s["vsd", "false", "generator_step"] / 28 * scale  # one generator block, recomputed at a time

    def peak(name: str, flag: str) -> float:
        states = (trained[name] * b + frozen[name] * 2) / GIB
        return states + s[name, flag, "generator_step"] * scale + (block if flag == "true" else 0.0)

    print(f"bytes per trained parameter, fitted: {b:.1f}")
    print("| method | predicted eager peak (GiB) | measured | predicted with checkpointing | its ratio to VSD's |")
    print("|---|---|---|---|---|")
    for name in trained:
        ck = peak(name, "true")
        print(f"| {name} | {peak(name, 'false'):.1f} | {MEASURED[name]} | {ck:.1f} | {ck / peak('vsd', 'true'):.2f} |")


if __name__ == "__main__":
    main()
