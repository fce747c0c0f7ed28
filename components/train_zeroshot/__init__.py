"""KFP component: train_zeroshot."""
