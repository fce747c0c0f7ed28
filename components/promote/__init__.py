"""KFP component: promote."""
