"""File formats that resume and evaluation share: journals, mask records, sample fields."""
from .files import (PNG_TRAILER, SourceLog, read_cam_file, read_label_png, read_sources,
                    remove_stale_temp_files, sources_path)
from .journal import (JOURNAL_FORMAT, TagJournal, decode_scores, encode_scores, journal_path,
                      journal_paths, read_journals)
from .sample_fields import get_field, image_id, load_error, missing_images, pixel_data

__all__ = [
    'PNG_TRAILER', 'SourceLog', 'read_cam_file', 'read_label_png', 'read_sources',
    'remove_stale_temp_files', 'sources_path', 'JOURNAL_FORMAT', 'TagJournal', 'decode_scores',
    'encode_scores', 'journal_path', 'journal_paths', 'read_journals', 'get_field', 'image_id',
    'load_error', 'missing_images', 'pixel_data'
]
