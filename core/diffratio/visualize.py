"""Pictures of samples: scatter plots for 2-D data and image grids, as uint8 arrays and PNG files."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

DATA_COLOR = (150, 150, 150)
SAMPLE_COLOR = (200, 30, 30)


def scatter_image(data: Tensor, samples: Tensor, size: int = 512, extent: float | None = None) -> Tensor:
    """A scatter plot of ``samples`` (red) over ``data`` (grey) with a legend in the top left corner, as a
    uint8 (3, size, size) tensor."""
    data = data.detach().float().cpu()
    samples = samples.detach().float().cpu()
    if extent is None:
        extent = float(torch.quantile(data.abs().flatten(), 0.995)) * 1.3 + 1e-6
    img = np.full((size, size, 3), 255, dtype=np.uint8)
    c = size // 2
    img[c, :, :] = 225
    img[:, c, :] = 225
    for pts, color in ((data, DATA_COLOR), (samples, SAMPLE_COLOR)):
        xy = ((pts[:, :2].numpy() / extent + 1) * 0.5 * (size - 1)).round().astype(int)
        keep = (xy >= 1).all(1) & (xy < size - 1).all(1)
        u, v = xy[keep, 0], size - 1 - xy[keep, 1]
        for du in (-1, 0, 1):  # 3x3 dots
            for dv in (-1, 0, 1):
                img[v + dv, u + du] = color
    _legend(img, [("data", DATA_COLOR), ("samples", SAMPLE_COLOR)])
    return torch.from_numpy(img).permute(2, 0, 1).contiguous()


def _legend(img: np.ndarray, entries: list[tuple[str, tuple[int, int, int]]]) -> None:
    """Draw a boxed legend (a colour swatch and a label per entry) into the top left corner of ``img``."""
    from PIL import Image, ImageDraw

    pic = Image.fromarray(img)
    draw = ImageDraw.Draw(pic)
    draw.rectangle((4, 4, 84, 10 + 14 * len(entries)), fill=(255, 255, 255), outline=(120, 120, 120))
    for i, (label, color) in enumerate(entries):
        y = 9 + 14 * i
        draw.rectangle((9, y + 1, 17, y + 9), fill=color)
        draw.text((23, y), label, fill=(0, 0, 0))
    img[...] = np.asarray(pic)


def image_grid(images: Tensor, ncol: int | None = None, pad: int = 2) -> Tensor:
    """Tile uint8 images (B, C, H, W) into one (C', H', W') uint8 grid (grey images become RGB)."""
    b, ch, h, w = images.shape
    if ch == 1:
        images = images.expand(b, 3, h, w)
    ncol = ncol or math.ceil(math.sqrt(b))
    nrow = math.ceil(b / ncol)
    grid = torch.full((3, nrow * (h + pad) + pad, ncol * (w + pad) + pad), 255, dtype=torch.uint8)
    for i in range(b):
        r, col = divmod(i, ncol)
        grid[:, pad + r * (h + pad): pad + r * (h + pad) + h, pad + col * (w + pad): pad + col * (w + pad) + w] = (
            images[i])
    return grid


def save_png(image: Tensor, path: str | Path) -> Path:
    """Write a uint8 (C, H, W) tensor as a PNG."""
    from PIL import Image

    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    arr = image.permute(1, 2, 0).cpu().numpy()
    Image.fromarray(arr[..., 0] if arr.shape[2] == 1 else arr).save(p)
    return p
