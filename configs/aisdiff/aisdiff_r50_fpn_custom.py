# AISDiff R50-FPN on your own dataset: a template. Edit `classes` (the only place they are named) and put the
# data under $AISDIFF_DATA/custom/ (default data/custom/):
#   annotations/train.json, annotations/val.json   aistron format (`aisdiff convert-coco-amodal` makes it from
#                                                  an amodal COCO file and a visible COCO file)
#   images/                                        the images both files name
#   priors/custom_train.zarr                       aisdiff precompute --ann .../annotations/train.json \
#     --images .../images --out THIS --model stable-diffusion-v1-5/stable-diffusion-inpainting --dtype fp16
# Then `aisdiff check-data $AISDIFF_DATA/custom/annotations/train.json --images $AISDIFF_DATA/custom/images \
#   --config configs/aisdiff/aisdiff_r50_fpn_custom.py` (and the val file; with --checkpoint before testing).
# Pipelines and loaders are COCO's (multi-scale training, 1333x800 test; the COCOA-cls dataset base), the
# schedule is the KINS one (48k iterations, 1 image a batch), priors as in the KINS config.
_base_ = [
    '../_base_/models/aisdiff_r50_fpn.py', '../_base_/datasets/amodal_cocoa-cls.py',
    '../_base_/schedules/kins_48k.py', '../_base_/iter_runtime.py'
]
# The class names, as the annotation files' category names (any order: label i is the i-th, matched to the
# files' category ids by name). They are also DiffSP's prompts ("a photo of a {class}"): plain words help.
classes = ('person', 'car', 'bicycle')
num_classes = len(classes)

data_root = '{{$AISDIFF_DATA:data}}/custom/'
ann_format = 'aistron'
train_ann, val_ann = 'annotations/train.json', 'annotations/val.json'
images = 'images/'
prior_store = data_root + 'priors/custom_train.zarr'

model = dict(roi_head=dict(
    bbox_head=dict(num_classes=num_classes), mask_head=dict(num_classes=num_classes),
    test_prior=dict(_delete_=True, type='OnTheFlyPriors', model='stable-diffusion-v1-5/stable-diffusion-inpainting',
                    dtype='fp16', classes=classes, store=prior_store)))
train_dataloader = dict(
    batch_size=1,  # the KINS schedule's learning rate is for 1 image a batch
    dataset=dict(data_root=data_root, ann_file=train_ann, data_prefix=dict(img=images), ann_format=ann_format,
                 metainfo=dict(classes=classes), prior_store=prior_store))
val_dataloader = dict(
    dataset=dict(data_root=data_root, ann_file=val_ann, data_prefix=dict(img=images), ann_format=ann_format,
                 metainfo=dict(classes=classes)))
test_dataloader = val_dataloader
val_evaluator = dict(ann_file=data_root + val_ann, ann_format=ann_format)
test_evaluator = val_evaluator
