# The same head and schedule as aisdiff_r18_fpn_synthetic.py with the `none` prior (1 everywhere): the ablation.
_base_ = ['./aisdiff_r18_fpn_synthetic.py']
model = dict(roi_head=dict(train_prior=dict(_delete_=True, type='NoPriors'),
                           test_prior=dict(_delete_=True, type='NoPriors')))
train_dataloader = dict(dataset=dict(pipeline={{_base_.train_pipeline_without_priors}}))
