"""An mmdet dataset over the amodal annotation formats read by `priors.annotations`."""
from __future__ import annotations

import os.path as osp

from mmdet.datasets import BaseDetDataset
from mmdet.registry import DATASETS

from priors.annotations import AmodalAnnotations
from priors.errors import AisdiffError
from priors.location import Location
from priors.masks import rle_to_json
from priors.store import PriorStore


@DATASETS.register_module()
class AmodalDataset(BaseDetDataset):
    """KINS 2020 / KINS / COCOA-cls / D2SA / aistron files as mmdet data: per instance the amodal box (the
    detection target), label, amodal mask, visible mask, occluder mask (BCNet rule) and annotation id.

    Classes default to the file's categories in id order; `metainfo['category_ids']` gives each label's id.
    `ann_format` names the format (default: detected).
    `prior_store` is the prior store (from `aisdiff precompute`) that `LoadCachedPriors` reads; one made from
    another annotation file is refused.
    """

    def __init__(self, *args, ann_format: str | None = None, skip_invalid: bool = False,
                 prior_store: str | None = None, **kwargs) -> None:
        self.ann_format, self.skip_invalid, self.prior_store = ann_format, skip_invalid, prior_store
        super().__init__(*args, **kwargs)

    def load_data_list(self) -> list[dict]:
        images_dir = self.data_prefix.get("img", "")
        if images_dir and not osp.isdir(images_dir):
            raise AisdiffError(
                f"{self.ann_file}: its image folder {images_dir} does not exist. Put the dataset's images "
                "there, or point the config at them: data_root (from $AISDIFF_DATA for this project's "
                "configs) and data_prefix.img (docs/datasets.md lists each dataset's layout).")
        ann = AmodalAnnotations(self.ann_file, format=self.ann_format, images_dir=images_dir or None,
                                skip_invalid=self.skip_invalid, check_masks=True)
        if self.reads_prior_store() and Location(self.prior_store).has("zarr.json"):
            PriorStore.open(self.prior_store).check_annotations(self.ann_file)
        cat_ids = sorted(ann.categories)
        if not self._metainfo.get("classes"):
            self._metainfo["classes"] = ann.classes
        names = list(self._metainfo["classes"])
        unknown = [ann.categories[c] for c in cat_ids if ann.categories[c] not in names]
        if unknown:
            raise ValueError(
                f"{self.ann_file}: categories {unknown} are not among the configured classes {names}")
        self.cat2label = {c: names.index(ann.categories[c]) for c in cat_ids}
        self.label2cat = {v: k for k, v in self.cat2label.items()}
        # the file's category id of each label (None for a configured class the file lacks): checkpoints keep
        # it in meta.dataset_meta, so predictions on new images carry the dataset's ids
        self._metainfo["category_ids"] = tuple(self.label2cat.get(label) for label in range(len(names)))
        data = []
        for image_id in sorted(ann.images):
            info = ann.images[image_id]
            insts = ann.by_image(image_id)
            occluders = ann.occluder_rles(image_id)
            data.append({
                "img_id": image_id, "img_path": osp.join(images_dir, info.file_name),
                "height": info.height, "width": info.width, "prior_store": self.prior_store,
                "instances": [{
                    "bbox": list(i.amodal_box), "bbox_label": self.cat2label[i.category_id], "ignore_flag": 0,
                    "mask": i.amodal_segm, "visible_mask": i.visible_segm,
                    "occluder_mask": rle_to_json(occluders[i.ann_id]), "ann_id": i.ann_id,
                } for i in insts],
            })
        return data

    def reads_prior_store(self) -> bool:
        """Whether this dataset's pipeline reads `prior_store` (a LoadCachedPriors step; configs set the store
        in their base, also for pipelines that do not read it)."""
        from .transforms import LoadCachedPriors

        steps = getattr(self.pipeline, "transforms", [])
        return bool(self.prior_store) and any(isinstance(step, LoadCachedPriors) for step in steps)

    def filter_data(self) -> list[dict]:
        """Drop images without instances when `filter_cfg.filter_empty_gt` (training), and small images."""
        if self.test_mode or not self.filter_cfg:
            return self.data_list
        min_size = self.filter_cfg.get("min_size", 0)
        empty_ok = not self.filter_cfg.get("filter_empty_gt", False)
        return [d for d in self.data_list
                if (empty_ok or d["instances"]) and min(d["width"], d["height"]) >= min_size]
