# TagCLIP tags + CLIP-ES CAMs as one training-free mmseg segmentor
# (TagCLIPSegmentor) on OpenAI's CLIP ViT-B/16, with the paper's VOC/COCO
# settings: background class 0 = 1 - max(CAMs). Both models share one CLIP.
# The open-vocabulary protocol runtime: slide inference, tags computed once
# per image on the whole input; the configs in configs/open_vocab set the
# window and stride per benchmark (open_vocab_sizes, open_vocab_runtime.py).
model = dict(
    type='TagCLIPSegmentor',
    # Fetched as ViT-B/16 when missing; --clip-checkpoint PATH|NAME|URL.
    clip=dict(checkpoint='~/.cache/clip/ViT-B-16.pt', dtype='fp32'),
    autocast=None,                  # 'bf16' on a recent GPU (fp32 weights)
    # mmseg's LoadImageFromFile yields BGR; the CLIP wants RGB. No padding.
    data_preprocessor=dict(type='CLIPDataPreprocessor', bgr_to_rgb=True),
    quirks='reference',             # docs/modes.md; 'fixed' fixes them (tagger, CAMs, CRF)
    # The peers' synonym rule (SCLIP, ProxyCLIP...): one embedding per name, one
    # softmax over all names, each class the max of its names' probabilities
    # (docs/open_vocab.md, "Synonyms"). 'joined' is TagCLIP's own rule.
    synonyms='max',
    with_background=True,           # False for reduce_zero_label benchmarks
    # Options off by default (the paper's pipeline):
    all_classes_as_tags=False,      # True: skip TagCLIP, a CAM for every class
    tag_ratio=None,                 # a per-benchmark relative tag threshold
    crf=None,                       # see tagclip_vit-b16_voc21_crf.py
    # TagCLIP (paper defaults of the class; docs/method.md, "Hyperparameters"). class_names left
    # out = the dataset's classes (VocabularyHook), background 0 dropped.
    tagger=dict(templates='tagclip', background_words='voc'),
    # CLIP-ES CAMs, TagCLIP's VOC setting: CAA over blocks 5-11, box 0.4.
    labeler=dict(
        templates='clip-es',
        background_words='voc',
        caa_layers=(4, 5, 6, 7, 8, 9, 10),
        caa_box_thr=0.4),
    test_cfg=dict(
        inference='slide',          # or 'whole'
        crop_size=224,
        stride=112,
        cam_batch_pairs=64,         # windows x tags per Grad-CAM call (memory)
        tag_max_tokens=None))       # cap the tagging pass (None: whole input)
