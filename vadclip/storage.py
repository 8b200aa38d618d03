"""User paths.  Ray tasks, actors and Train workers do not run in the driver's
working directory (under ``ray job submit`` not even on the driver's node), so
every local path a user gives is made absolute on the driver before it reaches
them; URIs (``scheme://…``) are passed through as they are."""
from __future__ import annotations

import os
from typing import Optional


def is_uri(path: str) -> bool:
    return "://" in str(path)


def absolute(path: Optional[str]) -> Optional[str]:
    """A local path made absolute against the driver's working directory; a URI or None as is."""
    if path is None or is_uri(path):
        return path
    return os.path.abspath(os.path.expanduser(str(path)))
