# CLS-SEG on VOC2012 val with the tagger run in the same pass (no tags file).
_base_ = ['./clip-es_vit-b16_voc12-val_tagclip-tags.py']
model = dict(
    tagger=dict(
        type='TagCLIP',
        clip=dict(checkpoint='~/.cache/clip/ViT-B-16.pt', dtype='fp32'),
        class_names='voc',
        background_words='voc',
        quirks='reference'))
test_dataloader = dict(dataset=dict(tag_source='none', tags_file=''))
