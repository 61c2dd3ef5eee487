"""Layer 2, fitting: the training loop and its tasks, per-net fitting for the bundle,
pretraining of the encoders, the training inputs, and the feature caches' files."""
