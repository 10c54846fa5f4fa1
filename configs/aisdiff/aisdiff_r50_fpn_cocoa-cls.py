# AISDiff R50-FPN on COCOA-cls (paper Table 3): 80 classes; priors as in the KINS config.
_base_ = [
    '../_base_/models/aisdiff_r50_fpn.py', '../_base_/datasets/amodal_cocoa-cls.py',
    '../_base_/schedules/cocoa-cls_20k.py', '../_base_/iter_runtime.py'
]
model = dict(roi_head=dict(
    bbox_head=dict(num_classes=80), mask_head=dict(num_classes=80),
    test_prior=dict(_delete_=True, type='OnTheFlyPriors', model='stable-diffusion-v1-5/stable-diffusion-inpainting',
                    dtype='fp16', classes={{_base_.classes}}, store={{_base_.prior_store}})))
