# Baseline: plain mmdet Mask R-CNN R18-FPN trained on the amodal masks, same data and schedule as
# aisdiff_r18_fpn_synthetic.py (reports amodal metrics only: it predicts no visible masks).
_base_ = [
    'mmdet::_base_/models/mask-rcnn_r50_fpn.py', '../_base_/datasets/amodal_synthetic.py',
    '../_base_/schedules/synthetic_300.py', '../_base_/iter_runtime.py'
]
custom_imports = dict(imports=['segmenter'], allow_failed_imports=False)
model = dict(
    # from scratch (no pretrained weights offline), as mmdet's configs/scratch: every stage trains and GroupNorm
    # replaces eval-mode BN (frozen random stages and BN with its initial statistics do not learn)
    backbone=dict(depth=18, init_cfg=None, frozen_stages=-1, norm_eval=False, zero_init_residual=False,
                  norm_cfg=dict(type='GN', num_groups=32, requires_grad=True)),
    neck=dict(in_channels=[64, 128, 256, 512]),
    roi_head=dict(bbox_head=dict(num_classes=7), mask_head=dict(num_classes=7)))
train_dataloader = dict(dataset=dict(pipeline={{_base_.train_pipeline_without_priors}}))
model.update(  # as aisdiff_r18_fpn_synthetic.py: at most 7 objects per scene
    train_cfg=dict(rpn_proposal=dict(max_per_img=500), rcnn=dict(sampler=dict(num=256))),
    test_cfg=dict(rpn=dict(max_per_img=500), rcnn=dict(max_per_img=50)))
default_hooks = dict(checkpoint=dict(interval=100), logger=dict(interval=10))
