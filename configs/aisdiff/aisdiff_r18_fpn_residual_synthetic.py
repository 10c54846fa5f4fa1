# The recommended AISDiff head on the synthetic benchmark, what measured best in benchmarks/fidelity.py (options
# tag 4142a0fa, README "The pinned detector"): Mask R-CNN's amodal capacity (4 convs at 256 channels, one mask
# per category), no spatial gate, the prior entering as features x (1 + prior) (`residual`, so a wrong prior
# near 0 no longer erases the features) and Kaiming-initialized mask logits, as mmdet's FCNMaskHead.
# aisdiff_r18_fpn_synthetic.py keeps the paper's head (`multiply` fusion, 2 convs at 128 channels and the gate).
_base_ = ['./aisdiff_r18_fpn_synthetic.py']
model = dict(roi_head=dict(mask_head=dict(
    num_amodal_convs=4, conv_channels=256, class_agnostic_amodal=False, num_attention_convs=0,
    prior_fusion='residual', logits_init='kaiming')))
