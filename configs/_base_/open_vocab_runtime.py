# Runtime of the open-vocabulary benchmarks: the training-free runtime plus
# mmseg's visualiser, so tools/test.py --show-dir paints every prediction
# (interval 1; the hook draws nothing without --show/--show-dir). The
# protocol's test pipeline: shorter side resized (the image, not the mask:
# IoUMetric compares at the original size), batch size 1, slide inference.
_base_ = ['./default_runtime_training_free.py']
default_hooks = dict(visualization=dict(type='SegVisualizationHook', interval=1))
visualizer = dict(
    type='SegLocalVisualizer', vis_backends=[dict(type='LocalVisBackend')], name='visualizer')

# The sizes per benchmark as each project's configs set them: (shorter side of
# the test image, slide window, slide stride); None where the project's config
# was not found. docs/open_vocab.md "Sizes per project" cites the sources.
open_vocab_sizes = dict(
    tagclip_mmseg=dict(
        voc21=(336, 224, 112), voc20=(336, 224, 112), context60=(336, 224, 112),
        context59=(336, 224, 112), coco_object=(336, 224, 112), coco_stuff171=(336, 224, 112),
        cityscapes=(560, 224, 112), ade20k=(336, 224, 112)),
    sclip=dict(
        voc21=(336, 224, 112), voc20=(336, 224, 112), context60=(336, 224, 112),
        context59=(336, 224, 112), coco_object=(336, 224, 112), coco_stuff171=(448, 224, 112),
        cityscapes=(560, 224, 112), ade20k=(336, 224, 112)),
    naclip=dict(
        voc21=(336, 224, 112), voc20=(336, 224, 112), context60=(336, 224, 112),
        context59=(336, 224, 112), coco_object=(336, 224, 112), coco_stuff171=(448, 224, 112),
        cityscapes=(560, 224, 112), ade20k=(336, 224, 112)),
    proxyclip=dict(
        voc21=(336, 336, 112), voc20=None, context60=(336, 336, 112), context59=None,
        coco_object=(336, 336, 112), coco_stuff171=(336, 336, 112),
        cityscapes=(448, 224, 112), ade20k=(448, 336, 112)))
# Whose sizes the configs use: 'tagclip_mmseg', 'sclip', 'naclip' or
# 'proxyclip'. Here for every config, or for one run with
# --cfg-options open_vocab_protocol=sclip (tools apply it before the other
# --cfg-options, which therefore still override single sizes).
open_vocab_protocol = 'tagclip_mmseg'

open_vocab_test_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='Resize', scale=(2048, None), keep_ratio=True),  # shorter side: the table
    dict(type='LoadAnnotations'),
    dict(type='PackSegInputs'),
]
# With the dense CRF (model.crf): the original image must travel in the sample
# ('ori_img'), so LoadImageRobust loads it, in RGB (set the data
# preprocessor's bgr_to_rgb=False with this pipeline).
open_vocab_crf_pipeline = [
    dict(type='LoadImageRobust', on_error='raise', exif_transpose=False, keep_ori_img=True),
    dict(type='Resize', scale=(2048, None), keep_ratio=True),
    dict(type='LoadAnnotations'),
    dict(type='PackSegInputs',
         meta_keys=('img_path', 'seg_map_path', 'ori_shape', 'img_shape', 'pad_shape',
                    'scale_factor', 'flip', 'flip_direction', 'reduce_zero_label', 'ori_img')),
]
# Per benchmark (the key each config names as open_vocab_benchmark), from the
# table: the two pipelines with their Resize set, and the model's slide test_cfg.
open_vocab_pipelines, open_vocab_crf_pipelines, open_vocab_slide = {}, {}, {}
for _name, _sizes in open_vocab_sizes[open_vocab_protocol].items():
    if _sizes is not None:
        open_vocab_pipelines[_name], open_vocab_crf_pipelines[_name] = (
            [dict(t, scale=(t['scale'][0], _sizes[0])) if t['type'] == 'Resize' else t
             for t in pipeline]
            for pipeline in (open_vocab_test_pipeline, open_vocab_crf_pipeline))
        open_vocab_slide[_name] = dict(inference='slide', crop_size=_sizes[1], stride=_sizes[2])
del _name, _sizes
