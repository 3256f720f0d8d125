"""Convert any supported CLIP ViT checkpoint to a plain OpenAI-naming state dict.

Reads what :func:`tagclip_mmseg.models.clip.load_clip_state_dict` reads
(OpenAI TorchScript ``.pt``, plain or wrapped state dicts, open_clip, Hugging
Face ``CLIPModel`` files or folders, safetensors) and writes a state dict that
plain ``torch.load(weights_only=True)`` or safetensors can open, without
TorchScript (deprecated in recent PyTorch) or Hugging Face's naming.

Examples::

    python tools/convert_clip_checkpoint.py ~/.cache/clip/ViT-B-16.pt vit-b-16.pth
    python tools/convert_clip_checkpoint.py ViT-B/16 vit-b-16.safetensors   # fetched first
    python tools/convert_clip_checkpoint.py hf_clip_folder/ vit-b-16.safetensors --fp16

The output format follows DST's extension (.pth/.pt/.bin or .safetensors); it
is written atomically, so an interrupted run never leaves a partial file.
"""
import argparse
import sys

from tagclip_mmseg.models.clip.checkpoint import (CheckpointError, infer_clip_arch,
                                                  load_clip_state_dict, save_clip_state_dict)


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description='Convert a CLIP ViT checkpoint to an OpenAI-naming state dict')
    parser.add_argument('src', help='source: a checkpoint file, a Hugging Face/open_clip folder, '
                        'an OpenAI model name (ViT-B/16...) or an http(s) URL (fetched and '
                        'verified first)')
    parser.add_argument('dst', help='destination (.pth, .pt, .bin or .safetensors)')
    parser.add_argument('--fp16', action='store_true',
                        help='store floating-point weights in fp16 (half the size)')
    parser.add_argument('--unsafe-load', action='store_true',
                        help='allow pickled Python objects in SRC (only for files you trust)')
    return parser.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    try:
        state_dict = load_clip_state_dict(args.src, weights_only=not args.unsafe_load)
        save_clip_state_dict(state_dict, args.dst, fp16=args.fp16)
    except (OSError, CheckpointError, ValueError) as e:  # OSError: FetchError too
        print(f'error: {e}', file=sys.stderr)
        return 1
    arch = infer_clip_arch(state_dict, args.src)
    print(f'wrote {args.dst}: {len(state_dict)} tensors' + (' in fp16' if args.fp16 else '') +
          f'; vision {arch["vision_layers"]} x {arch["vision_width"]}, patch '
          f'{arch["vision_patch_size"]}, {arch["image_resolution"]} px; text '
          f'{arch["transformer_layers"]} x {arch["transformer_width"]}; embed {arch["embed_dim"]}')
    return 0


if __name__ == '__main__':
    sys.exit(main())
