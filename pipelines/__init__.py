"""KFP v2 pipelines: training (scheduled retraining) and promotion; compile to YAML and run locally."""
