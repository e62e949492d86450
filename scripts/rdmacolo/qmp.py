# SPDX-License-Identifier: GPL-2.0-or-later
"""QMP through QEMU's own library, qemu.qmp.

qemu.qmp's QMPClient is asyncio.  The harness's programs are sequential
(start QEMUs, fault one, watch the other), so each Monitor here is a
QMPClient running in one event loop on a daemon thread, shared by every
Monitor of the process, with a synchronous face:

  mon.cmd(name, **args)     execute, in band; the return value
  mon.oob(name, **args)     execute out of band (QEMU's monitor runs it
                            even while the main loop waits for a lock a
                            stalled checkpoint holds: yank must)
  mon.events()              the events that arrived since the last call,
                            in arrival order (the loop reads them all the
                            time, not only during a command)
  mon.wait_event(name, timeout, match=None)
  mon.close()

Every command has a deadline (@timeout of the Monitor): a QEMU that does
not answer is a Hang, not a wait; a QEMU that is gone raises QemuGone
(an EOFError); a command QEMU refuses raises QmpError (a RuntimeError)
whose text is QEMU's error description.

qemu.qmp comes from the QEMU tree scripts/build-qemu unpacks
(build/qemu/src/python, or $RDMA_COLO_QEMU_SRC/python), or from an
installed qemu.qmp (Debian's python3-qemu.qmp in later releases).
"""
import asyncio
import concurrent.futures
import os
import sys
import threading
import time

from .util import TOP, Hang


def _import_qmp():
    try:
        import qemu.qmp  # noqa: F401 (installed, or already on the path)
        return qemu.qmp
    except ImportError:
        pass
    src = os.environ.get("RDMA_COLO_QEMU_SRC", os.path.join(TOP, "build/qemu/src"))
    path = os.path.join(src, "python")
    if not os.path.isdir(os.path.join(path, "qemu", "qmp")):
        raise ImportError(
            f"qemu.qmp not found: no {path}/qemu/qmp (run scripts/build-qemu, "
            f"which unpacks QEMU's tree, or set RDMA_COLO_QEMU_SRC)")
    sys.path.insert(0, path)
    import qemu.qmp
    return qemu.qmp


qmp = _import_qmp()


class QmpError(RuntimeError):
    """QEMU refused a command; str() is QEMU's description."""

    def __init__(self, command, desc, error_class=None):
        super().__init__(f"{command}: {desc}")
        self.command, self.desc, self.error_class = command, desc, error_class


class QemuGone(EOFError):
    """The monitor's connection ended (QEMU exited or was killed)."""


_loop = None
_loop_lock = threading.Lock()


def _event_loop():
    """The one event loop of the process, on a daemon thread."""
    global _loop
    with _loop_lock:
        if _loop is None:
            loop = asyncio.new_event_loop()
            threading.Thread(target=loop.run_forever, name="qmp-loop",
                             daemon=True).start()
            _loop = loop
        return _loop


def _run(coro, timeout, what):
    fut = asyncio.run_coroutine_threadsafe(coro, _event_loop())
    try:
        return fut.result(timeout)
    except concurrent.futures.TimeoutError:
        fut.cancel()
        raise Hang(f"{what}: no answer within {timeout} s") from None


class Monitor:
    """A QMP connection to one QEMU (see the module's text)."""

    def __init__(self, address, timeout=60, name=None, alive=None):
        """Connect to @address (a unix socket path or (host, port)), which
        QEMU may still be creating, for up to @timeout s; @alive, if
        given, says whether QEMU still runs (a QEMU that exited is not
        waited for)."""
        self.address, self.timeout = address, timeout
        self.name = name or str(address)
        self._client = _run(self._make_client(), timeout, f"{self.name}: QMP")
        deadline = time.monotonic() + timeout
        while True:
            try:
                _run(self._client.connect(address), timeout,
                     f"{self.name}: QMP connect")
                break
            except qmp.ConnectError as e:
                if alive is not None and not alive():
                    raise QemuGone(f"{self.name}: QEMU exited before its "
                                   f"monitor answered ({e})") from None
                if time.monotonic() > deadline:
                    raise Hang(f"{self.name}: no QMP monitor at {address} "
                               f"within {timeout} s ({e})") from None
                time.sleep(0.1)
        greeting = self._client.greeting
        self.oob_capable = "oob" in greeting.QMP.capabilities

    async def _make_client(self):
        # Created inside the loop: its queues belong to it.
        return qmp.QMPClient(self.name)

    def _execute(self, command, args, oob):
        if oob and not self.oob_capable:
            raise QmpError(command, "this monitor has no out-of-band support")
        try:
            return _run(self._client.execute(command, args or None, oob=oob),
                        self.timeout, f"{self.name}: {command}")
        except qmp.ExecuteError as e:
            raise QmpError(command, str(e), e.error_class) from None
        except (qmp.ExecInterruptedError, qmp.StateError, EOFError,
                ConnectionError) as e:
            raise QemuGone(f"{self.name}: {command}: the monitor connection "
                           f"ended ({e})") from None

    def cmd(self, command, **args):
        return self._execute(command, args, False)

    def oob(self, command, **args):
        return self._execute(command, args, True)

    def events(self):
        """Every event received since the last call (or wait_event), in
        arrival order, as dicts."""
        async def drain():
            return [dict(e) for e in self._client.events.clear()]
        return _run(drain(), self.timeout, f"{self.name}: events")

    def wait_event(self, name, timeout, match=None):
        """The first event @name (for which @match(event) holds) among those
        not yet taken; events before it are dropped.  Hang after @timeout."""
        async def wait():
            while True:
                e = dict(await self._client.events.get())
                if e["event"] == name and (match is None or match(e)):
                    return e
        return _run(wait(), timeout, f"{self.name}: event {name}")

    def close(self):
        try:
            _run(self._client.disconnect(), 10, f"{self.name}: disconnect")
        except (Hang, qmp.QMPError, OSError, EOFError):
            pass


def event_time(ev):
    """An event's timestamp (QEMU's clock), in seconds."""
    return ev["timestamp"]["seconds"] + ev["timestamp"]["microseconds"] / 1e6
