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
MEM = Path(__file__).parent.parent / "seventh" / "mem"  # the throughput.py tables of the measured rows
# (method, activation checkpointing, batch) <- (table file, its method column)
ROWS = {("diffratio", "false", 16): ("eager.md", "diffratio"),
        ("diffratio", "true", 16): ("eager-ckpt.md", "diffratio"),
        ("vsd", "false", 16): ("eager.md", "vsd"), ("vsd", "true", 16): ("eager-ckpt.md", "vsd"),
        ("diffratio-enc7", "true", 16): ("enc7-cblocks-ckpt.md", "diffratio"),
        ("diffratio", "true", 32): ("b32-cblocks-ckpt.md", "diffratio")}


def measured() -> dict[tuple[str, str, int], float]:
    """Each row's peak GiB, read from its table (the column ``peak GiB``)."""
    out = {}
    for key, (name, method) in ROWS.items():
        lines = [ln.strip().strip("|").split("|") for ln in (MEM / name).read_text().splitlines() if ln.startswith("|")]
        header = [c.strip() for c in lines[0]]
        row = next(r for r in lines[2:] if r[1].strip() == method)
        out[key] = float(row[header.index("peak GiB")])
    return out


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
    peaks = measured()
    act = {k: s[k[0], k[1], "generator_step"] * k[2] for k in peaks}  # GiB in the fp32 count
    eager, ckpt = ("diffratio", "false", 16), ("diffratio", "true", 16)
    c = (peaks[eager] - peaks[ckpt]) / (act[eager] - act[ckpt])
    b = (peaks[eager] - c * act[eager]) * GIB / TRAINED["diffratio"]

    def peak(key: tuple[str, str, int]) -> float:
        return (TRAINED[key[0]] * b + FROZEN[key[0]] * 2) / GIB + c * act[key]

    print(f"fitted on DiffRatio eager and checkpointed: {b:.1f} bytes per trained parameter, activations at "
          f"{c:.3f} of the fp32 count")
    print("| method | activation checkpointing | batch | predicted peak (GiB) | measured | error |")
    print("|---|---|---|---|---|---|")
    for key, value in peaks.items():
        p = peak(key)
        fit = " (fitted)" if key in (eager, ckpt) else ""
        print(f"| {key[0]} | {'yes' if key[1] == 'true' else 'no'} | {key[2]} | {p:.2f}{fit} | {value} | "
              f"{p - value:+.2f} |")


if __name__ == "__main__":
    main()
