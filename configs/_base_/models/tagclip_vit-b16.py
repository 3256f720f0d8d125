# TagCLIP on OpenAI's CLIP ViT-B/16, with the paper's hyperparameters
# (docs/method.md, "Hyperparameters"). Classes come from the dataset metainfo (VocabularyHook)
# unless class_names is set here.
model = dict(
    type='TagCLIP',
    # The weights OpenAI's clip.load('ViT-B/16') caches; fetched there when missing.
    # Override with --cfg-options model.clip.checkpoint=PATH.
    clip=dict(checkpoint='~/.cache/clip/ViT-B-16.pt', dtype='fp32'),
    # Mixed precision on a GPU: --cfg-options model.autocast=bf16 (fp32
    # weights, half-precision matrix products; tags near the threshold can
    # change). None computes in the CLIP's dtype, as the paper's code does.
    autocast=None,
    data_preprocessor=dict(type='CLIPDataPreprocessor'),
    class_names=None,
    background_words='voc',
    templates='tagclip',            # 80 ImageNet + 5 scene templates
    vote_k=4,                       # DMAR vote: >= 4 of 12 layers above their mean
    avg_layers=(8, 9, 10),          # DMAR averaged attention: blocks 9-11
    self_attn_mask_value=-100.,     # self-only last layer in the coarse pass
    cwr=True,
    cwr_ratio=0.5,                  # CWR candidates: relative threshold on P_ref
    cwr_region_thr=0.5,             # CWR region: > 0.5 of the normalised map
    cwr_crop_size=224,
    cwr_mask_value=-1000.,          # [CLS] mask outside the region, all layers
    fusion_lambda=0.5,
    tag_ratio=0.5,                  # per-image relative tag threshold
    quirks='reference',             # the reference's quirks (docs/modes.md), or 'fixed'
    cwr_batch_size=32)
