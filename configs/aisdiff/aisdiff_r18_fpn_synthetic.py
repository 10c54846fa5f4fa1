# AISDiff R18-FPN on the synthetic benchmark, small enough to train a few hundred iterations on 2 CPU cores.
# Train priors: aisdiff precompute --ann $AISDIFF_DATA/synthetic/annotations/train.json \
#   --images $AISDIFF_DATA/synthetic/images --out $AISDIFF_DATA/synthetic/priors_train.zarr \
#   --model tiny   (DiffSP at the tiny model's tuned settings: priors/weights/tiny-shapes/diffsp_config.json)
# Test priors: DiffSP on the fly with the tiny model (settings checked against that store).
_base_ = [
    '../_base_/models/aisdiff_r50_fpn.py', '../_base_/datasets/amodal_synthetic.py',
    '../_base_/schedules/synthetic_300.py', '../_base_/iter_runtime.py'
]
model = dict(
    # from scratch (no pretrained weights offline), as mmdet's configs/scratch: every stage trains and GroupNorm
    # replaces eval-mode BN (frozen random stages and BN with its initial statistics do not learn)
    backbone=dict(depth=18, init_cfg=None, frozen_stages=-1, norm_eval=False, zero_init_residual=False,
                  norm_cfg=dict(type='GN', num_groups=32, requires_grad=True)),
    neck=dict(in_channels=[64, 128, 256, 512]),
    roi_head=dict(
        bbox_head=dict(num_classes=7),
        mask_head=dict(num_classes=7, conv_channels=128),
        test_prior=dict(_delete_=True, type='OnTheFlyPriors', model='tiny', classes={{_base_.classes}},
                        store={{_base_.prior_store}})))
# Scenes hold at most 7 objects: fewer proposals and sampled RoIs keep 2 CPU cores busy on what matters.
model.update(
    train_cfg=dict(rpn_proposal=dict(max_per_img=500), rcnn=dict(sampler=dict(num=256))),
    test_cfg=dict(rpn=dict(max_per_img=500), rcnn=dict(max_per_img=50)))
default_hooks = dict(checkpoint=dict(interval=100), logger=dict(interval=10))
