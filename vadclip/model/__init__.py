"""The detector: ``VadConfig`` and the presets (``config``), the network — LGT-Adapter,
C- and A-branch (``network``) — its losses and checkpoints.  Never imports Ray or MLflow."""
