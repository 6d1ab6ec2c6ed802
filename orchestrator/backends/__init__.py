"""Isolation backends, looked up by kind; each module is imported only when it is used."""

import importlib

from ..errors import BadInput
from .base import Backend

REGISTRY = {
    "jail": "orchestrator.backends.jail:JailBackend",
    "kvm": "orchestrator.backends.kvm:KvmBackend",
}

PLANNED = ("uml", "lxc", "colo")


def backend_class(kind):
    """The class implementing `kind`, or BadInput naming the kinds this host can use."""
    target = REGISTRY.get(kind)
    if target is None:
        available = ", ".join(sorted(REGISTRY))
        if kind in PLANNED:
            message = f"backend {kind} is not available in this version of orch"
        else:
            message = f"backend {kind!r} is unknown"
        raise BadInput(message, step="validate", fix=f"use --backend {available}")
    module_name, _, class_name = target.partition(":")
    return getattr(importlib.import_module(module_name), class_name)


def get_backend(kind, config, store):
    """An instance of the backend for `kind`, bound to this configuration and state store."""
    return backend_class(kind)(config, store)


__all__ = ["Backend", "backend_class", "get_backend", "REGISTRY"]
