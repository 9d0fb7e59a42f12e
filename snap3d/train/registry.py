"""Methods by name: a method is a config dataclass plus a ``SceneModel`` class."""

from __future__ import annotations

import importlib
from dataclasses import dataclass

from snap3d.errors import Snap3dError

# Built-in methods are imported on first use so that `import snap3d` stays light.
_BUILTIN = {
    "splat": "snap3d.representations.splat",
    "lpgs": "snap3d.representations.lpgs",
    "lightslab": "snap3d.representations.lightslab",
    "splat4d": "snap3d.representations.splat4d",
}


@dataclass(frozen=True)
class MethodSpec:
    name: str
    config_cls: type
    model_cls: type
    description: str = ""


_REGISTRY: dict[str, MethodSpec] = {}


def register_method(name: str, config_cls: type, model_cls: type, description: str = "") -> None:
    """Register a method; re-registering a name replaces it (tests define their own)."""
    _REGISTRY[name] = MethodSpec(name, config_cls, model_cls, description)


def _import_builtins() -> None:
    for name, module in _BUILTIN.items():
        if name in _REGISTRY:
            continue
        try:
            importlib.import_module(module)
        except ModuleNotFoundError as e:
            if e.name != module:  # the module exists but one of its imports is missing
                raise


def get_method(name: str) -> MethodSpec:
    if name not in _REGISTRY:
        _import_builtins()
    if name not in _REGISTRY:
        raise Snap3dError(f"unknown method {name!r}; available: {', '.join(available_methods())}")
    return _REGISTRY[name]


def available_methods() -> list[str]:
    _import_builtins()
    return sorted(_REGISTRY)
