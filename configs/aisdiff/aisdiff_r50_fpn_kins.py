# AISDiff R50-FPN on KINS (paper Table 1). Priors: train from the store made by
#   aisdiff precompute --ann $AISDIFF_DATA/kins/annotations/update_train_2020.json \
#     --images $AISDIFF_DATA/kins/training/image_2 --out $AISDIFF_DATA/kins/priors/kins_train.zarr \
#     --model stable-diffusion-v1-5/stable-diffusion-inpainting --dtype fp16
# test on the fly with the same model and settings (checked against that store).
_base_ = [
    '../_base_/models/aisdiff_r50_fpn.py', '../_base_/datasets/amodal_kins.py',
    '../_base_/schedules/kins_48k.py', '../_base_/iter_runtime.py'
]
model = dict(roi_head=dict(
    bbox_head=dict(num_classes=8), mask_head=dict(num_classes=8),
    test_prior=dict(_delete_=True, type='OnTheFlyPriors', model='stable-diffusion-v1-5/stable-diffusion-inpainting',
                    dtype='fp16', classes={{_base_.classes}}, store={{_base_.prior_store}})))
