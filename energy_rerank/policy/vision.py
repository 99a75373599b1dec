"""A small ViT-style patch encoder: camera images -> one token per patch.

One strided convolution cuts each image into patches and projects them to the backbone width;
learned position and camera embeddings tell the backbone where each patch comes from.
Images arrive as uint8 [h, w, 3] in any size and are resized here, so a client never has to
know the policy's input size.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn


class PatchEncoder(nn.Module):
    def __init__(self, dim: int, image_size: tuple[int, int], patch_size: int, num_cameras: int) -> None:
        super().__init__()
        h, w = image_size
        if h % patch_size or w % patch_size:
            raise ValueError(f"image_size {image_size} must be a multiple of patch_size {patch_size}")
        self.image_size = (h, w)
        self.num_patches = (h // patch_size) * (w // patch_size)
        self.patchify = nn.Conv2d(3, dim, kernel_size=patch_size, stride=patch_size)
        self.position = nn.Parameter(torch.randn(self.num_patches, dim) * 0.02)
        self.camera = nn.Parameter(torch.randn(num_cameras, dim) * 0.02)
        self.norm = nn.LayerNorm(dim)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """images [B, C, 3, h, w] float in [-1, 1] (C cameras) -> tokens [B, C * P, D]."""
        b, c = images.shape[:2]
        x = self.patchify(images.flatten(0, 1))  # [B*C, D, h/p, w/p]
        x = x.flatten(2).transpose(1, 2).reshape(b, c, self.num_patches, -1)  # [B, C, P, D]
        x = x + self.position[None, None] + self.camera[None, :, None]
        return self.norm(x).flatten(1, 2)


def images_to_tensor(
    images: Sequence[dict[str, np.ndarray]], cameras: Sequence[str], size: tuple[int, int]
) -> torch.Tensor:
    """Per-observation {camera: uint8 [h, w, 3]} -> float [B, C, 3, *size] in [-1, 1]."""
    out = torch.empty(len(images), len(cameras), 3, *size)
    for i, per_obs in enumerate(images):
        for j, cam in enumerate(cameras):
            img = per_obs.get(cam)
            if img is None:
                raise ValueError(
                    f"observation {i}: camera {cam!r} is missing; this policy reads {tuple(cameras)}"
                )
            arr = np.asarray(img)
            if arr.ndim != 3 or arr.shape[2] != 3 or arr.dtype != np.uint8:
                raise ValueError(
                    f"observation {i}: images[{cam!r}] must be uint8 [h, w, 3], got {arr.dtype} {arr.shape}"
                )
            # astype copies: decoded images are often read-only buffers torch must not alias
            x = torch.from_numpy(arr.astype(np.float32)).permute(2, 0, 1).unsqueeze(0)
            if tuple(arr.shape[:2]) != tuple(size):
                x = F.interpolate(x, size=size, mode="bilinear", align_corners=False, antialias=True)
            out[i, j] = x[0] / 127.5 - 1.0
    return out
