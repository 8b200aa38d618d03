"""The HTML report of a scoring run (``html``)."""
