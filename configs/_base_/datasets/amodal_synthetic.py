# The synthetic amodal benchmark (`aisdiff demo-data`), KINS 2020 format, under $AISDIFF_DATA/synthetic/.
dataset_type = 'AmodalDataset'
data_root = '{{$AISDIFF_DATA:data}}/synthetic/'
classes = ('ball', 'box', 'triangle', 'star', 'cross', 'heart', 'moon')
prior_store = data_root + 'priors_train.zarr'  # made by: aisdiff precompute --ann .../train.json --out THIS

train_pipeline_without_priors = [
    dict(type='LoadImageFromFile'),
    dict(type='LoadAmodalAnnotations'),
    dict(type='AmodalResize', scale=(384, 384), keep_ratio=True),
    dict(type='AmodalRandomFlip', prob=0.5),
    dict(type='PackAmodalInputs'),
]
train_pipeline = train_pipeline_without_priors[:2] + [dict(type='LoadCachedPriors')] + train_pipeline_without_priors[2:]
test_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='ContentImageId'),  # an id for images without one (inference_detector, aisdiff predict)
    dict(type='AmodalResize', scale=(384, 384), keep_ratio=True),
    dict(type='PackAmodalInputs', meta_keys=('img_id', 'img_path', 'ori_shape', 'img_shape', 'scale_factor')),
]
train_dataloader = dict(
    batch_size=2, num_workers=2, persistent_workers=True,
    sampler=dict(type='DefaultSampler', shuffle=True),
    batch_sampler=dict(type='AspectRatioBatchSampler'),
    dataset=dict(type=dataset_type, data_root=data_root, ann_file='annotations/train.json',
                 data_prefix=dict(img='images/'), metainfo=dict(classes=classes), prior_store=prior_store,
                 filter_cfg=dict(filter_empty_gt=True, min_size=32), pipeline=train_pipeline))
val_dataloader = dict(
    batch_size=1, num_workers=2, persistent_workers=True, drop_last=False,
    sampler=dict(type='DefaultSampler', shuffle=False),
    dataset=dict(type=dataset_type, data_root=data_root, ann_file='annotations/val.json',
                 data_prefix=dict(img='images/'), metainfo=dict(classes=classes), test_mode=True,
                 pipeline=test_pipeline))
test_dataloader = val_dataloader
val_evaluator = dict(type='AmodalMetric', ann_file=data_root + 'annotations/val.json')
test_evaluator = val_evaluator
