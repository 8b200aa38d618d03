"""Framework-free training: the epoch's batches, the worker's on-disk shard cache,
one optimisation step.  Ray Train adapts it in ``vadclip.jobs.train``."""
