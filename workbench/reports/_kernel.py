"""The report kernel's manager: the kernel's own log is relayed to the terminal, less the shutdown's echo.

jupyter_client interrupts a kernel (SIGINT) before it asks it to shut down. When that signal lands
while ipykernel is still inside a message handler (a loaded machine makes it likelier), the kernel
logs ``KeyboardInterrupt caught in kernel.`` at ERROR, although nobody pressed Ctrl-C and the
notebook had finished. The kernel process's stderr is therefore written to a temporary file and
relayed line by line once the kernel is shut down, without that one line; anything else the kernel
says (a crash, a fatal error) still reaches the terminal.
"""

from __future__ import annotations

import contextlib
import signal
import sys
import tempfile
import threading
from collections.abc import Iterator
from typing import IO, Any, Final

from jupyter_client.manager import AsyncKernelManager

__all__ = ["ReportKernelManager", "quiet_kernels_on_interrupt", "relay_kernel_log"]

#: What ipykernel logs when the shutdown's interrupt lands in a message handler.
_SHUTDOWN_INTERRUPT_ECHO: Final = "KeyboardInterrupt caught in kernel"


def relay_kernel_log(log: bytes, out: IO[str]) -> None:
    """Write ``log`` (a kernel's stderr) to ``out``, without the shutdown interrupt's echo."""
    for line in log.decode("utf-8", "replace").splitlines(keepends=True):
        if _SHUTDOWN_INTERRUPT_ECHO not in line and line.strip():
            out.write(line)
    out.flush()


#: Set while the user's Ctrl-C is being handled: the kernels shut down then say nothing worth reading
#: (the interrupted handler's ZMQ errors), and ``workbench: interrupted`` is the whole answer.
_INTERRUPTED = threading.Event()


@contextlib.contextmanager
def quiet_kernels_on_interrupt() -> Iterator[None]:
    """Within the block, a SIGINT (Ctrl-C) also silences the relay of the kernels' logs at their shutdown.

    A no-op outside the main thread (only it can install a signal handler)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.getsignal(signal.SIGINT)

    def interrupted(signum: int, frame: Any) -> None:
        _INTERRUPTED.set()
        raise KeyboardInterrupt

    signal.signal(signal.SIGINT, interrupted)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)
        _INTERRUPTED.clear()


class ReportKernelManager(AsyncKernelManager):
    """``AsyncKernelManager`` whose kernel's stderr goes through :func:`relay_kernel_log`."""

    _kernel_log: IO[bytes] | None = None

    async def start_kernel(self, **kw: Any) -> None:  # type: ignore[override]
        """Start the kernel with its stderr in a temporary file (``kw`` as ``AsyncKernelManager``)."""
        if "stderr" not in kw:
            self._kernel_log = tempfile.TemporaryFile()  # noqa: SIM115 - closed in shutdown_kernel
            kw["stderr"] = self._kernel_log
        await super().start_kernel(**kw)

    async def shutdown_kernel(self, now: bool = False, restart: bool = False) -> None:  # type: ignore[override]
        """Shut the kernel down, then relay what it wrote to stderr."""
        try:
            await super().shutdown_kernel(now=now, restart=restart)
        finally:
            log, self._kernel_log = self._kernel_log, None
            if log is not None and _INTERRUPTED.is_set():
                log.close()
            elif log is not None:
                with log:
                    log.seek(0)
                    relay_kernel_log(log.read(), sys.stderr)
