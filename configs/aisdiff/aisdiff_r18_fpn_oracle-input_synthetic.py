# DiffSP fed the ground truth's masks: trained as aisdiff_r18_fpn_synthetic.py (cached priors), tested with
# its on-the-fly DiffSP (same model, settings and seeds) given, for each detection matched to a val ground
# truth, that ground truth's visible and occluder masks on the detected box. Between DiffSP on predicted
# masks and the oracle: what the visible branch costs, and what is left to the box and DiffSP.
# A measurement for benchmarks/fidelity.py, not a method: it reads the val annotations at test time.
_base_ = ['./aisdiff_r18_fpn_synthetic.py']
# (merged into the base's test_prior: its model, classes, store and any DiffSP settings stay)
model = dict(roi_head=dict(test_prior=dict(type='OracleInputPriors',
                                           ann_file={{_base_.val_evaluator.ann_file}})))
