# COCOA-cls under $AISDIFF_DATA/cocoa/: annotations/COCO_amodal_{train,val}2014_with_classes.json and the
# COCO 2014 images in train2014/ and val2014/. Classes: the file's categories, the 80 COCO classes in id order.
dataset_type = 'AmodalDataset'
data_root = '{{$AISDIFF_DATA:data}}/cocoa/'
classes = ('person', 'bicycle', 'car', 'motorcycle', 'airplane', 'bus', 'train', 'truck', 'boat', 'traffic light',
           'fire hydrant', 'stop sign', 'parking meter', 'bench', 'bird', 'cat', 'dog', 'horse', 'sheep', 'cow',
           'elephant', 'bear', 'zebra', 'giraffe', 'backpack', 'umbrella', 'handbag', 'tie', 'suitcase', 'frisbee',
           'skis', 'snowboard', 'sports ball', 'kite', 'baseball bat', 'baseball glove', 'skateboard', 'surfboard',
           'tennis racket', 'bottle', 'wine glass', 'cup', 'fork', 'knife', 'spoon', 'bowl', 'banana', 'apple',
           'sandwich', 'orange', 'broccoli', 'carrot', 'hot dog', 'pizza', 'donut', 'cake', 'chair', 'couch',
           'potted plant', 'bed', 'dining table', 'toilet', 'tv', 'laptop', 'mouse', 'remote', 'keyboard',
           'cell phone', 'microwave', 'oven', 'toaster', 'sink', 'refrigerator', 'book', 'clock', 'vase', 'scissors',
           'teddy bear', 'hair drier', 'toothbrush')
prior_store = data_root + 'priors/cocoa_train.zarr'
val_ann = data_root + 'annotations/COCO_amodal_val2014_with_classes.json'

train_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='LoadAmodalAnnotations'),
    dict(type='LoadCachedPriors'),
    dict(type='AmodalResize', scale=[(1333, 640), (1333, 672), (1333, 704), (1333, 736), (1333, 768), (1333, 800)],
         keep_ratio=True),
    dict(type='AmodalRandomFlip', prob=0.5),
    dict(type='PackAmodalInputs'),
]
test_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='ContentImageId'),  # an id for images without one (inference_detector, aisdiff predict)
    dict(type='AmodalResize', scale=(1333, 800), keep_ratio=True),
    dict(type='PackAmodalInputs', meta_keys=('img_id', 'img_path', 'ori_shape', 'img_shape', 'scale_factor')),
]
train_dataloader = dict(
    batch_size=2, num_workers=4, persistent_workers=True,
    sampler=dict(type='DefaultSampler', shuffle=True),
    batch_sampler=dict(type='AspectRatioBatchSampler'),
    dataset=dict(type=dataset_type, data_root=data_root, ann_file='annotations/COCO_amodal_train2014_with_classes.json',
                 data_prefix=dict(img='train2014/'), ann_format='cocoa', metainfo=dict(classes=classes),
                 prior_store=prior_store,
                 filter_cfg=dict(filter_empty_gt=True, min_size=32), pipeline=train_pipeline))
val_dataloader = dict(
    batch_size=1, num_workers=4, persistent_workers=True, drop_last=False,
    sampler=dict(type='DefaultSampler', shuffle=False),
    dataset=dict(type=dataset_type, data_root=data_root, ann_file='annotations/COCO_amodal_val2014_with_classes.json',
                 data_prefix=dict(img='val2014/'), ann_format='cocoa', metainfo=dict(classes=classes), test_mode=True,
                 pipeline=test_pipeline))
test_dataloader = val_dataloader
val_evaluator = dict(type='AmodalMetric', ann_file=val_ann, ann_format='cocoa')
test_evaluator = val_evaluator
