"""What every store with one open connection shares: open/close as a context manager, and a
clear error when used closed."""

from __future__ import annotations

from types import TracebackType
from typing import Any, Self

from workbench.store.exceptions import StoreClosedError

__all__ = ["ConnectionStore"]


class ConnectionStore:
    """Base for stores holding one connection in ``self._con`` (subclasses implement ``open``)."""

    _con: Any = None

    def open(self) -> Self:  # pragma: no cover - every subclass overrides it
        raise NotImplementedError

    def close(self) -> None:
        """Close the connection (idempotent)."""
        if self._con is not None:
            self._con.close()
            self._con = None

    def __enter__(self) -> Self:
        return self.open()

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()

    def _open_connection(self) -> Any:
        """The open connection, or a :class:`StoreClosedError` that says how to open it."""
        if self._con is None:
            msg = f"{self!r} is not open. Call open() or use it as a context manager."
            raise StoreClosedError(msg)
        return self._con
