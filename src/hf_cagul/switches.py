"""Per-call switches of `hf_cagul.CagulModel`: module-level context variables that hold one
value per wrapped model, so concurrent calls from several threads never see each other's
state, and two wrapped models never see each other's."""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from contextvars import ContextVar
from types import MappingProxyType
from typing import Generic, TypeVar

__all__ = ["PerModel"]

_T = TypeVar("_T")


class PerModel(Generic[_T]):
    """A module-level context variable holding one value per `CagulModel` (by identity)."""

    def __init__(self, name: str, default: _T) -> None:
        self._var: ContextVar[Mapping[int, _T]] = ContextVar(name, default=MappingProxyType({}))
        self._default = default

    def get(self, owner: object) -> _T:
        """The value for ``owner`` in the current context (the default when none is set)."""
        return self._var.get().get(id(owner), self._default)

    def put(self, owner: object, value: _T) -> None:
        """Set ``owner``'s value in the current context until it is put again."""
        values = self._var.get()
        if values.get(id(owner), self._default) is not value:  # decode steps put None on None
            self._var.set(MappingProxyType({**values, id(owner): value}))

    @contextmanager
    def scoped(self, owner: object, value: _T) -> Iterator[_T]:
        """Within the block, ``owner``'s value is ``value``; then the previous one again."""
        token = self._var.set(MappingProxyType({**self._var.get(), id(owner): value}))
        try:
            yield value
        finally:
            self._var.reset(token)
