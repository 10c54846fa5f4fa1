# D2SA under $AISDIFF_DATA/d2sa/: annotations/D2S_amodal_{training_rot0,validation}.json and images/.
# Classes: the file's categories (60 supermarket items). Pipelines and loaders as COCOA-cls.
_base_ = ['./amodal_cocoa-cls.py']
data_root = '{{$AISDIFF_DATA:data}}/d2sa/'
prior_store = data_root + 'priors/d2sa_train.zarr'
val_ann = data_root + 'annotations/D2S_amodal_validation.json'
train_dataloader = dict(dataset=dict(data_root=data_root, ann_file='annotations/D2S_amodal_training_rot0.json',
                                     data_prefix=dict(img='images/'), ann_format='d2sa', prior_store=prior_store))
val_dataloader = dict(dataset=dict(data_root=data_root, ann_file='annotations/D2S_amodal_validation.json',
                                   data_prefix=dict(img='images/'), ann_format='d2sa'))
test_dataloader = val_dataloader
val_evaluator = dict(ann_file=val_ann, ann_format='d2sa')
test_evaluator = val_evaluator
