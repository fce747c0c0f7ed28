"""KFP component: fit_ensemble."""
