"""Ground-truth masks that may or may not exist (benchmarks and photo folders)."""
from mmseg.datasets.transforms import LoadAnnotations
from mmseg.registry import TRANSFORMS

__all__ = ['LoadOptionalAnnotations']


@TRANSFORMS.register_module()
class LoadOptionalAnnotations(LoadAnnotations):
    """mmseg's ``LoadAnnotations``, a no-op for a sample without ``seg_map_path``.

    Takes ``LoadAnnotations``' arguments.
    """

    def transform(self, results: dict) -> dict:
        """Load the annotation if the sample has one."""
        if results.get('seg_map_path') is None:
            return results
        return super().transform(results)
