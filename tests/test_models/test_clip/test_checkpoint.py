"""Checkpoint loading: every format round-trips, architecture inference, errors."""
import argparse
import importlib.util
import os
import os.path as osp
import warnings

import pytest
import torch
from torch import nn

from tagclip_mmseg.models.clip import (CLIP, CheckpointError, build_clip, checkpoint_fingerprint,
                                       infer_clip_arch, load_clip, load_clip_state_dict,
                                       resolve_dtype, save_clip_state_dict, tokenize)
from tagclip_mmseg.testing.checkout import repo_root

#: The classic CI stack (make test-classic) runs this whole file.
pytestmark = pytest.mark.classic

REPO = repo_root(__file__)
TEXTS = ['a photo of a cat.', 'a clean origami person with clothes,people,human.', 'sky']


@pytest.fixture
def images():
    torch.manual_seed(1)
    return torch.randn(2, 3, 64, 64)


def assert_same_outputs(a: CLIP, b: CLIP, images: torch.Tensor, atol: float = 0.0) -> None:
    tokens = tokenize(TEXTS)
    with torch.no_grad():
        torch.testing.assert_close(a.encode_image(images), b.encode_image(images), atol=atol,
                                   rtol=0)
        torch.testing.assert_close(a.encode_text(tokens), b.encode_text(tokens), atol=atol, rtol=0)


# ----------------------------------------------------------------- formats
class _OpenAIArchive(nn.Module):
    """Holds a CLIP's modules and parameters under OpenAI's names.

    Plus the three int buffers OpenAI's TorchScript archives carry, so that its trace has the state
    dict of a real ``ViT-B-16.pt``.
    """

    def __init__(self, clip: CLIP) -> None:
        super().__init__()
        for name, child in clip.named_children():
            self.add_module(name, child)
        for name, param in clip.named_parameters(recurse=False):
            self.register_parameter(name, param)
        self.register_buffer('input_resolution', torch.tensor(clip.visual.input_resolution))
        self.register_buffer('context_length', torch.tensor(clip.context_length))
        self.register_buffer('vocab_size', torch.tensor(clip.vocab_size))

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        return self.visual(image)[:, 0]


def _save_torchscript(model: CLIP, path: str) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter('ignore')  # tracer warnings about Python control flow
        traced = torch.jit.trace(_OpenAIArchive(model), torch.randn(1, 3, 64, 64),
                                 check_trace=False)
    torch.jit.save(traced, path)


def test_torchscript_archive(tmp_path, tiny_clip, images):
    path = str(tmp_path / 'ViT-tiny.pt')
    _save_torchscript(tiny_clip, path)
    raw = torch.jit.load(path, map_location='cpu').state_dict()
    assert {'input_resolution', 'context_length', 'vocab_size', 'visual.proj'} <= set(raw)
    try:  # docs/compatibility.md, "Traps": ViT-B-16.pt is a TorchScript archive
        loaded = torch.load(path, weights_only=True)
    except Exception:  # noqa: BLE001  torch refuses the archive (newer torch)
        pass
    else:  # torch 2.1 hands a TorchScript archive to torch.jit.load
        assert isinstance(loaded, torch.jit.ScriptModule)
    sd = load_clip_state_dict(path)
    assert 'input_resolution' not in sd
    assert_same_outputs(load_clip(path), tiny_clip, images)


@pytest.mark.parametrize('wrap', ['plain', 'state_dict', 'model', 'module_prefix'])
def test_plain_state_dict(tmp_path, tiny_clip, images, wrap):
    sd = tiny_clip.state_dict()
    obj = {
        'plain': sd,
        'state_dict': {'state_dict': sd, 'epoch': 3},
        'model': {'model': sd},
        'module_prefix': {'state_dict': {f'module.{k}': v for k, v in sd.items()}},
    }[wrap]
    path = str(tmp_path / 'clip.pth')
    torch.save(obj, path)
    model = load_clip(path)
    assert_same_outputs(model, tiny_clip, images)
    assert not model.training
    assert not any(p.requires_grad for p in model.parameters())


