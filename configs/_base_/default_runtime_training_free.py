# Runtime of the training-free stages (tagging, pseudo labels) run by
# tools/test.py or tools/generate_pseudo_labels.py. No checkpoint is loaded:
# the CLIP weights come from model.clip.checkpoint.
default_scope = 'mmseg'
custom_imports = dict(imports=['tagclip_mmseg'], allow_failed_imports=False)
env_cfg = dict(
    cudnn_benchmark=False,
    mp_cfg=dict(mp_start_method='fork', opencv_num_threads=0),
    dist_cfg=dict(backend='nccl'))
log_level = 'INFO'
log_processor = dict(by_epoch=False)
load_from = None
resume = False
randomness = dict(seed=0)
default_hooks = dict(
    timer=dict(type='IterTimerHook'),
    logger=dict(type='LoggerHook', interval=50))
# RunProgressHook: a progress line with images/s and ETA, and a final summary.
# VocabularyHook: classes (and background words) from the dataset metainfo
# when the model config leaves them out.
# TagResumeHook: tagging runs resume from the TagFileWriter's journals (no-op
# without a TagFileWriter).
# PseudoLabelResumeHook: a pseudo-label folder records the settings of its
# masks (settings.json) and is resumed only with the same ones (no-op without
# a PseudoLabelWriter).
# WriterRunHook: each tag or mask writer holds its output's lock from
# before_test to after_test (also when the run fails).
custom_hooks = [
    dict(type='RunProgressHook'), dict(type='VocabularyHook'), dict(type='TagResumeHook'),
    dict(type='PseudoLabelResumeHook'), dict(type='WriterRunHook')
]
# The CLIP is frozen: plain DDP would refuse a model without trainable
# parameters (docs/compatibility.md, "Traps": DDP of a training-free model).
model_wrapper_cfg = dict(type='MMSeparateDistributedDataParallel')
# ResumableTestLoop: the model computes only the images it must; images
# restored from disk (SkipTagged, SkipExisting) or that failed to load
# (LoadImageRobust(on_error='skip')) are filled by tagclip_mmseg.resume.
test_cfg = dict(type='ResumableTestLoop')
vis_backends = [dict(type='LocalVisBackend')]
visualizer = dict(type='Visualizer', vis_backends=vis_backends, name='visualizer')
