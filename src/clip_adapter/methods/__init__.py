"""Few-shot methods. Each module registers itself; importing this package imports them all.

A new method is one file here with a ``@register_method("name")`` class (no list to edit elsewhere).
"""
import importlib
import pkgutil

from .base import (CONFIG_NAME, WEIGHTS_NAME, FewShotMethod, NotFittedError, check_finite, check_fitted,
                   check_overrides, check_save_target, get_method, get_method_class, list_methods, read_saved_config, register_method)

for _m in pkgutil.iter_modules(__path__):
    if _m.name not in ("base", "common", "reference"):  # reference: the generated docs, imported when asked
        importlib.import_module(f"{__name__}.{_m.name}")

__all__ = ["FewShotMethod", "NotFittedError", "check_finite", "check_fitted", "check_overrides", "check_save_target", "get_method",
           "get_method_class", "list_methods", "read_saved_config", "register_method", "CONFIG_NAME", "WEIGHTS_NAME"]
