"""The peak-memory model of docs/results.md section 5 ("Where the peak memory goes"), checked against the peaks
measured with the fixed benchmarks/throughput.py (docs/results/seventh/mem: one H200, batch 16, bf16 weights,
overflow check off; the peak of the timed steps alone).

    peak = c x (bytes the generator step saves, saved_bytes.md: fp32, batch 1) x BATCH
           + B bytes per trained parameter (weights, gradients, fp32 master weights, Adam) + 2 per frozen one

The first version fixed c = 1/2 (bf16) and fitted B on one eager peak that the FLOP-count step had inflated
(40.97 GiB); it predicted the checkpointed peaks 3.3-3.9 GiB too low. Here B and c are fitted on DiffRatio's
two measured peaks (eager and checkpointed), and the other measured rows are predictions.

    python docs/results/memory/peak_model.py
"""

from __future__ import annotations

from pathlib import Path

BATCH, GIB = 16, 2**30
GEN, EST14, EST7 = 674.8e6, 337.5e6, 170.1e6  # parameters (saved_bytes.md)
TRAINED = {"diffratio": GEN + EST14, "diffratio-enc7": GEN + EST7, "vsd": 2 * GEN}
FROZEN = {"diffratio": 0.0, "diffratio-enc7": 0.0, "vsd": GEN}
# (method, activation checkpointing, batch) -> measured peak GiB (docs/results/seventh/mem/*.md)
MEASURED = {("diffratio", "false", 16): 37.91, ("diffratio", "true", 16): 20.91, ("vsd", "false", 16): 39.57,
            ("vsd", "true", 16): 26.58, ("diffratio-enc7", "true", 16): 18.72, ("diffratio", "true", 32): 21.33}


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
    act = {k: s[k[0], k[1], "generator_step"] * k[2] for k in MEASURED}  # GiB in the fp32 count
    eager, ckpt = ("diffratio", "false", 16), ("diffratio", "true", 16)
    c = (MEASURED[eager] - MEASURED[ckpt]) / (act[eager] - act[ckpt])
    b = (MEASURED[eager] - c * act[eager]) * GIB / TRAINED["diffratio"]

    def peak(key: tuple[str, str, int]) -> float:
        return (TRAINED[key[0]] * b + FROZEN[key[0]] * 2) / GIB + c * act[key]

    print(f"fitted on DiffRatio eager and checkpointed: {b:.1f} bytes per trained parameter, activations at "
          f"{c:.3f} of the fp32 count")
    print("| method | activation checkpointing | batch | predicted peak (GiB) | measured | error |")
    print("|---|---|---|---|---|---|")
    for key, measured in MEASURED.items():
        p = peak(key)
        fit = " (fitted)" if key in (eager, ckpt) else ""
        print(f"| {key[0]} | {'yes' if key[1] == 'true' else 'no'} | {key[2]} | {p:.2f}{fit} | {measured} | "
              f"{p - measured:+.2f} |")


if __name__ == "__main__":
    main()
