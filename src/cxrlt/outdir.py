"""Output directories that a command replaces as a whole: only ones it made, never a folder a user pointed at by
mistake. A marker file says who wrote the directory; the directory itself is kept, since in a pod it is a volume's
mount point."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from cxrlt.errors import InvalidInputError

#: written into every directory that a command may later empty and rewrite
OUTPUT_MARKER = ".cxrlt-output"
#: what a fresh filesystem or volume holds before anyone writes to it
_FILESYSTEM_ENTRIES = frozenset({"lost+found"})


def claim_output_dir(path: str | Path, written_by: str) -> Path:
    """Make ``path`` ready to be rewritten by ``written_by``: created when missing, emptied when it is empty or holds
    the marker, refused (nothing removed) when it holds anything else."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise InvalidInputError(f"{path} is a file, not a directory; choose a new or empty directory for the output")
    path.mkdir(parents=True, exist_ok=True)
    entries = [p for p in path.iterdir() if p.name not in _FILESYSTEM_ENTRIES]
    if entries and not (path / OUTPUT_MARKER).is_file():
        names = sorted(p.name for p in entries)
        shown = ", ".join(names[:5]) + (" ..." if len(names) > 5 else "")
        raise InvalidInputError(
            f"{path} is not empty ({shown}) and was not written by cxrlt (no {OUTPUT_MARKER} in it); nothing was "
            "removed: choose a new or empty directory")
    for old in entries:
        shutil.rmtree(old) if old.is_dir() and not old.is_symlink() else old.unlink()
    (path / OUTPUT_MARKER).write_text(json.dumps({"written_by": written_by}) + "\n")
    return path
