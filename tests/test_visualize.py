"""The 2-D scatter picture: samples over data, with a legend naming both."""

from __future__ import annotations

import torch

from diffratio.visualize import DATA_COLOR, SAMPLE_COLOR, scatter_image


def test_scatter_has_a_legend_for_data_and_samples() -> None:
    far = torch.full((10, 2), 100.0)  # outside the picture: only the legend can hold these colours
    img = scatter_image(torch.randn(200, 2), far, extent=3.0).permute(1, 2, 0)
    corner = img[:40, :90].reshape(-1, 3)
    rest = img[60:, :].reshape(-1, 3)
    has = lambda px, c: bool((px == torch.tensor(c, dtype=torch.uint8)).all(1).any())  # noqa: E731
    assert has(corner, DATA_COLOR) and has(corner, SAMPLE_COLOR)  # the swatches
    assert not has(rest, SAMPLE_COLOR)  # no sample fell inside the picture
    assert bool((corner < 100).all(1).any())  # dark label text
