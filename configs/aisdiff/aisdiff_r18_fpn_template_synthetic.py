# The prior that only knows the category: aisdiff_r18_fpn_synthetic.py with each class's mean amodal mask
# (over the train annotations, in the instance's own box) as the prior, warped to the proposal in training
# and spanning the detection at test. What a shape prior gives beyond the class: the gap to this control.
_base_ = ['./aisdiff_r18_fpn_synthetic.py']
# the train annotations as a path, the base's data_root + 'annotations/train.json' (a base variable cannot
# be joined with a string here)
template_prior = dict(type='ClassTemplatePriors',
                      ann_file='{{$AISDIFF_DATA:data}}/synthetic/annotations/train.json')
model = dict(roi_head=dict(train_prior=dict(_delete_=True, **template_prior),
                           test_prior=dict(_delete_=True, **template_prior)))
train_dataloader = dict(dataset=dict(pipeline={{_base_.train_pipeline_without_priors}}))
