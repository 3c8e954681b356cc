"""Errors that name the file, the object and the field path, and lose nothing."""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class ResourceError:
    source: str   # file path, or "<api>"
    obj: str      # "Service default/web", or "document 2" before the object is known
    path: str     # "spec.ports[0].port", "" for the whole object
    message: str

    def __str__(self) -> str:
        where = f"{self.path}: " if self.path else ""
        return f"{self.source}: {self.obj}: {where}{self.message}"


class ResourceInvalid(ValueError):
    def __init__(self, errors: list[ResourceError]):
        self.errors = list(errors)
        super().__init__("\n".join(str(e) for e in self.errors))
