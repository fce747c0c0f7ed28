"""KFP component: train_member."""
