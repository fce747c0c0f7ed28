"""KFP v2 components: thin typed wrappers over cxrlt, one per folder (heavy imports inside the function)."""
