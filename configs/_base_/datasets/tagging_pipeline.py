# Image pipeline of the tagging configs: robust PIL loading (any mode; a bad file becomes a counted
# skip), bicubic resize to the patch multiple (docs/method.md, "Input size and positional-embedding
# resampling"), mmpretrain packing. Orientation (README.md, "Image orientation"): this is the
# benchmarks' pipeline, which keeps the stored pixels (exif_transpose=False) because VOC / COCO /
# COCO-Stuff labels and masks refer to them, in all three stages; tagclip_vit-b16_folder.py (your
# own photos) turns them upright.
# SkipTagged first (resume): an image that a killed run already tagged (found
# in the TagFileWriter's journals, <out_file>.journal.rank*.jsonl) is neither
# loaded nor computed; its exact scores are restored by ResumableTestLoop.
# TagResumeHook (in the runtime config) gives it the writer's out_file and the
# run's fingerprint (tagclip_mmseg/resume/).
# Images above this many tokens (e.g. an 8000x6000 photo) are scaled down with a
# logged warning so that one file cannot exhaust memory; VOC/COCO images (a few
# hundred tokens) are far below it, so benchmark results are unaffected.
max_tokens = 16384
tag_meta_keys = ('sample_idx', 'img_path', 'img_id', 'ori_shape', 'img_shape', 'load_error',
                 'precomputed', 'pred_record')
tagging_pipeline = [
    dict(type='SkipTagged',
         transforms=[
             dict(type='LoadImageRobust', on_error='skip', exif_transpose=False),
             dict(type='ResizeToPatchMultiple', patch_size=16, max_tokens=max_tokens),
         ]),
    dict(type='mmpretrain.PackInputs', meta_keys=tag_meta_keys),
]
# Batches hold images of one token grid (no padding, so no effect on results).
# Dataset configs that inherit this file add the dataset type and paths.
test_dataloader = dict(
    batch_size=8,
    num_workers=4,
    persistent_workers=False,
    sampler=dict(type='GridGroupedSampler'),
    batch_sampler=dict(type='GridBatchSampler'),
    dataset=dict(test_mode=True, pipeline=tagging_pipeline))