def test_fp16_checkpoint_loads_as_fp32_and_fp16(tmp_path, tiny_clip, images):
    path = str(tmp_path / 'clip_fp16.bin')
    torch.save({k: v.half() for k, v in tiny_clip.state_dict().items()}, path)
    fp32 = load_clip(path, dtype='fp32')
    assert fp32.dtype == torch.float32
    for (name, p), q in zip(fp32.state_dict().items(), tiny_clip.state_dict().values()):
        assert torch.equal(p, q.half().float()), name
    fp16 = load_clip(path, dtype=torch.float16)
    assert all(p.dtype == torch.float16 for p in fp16.parameters())
    assert load_clip(path, dtype='bf16').dtype == torch.bfloat16


def test_safetensors_and_converter(tmp_path, tiny_clip, images):
    src = str(tmp_path / 'src.pth')
    torch.save(tiny_clip.state_dict(), src)
    tool_path = osp.join(REPO, 'tools', 'convert_clip_checkpoint.py')
    spec = importlib.util.spec_from_file_location('convert_clip_checkpoint', tool_path)
    tool = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tool)
    for name, fp16 in (('out.safetensors', False), ('out.pth', False), ('half.safetensors', True)):
        dst = str(tmp_path / name)
        assert tool.main([src, dst] + (['--fp16'] if fp16 else [])) == 0
        if not fp16:
            assert_same_outputs(load_clip(dst), tiny_clip, images)
        else:
            sd = load_clip_state_dict(dst)
            assert all(v.dtype == torch.float16 for v in sd.values() if v.is_floating_point())
    # plain torch.load works on the converted file (no TorchScript, no pickled objects)
    assert 'visual.proj' in torch.load(str(tmp_path / 'out.pth'), weights_only=True)
    assert not [f for f in os.listdir(tmp_path) if f.endswith('.tmp')]
    assert tool.main([str(tmp_path / 'missing.pt'), str(tmp_path / 'x.pth')]) == 1


def test_save_rejects_unknown_extension(tmp_path, tiny_clip):
    with pytest.raises(ValueError, match='extension'):
        save_clip_state_dict(tiny_clip.state_dict(), str(tmp_path / 'clip.ckpt'))


def test_open_clip_checkpoint(tmp_path, images):
    open_clip = pytest.importorskip('open_clip')
    torch.manual_seed(0)
    ref = open_clip.CLIP(
        embed_dim=32,
        vision_cfg=dict(layers=2, width=128, patch_size=16, image_size=64, head_width=64),
        text_cfg=dict(context_length=77, vocab_size=49408, width=128, heads=2, layers=2),
        quick_gelu=True).eval()
    with torch.no_grad():
        for p in ref.parameters():
            p.add_(torch.randn_like(p) * 0.02)
    path = str(tmp_path / 'open_clip.pt')
    torch.save({'epoch': 1, 'name': 'tiny', 'state_dict': {f'module.{k}': v
                                                           for k, v in ref.state_dict().items()}},
               path)
    ours = load_clip(path)
    tokens = tokenize(TEXTS)
    with torch.no_grad():
        torch.testing.assert_close(ours.encode_image(images), ref.encode_image(images),
                                   atol=1e-5, rtol=0)
        torch.testing.assert_close(ours.encode_text(tokens), ref.encode_text(tokens),
                                   atol=1e-5, rtol=0)


def test_open_clip_custom_text_layout(tmp_path, tiny_clip, images):
    """CustomTextCLIP nests the text tower under 'text.'.

    It may also use a Linear text projection.
    """
    sd = {}
    for k, v in tiny_clip.state_dict().items():
        if k == 'text_projection':
            sd['text.text_projection.weight'] = v.t().contiguous()
        elif not k.startswith('visual.') and k != 'logit_scale':
            sd[f'text.{k}'] = v
        else:
            sd[k] = v
    path = str(tmp_path / 'custom_text.pth')
    torch.save(sd, path)
    assert_same_outputs(load_clip(path), tiny_clip, images)


@pytest.fixture(scope='module')
def hf_clip():
    transformers = pytest.importorskip('transformers')
    cfg = transformers.CLIPConfig(
        text_config=dict(vocab_size=49408, hidden_size=128, intermediate_size=512,
                         num_hidden_layers=2, num_attention_heads=2, max_position_embeddings=77,
                         hidden_act='quick_gelu', eos_token_id=49407, bos_token_id=49406),
        vision_config=dict(hidden_size=128, intermediate_size=512, num_hidden_layers=3,
                           num_attention_heads=2, image_size=64, patch_size=16,
                           hidden_act='quick_gelu'),
        projection_dim=32)
    torch.manual_seed(0)
    return transformers.CLIPModel(cfg).eval()


