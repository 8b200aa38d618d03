"""MLflow in one place: runs and their tags (``runs``), the model registry
(``registry``), the pyfunc model logged as code (``pyfunc``)."""
