"""Ground-truth masks that may or may not exist (benchmarks and photo folders)."""
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
