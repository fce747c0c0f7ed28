"""Triton python-backend model sources, copied into ``<repo>/<model>/1/model.py`` by the repository builder."""
