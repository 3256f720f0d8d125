"""High-level inference: tags, CAMs and pseudo masks from images in one call."""
from .inferencer import DEFAULT_MAX_TOKENS, TagCLIPInferencer
from .inputs import array_to_rgb, expand_inputs
from .model_configs import (cam_class_names, config_vocabulary, default_background_words,
                            find_config, load_model_config, split_models)
from .pipeline_check import PIPELINE_CHECK_ARCH, write_pipeline_check_checkpoint

__all__ = [
    'TagCLIPInferencer', 'DEFAULT_MAX_TOKENS', 'array_to_rgb', 'expand_inputs', 'cam_class_names',
    'config_vocabulary', 'default_background_words', 'find_config', 'load_model_config',
    'split_models', 'PIPELINE_CHECK_ARCH', 'write_pipeline_check_checkpoint'
]
