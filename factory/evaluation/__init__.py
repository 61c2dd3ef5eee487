"""Layer 2, looking at results: scoring maps against ground truth (the STAViS protocol
over the metrics of ``factory.method.metrics``) and the preview pictures. Parallel
scoring takes a mapper from the caller; this layer does not import Ray's."""
