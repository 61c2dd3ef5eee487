"""The pseudo-fixation factory: equations, data, labeler, Ray pipelines, metrics."""