def _hf_features(model, images, tokens):
    with torch.no_grad():
        img = model.visual_projection(model.vision_model(pixel_values=images).pooler_output)
        txt = model.text_projection(model.text_model(input_ids=tokens).pooler_output)
    return img, txt


@pytest.mark.parametrize('layout', ['folder', 'safetensors_file', 'bin_with_position_ids'])
def test_hugging_face_checkpoint(tmp_path, hf_clip, images, layout):
    folder = tmp_path / 'hf'
    if layout == 'bin_with_position_ids':
        folder.mkdir()
        sd = dict(hf_clip.state_dict())
        # older transformers versions saved these buffers
        sd['text_model.embeddings.position_ids'] = torch.arange(77)[None]
        sd['vision_model.embeddings.position_ids'] = torch.arange(17)[None]
        torch.save(sd, folder / 'pytorch_model.bin')
        path = str(folder)
    else:
        hf_clip.save_pretrained(str(folder))
        path = str(folder) if layout == 'folder' else str(folder / 'model.safetensors')
    ours = load_clip(path)
    tokens = tokenize(TEXTS)
    ref_img, ref_txt = _hf_features(hf_clip, images, tokens)
    with torch.no_grad():
        torch.testing.assert_close(ours.encode_image(images), ref_img, atol=1e-5, rtol=0)
        torch.testing.assert_close(ours.encode_text(tokens), ref_txt, atol=1e-5, rtol=0)
    torch.testing.assert_close(ours.logit_scale, hf_clip.logit_scale.detach())


# --------------------------------------------------------- architecture
OPENAI_ARCHS = {
    'ViT-B/32': dict(embed_dim=512, image_resolution=224, vision_layers=12, vision_width=768,
                     vision_patch_size=32, context_length=77, vocab_size=49408,
                     transformer_width=512, transformer_heads=8, transformer_layers=12),
    'ViT-B/16': dict(embed_dim=512, image_resolution=224, vision_layers=12, vision_width=768,
                     vision_patch_size=16, context_length=77, vocab_size=49408,
                     transformer_width=512, transformer_heads=8, transformer_layers=12),
    'ViT-L/14': dict(embed_dim=768, image_resolution=224, vision_layers=24, vision_width=1024,
                     vision_patch_size=14, context_length=77, vocab_size=49408,
                     transformer_width=768, transformer_heads=12, transformer_layers=12),
    'ViT-L/14@336px': dict(embed_dim=768, image_resolution=336, vision_layers=24,
                           vision_width=1024, vision_patch_size=14, context_length=77,
                           vocab_size=49408, transformer_width=768, transformer_heads=12,
                           transformer_layers=12),
}


@pytest.mark.parametrize('name', list(OPENAI_ARCHS))
def test_infer_arch_of_released_models(name):
    arch = OPENAI_ARCHS[name]
    with torch.device('meta'):  # shapes only: no ViT-L weights are allocated
        sd = CLIP(**arch).state_dict()
    sd['input_resolution'] = torch.empty((), device='meta')
    assert infer_clip_arch(sd) == arch
    # shape tuples work too
    assert infer_clip_arch({k: tuple(v.shape) for k, v in sd.items()}) == arch


def test_infer_arch_of_tiny_clip(tiny_clip, tiny_clip_arch):
    assert infer_clip_arch(tiny_clip.state_dict()) == tiny_clip_arch


def test_inconsistent_shapes(tiny_clip):
    sd = dict(tiny_clip.state_dict())
    sd['visual.positional_embedding'] = torch.zeros(18, 128)
    with pytest.raises(CheckpointError, match='square grid'):
        infer_clip_arch(sd)


# ------------------------------------------------------------------ errors
def test_missing_file_says_how_to_get_one(tmp_path):
    path = str(tmp_path / 'nowhere' / 'ViT-B-16.pt')
    with pytest.raises(FileNotFoundError) as info:
        load_clip(path)
    msg = str(info.value)
    assert path in msg and '~/.cache/clip/ViT-B-16.pt' in msg
    assert 'convert_clip_checkpoint.py' in msg


