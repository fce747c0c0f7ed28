"""KFP component: validate_data."""
