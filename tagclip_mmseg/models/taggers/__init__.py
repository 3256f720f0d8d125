from .tagclip import TagCLIP, TagCLIPOutput

__all__ = ['TagCLIP', 'TagCLIPOutput']
