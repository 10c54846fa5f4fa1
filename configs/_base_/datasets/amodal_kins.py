# KINS (2020 annotation files) under $AISDIFF_DATA/kins/:
#   annotations/update_{train,test}_2020.json, training/image_2/, testing/image_2/ (KITTI object images)
dataset_type = 'AmodalDataset'
data_root = '{{$AISDIFF_DATA:data}}/kins/'
# The 8 categories the KINS 2020 files declare, as aistron registers them: `rider` (id 3) has no instance in
# either file, so it is never trained or scored (COCO evaluation skips categories without ground truth).
classes = ('cyclist', 'pedestrian', 'rider', 'car', 'tram', 'truck', 'van', 'misc')
prior_store = data_root + 'priors/kins_train.zarr'  # aisdiff precompute --ann .../update_train_2020.json --out THIS

train_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='LoadAmodalAnnotations'),
    dict(type='LoadCachedPriors'),
    dict(type='AmodalResize', scale=(3000, 800), keep_ratio=True),  # shorter side 800, longer <= 3000
    dict(type='AmodalRandomFlip', prob=0.5),
    dict(type='PackAmodalInputs'),
]
test_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='ContentImageId'),  # an id for images without one (inference_detector, aisdiff predict)
    dict(type='AmodalResize', scale=(3000, 800), keep_ratio=True),
    dict(type='PackAmodalInputs', meta_keys=('img_id', 'img_path', 'ori_shape', 'img_shape', 'scale_factor')),
]
train_dataloader = dict(
    batch_size=1, num_workers=4, persistent_workers=True,
    sampler=dict(type='DefaultSampler', shuffle=True),
    batch_sampler=dict(type='AspectRatioBatchSampler'),
    dataset=dict(type=dataset_type, data_root=data_root, ann_file='annotations/update_train_2020.json',
                 data_prefix=dict(img='training/image_2/'), metainfo=dict(classes=classes), prior_store=prior_store,
                 filter_cfg=dict(filter_empty_gt=True, min_size=32), pipeline=train_pipeline))
val_dataloader = dict(
    batch_size=1, num_workers=4, persistent_workers=True, drop_last=False,
    sampler=dict(type='DefaultSampler', shuffle=False),
    dataset=dict(type=dataset_type, data_root=data_root, ann_file='annotations/update_test_2020.json',
                 data_prefix=dict(img='testing/image_2/'), metainfo=dict(classes=classes), test_mode=True,
                 pipeline=test_pipeline))
test_dataloader = val_dataloader
val_evaluator = dict(type='AmodalMetric', ann_file=data_root + 'annotations/update_test_2020.json')
test_evaluator = val_evaluator
