"""A synthetic video in AOT's input format, for demos, tests, benchmarks and calibration.

Not a real video: smooth attention maps with a few moving peaks, and features made of a static
background, a moving object and noise, so that frames repeat each other the way real ones do.
"""

from __future__ import annotations

import torch


def synthetic_video(frames: int = 32, grid: int = 27, dim: int = 64, *, seed: int = 0,
                    dtype: torch.dtype = torch.float32, device: str | torch.device = "cpu"):
    """Features and attention of a synthetic video.

    Returns:
        features (frames, grid*grid, dim), shallow_attention (frames, grid*grid),
        deep_attention (frames, grid*grid); attention is positive like a softmax column sum.
    """
    g = torch.Generator().manual_seed(seed)
    yy, xx = torch.meshgrid(torch.arange(grid, dtype=torch.float32),
                            torch.arange(grid, dtype=torch.float32), indexing="ij")
    t = torch.arange(frames, dtype=torch.float32)[:, None, None]

    def bumps(count: int, width: float, speed: float) -> torch.Tensor:
        centre = torch.rand(count, 2, generator=g) * (grid - 1)
        velocity = (torch.rand(count, 2, generator=g) - 0.5) * speed
        weight = 0.5 + torch.rand(count, generator=g)
        out = torch.zeros(frames, grid, grid)
        for i in range(count):
            cy = (centre[i, 0] + velocity[i, 0] * t) % grid
            cx = (centre[i, 1] + velocity[i, 1] * t) % grid
            out += weight[i] * torch.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / (2 * width ** 2))
        return out

    noise = lambda *shape: torch.rand(*shape, generator=g)  # noqa: E731
    shallow = bumps(6, 2.5, 0.6) + 0.2 * noise(frames, grid, grid) + 0.05
    deep = bumps(3, 4.0, 0.4) + 0.1 * noise(frames, grid, grid) + 0.05

    background = torch.randn(grid * grid, dim, generator=g)
    background = torch.nn.functional.avg_pool2d(
        background.T.reshape(1, dim, grid, grid), 3, 1, 1).reshape(dim, -1).T
    object_feature = torch.randn(dim, generator=g) * 2
    mask = bumps(1, 3.0, 1.5).reshape(frames, grid * grid, 1)
    features = (background[None] + mask * object_feature
                + 0.3 * torch.randn(frames, grid * grid, dim, generator=g))
    scale = lambda a: (a / a.sum((1, 2), keepdim=True) * grid * grid).reshape(frames, -1)  # noqa: E731
    return (features.to(device=device, dtype=dtype), scale(shallow).to(device=device, dtype=dtype),
            scale(deep).to(device=device, dtype=dtype))
