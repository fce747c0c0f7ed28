"""KFP component: preprocess."""
