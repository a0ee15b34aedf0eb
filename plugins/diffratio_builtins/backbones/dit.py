"""A DiT backbone (Peebles & Xie 2023): patchify, transformer blocks with adaLN-Zero conditioning, unpatchify.

The conditioning vector ``c`` is an MLP of sin/cos features of the noise label plus a learned class
embedding; every block turns ``c`` into shift, scale and gate of its attention and MLP branches through a
zero-initialised linear layer, so each block starts as the identity (adaLN-Zero), and the final linear
layer is zero-initialised, so the ``full`` model starts at output 0.

``encoder`` mode keeps the patch embedding, the conditioning and the first ``encoder_depth`` blocks (by
default ``depth // 2``, the encoder half of method.md section 5), then a parameter-free LayerNorm and the mean
over tokens; its parameter names are those of ``full`` mode, so a ratio estimator of any ``encoder_depth``
starts from the first blocks of the same pretrained denoiser.
"""

from __future__ import annotations

from typing import Literal

import attrs
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from diffratio import Backbone, DiffRatioError
from diffratio.attention import BACKENDS, attention, check_backend
from diffratio.config import setting
from diffratio_builtins.backbones.unet import FourierEmbedding, PositionalEmbedding

#: (depth, hidden width, heads) of the DiT paper's model sizes
PRESETS: dict[str, tuple[int, int, int]] = {
    "S": (12, 384, 6),
    "B": (12, 768, 12),
    "L": (24, 1024, 16),
    "XL": (28, 1152, 16),
}


def sincos_pos_embed(dim: int, grid_h: int, grid_w: int) -> Tensor:
    """Fixed 2-D sin/cos position embedding, (grid_h * grid_w, dim): half the channels per axis."""
    quarter = dim // 4
    omega = 1.0 / 10000 ** (torch.arange(quarter, dtype=torch.float32) / quarter)

    def axis(n: int) -> Tensor:
        arg = torch.arange(n, dtype=torch.float32)[:, None] * omega[None]
        return torch.cat([arg.sin(), arg.cos()], dim=1)  # (n, dim / 2)

    rows = axis(grid_h)[:, None, :].expand(grid_h, grid_w, 2 * quarter)
    cols = axis(grid_w)[None, :, :].expand(grid_h, grid_w, 2 * quarter)
    return torch.cat([rows, cols], dim=-1).reshape(grid_h * grid_w, 4 * quarter)


def _xavier(layer: nn.Linear) -> None:
    nn.init.xavier_uniform_(layer.weight)
    nn.init.zeros_(layer.bias)


def _zero(layer: nn.Linear) -> None:
    nn.init.zeros_(layer.weight)
    nn.init.zeros_(layer.bias)


class DiTBlock(nn.Module):
    """Pre-norm transformer block; adaLN-Zero gives shift, scale and gate of both branches from ``c``."""

    def __init__(self, hidden: int, heads: int, mlp_ratio: float, attn_backend: str) -> None:
        super().__init__()
        self.heads = heads
        self.attn_backend = attn_backend
        mlp_hidden = int(hidden * mlp_ratio)
        self.norm1 = nn.LayerNorm(hidden, elementwise_affine=False, eps=1e-6)
        self.qkv = nn.Linear(hidden, 3 * hidden)
        self.proj = nn.Linear(hidden, hidden)
        self.norm2 = nn.LayerNorm(hidden, elementwise_affine=False, eps=1e-6)
        self.mlp = nn.Sequential(nn.Linear(hidden, mlp_hidden), nn.GELU(approximate="tanh"),
                                 nn.Linear(mlp_hidden, hidden))
        self.adaLN = nn.Sequential(nn.SiLU(), nn.Linear(hidden, 6 * hidden))
        for layer in (self.qkv, self.proj, self.mlp[0], self.mlp[2]):
            _xavier(layer)
        _zero(self.adaLN[1])

    def forward(self, x: Tensor, c: Tensor) -> Tensor:
        shift1, scale1, gate1, shift2, scale2, gate2 = self.adaLN(c)[:, None, :].chunk(6, dim=-1)
        x = x + gate1 * self._attend(self.norm1(x) * (1 + scale1) + shift1)
        return x + gate2 * self.mlp(self.norm2(x) * (1 + scale2) + shift2)

    def _attend(self, h: Tensor) -> Tensor:
        b, n, d = h.shape
        # (B, N, 3D) -> (B, N, 3, heads, D/heads) -> 3 x (B, heads, N, D/heads)
        q, k, v = self.qkv(h).reshape(b, n, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4).unbind(0)
        a = attention(q, k, v, self.attn_backend)
        return self.proj(a.transpose(1, 2).reshape(b, n, d))


