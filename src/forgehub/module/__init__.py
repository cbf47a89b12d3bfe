"""Modules: the native contract, DEEPaaS compatibility, discovery."""

from __future__ import annotations

from forgehub.module.contract import (
    Blob,
    Cancelled,
    File,
    FilePath,
    Module,
    Stream,
    TrainContext,
    UploadedFile,
)
from forgehub.module.discovery import ModuleNotFound, discover, load, load_all
from forgehub.module.loaded import LoadedModule, ModuleError, Output

__all__ = [
    "Blob",
    "Cancelled",
    "File",
    "FilePath",
    "LoadedModule",
    "Module",
    "ModuleError",
    "ModuleNotFound",
    "Output",
    "Stream",
    "TrainContext",
    "UploadedFile",
    "discover",
    "load",
    "load_all",
]
