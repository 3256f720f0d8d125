# Pipeline of the pseudo-label configs. SkipExisting first: an image whose PNG
# already exists in pseudo_label_dir is not loaded nor computed (resume:
# ResumableTestLoop returns the mask read back, tagclip_mmseg/resume/), but
# its mask still counts for the metric. tools/generate_pseudo_labels.py --out
# sets out_dir here and in the writer. LoadOptionalAnnotations loads GT masks for
# mIoU when the dataset gives seg_map_path; a folder without masks works as is.
# Orientation (the rule of README.md, "Image orientation"): the benchmark
# pipelines below read the pixels as stored (exif_transpose=False) because
# VOC / COCO / COCO-Stuff masks refer to them, as their tagging and training
# configs do; the upright_* pipelines turn EXIF-rotated photos upright, as the
# folder tagging config and mmcv's training loader do: use them for your own
# photos (docs/add_dataset.md).
# Token cap, as in tagging_pipeline.py (masks are still written at full size).
max_tokens = 16384
pseudo_label_dir = 'work_dirs/pseudo_labels'
seg_meta_keys = ('img_path', 'seg_map_path', 'img_id', 'ori_shape', 'img_shape', 'tags',
                 'load_error', 'precomputed', 'pred_seg_map')
patch_resize = dict(type='ResizeToPatchMultiple', patch_size=16, max_tokens=max_tokens)
stored_pixels_loader = dict(type='LoadImageRobust', on_error='skip', exif_transpose=False)
upright_loader = dict(type='LoadImageRobust', on_error='skip', exif_transpose=True)
pseudo_label_pipeline = [
    dict(type='SkipExisting', out_dir=pseudo_label_dir,
         transforms=[stored_pixels_loader, patch_resize]),
    dict(type='LoadOptionalAnnotations'),  # GT masks when the dataset has them
    dict(type='PackSegInputs', meta_keys=seg_meta_keys),
]
# The same with the original image kept for the dense CRF's bilateral term.
crf_pseudo_label_pipeline = [
    dict(type='SkipExisting', out_dir=pseudo_label_dir,
         transforms=[dict(stored_pixels_loader, keep_ori_img=True), patch_resize]),
    dict(type='LoadOptionalAnnotations'),  # GT masks when the dataset has them
    dict(type='PackSegInputs', meta_keys=seg_meta_keys + ('ori_img', )),
]
upright_pseudo_label_pipeline = [
    dict(type='SkipExisting', out_dir=pseudo_label_dir, transforms=[upright_loader, patch_resize]),
    dict(type='LoadOptionalAnnotations'),
    dict(type='PackSegInputs', meta_keys=seg_meta_keys),
]
upright_crf_pseudo_label_pipeline = [
    dict(type='SkipExisting', out_dir=pseudo_label_dir,
         transforms=[dict(upright_loader, keep_ori_img=True), patch_resize]),
    dict(type='LoadOptionalAnnotations'),
    dict(type='PackSegInputs', meta_keys=seg_meta_keys + ('ori_img', )),
]
test_dataloader = dict(
    batch_size=4,
    num_workers=4,
    persistent_workers=False,
    sampler=dict(type='GridGroupedSampler'),
    batch_sampler=dict(type='GridBatchSampler'),
    dataset=dict(test_mode=True, pipeline=pseudo_label_pipeline))
