# AISDiff R101-FPN on KINS (paper Table 1).
_base_ = ['./aisdiff_r50_fpn_kins.py']
model = dict(backbone=dict(depth=101, init_cfg=dict(
    type='Pretrained', checkpoint='https://download.pytorch.org/models/resnet101-63fe2227.pth')))
