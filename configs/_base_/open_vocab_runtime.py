# Runtime of the open-vocabulary benchmarks: the training-free runtime plus
# mmseg's visualiser, so tools/test.py --show-dir paints every prediction
# (interval 1; the hook draws nothing without --show/--show-dir). The
# protocol's test pipeline: shorter side resized to 336 (the image, not the
# mask: IoUMetric compares at the original size), batch size 1.
_base_ = ['./default_runtime_training_free.py']
default_hooks = dict(visualization=dict(type='SegVisualizationHook', interval=1))
visualizer = dict(
    type='SegLocalVisualizer', vis_backends=[dict(type='LocalVisBackend')], name='visualizer')
open_vocab_short_side = 336
open_vocab_test_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='Resize', scale=(2048, open_vocab_short_side), keep_ratio=True),
    dict(type='LoadAnnotations'),
    dict(type='PackSegInputs'),
]
# With the dense CRF (model.crf): the original image must travel in the sample
# ('ori_img'), so LoadImageRobust loads it, in RGB (set the data
# preprocessor's bgr_to_rgb=False with this pipeline).
open_vocab_crf_pipeline = [
    dict(type='LoadImageRobust', on_error='raise', exif_transpose=False, keep_ori_img=True),
    dict(type='Resize', scale=(2048, open_vocab_short_side), keep_ratio=True),
    dict(type='LoadAnnotations'),
    dict(type='PackSegInputs',
         meta_keys=('img_path', 'seg_map_path', 'ori_shape', 'img_shape', 'pad_shape',
                    'scale_factor', 'flip', 'flip_direction', 'reduce_zero_label', 'ori_img')),
]
