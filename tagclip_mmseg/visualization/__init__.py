"""Pictures and an HTML page of TagCLIP tags, CLIP-ES CAMs and pseudo masks."""
from .overlays import (IGNORE_INDEX, default_palette, draw_tag_panel, mask_label_names,
                       overlay_heatmap, overlay_mask)
from .report import (ReportEntry, safe_file_stem, save_result_images, unique_stems,
                     write_index_html, write_rgb_image)

__all__ = [
    'IGNORE_INDEX', 'default_palette', 'draw_tag_panel', 'mask_label_names', 'overlay_heatmap',
    'overlay_mask', 'ReportEntry', 'safe_file_stem', 'save_result_images', 'unique_stems',
    'write_index_html', 'write_rgb_image'
]
