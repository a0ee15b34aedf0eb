"""Where DiJS's push goes on the 2-D ring: samples between the modes against samples on them.

For a trained toy2d run (recipes/toy2d.toml, DiJS), draws 20,000 samples of the EMA generator, splits them
into "between" (further than 4 component standard deviations from every centre) and "on-mode", noises
them at several sigma and reports, per group, the ratio estimator's logit f, DiJS's weight
h(f) = sigmoid(-f) / 2 (method.md section 3), the logit's input gradient |grad f| and the product
h |grad f|, the size of the generator loss's push on a sample (w(sigma) = 1 in the recipe). The question
it answers: does DiJS's bounded weight switch the push off where the generator puts mass the data lacks?

    python docs/results/toy2d_between_modes.py RUN_DIR > docs/results/toy2d_between_modes.md
"""

from __future__ import annotations

import sys

import torch

from diffratio.sampling import draw, load_run

SIGMAS = (0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0)


def main(run_dir: str) -> None:
    torch.set_num_threads(1)
    run = load_run(run_dir)
    estimator = run.method.ratio.raw
    ring = run.ctx.dataset
    x, _ = draw(run, 20_000, seed=1)
    centres = ring.mixture.means.float()
    std = float(ring.config.std)
    between = torch.cdist(x, centres).min(dim=1).values > 4 * std
    print(f"Run `{run_dir}` (step {run.step}): {between.float().mean():.1%} of 20,000 EMA samples lie between "
          f"the modes (further than {4 * std:.2f} from every centre).\n")
    print("| sigma | samples | mean f | mean h(f) | mean abs grad f | mean h abs grad f |")
    print("|---|---|---|---|---|---|")
    gen = torch.Generator().manual_seed(0)
    for sigma in SIGMAS:
        xs = (x + sigma * torch.randn(x.shape, generator=gen)).requires_grad_(True)
        f = estimator(xs, torch.full((x.shape[0],), sigma)).reshape(-1)
        (grad,) = torch.autograd.grad(f.sum(), xs)
        h, norm = 0.5 * torch.sigmoid(-f.detach()), grad.norm(dim=1)
        for name, mask in (("between", between), ("on-mode", ~between)):
            print(f"| {sigma} | {name} | {f[mask].mean():.2f} | {h[mask].mean():.3f} | {norm[mask].mean():.3f} "
                  f"| {(h * norm)[mask].mean():.3f} |")


if __name__ == "__main__":
    main(sys.argv[1])
