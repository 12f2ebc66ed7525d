"""Old import paths kept for users of 0.1 (``clip_adapter.backbone``, ``.data``, ``.predict``, ``.grid``)."""
from __future__ import annotations

import warnings


def moved(old: str, new: str) -> None:
    """Warn once that module ``old`` moved to ``new`` (the old module re-exports what users imported from it)."""
    warnings.warn(f"{old} moved to {new}; import from there (or from clip_adapter) instead.", DeprecationWarning,
                  stacklevel=3)
