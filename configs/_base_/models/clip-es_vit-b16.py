# CLIP-ES pseudo-labeler on OpenAI's CLIP ViT-B/16 (docs/method.md, "CLIP-ES pseudo masks from
# tags"), VOC setting of TagCLIP's copy. Tags come from the dataset (tag_source) unless a tagger is
# given.
model = dict(
    type='CLIPESPseudoLabeler',
    # CLIP-ES runs the CLIP in fp16 on the GPU; use dtype='fp32' on a CPU.
    clip=dict(checkpoint='~/.cache/clip/ViT-B-16.pt', dtype='fp16'),
    autocast=None,                  # or 'bf16'/'fp16' with fp32 weights on a GPU
    data_preprocessor=dict(type='CLIPDataPreprocessor'),
    class_names='voc-cam',          # VOC names with CLIP-ES's renames
    background_words='voc',
    templates='clip-es',            # 'a clean origami {}.'
    caa_layers=(4, 5, 6, 7, 8, 9, 10),  # blocks 5-11
    caa_box_thr=0.4,
    with_background=True,
    quirks='reference',             # docs/modes.md; 'fixed' fixes them (CRF included)
    return_cams=False)  # crf: see pseudo_labelers/*_crf.py
