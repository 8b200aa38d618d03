"""Oracles and fixtures for the tests and benchmarks: a per-sample and an
official-code re-implementation of the model (``reference``), synthetic feature sets
(``synthetic``).  No production module imports this package."""
