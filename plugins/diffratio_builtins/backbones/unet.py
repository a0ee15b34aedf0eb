"""An EDM-style U-Net backbone (the DDPM++ layout of Song et al. 2021 as configured by Karras et al. 2022).

Layout at input resolution R with ``channel_mult = (m_0, ..., m_L)``:

- noise embedding: sin/cos features of the noise label (positional or random Fourier), plus a learned
  class embedding when the data has labels, then two SiLU linear layers to ``4 * model_channels``;
- down path: a 3x3 input conv, then per level ``l`` (resolution ``R / 2^l``) a downsampling residual
  block (levels > 0) and ``num_blocks`` residual blocks of ``model_channels * m_l`` channels, with
  self-attention where the resolution is in ``attn_resolutions``;
- middle: two residual blocks at the lowest resolution, the first with attention;
- up path (``full`` mode only): per level ``num_blocks + 1`` blocks fed with the down path's skips, an
  upsampling block between levels, then GroupNorm, SiLU and a zero-initialised 3x3 output conv.

Residual blocks add the embedding as a per-channel bias after the first conv and scale the residual
sum by sqrt(1/2) (DDPM++); resampling is 2x2 average pooling and nearest upsampling (EDM's [1, 1]
filter). ``encoder`` mode stops after the middle blocks and averages over space, under the same
parameter names as ``full`` mode, so a ratio estimator loads a pretrained denoiser's weights by name.
"""

from __future__ import annotations

import math
from typing import Literal

import attrs
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from diffratio import Backbone, DiffRatioError
from diffratio.attention import BACKENDS, attention, check_backend
from diffratio.config import setting


def _positive_entries(_instance: object, _attribute: object, value: tuple[int, ...]) -> None:
    """Validator: a non-empty list of positive integers."""
    if not value or any(m <= 0 for m in value):
        raise ValueError(f"must be a non-empty list of positive integers, got {list(value)}")


class PositionalEmbedding(nn.Module):
    """DDPM++'s sinusoidal features of the noise label: cos/sin at frequencies from 1 to 1/max_positions."""

    def __init__(self, dim: int, max_positions: float = 10000.0) -> None:
        super().__init__()
        half = dim // 2
        exponent = torch.arange(half, dtype=torch.float32) / max(half - 1, 1)
        self.register_buffer("freqs", (1.0 / max_positions) ** exponent, persistent=False)

    def forward(self, t: Tensor) -> Tensor:
        arg = t.float()[:, None] * self.freqs[None]
        return torch.cat([arg.cos(), arg.sin()], dim=1)


