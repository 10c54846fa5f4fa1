"""Reading dataset images: one place that turns a bad image file into an error naming it."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

from .errors import AisdiffError


def read_image(path: str | Path, expected_size: tuple[int, int] | None = None) -> torch.Tensor:
    """RGB image as a uint8 tensor [3, H, W]; `expected_size` (height, width) is checked when given."""
    path = Path(path)
    try:
        with Image.open(path) as img:
            array = np.array(img.convert("RGB"))
    except FileNotFoundError:
        raise AisdiffError(
            f"image file {path} does not exist. Point --images at the dataset's image folder.") from None
    except (UnidentifiedImageError, OSError) as exc:
        raise AisdiffError(
            f"image file {path} cannot be read ({exc}); it is damaged or not an image.") from None
    if expected_size is not None and array.shape[:2] != tuple(expected_size):
        raise AisdiffError(f"image file {path} is {array.shape[1]}x{array.shape[0]} but the annotation file "
                           f"says {expected_size[1]}x{expected_size[0]}; the images and annotations do not "
                           "match.")
    return torch.from_numpy(array).permute(2, 0, 1).contiguous()
