# DeepLab-v2 schedule of the CLIP-ES protocol on VOC (docs/method.md, "Stage 3: training DeepLab-v2
# on pseudo masks"):
# deeplab-pytorch voc12.yaml with CLIP-ES's learning rate.
#
# * Batch 5 with gradients accumulated over 2 batches (ITER_SIZE 2): an
#   effective batch of 10. mmengine scales each loss by 1/2 and steps the
#   optimiser every 2 loader iterations.
# * 20k optimiser updates. mmengine's loop counts *loader* iterations, hence
#   max_iters = 20k x 2 = 40k; intervals below are in loader iterations too.
# * SGD, momentum 0.9, weight decay 5e-4, base LR 2e-4 (CLIP-ES, ImageNet
#   initialisation). For a COCO-pretrained initialisation CLIP-ES uses
#   lr=2.5e-5 (override optim_wrapper.optimizer.lr).
# * Poly decay, power 0.9, to 0 at the end. Deviation: deeplab-pytorch
#   updates the rate every 10 updates; mmengine's PolyLR every iteration.
# * LR multipliers: backbone 1x, ASPP weights 10x, ASPP biases 20x with no
#   weight decay. mmengine matches `custom_keys` as substrings of the full
#   parameter name, LONGEST KEY FIRST, first match wins: 'backbone' (8 chars)
#   keeps any trainable backbone parameter at 1x, then '.bias' (5) takes the
#   head biases, then 'head' (4) the head weights. Frozen BN parameters are
#   skipped by the constructor.
optimizer = dict(type='SGD', lr=2e-4, momentum=0.9, weight_decay=5e-4)
optim_wrapper = dict(
    type='OptimWrapper',
    optimizer=optimizer,
    accumulative_counts=2,
    clip_grad=None,
    paramwise_cfg=dict(
        custom_keys={
            'backbone': dict(lr_mult=1.0),
            '.bias': dict(lr_mult=20.0, decay_mult=0.0),
            'head': dict(lr_mult=10.0),
        }))
param_scheduler = [
    dict(type='PolyLR', eta_min=0.0, power=0.9, begin=0, end=40000, by_epoch=False)
]
train_cfg = dict(type='IterBasedTrainLoop', max_iters=40000, val_interval=4000)
val_cfg = dict(type='ValLoop')
test_cfg = dict(type='TestLoop')
default_hooks = dict(
    timer=dict(type='IterTimerHook'),
    logger=dict(type='LoggerHook', interval=50, log_metric_by_epoch=False),
    param_scheduler=dict(type='ParamSchedulerHook'),
    checkpoint=dict(type='CheckpointHook', by_epoch=False, interval=4000, max_keep_ckpts=3),
    sampler_seed=dict(type='DistSamplerSeedHook'),
    visualization=dict(type='SegVisualizationHook'))
