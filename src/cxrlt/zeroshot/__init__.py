"""Task 2: zero-shot recognition of unseen findings with a CheXzero-style dual-branch CLIP (open_clip)."""
