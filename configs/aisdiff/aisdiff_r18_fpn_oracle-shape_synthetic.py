# The oracle that only knows the shape: aisdiff_r18_fpn_oracle_synthetic.py with frame='box', the ground
# truth's amodal mask in its own amodal box stretched over the proposal (training) or detection (test) box,
# so the prior no longer corrects the box. Against the oracle: what the box's misalignment costs.
_base_ = ['./aisdiff_r18_fpn_oracle_synthetic.py']
model = dict(roi_head=dict(train_prior=dict(frame='box'), test_prior=dict(frame='box')))
