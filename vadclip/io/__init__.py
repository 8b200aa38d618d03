"""Where data lives: paths and URIs (pyarrow.fs), committed Parquet part files and
resume, feature sets, ground truth, video ids, provenance.  Never imports torch, Ray,
MLflow or open_clip (checked in CI)."""
