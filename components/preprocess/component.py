from kfp import dsl
from kfp.dsl import Dataset, Output

from components._base import TOOLS_IMAGE


@dsl.component(base_image=TOOLS_IMAGE, install_kfp_package=False)
def preprocess(data_dir: str, cache: Output[Dataset], size: int = 64, workers: int = 2) -> int:
    """Materialise the resized 16-bit cache of every listed image; returns the number of cached images.

    Args:
        data_dir: CXR-LT data directory.
        cache: the cache directory (cache_config.json, failures.csv, PNGs).
        size: output side in pixels.
        workers: worker processes.
    """
    from pathlib import Path

    from cxrlt.data.images import PreprocessConfig
    from cxrlt.data.preprocess import build_cache
    from cxrlt.data.tables import DEV_LABELS_CSV, IMAGES_DIR, TEST_LABELS_CSV, TRAINING_CSV, read_id_list

    ids = [i for n in (TRAINING_CSV, DEV_LABELS_CSV, TEST_LABELS_CSV) if (Path(data_dir) / n).exists()
           for i in read_id_list(Path(data_dir) / n)]
    result = build_cache(ids, Path(data_dir) / IMAGES_DIR, cache.path, PreprocessConfig(size=size), workers,
                         progress=False)
    if result.failures:
        raise RuntimeError(f"{len(result.failures)} images failed to preprocess: {list(result.failures)[:5]}")
    cache.metadata.update({"size": size, "images": result.written + result.skipped})
    return result.written + result.skipped
