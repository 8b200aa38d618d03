"""vadclip: weakly supervised video anomaly detection (VadCLIP) as a Ray batch system.

The modules, in the order the data flows through them:

* where data lives — ``storage`` (paths and URIs through pyarrow.fs), ``parts``
  (committed Parquet part files, resume), ``tables``, ``errors``;
* video → features — ``video`` (decord, one frame per snippet), ``clip_backbone``
  (the frozen open_clip towers), ``extract`` (the Ray Data job: decode, encode, write),
  ``features`` (the feature format, per-row views, the official importer);
* features → model — ``config`` (``VadConfig``, ``ClipSpec``, the presets as data),
  ``model`` (LGT-Adapter, C- and A-branch), ``checkpoint``, ``reference`` (per-sample
  and official re-implementations the model is tested against);
* losses and metrics — ``losses`` (MIL, MIL-Align, contrast), ``training`` (epoch
  batches, the worker's on-disk shard, one step), ``gt``, ``metrics``, ``evaluation``;
* jobs — ``train_job`` (Ray Train), ``score`` (Ray Data) and its ``report``,
  ``tracking``/``registry``/``mlflow_model`` (MLflow), ``raysetup``, ``cli``, ``demo``
  (``sample_videos``, ``synthetic`` make test data).
"""
from .config import ClipSpec, LabelError, VadConfig, tiny_config
from .model import VadCLIP, VadOutput, build_model, score_video

__all__ = ["ClipSpec", "VadConfig", "LabelError", "tiny_config", "VadCLIP", "VadOutput", "build_model", "score_video"]
__version__ = "0.1.0"
