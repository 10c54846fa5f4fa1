# KINS, as BCNet/AISFormer train it: 48k iterations, 1 image per batch, lr 0.0025, steps at 30k/40k.
train_cfg = dict(type='IterBasedTrainLoop', max_iters=48000, val_interval=16000)
val_cfg = dict(type='ValLoop')
test_cfg = dict(type='TestLoop')
optim_wrapper = dict(type='OptimWrapper', optimizer=dict(type='SGD', lr=0.0025, momentum=0.9, weight_decay=0.0001))
param_scheduler = [
    dict(type='LinearLR', start_factor=0.001, by_epoch=False, begin=0, end=1000),
    dict(type='MultiStepLR', by_epoch=False, begin=0, end=48000, milestones=[30000, 40000], gamma=0.1),
]
auto_scale_lr = dict(enable=True, base_batch_size=1)  # lr scales with the total batch (GPUs x batch_size)
