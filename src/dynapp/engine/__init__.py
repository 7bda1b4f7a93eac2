"""The training engine: the loop (``train``), evaluation, DDP helpers, checkpoints, logs, and
the one builder that turns a ``RunConfig`` into a run (``run``)."""
