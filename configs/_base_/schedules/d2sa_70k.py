# D2SA (BCNet/AISFormer's schedule): 70k iterations, 2 images per batch, lr 0.005, steps at 40k/60k.
train_cfg = dict(type='IterBasedTrainLoop', max_iters=70000, val_interval=20000)
val_cfg = dict(type='ValLoop')
test_cfg = dict(type='TestLoop')
optim_wrapper = dict(type='OptimWrapper', optimizer=dict(type='SGD', lr=0.005, momentum=0.9, weight_decay=0.0001))
param_scheduler = [
    dict(type='LinearLR', start_factor=0.001, by_epoch=False, begin=0, end=1000),
    dict(type='MultiStepLR', by_epoch=False, begin=0, end=70000, milestones=[40000, 60000], gamma=0.1),
]
auto_scale_lr = dict(enable=True, base_batch_size=2)  # lr scales with the total batch (GPUs x batch_size)
