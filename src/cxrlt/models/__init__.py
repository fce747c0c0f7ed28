"""Model zoo: the view router and the ensemble members, all built from config by name (timm backbones)."""

from cxrlt.models.factory import build_member, build_router

__all__ = ["build_member", "build_router"]
