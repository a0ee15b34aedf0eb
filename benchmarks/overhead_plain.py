"""The plain side of ``overhead.py``: one training step of EDM pretraining, DiffRatio-DiJS and VSD as the PyTorch
loop a researcher would write around the recipe's backbone class; of diffratio it takes only the recipe's settings
and that class (EDM preconditioning and the ratio head written here; sample, forward, loss, backward, fused Adam, EMA by
``torch._foreach_lerp_``; the recipe's batch, optimiser and EMA settings, auxiliary steps per generator step, sigma
distribution, bf16 autocast and channels_last), and the images it samples from."""

from __future__ import annotations

import gzip
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from diffratio.recipe import Recipe

FASHION = Path("/usr/share/datasets/fashion-mnist")
SIGMA_DATA = 0.5


class Denoiser(nn.Module):
    """EDM preconditioning: ``D(x, s) = c_skip x + c_out F(c_in x, ln(s) / 4)``."""

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = net

    def forward(self, x: Tensor, sigma: Tensor) -> Tensor:
        s, sd2 = sigma.view(-1, 1, 1, 1), SIGMA_DATA**2
        c_skip, c_out, c_in = sd2 / (s**2 + sd2), s * SIGMA_DATA / (s**2 + sd2).sqrt(), 1 / (s**2 + sd2).sqrt()
        return c_skip * x + c_out * self.net(c_in * x, sigma.log() / 4).to(x.dtype)


class Ratio(nn.Module):
    """The ratio estimator: the U-Net's encoder half on ``c_in x``, pooled features, a zero-initialised linear head."""

    def __init__(self, encoder: nn.Module, features: int) -> None:
        super().__init__()
        self.net, self.head = encoder, nn.Linear(features, 1)
        self.head.load_state_dict({"weight": torch.zeros(1, features), "bias": torch.zeros(1)})  # f = 0 at start

    def forward(self, x: Tensor, sigma: Tensor) -> Tensor:
        c_in = 1 / (sigma.view(-1, 1, 1, 1) ** 2 + SIGMA_DATA**2).sqrt()
        return self.head(self.net(c_in * x, sigma.log() / 4)).float().squeeze(-1)


def load_images(device: torch.device, synthetic: bool) -> Tensor:
    """Fashion-MNIST train padded to 32x32 (uint8), or the framework's synthetic pool (float, std 0.5)."""
    if synthetic:
        return torch.randn(1024, 1, 32, 32, generator=torch.Generator().manual_seed(0)).mul_(SIGMA_DATA).to(device)
    raw = gzip.decompress((FASHION / "train-images-idx3-ubyte.gz").read_bytes())
    images = torch.frombuffer(bytearray(raw[16:]), dtype=torch.uint8).view(-1, 1, 28, 28)
    return F.pad(images, (2, 2, 2, 2)).to(device)