class DiTFinalLayer(nn.Module):
    """adaLN-modulated LayerNorm and a zero-initialised linear map of each token to its patch."""

    def __init__(self, hidden: int, out_dim: int) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(hidden, elementwise_affine=False, eps=1e-6)
        self.adaLN = nn.Sequential(nn.SiLU(), nn.Linear(hidden, 2 * hidden))
        self.linear = nn.Linear(hidden, out_dim)
        _zero(self.adaLN[1])
        _zero(self.linear)

    def forward(self, x: Tensor, c: Tensor) -> Tensor:
        shift, scale = self.adaLN(c)[:, None, :].chunk(2, dim=-1)
        return self.linear(self.norm(x) * (1 + scale) + shift)


class DiTBackbone(Backbone):
    """Diffusion transformer on (C, H, W) images or latents, with the DiT paper's S/B/L/XL presets.

    ``depth``, ``hidden`` and ``heads`` override the preset when given. DiT-XL/2 on 64x64x4 latents
    (1,024 tokens) is the 512x512 recipe's model.
    """

    attention_backends = BACKENDS

    @attrs.frozen(kw_only=True)
    class Config:
        size: Literal["S", "B", "L", "XL"] = setting("S", "model size preset (depth, width, heads): " + ", ".join(
            f"{name} {preset}" for name, preset in PRESETS.items()))
        patch_size: int = setting(2, "side of the square patches", ge=1)
        depth: int | None = setting(None, "blocks, in place of the preset's depth", ge=1)
        hidden: int | None = setting(None, "width, in place of the preset's", ge=1)
        heads: int | None = setting(None, "attention heads, in place of the preset's", ge=1)
        encoder_depth: int | None = setting(None, "blocks kept in encoder mode (the ratio estimator); unset = "
                                            "depth // 2. Fewer is a lighter, faster estimator (docs/scale.md); "
                                            "full mode (generator, pretraining) is unchanged by it", ge=1,
                                            structural=False)
        mlp_ratio: float = setting(4.0, "MLP width / hidden width", gt=0)
        pos_embed: Literal["sincos", "learned"] = setting("sincos", "position embedding: fixed 2-D sin/cos, or "
                                                          "learned (starting from sin/cos)")
        embedding: Literal["positional", "fourier"] = setting("positional", "features of the noise label")
        noise_channels: int = setting(256, "width of the noise-label features", ge=1)
        fourier_scale: float = setting(16.0, "standard deviation of the Fourier frequencies (embedding = "
                                       "\"fourier\")", gt=0, structural=False)
        label_dropout: float = setting(0.0, "probability of dropping the class embedding in training "
                                       "(classifier-free guidance); 0 = off", ge=0, le=1, structural=False)
        attention: Literal["sdpa", "math", "xformers"] = setting("sdpa", "attention backend (diffratio.attention)",
                                                                 structural=False)
        activation_checkpointing: bool = setting(False, "recompute each block's activations in the backward pass "
                                                 "instead of keeping them: less memory (larger batches per GPU), "
                                                 "about a third more compute, the same results", structural=False)

    def __init__(self, config: Config, *, data_shape: tuple[int, ...], num_labels: int = 0,
                 mode: str = "full") -> None:
        super().__init__(config, data_shape=data_shape, num_labels=num_labels, mode=mode)
        c = config
        self.checkpoint_blocks = c.activation_checkpointing
        depth, hidden, heads = (v if v is not None else p
                                for v, p in zip((c.depth, c.hidden, c.heads), PRESETS[c.size], strict=True))
        self._check(c, self.data_shape, depth, hidden, heads, mode)
        check_backend(c.attention)
        self.depth, self.hidden, self.heads = depth, hidden, heads
        chans, h, w = self.data_shape
        p = c.patch_size
        self.grid = (h // p, w // p)

        self.patch_embed = nn.Conv2d(chans, hidden, p, stride=p)
        nn.init.xavier_uniform_(self.patch_embed.weight.view(hidden, -1))
        nn.init.zeros_(self.patch_embed.bias)
        pos = sincos_pos_embed(hidden, *self.grid)[None]
        if c.pos_embed == "learned":
            self.pos_embed = nn.Parameter(pos)
        else:
            self.register_buffer("pos_embed", pos, persistent=False)

        self.map_noise = (PositionalEmbedding(c.noise_channels) if c.embedding == "positional"
                          else FourierEmbedding(c.noise_channels, c.fourier_scale))
        self.noise_mlp = nn.Sequential(nn.Linear(c.noise_channels, hidden), nn.SiLU(), nn.Linear(hidden, hidden))
        for layer in (self.noise_mlp[0], self.noise_mlp[2]):
            nn.init.normal_(layer.weight, std=0.02)
            nn.init.zeros_(layer.bias)
        self.label_embed = nn.Embedding(num_labels, hidden) if num_labels else None
        if self.label_embed is not None:
            nn.init.normal_(self.label_embed.weight, std=0.02)

        n_blocks = depth if mode == "full" else (c.encoder_depth or depth // 2)
        self.blocks = nn.ModuleList(DiTBlock(hidden, heads, c.mlp_ratio, c.attention) for _ in range(n_blocks))
        if mode == "full":
            self.final = DiTFinalLayer(hidden, p * p * chans)

    @staticmethod
    def _check(c: Config, data_shape: tuple[int, ...], depth: int, hidden: int, heads: int, mode: str) -> None:
        if len(data_shape) != 3:
            raise DiffRatioError(f"dit: needs images or latents of shape (C, H, W), got data shape {data_shape}")
        _, h, w = data_shape
        if h % c.patch_size or w % c.patch_size:
            raise DiffRatioError(f"dit: patch_size {c.patch_size} does not divide the resolution {h}x{w}")
        if hidden % heads:
            raise DiffRatioError(f"dit: heads {heads} does not divide the width hidden = {hidden}")
        if hidden % 4:
            raise DiffRatioError(f"dit: the 2-D position embedding needs hidden divisible by 4, got {hidden}")
        if c.noise_channels % 2:
            raise DiffRatioError(f"dit: noise_channels must be even, got {c.noise_channels}")
        if mode == "encoder" and c.encoder_depth is None and depth < 2:
            raise DiffRatioError(f"dit: encoder mode uses depth // 2 blocks and needs depth >= 2, got {depth}"
                                 " (or set encoder_depth)")
        if c.encoder_depth is not None and c.encoder_depth > depth:
            raise DiffRatioError(f"dit: encoder_depth {c.encoder_depth} exceeds the depth {depth}: the encoder "
                                 "keeps the first encoder_depth blocks of the full network")

    @property
    def feature_dim(self) -> int:
        return self.hidden

    def compile_regions(self) -> list[nn.Module]:
        """The transformer blocks: identical in shape, so one compilation serves all of them."""
        return list(self.blocks)

    def embed(self, noise_labels: Tensor, class_labels: Tensor | None) -> Tensor:
        """The (B, hidden) conditioning vector ``c`` from noise labels and class labels."""
        cond = self.noise_mlp(self.map_noise(noise_labels))
        lab = self.embed_labels(self.label_embed, class_labels, self.config.label_dropout)
        if lab is not None:
            cond = cond + lab.to(cond.dtype)
        return cond

    def forward(self, x: Tensor, noise_labels: Tensor, class_labels: Tensor | None = None) -> Tensor:
        cond = self.embed(noise_labels, class_labels)
        # the fixed embedding is a buffer, kept fp32 when a strategy holds the weights in bf16; cast it to the
        # weights' dtype so that the residual stream follows them (fp32 weights, under autocast too: unchanged)
        pos = self.pos_embed.to(self.patch_embed.weight.dtype)
        # (B, N, hidden), made token-major in memory: a transposed view would keep every residual add, norm and
        # linear layer of the blocks on a channel-major layout (copies, slow element-wise kernels)
        h = self.patch_embed(x).flatten(2).transpose(1, 2).contiguous() + pos
        for blk in self.blocks:
            h = self.run_block(blk, h, cond)
        if self.mode == "encoder":
            return F.layer_norm(h, (self.hidden,), eps=1e-6).mean(dim=1)
        out = self.final(h, cond)  # (B, N, p * p * C)
        b, (gh, gw), p, chans = x.shape[0], self.grid, self.config.patch_size, self.data_shape[0]
        out = out.reshape(b, gh, gw, p, p, chans).permute(0, 5, 1, 3, 2, 4)
        return out.reshape(b, chans, gh * p, gw * p)
