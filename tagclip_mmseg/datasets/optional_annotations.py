"""Ground-truth masks that may or may not exist.

The pseudo-label stage runs both on benchmarks (GT masks give mIoU) and on
plain folders of photos (no masks). mmseg's ``LoadAnnotations`` needs
``seg_map_path`` and fails with ``KeyError`` without it, so one pipeline
could not serve both; :class:`LoadOptionalAnnotations` loads the mask when
the dataset gave a path and leaves the sample alone otherwise.
"""
from mmseg.datasets.transforms import LoadAnnotations
from mmseg.registry import TRANSFORMS

__all__ = ['LoadOptionalAnnotations']


@TRANSFORMS.register_module()
class LoadOptionalAnnotations(LoadAnnotations):
    """mmseg's ``LoadAnnotations`` when the sample has a ``seg_map_path``;
    a no-op when it has none (a dataset without ground truth).

    Takes ``LoadAnnotations``' arguments.
    """

    def transform(self, results: dict) -> dict:
        if results.get('seg_map_path') is None:
            return results
        return super().transform(results)
