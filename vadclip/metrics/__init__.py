"""Frame AUC/AP, abnormal-only AUC, mAP@IoU (``measures``); evaluating a model on a
feature set (``evaluate``); comparing two feature sets (``compare``).  Never imports Ray
or MLflow."""
