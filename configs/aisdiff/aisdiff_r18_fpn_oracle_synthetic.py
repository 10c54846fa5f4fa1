# The ceiling of a shape prior: aisdiff_r18_fpn_synthetic.py with the ground-truth amodal mask as the prior
# (training: the assigned ground truth's; testing: the best-overlapping val ground truth's). A measurement
# for benchmarks/fidelity.py, not a method: it reads the val annotations at test time.
_base_ = ['./aisdiff_r18_fpn_synthetic.py']
model = dict(roi_head=dict(train_prior=dict(_delete_=True, type='OraclePriors'),
                           test_prior=dict(_delete_=True, type='OraclePriors',
                                           ann_file={{_base_.val_evaluator.ann_file}})))
train_dataloader = dict(dataset=dict(pipeline={{_base_.train_pipeline_without_priors}}))
