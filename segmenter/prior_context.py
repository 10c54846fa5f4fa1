"""What a prior provider may need of a batch beyond the RoI head's own inputs: the images, their ids.

The detector builds one `PriorContext` per `loss` / `predict` call and hands it down through the RoI head
to the providers as an argument, so nothing about a batch is left behind on a module between calls.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from priors.errors import AisdiffError


@dataclass(frozen=True)
class PriorContext:
    """One batch as prior providers see it.

    images: the network inputs as RGB in [0, 1], [B, 3, H, W] (padded), or None when no provider of this
        pass needs pixels; image_shapes: each image's unpadded (h, w) in the network input; image_ids: each
        image's dataset id (None where the data sample has no `img_id`); classes: the class names of the
        model's labels when the detector knows them (its `dataset_meta`), else None.
    """

    images: Tensor | None
    image_shapes: tuple[tuple[int, int], ...]
    image_ids: tuple[int | None, ...]
    classes: tuple[str, ...] | None = None

    @classmethod
    def from_batch(cls, batch_data_samples, images: Tensor | None = None,
                   classes: tuple[str, ...] | None = None) -> PriorContext:
        """The context of a batch of mmdet data samples (and their RGB [0, 1] images, when wanted)."""
        shapes = tuple(tuple(int(v) for v in s.metainfo["img_shape"][:2]) for s in batch_data_samples)
        ids = tuple(None if s.metainfo.get("img_id") is None else int(s.metainfo["img_id"])
                    for s in batch_data_samples)
        return cls(images=images, image_shapes=shapes, image_ids=ids, classes=classes)

    def image(self, index: int, who: str) -> Tensor:
        """Image `index` without its padding, [3, h, w] RGB in [0, 1]; `who` (the provider) is named in
        errors."""
        if self.images is None:
            raise AisdiffError(f"{who} needs the input images, but the detector passed none: it declares "
                               "`needs_images = True` so that the detector hands them over")
        h, w = self.image_shapes[index]
        return self.images[index, :, :h, :w]

    def image_id(self, index: int, who: str) -> int:
        """The dataset id of image `index` (it seeds DiffSP's noise); an error when the sample has none."""
        image_id = self.image_ids[index]
        if image_id is None:
            raise AisdiffError(f"{who} needs each image's id (`img_id` in the data sample's metainfo), which "
                               "seeds DiffSP's noise; keep 'img_id' in PackAmodalInputs' meta_keys")
        return image_id


def rgb_unit_images(batch_inputs: Tensor, mean: Tensor, std: Tensor, inputs_are_rgb: bool) -> Tensor:
    """Undo the data preprocessor's normalization: network inputs -> RGB in [0, 1] (the input of DiffSP)."""
    images = batch_inputs * std + mean
    if not inputs_are_rgb:  # mmcv decodes BGR, kept unless the preprocessor has bgr_to_rgb=True
        images = images.flip(1)
    return torch.clamp(images / 255.0, 0, 1)
