# SPDX-License-Identifier: GPL-2.0-or-later
"""One QEMU process of the harness, started the same way by every program.

    q = Qemu(binary, "primary", work, sockdir, disk=sector, extra=["-S"])
    q.cmd("cont"); q.mon.events(); q.signal(signal.SIGSTOP); q.close()

Every QEMU: TCG, machine pc, 150 MiB, no default devices, its guest on a
raw IDE disk (snapshot=on), serial output in WORK/NAME.serial, stderr in
WORK/NAME.stderr, the command line in WORK/NAME.cmdline, thread names on
(-name debug-threads=on: the checks read them), and its QMP monitor on a
unix socket in SOCKDIR (which must be a local file system: the micro-VM's
9p shares hold no sockets).
"""
import os
import signal
import subprocess

from .guest import count_b
from .qmp import Monitor


class Qemu:
    def __init__(self, binary, name, work, sockdir, *, disk=None,
                 memory="150M", extra=(), trace=(), log=None, secrets=(),
                 qmp_timeout=60, node=None):
        """@trace: trace event patterns; @log: -D file (else traces go to
        stderr); @secrets: (id, file) secret objects; @node: the fabric
        node it runs on (fabric.Node; None: this process's)."""
        self.name, self.work, self.node = name, work, node
        self.serial = f"{work}/{name}.serial"
        self.stderr_path = f"{work}/{name}.stderr"
        self.qmp_path = f"{sockdir}/{name}.qmp"
        cmd = [binary, "-name", f"{name},debug-threads=on", "-accel", "tcg",
               "-machine", "pc", "-m", memory, "-display", "none",
               "-nodefaults",
               "-qmp", f"unix:{self.qmp_path},server=on,wait=off",
               "-serial", f"file:{self.serial}"]
        if disk:
            cmd += ["-drive", f"file={disk},format=raw,if=ide,snapshot=on"]
        for sid, path in secrets:
            cmd += ["-object", f"secret,id={sid},file={path}"]
        if log:
            cmd += ["-D", log]
        for ev in trace:
            cmd += ["-trace", ev]
        cmd += list(extra)
        if node is not None:
            cmd = node.wrap(cmd)
        with open(f"{work}/{name}.cmdline", "w") as f:
            print(" ".join(cmd), file=f)
        with open(self.stderr_path, "w") as err:
            self.proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL,
                                         stderr=err)
        self.pid = self.proc.pid
        try:
            self.mon = Monitor(self.qmp_path, qmp_timeout, name=name,
                               alive=lambda: self.proc.poll() is None)
        except BaseException:
            self.close()
            raise

    # --- QMP
    def cmd(self, command, **args):
        return self.mon.cmd(command, **args)

    def oob(self, command, **args):
        return self.mon.oob(command, **args)

    # --- the process
    def alive(self):
        return self.proc.poll() is None

    def signal(self, sig):
        self.proc.send_signal(sig)

    def kill(self):
        """SIGKILL (the host died) and reap."""
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait()

    def close(self):
        """End the process whatever its state (a stopped one too)."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGCONT)
            self.proc.kill()
        self.proc.wait()
        if hasattr(self, "mon"):
            self.mon.close()

    def passes(self):
        """The guest's progress: 'B's on the serial port."""
        return count_b(self.serial)

    def stderr(self, tail=600):
        try:
            return open(self.stderr_path).read()[-tail:]
        except OSError:
            return ""

    def threads(self):
        names = []
        for t in os.listdir(f"/proc/{self.pid}/task"):
            try:
                names.append(open(f"/proc/{self.pid}/task/{t}/comm").read().strip())
            except OSError:
                pass
        return names

    def fds(self):
        """(all open fds, those on RDMA device files)."""
        n, rdma = 0, 0
        for fd in os.listdir(f"/proc/{self.pid}/fd"):
            try:
                target = os.readlink(f"/proc/{self.pid}/fd/{fd}")
            except OSError:
                continue
            n += 1
            rdma += target.startswith("/dev/infiniband/")
        return n, rdma
