# mmdet's default runtime, for iteration-based schedules (as BCNet/AISFormer train).
_base_ = ['mmdet::_base_/default_runtime.py']
default_hooks = dict(checkpoint=dict(type='CheckpointHook', by_epoch=False, interval=2000, max_keep_ckpts=3),
                     logger=dict(type='LoggerHook', interval=50))
log_processor = dict(by_epoch=False)
visualizer = dict(type='AmodalLocalVisualizer')  # amodal outline, visible fill, hatched occluders (--show-dir)
# mmengine's Runner seeds python, numpy, torch and the data samplers with this seed, so that a rerun (`make
# demo` in a new folder) trains the same model; `--cfg-options randomness.seed=N` trains another.
randomness = dict(seed=0)
