# AISDiff R50-FPN on D2SA (paper Table 2): 60 classes; priors as in the KINS config.
_base_ = [
    '../_base_/models/aisdiff_r50_fpn.py', '../_base_/datasets/amodal_d2sa.py',
    '../_base_/schedules/d2sa_70k.py', '../_base_/iter_runtime.py'
]
model = dict(roi_head=dict(
    bbox_head=dict(num_classes=60), mask_head=dict(num_classes=60),
    test_prior=dict(_delete_=True, type='OnTheFlyPriors', model='stable-diffusion-v1-5/stable-diffusion-inpainting',
                    dtype='fp16', classes={{_base_.classes}}, store={{_base_.prior_store}})))