class Plain:
    """One stage's networks, optimisers and step as a plain loop (``step()``: one generator / denoiser update)."""

    def __init__(
        self, stage: str, recipe: Recipe, init: dict[str, Tensor], images: Tensor, device: torch.device, compiled: bool
    ) -> None:
        cfg = recipe.to_dict()
        strategy, method, sched = cfg["strategy"], cfg["method"], cfg["schedule"]
        self.device, self.images, self.batch, self.compiled = device, images, recipe.settings.batch_size, compiled
        self.bf16 = device.type == "cuda" and strategy["precision"] == "bf16"
        cl = device.type == "cuda" and strategy["channels_last"]
        self.place = lambda m: m.to(device, memory_format=torch.channels_last if cl else torch.preserve_format)
        if device.type == "cuda":  # as the strategy sets them
            torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = strategy["tf32"]
            torch.backends.cudnn.benchmark = True
        self.sigma_args = sched["p_mean"], sched["p_std"], sched["sigma_min"], sched["sigma_max"]
        weighting = method.get("generator_weighting", "one")
        self.sigma2, self.decay = weighting == "sigma2", method["ema_decay"]
        written = (
            weighting in ("one", "sigma2"),
            method.get("ratio_weighting", "one") == "one",
            cfg.get("divergence", {"name": "dijs"})["name"] == "dijs",
        )
        if stage != "edm" and not all(written):
            raise SystemExit(
                "overhead.py writes the recipes' divergence (dijs), method.ratio_weighting (one) and "
                "method.generator_weighting (one or sigma2) only; keep those settings"
            )
        backbone = recipe.components["backbone"]
        self.build = lambda mode: backbone.cls(backbone.config, data_shape=(1, 32, 32), num_labels=0, mode=mode)
        self.init = {k.removeprefix("backbone."): v for k, v in init.items() if k.startswith("backbone.")}
        if stage == "edm":
            self.net, self.net_c = self.trained(self.denoiser(), method["optimizer"])
            self.step = self.edm_step
            return
        self.gen, self.gen_c = self.trained(self.denoiser(), method["generator_optimizer"])
        self.sigma_init = cfg["generator"]["sigma_init"]
        if stage == "diffratio":
            encoder = self.build("encoder")
            encoder.load_state_dict({k: self.init[k] for k in encoder.state_dict()})
            self.aux, self.aux_c = self.trained(Ratio(encoder, encoder.feature_dim), method["ratio_optimizer"])
            self.aux_steps, self.step = method["ratio_steps"], self.diffratio_step
        else:
            self.aux, self.aux_c = self.trained(self.denoiser(), method["fake_optimizer"])
            teacher = self.place(self.denoiser()).eval().requires_grad_(False)
            self.teacher = torch.compile(teacher) if compiled else teacher
            self.aux_steps, self.step = method["fake_steps"], self.vsd_step

    def denoiser(self) -> Denoiser:
        net = self.build("full")
        net.load_state_dict(self.init)
        return Denoiser(net)

    def trained(self, module: nn.Module, optim: dict[str, Any]) -> tuple[nn.Module, nn.Module]:
        """(module, the module to call): on the device, with its fused Adam and fp32 EMA copy of the weights."""
        module = self.place(module)
        params = list(module.parameters())
        adam = torch.optim.AdamW if optim["weight_decay"] > 0 else torch.optim.Adam
        opt = adam(
            params,
            lr=optim["lr"],
            betas=tuple(optim["betas"]),
            eps=optim["eps"],
            weight_decay=optim["weight_decay"],
            fused=True,
        )
        module.opt, module.ema = opt, [p.detach().clone() for p in params]  # type: ignore[assignment]
        return module, torch.compile(module) if self.compiled else module

    def update(self, module: nn.Module, ema: bool = False) -> None:
        """Adam step of ``module`` on its gradients, then (``ema``) its EMA."""
        module.opt.step()  # type: ignore[operator]
        module.opt.zero_grad(set_to_none=True)  # type: ignore[operator]
        if ema:
            torch._foreach_lerp_(module.ema, [p.detach() for p in module.parameters()], 1 - self.decay)

    def autocast(self) -> Any:
        return torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.bf16)

    def real(self, n: int) -> Tensor:
        x = self.images[torch.randint(len(self.images), (n,), device=self.device)]
        return x.float() / 127.5 - 1 if x.dtype == torch.uint8 else x

    def sigma(self, n: int) -> Tensor:
        p_mean, p_std, lo, hi = self.sigma_args
        return (p_mean + p_std * torch.randn(n, device=self.device)).exp().clamp(lo, hi)

    @staticmethod
    def noise(x: Tensor, sigma: Tensor) -> Tensor:
        return x + sigma.view(-1, 1, 1, 1) * torch.randn_like(x)

    def generate(self, n: int) -> Tensor:
        z = torch.randn(n, 1, 32, 32, device=self.device)
        return self.gen_c(self.sigma_init * z, torch.full((n,), self.sigma_init, device=self.device))

    def denoising_loss(self, net: nn.Module, x: Tensor) -> Tensor:
        sigma = self.sigma(len(x))
        with self.autocast():
            denoised = net(self.noise(x, sigma), sigma)
        lam = (sigma**2 + SIGMA_DATA**2) / (sigma * SIGMA_DATA) ** 2
        return (lam * ((denoised.float() - x) ** 2).mean((1, 2, 3))).mean()

    def edm_step(self) -> None:
        self.denoising_loss(self.net_c, self.real(self.batch)).backward()
        self.update(self.net, ema=True)

    def diffratio_step(self) -> None:
        n = self.batch
        for _ in range(self.aux_steps):  # logistic regression: generated samples class 1, data class 0
            with torch.no_grad(), self.autocast():
                fake = self.generate(n).float()
            x, sigma = torch.cat([fake, self.real(n)]), self.sigma(2 * n)
            with self.autocast():
                logits = self.aux_c(self.noise(x, sigma), sigma)
            (F.softplus(-logits[:n]).mean() + F.softplus(logits[n:]).mean()).backward()
            self.update(self.aux)
        sigma = self.sigma(n)
        self.aux.requires_grad_(False)  # gradients reach the generator through the ratio's input only
        with self.autocast():
            f = self.aux_c(self.noise(self.generate(n).float(), sigma), sigma)
        h = 0.5 * torch.sigmoid(-f.detach())  # DiJS: h(f) = sigmoid(-f) / 2
        ((sigma**2 if self.sigma2 else 1) * h * f).mean().backward()
        self.aux.requires_grad_(True)
        self.update(self.gen, ema=True)

    def vsd_step(self) -> None:
        n = self.batch
        for _ in range(self.aux_steps):  # denoising score matching of the fake score on generated samples
            with torch.no_grad(), self.autocast():
                fake = self.generate(n).float()
            self.denoising_loss(self.aux_c, fake).backward()
            self.update(self.aux)
        sigma = self.sigma(n)
        with self.autocast():
            x_sigma = self.noise(self.generate(n).float(), sigma)
            with torch.no_grad():
                d = self.aux_c(x_sigma.detach(), sigma).float() - self.teacher(x_sigma.detach(), sigma).float()
        score_diff = d / sigma.view(-1, 1, 1, 1) ** 2
        ((sigma**2 if self.sigma2 else 1) * (score_diff * x_sigma.float()).flatten(1).sum(1)).mean().backward()
        self.update(self.gen, ema=True)
