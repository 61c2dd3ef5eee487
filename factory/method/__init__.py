"""Layer 1, the method (with ``models``): one function per equation, the losses and the
saliency metrics, frame windows and the cross-term pool, the labeler (SCAM, coarse-to-fine
SCAM, SCAM+), the students' inference, the bundle of fitted nets, and the dataset's rows.
Per-clip logic that runs without Ray; imports only ``factory.io``, ``factory.config`` and
``models``."""
