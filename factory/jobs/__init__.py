"""Layer 4, one module per job (``jobs/<name>.py`` is its command line): label, train,
tune, distill, predict, ablate, and the label job's embedded demo."""