def test_truncated_and_corrupt_files(tmp_path, tiny_clip_path):
    data = open(tiny_clip_path, 'rb').read()
    cases = {
        'truncated.pth': data[:len(data) // 2],
        'garbage.pt': b'this is not a checkpoint' * 10,
        'empty.pth': b'',
        'truncated.safetensors': b'\x10\x00\x00\x00\x00\x00\x00\x00{"a":',
    }
    for name, content in cases.items():
        path = str(tmp_path / name)
        with open(path, 'wb') as f:
            f.write(content)
        with pytest.raises(CheckpointError, match='truncated, corrupt') as info:
            load_clip_state_dict(path)
        assert path in str(info.value)


def test_non_clip_and_resnet_checkpoints(tmp_path, tiny_clip):
    other = str(tmp_path / 'linear.pth')
    torch.save(nn.Linear(4, 4).state_dict(), other)
    with pytest.raises(CheckpointError, match='not a CLIP ViT checkpoint'):
        load_clip(other)

    resnet = {k: v for k, v in tiny_clip.state_dict().items() if not k.startswith('visual.')}
    resnet['visual.layer1.0.conv1.weight'] = torch.zeros(4, 4, 1, 1)
    resnet['visual.attnpool.positional_embedding'] = torch.zeros(50, 4)
    path = str(tmp_path / 'RN50.pth')
    torch.save(resnet, path)
    with pytest.raises(CheckpointError, match='ResNet CLIP'):
        load_clip(path)

    not_a_dict = str(tmp_path / 'list.pth')
    torch.save([torch.zeros(2)], not_a_dict)
    with pytest.raises(CheckpointError, match='holds no state dict'):
        load_clip(not_a_dict)

    empty_folder = tmp_path / 'empty'
    empty_folder.mkdir()
    with pytest.raises(CheckpointError, match='folder without CLIP weights'):
        load_clip(str(empty_folder))

    extra = dict(tiny_clip.state_dict())
    extra['visual.transformer.resblocks.0.ls_1.gamma'] = torch.ones(128)
    path = str(tmp_path / 'extra.pth')
    torch.save(extra, path)
    with pytest.raises(CheckpointError, match='unexpected'):
        load_clip(path)


def test_pickled_objects_need_opt_in(tmp_path, tiny_clip, images):
    path = str(tmp_path / 'with_args.pth')
    torch.save({'state_dict': tiny_clip.state_dict(), 'args': argparse.Namespace(lr=1)}, path)
    with pytest.raises(CheckpointError, match='asks to call argparse.Namespace.*--unsafe-load'):
        load_clip(path)
    assert_same_outputs(load_clip(path, weights_only=False), tiny_clip, images)


def test_dtype_names():
    assert resolve_dtype('fp16') is torch.float16
    assert resolve_dtype('FP32') is torch.float32
    assert resolve_dtype(torch.bfloat16) is torch.bfloat16
    with pytest.raises(ValueError, match='fp32, fp16, bf16'):
        resolve_dtype('int8')
    with pytest.raises(ValueError, match='floating point'):
        resolve_dtype(torch.int64)


# ------------------------------------------------- fingerprint and builder
def test_fingerprint(tiny_clip_path, tiny_clip_factory):
    first = checkpoint_fingerprint(tiny_clip_path)
    assert first == checkpoint_fingerprint(tiny_clip_path)
    assert load_clip(tiny_clip_path).checkpoint_fingerprint == first
    other = tiny_clip_factory(seed=1)
    torch.save(other.state_dict(), tiny_clip_path)
    os.utime(tiny_clip_path, ns=(1, 1))
    assert checkpoint_fingerprint(tiny_clip_path) != first


def test_build_clip_forms(tiny_clip, tiny_clip_path, images):
    assert build_clip(tiny_clip) is tiny_clip
    assert_same_outputs(build_clip(tiny_clip_path), tiny_clip, images)
    assert build_clip(dict(checkpoint=tiny_clip_path, dtype='fp16')).dtype == torch.float16
    from mmengine.registry import init_default_scope
    init_default_scope('mmseg')
    built = build_clip(dict(type='PretrainedCLIP', checkpoint=tiny_clip_path))
    assert_same_outputs(built, tiny_clip, images)
    with pytest.raises(TypeError, match='clip must be'):
        build_clip(3)
