from kfp import dsl
from kfp.dsl import Artifact, Output

from components._base import TOOLS_IMAGE


@dsl.component(base_image=TOOLS_IMAGE, install_kfp_package=False)
def validate_data(data_dir: str, report: Output[Artifact], min_positives: int = 1, image_check: str = "header") -> str:
    """Great-expectations suite + image checks; fails the run listing every problem. Returns the data manifest hash.

    Args:
        data_dir: CXR-LT data directory (training CSV, label CSVs, images/).
        report: validation.json + validation.md.
        min_positives: minimum positives per known class.
        image_check: header, decode or none.
    """
    import hashlib
    from pathlib import Path

    from cxrlt.data.validate import validate_dataset, write_report

    result = validate_dataset(data_dir, min_positives, image_check)
    write_report(result, report.path)
    if not result.success:
        problems = "; ".join(f"{f.check}[{f.column or ''}] {f.image_ids[:3]}" for f in result.failures)
        raise RuntimeError(f"data validation failed: {problems}")
    digest = hashlib.sha256()
    for name in sorted(p.name for p in Path(data_dir).glob("*.csv")):
        digest.update(name.encode() + (Path(data_dir) / name).read_bytes())
    return digest.hexdigest()[:16]
