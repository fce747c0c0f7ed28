"""Training app for the ensemble members and the router: sampler, augmentation, datasets, the DDP trainer."""
