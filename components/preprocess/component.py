from kfp import dsl
from kfp.dsl import Dataset, Output

from components._base import TOOLS_IMAGE


@dsl.component(base_image=TOOLS_IMAGE, install_kfp_package=False)
def preprocess(data_dir: str, data_hash: str, shared_root: str, cache: Output[Dataset], size: int,
               workers: int = 2) -> int:
    """Materialise the resized 16-bit cache of every listed image on the shared volume (one folder per data hash
    and contract, so later runs on the same data reuse it); ``cache`` records where. Returns the image count.

    Args:
        data_dir: CXR-LT data directory.
        data_hash: the data manifest hash from validate_data (keys the cache folder).
        shared_root: where this step sees the shared volume.
        cache: location of the cache (cache_config.json, failures.csv, PNGs) on the shared volume.
        size: output side in pixels (plan_run: the profile's data.cache_size).
        workers: worker processes.
    """
    from pathlib import Path

    from cxrlt.data.images import PreprocessConfig
    from cxrlt.data.preprocess import CACHE_CONFIG, build_cache
    from cxrlt.data.tables import DEV_LABELS_CSV, IMAGES_DIR, TEST_LABELS_CSV, TRAINING_CSV, read_id_list
    from cxrlt.dataplane import cache_folder, publish

    contract = PreprocessConfig(size=size)
    folder = cache_folder(shared_root, data_hash, contract.to_dict())
    ids = [i for n in (TRAINING_CSV, DEV_LABELS_CSV, TEST_LABELS_CSV) if (Path(data_dir) / n).exists()
           for i in read_id_list(Path(data_dir) / n)]
    result = build_cache(ids, Path(data_dir) / IMAGES_DIR, folder, contract, workers, progress=False)
    if result.failures:
        raise RuntimeError(f"{len(result.failures)} images failed to preprocess: {list(result.failures)[:5]}")
    count = result.written + result.skipped
    location = publish(cache.path, folder, "cache", hashed=(CACHE_CONFIG,), size=size, images=count)
    cache.metadata.update({"size": size, "images": count, "path": location.path, "digest": location.digest})
    return count