class FourierEmbedding(nn.Module):
    """NCSN++'s random Fourier features: cos/sin(2 pi f t), f ~ N(0, scale^2) drawn from a fixed seed.

    The fixed seed makes every model built with the same settings share the frequencies, so they are
    not stored in the state dict.
    """

    def __init__(self, dim: int, scale: float = 16.0, seed: int = 0) -> None:
        super().__init__()
        g = torch.Generator(device="cpu").manual_seed(seed)
        freqs = torch.randn(dim // 2, generator=g, device="cpu") * (2 * math.pi * scale)
        freqs = freqs.to(torch.empty(0).device)  # the default device, e.g. meta inside `with torch.device("meta")`
        self.register_buffer("freqs", freqs, persistent=False)

    def forward(self, t: Tensor) -> Tensor:
        arg = t.float()[:, None] * self.freqs[None]
        return torch.cat([arg.cos(), arg.sin()], dim=1)


def group_norm(channels: int) -> nn.GroupNorm:
    """EDM's GroupNorm: up to 32 groups of at least 4 channels (the largest such count dividing ``channels``)."""
    groups = max(1, min(32, channels // 4))
    while channels % groups:
        groups -= 1
    return nn.GroupNorm(groups, channels, eps=1e-6)


def _init(layer: nn.Conv2d | nn.Linear, gain: float = 1.0) -> None:
    """Xavier-uniform weights scaled by ``gain`` (EDM's init_weight) and zero biases."""
    nn.init.xavier_uniform_(layer.weight, gain=gain)
    if layer.bias is not None:
        nn.init.zeros_(layer.bias)


class UNetBlock(nn.Module):
    """Residual block: GN-SiLU-conv, + embedding bias, GN-SiLU-dropout-conv, skip, optional self-attention."""

    def __init__(self, cin: int, cout: int, emb_channels: int, *, resample: str = "none", attn_heads: int = 0,
                 dropout: float = 0.0, attn_backend: str = "sdpa") -> None:
        super().__init__()
        self.resample = resample  # "none", "down" or "up"
        self.dropout = dropout
        self.attn_heads = attn_heads
        self.attn_backend = attn_backend
        self.skip_scale = math.sqrt(0.5)
        self.norm0 = group_norm(cin)
        self.conv0 = nn.Conv2d(cin, cout, 3, padding=1)
        self.affine = nn.Linear(emb_channels, cout)
        self.norm1 = group_norm(cout)
        self.conv1 = nn.Conv2d(cout, cout, 3, padding=1)
        self.skip = nn.Conv2d(cin, cout, 1) if cin != cout or resample != "none" else None
        for layer in (self.conv0, self.affine, self.skip):
            if layer is not None:
                _init(layer)
        _init(self.conv1, 1e-5)  # the residual branch starts near zero
        if attn_heads:
            self.norm2 = group_norm(cout)
            self.qkv = nn.Conv2d(cout, 3 * cout, 1)
            self.proj = nn.Conv2d(cout, cout, 1)
            _init(self.qkv, math.sqrt(0.2))
            _init(self.proj, 1e-5)

    def _resample(self, x: Tensor) -> Tensor:
        if self.resample == "down":
            return F.avg_pool2d(x, 2)
        if self.resample == "up":
            return F.interpolate(x, scale_factor=2.0, mode="nearest")
        return x

    def forward(self, x: Tensor, emb: Tensor) -> Tensor:
        h = self.conv0(self._resample(F.silu(self.norm0(x))))
        h = F.silu(self.norm1(h + self.affine(emb)[:, :, None, None].to(h.dtype)))
        h = self.conv1(F.dropout(h, p=self.dropout, training=self.training))
        s = self._resample(x)
        if self.skip is not None:
            s = self.skip(s)
        x = (h + s.to(h.dtype)) * self.skip_scale
        if self.attn_heads:
            x = (self.proj(self._attend(self.qkv(self.norm2(x)))) + x) * self.skip_scale
        return x

    def _attend(self, qkv: Tensor) -> Tensor:
        """Self-attention over the H*W positions of a (B, 3C, H, W) projection; returns (B, C, H, W)."""
        b, c3, hgt, wid = qkv.shape
        c, n, heads = c3 // 3, hgt * wid, self.attn_heads
        # (B, 3C, H, W) -> (B, N, 3, heads, D) -> 3 x (B, heads, N, D); views for channels_last input
        q, k, v = qkv.flatten(2).transpose(1, 2).reshape(b, n, 3, heads, c // heads).permute(2, 0, 3, 1, 4).unbind(0)
        a = attention(q, k, v, self.attn_backend)  # (B, heads, N, D)
        if qkv.is_contiguous(memory_format=torch.channels_last):  # keep the input's memory format
            return a.transpose(1, 2).reshape(b, n, c).transpose(1, 2).reshape(b, c, hgt, wid)
        return a.transpose(2, 3).reshape(b, c, hgt, wid)


class UNetBackbone(Backbone):
    """EDM DDPM++-style U-Net on (C, H, W) images; see the module docstring for the layout.

    Defaults are EDM's CIFAR-10 DDPM++ layout (128 channels, multipliers 2-2-2, 4 blocks, attention at
    16x16; EDM trained it with dropout 0.13). The 6.95M-parameter reference model of the Fashion-MNIST
    recipes is ``model_channels=64, channel_mult=(1, 2, 2), num_blocks=2, attn_resolutions=(8,)``.
    """

    attention_backends = BACKENDS

    @attrs.frozen(kw_only=True)
    class Config:
        model_channels: int = setting(128, "channels of the first level", ge=1)
        channel_mult: tuple[int, ...] = setting((2, 2, 2), "channels of each level, times model_channels (one "
                                                "entry per level)", validator=_positive_entries)
        num_blocks: int = setting(4, "residual blocks per level (down path)", ge=1)
        encoder_blocks: int | None = setting(None, "residual blocks per level kept in encoder mode (the ratio "
                                             "estimator): the first ones of each level; unset = num_blocks. Fewer "
                                             "is a lighter estimator; full mode is unchanged by it (docs/scale.md)",
                                             ge=1, structural=False)
        attn_resolutions: tuple[int, ...] = setting((16,), "resolutions (side length) with self-attention")
        dropout: float = setting(0.0, "dropout probability inside each residual block (EDM's CIFAR-10 model: "
                                 "0.13)", ge=0, lt=1, structural=False)
        embedding: Literal["positional", "fourier"] = setting("positional", "noise-label features: positional "
                                                              "(DDPM++) or fourier (NCSN++)")
        fourier_scale: float = setting(16.0, "standard deviation of the Fourier frequencies (embedding = "
                                       "\"fourier\")", gt=0, structural=False)
        channel_mult_noise: int = setting(1, "width of the noise features, times model_channels", ge=1)
        channel_mult_emb: int = setting(4, "width of the embedding, times model_channels", ge=1)
        label_dropout: float = setting(0.0, "probability of dropping the class embedding in training "
                                       "(classifier-free guidance); 0 = off", ge=0, le=1, structural=False)
        num_heads: int = setting(1, "attention heads (DDPM++: 1)", ge=1)
        head_channels: int = setting(0, "channels per attention head; > 0 sets heads = channels / this in place "
                                     "of num_heads", ge=0)
        attention: Literal["sdpa", "math", "xformers"] = setting("sdpa", "attention backend (diffratio.attention)",
                                                                 structural=False)
        activation_checkpointing: bool = setting(False, "recompute each residual block's activations in the "
                                                 "backward pass instead of keeping them: less memory, about a "
                                                 "third more compute, the same results", structural=False)

    def __init__(self, config: Config, *, data_shape: tuple[int, ...], num_labels: int = 0,
                 mode: str = "full") -> None:
        super().__init__(config, data_shape=data_shape, num_labels=num_labels, mode=mode)
        c = config
        self.checkpoint_blocks = c.activation_checkpointing
        res_list = self._check_shapes(c, self.data_shape)
        check_backend(c.attention)
        cin = self.data_shape[0]
        noise_ch = c.model_channels * c.channel_mult_noise
        emb_ch = c.model_channels * c.channel_mult_emb
        if noise_ch % 2:
            raise DiffRatioError(f"unet: the noise embedding needs an even width, got model_channels * "
                                 f"channel_mult_noise = {noise_ch}")
        if c.encoder_blocks is not None and c.encoder_blocks > c.num_blocks:
            raise DiffRatioError(f"unet: encoder_blocks {c.encoder_blocks} exceeds num_blocks {c.num_blocks}: the "
                                 "encoder keeps the first encoder_blocks blocks of each level of the full network")

        # noise and class embedding
        self.map_noise = (PositionalEmbedding(noise_ch) if c.embedding == "positional"
                          else FourierEmbedding(noise_ch, c.fourier_scale))
        self.map_label = nn.Embedding(num_labels, noise_ch) if num_labels else None
        self.map_layer0 = nn.Linear(noise_ch, emb_ch)
        self.map_layer1 = nn.Linear(emb_ch, emb_ch)
        _init(self.map_layer0)
        _init(self.map_layer1)

        def block(i: int, o: int, res: int, *, resample: str = "none", attn: bool = False) -> UNetBlock:
            return UNetBlock(i, o, emb_ch, resample=resample, dropout=c.dropout, attn_backend=c.attention,
                             attn_heads=self._heads(o, res) if attn else 0)

        # down path; skips records the channels of every output the up path concatenates
        cout = c.model_channels
        self.conv_in = nn.Conv2d(cin, cout, 3, padding=1)
        _init(self.conv_in)
        skips = [cout]
        self.enc = nn.ModuleDict()
        for level, (mult, res) in enumerate(zip(c.channel_mult, res_list, strict=True)):
            if level > 0:
                self.enc[f"{res}x{res}_down"] = block(cout, cout, res, resample="down")
                skips.append(cout)
            for idx in range(c.num_blocks if mode == "full" else (c.encoder_blocks or c.num_blocks)):
                cin_b, cout = cout, c.model_channels * mult
                self.enc[f"{res}x{res}_block{idx}"] = block(cin_b, cout, res, attn=res in c.attn_resolutions)
                skips.append(cout)
        self.mid = nn.ModuleList([block(cout, cout, res_list[-1], attn=True), block(cout, cout, res_list[-1])])
        self._feature_dim = cout
        if mode == "encoder":
            return

        # up path
        self.dec = nn.ModuleDict()
        concat: list[bool] = []
        for level in reversed(range(len(c.channel_mult))):
            mult, res = c.channel_mult[level], res_list[level]
            if level < len(c.channel_mult) - 1:
                self.dec[f"{res}x{res}_up"] = block(cout, cout, res, resample="up")
                concat.append(False)
            for idx in range(c.num_blocks + 1):
                cin_b, cout = cout + skips.pop(), c.model_channels * mult
                attn = idx == c.num_blocks and res in c.attn_resolutions
                self.dec[f"{res}x{res}_block{idx}"] = block(cin_b, cout, res, attn=attn)
                concat.append(True)
        self._dec_concat = tuple(concat)
        self.out_norm = group_norm(cout)
        self.out_conv = nn.Conv2d(cout, cin, 3, padding=1)
        nn.init.zeros_(self.out_conv.weight)
        nn.init.zeros_(self.out_conv.bias)

    @staticmethod
    def _check_shapes(c: Config, data_shape: tuple[int, ...]) -> list[int]:
        """Validate the image shape against the layout; return the resolution of each level."""
        if len(data_shape) != 3 or data_shape[1] != data_shape[2]:
            raise DiffRatioError(f"unet: needs square images of shape (C, H, H), got data shape {data_shape}")
        size, levels = data_shape[1], len(c.channel_mult)
        if size % 2 ** (levels - 1):
            raise DiffRatioError(f"unet: resolution {size} cannot be halved {levels - 1} times "
                                 f"(channel_mult has {levels} levels)")
        res_list = [size >> level for level in range(levels)]
        bad = [r for r in c.attn_resolutions if r not in res_list]
        if bad:
            raise DiffRatioError(f"unet: attn_resolutions {list(bad)} never occur; this U-Net's resolutions are "
                                 f"{res_list} (input {size}x{size}, {levels} levels in channel_mult)")
        return res_list

    def _heads(self, channels: int, res: int) -> int:
        c = self.config
        if c.head_channels:
            if channels % c.head_channels:
                raise DiffRatioError(f"unet: head_channels {c.head_channels} does not divide the {channels} "
                                     f"channels of the attention at {res}x{res}")
            return channels // c.head_channels
        if channels % c.num_heads:
            raise DiffRatioError(f"unet: num_heads {c.num_heads} does not divide the {channels} channels of "
                                 f"the attention at {res}x{res}")
        return c.num_heads

    @property
    def feature_dim(self) -> int:
        return self._feature_dim

    def embed(self, noise_labels: Tensor, class_labels: Tensor | None) -> Tensor:
        """The (B, emb_channels) conditioning vector from noise labels and class labels."""
        emb = self.map_noise(noise_labels)
        lab = self.embed_labels(self.map_label, class_labels, self.config.label_dropout)
        if lab is not None:
            emb = emb + lab
        emb = F.silu(self.map_layer0(emb))
        return F.silu(self.map_layer1(emb))

    def forward(self, x: Tensor, noise_labels: Tensor, class_labels: Tensor | None = None) -> Tensor:
        emb = self.embed(noise_labels, class_labels)
        h = self.conv_in(x)
        skips = [h]
        for blk in self.enc.values():
            h = self.run_block(blk, h, emb)
            skips.append(h)
        for blk in self.mid:
            h = self.run_block(blk, h, emb)
        if self.mode == "encoder":
            return h.mean(dim=(2, 3))
        for blk, concat in zip(self.dec.values(), self._dec_concat, strict=True):
            if concat:
                h = torch.cat([h, skips.pop().to(h.dtype)], dim=1)
            h = self.run_block(blk, h, emb)
        return self.out_conv(F.silu(self.out_norm(h)))
