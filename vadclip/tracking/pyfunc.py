"""The MLflow model of a VadCLIP detector, logged as code (MLflow "models from code").

Loading a registered model runs this file — which imports the installed ``vadclip``
package — and reads the model's checkpoint artifact with ``torch.load(weights_only=True)``:
nothing is unpickled, so loading a model shared by another team runs no code of theirs.
"""
from mlflow.models import set_model

from vadclip.tracking.registry import VadCLIPPyfunc

set_model(VadCLIPPyfunc())
