"""KFP component: split_projection."""
