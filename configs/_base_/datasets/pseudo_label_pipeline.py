# Pipeline of the pseudo-label configs. SkipExisting first: an image whose PNG
# already exists in pseudo_label_dir is not loaded nor computed (resume), but
# its mask still counts for the metric. tools/generate_pseudo_labels.py --out
# sets out_dir here and in the writer. LoadOptionalAnnotations loads GT masks for
# mIoU when the dataset gives seg_map_path; a folder without masks works as is.
# Token cap, as in tagging_pipeline.py (masks are still written at full size).
max_tokens = 16384
pseudo_label_dir = 'work_dirs/pseudo_labels'
seg_meta_keys = ('img_path', 'seg_map_path', 'img_id', 'ori_shape', 'img_shape', 'tags',
                 'load_error', 'precomputed', 'pred_seg_map')
pseudo_label_pipeline = [
    dict(type='SkipExisting', out_dir=pseudo_label_dir,
         transforms=[
             dict(type='LoadImageRobust', on_error='skip', exif_transpose=False),
             dict(type='ResizeToPatchMultiple', patch_size=16, max_tokens=max_tokens),
         ]),
    dict(type='LoadOptionalAnnotations'),  # GT masks when the dataset has them
    dict(type='PackSegInputs', meta_keys=seg_meta_keys),
]
# The same with the original image kept for the dense CRF's bilateral term.
crf_pseudo_label_pipeline = [
    dict(type='SkipExisting', out_dir=pseudo_label_dir,
         transforms=[
             dict(type='LoadImageRobust', on_error='skip', exif_transpose=False,
                  keep_ori_img=True),
             dict(type='ResizeToPatchMultiple', patch_size=16, max_tokens=max_tokens),
         ]),
    dict(type='LoadOptionalAnnotations'),  # GT masks when the dataset has them
    dict(type='PackSegInputs', meta_keys=seg_meta_keys + ('ori_img', )),
]
test_dataloader = dict(
    batch_size=4,
    num_workers=4,
    persistent_workers=False,
    sampler=dict(type='GridGroupedSampler'),
    batch_sampler=dict(type='GridBatchSampler'),
    dataset=dict(test_mode=True, pipeline=pseudo_label_pipeline))
