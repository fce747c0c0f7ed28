"""Shared component settings: the project images come from cxrlt.platform (one source of truth)."""

from cxrlt.platform import IMAGES

TRAIN_IMAGE = IMAGES["train"]
TOOLS_IMAGE = IMAGES["tools"]
