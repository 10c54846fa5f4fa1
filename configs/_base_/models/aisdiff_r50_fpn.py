# AISDiff on Faster R-CNN R50-FPN (paper 3.1-3.3): mmdet's Mask R-CNN R50-FPN with the AISDiff RoI head.
_base_ = ['mmdet::_base_/models/mask-rcnn_r50_fpn.py']
custom_imports = dict(imports=['segmenter'], allow_failed_imports=False)

num_classes = 80
model = dict(
    type='AISDiff',
    backbone=dict(init_cfg=dict(type='Pretrained',
                                checkpoint='https://download.pytorch.org/models/resnet50-0676ba61.pth')),
    roi_head=dict(
        type='AISDiffRoIHead',
        bbox_head=dict(num_classes=num_classes),
        mask_head=dict(_delete_=True, type='AISDiffMaskHead', num_classes=num_classes, in_channels=256,
                       conv_channels=256, num_amodal_convs=2, num_attention_convs=2,
                       loss_mask=dict(type='CrossEntropyLoss', use_mask=True, loss_weight=1.0),
                       loss_cls=dict(type='CrossEntropyLoss', use_sigmoid=False, loss_weight=1.0)),
        # training: the cached ground-truth priors (LoadCachedPriors in the pipeline), warped to proposals
        train_prior=dict(type='CachedPriors'),
        # testing: DiffSP on the fly (set model/classes/store in the dataset configs)
        test_prior=dict(type='NoPriors')))
