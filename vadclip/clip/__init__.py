"""The frozen CLIP: which model (``spec``), its weights resolved once per job
(``weights``), the image and text towers (``backbone``).  open_clip is imported and the
project's model configs registered on first use."""
