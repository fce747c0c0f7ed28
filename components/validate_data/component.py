from kfp import dsl
from kfp.dsl import Artifact, Output

from components._base import TOOLS_IMAGE


@dsl.component(base_image=TOOLS_IMAGE, install_kfp_package=False)
def validate_data(data_dir: str, report: Output[Artifact], min_positives: int = 1, image_check: str = "header") -> str:
    """Great-expectations suite + image checks; fails the run listing every problem. Returns the data manifest hash
    (CSV contents + every image's name, size and mtime: ``cxrlt.data.validate.data_manifest_hash``).

    Args:
        data_dir: CXR-LT data directory (training CSV, label CSVs, images/).
        report: validation.json + validation.md.
        min_positives: minimum positives per known class.
        image_check: header, decode or none.
    """
    from cxrlt.data.validate import data_manifest_hash, validate_dataset, write_report

    result = validate_dataset(data_dir, min_positives, image_check)
    write_report(result, report.path)
    if not result.success:
        problems = "; ".join(f"{f.check}[{f.column or ''}] {f.image_ids[:3]}" for f in result.failures)
        raise RuntimeError(f"data validation failed: {problems}")
    return data_manifest_hash(data_dir)
