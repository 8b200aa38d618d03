"""vadclip: weakly supervised video anomaly detection (VadCLIP) as a Ray batch system."""
from .config import LabelError, VadConfig, tiny_config
from .model import VadCLIP, VadOutput, build_model, score_video

__all__ = ["VadConfig", "LabelError", "tiny_config", "VadCLIP", "VadOutput", "build_model", "score_video"]
__version__ = "0.1.0"
