# SPDX-License-Identifier: GPL-2.0-or-later
"""cluster: a two-node Pacemaker cluster runs the COLO pair, nodes fail and
come back (scripts/cluster; docs/testing.md, "A two-node cluster").

Runs under scripts/with-rxe --topology pair.  Node A and node B of the
pair are the cluster's node1 and node2 (scripts/cluster-node boots one:
its own /etc, /var, /run, corosync and pacemakerd).  The cluster is
configured as docs/user-guide.md's "Pacemaker" recipe says, taken from the
guide itself: its corosync.conf on both nodes, its pcs commands on node1,
with the test's addresses, QEMU and guest put into them and the fence
devices replaced by fence_rxe_pair (tests/cluster), whose "BMC" is the
power controller here: it powers a node off with rxe-pair poweroff and
on again by booting it.

Each fault, on a pair replicating in COLO:
  kill-qemu           the primary's QEMU SIGKILLed (the node stays up)
  poweroff-primary    the primary's node powered off
  poweroff-secondary  the secondary's node powered off
  partition           the link between the nodes cut (both stay up:
                      fencing decides which one runs the VM)
and then, without an operator: the VM runs on the survivor (a promoted
instance), a fenced node is powered on again by its fence device's reboot,
rejoins, its instance starts as a secondary and the promoted one
replicates to it.  Oracles: at most one instance runs the VM at any
moment (checked from both nodes' QMP all along), the survivor's guest
memory is one consistent state, each node has at most one QEMU, and at the
end no QEMU and no memory registration is left.
"""
import argparse
import os
import shlex
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time

from .fabric import RXE_PAIR, Fabric, qemu_paths, rxe_pair
from .colo import memory_problems
from .guest import bootsector, count_b
from .qmp import Monitor, QemuGone, QmpError
from .util import TOP, Hang, die, median, wait_until

GUIDE = os.path.join(TOP, "docs", "user-guide.md")
NODE_INIT = os.path.join(TOP, "scripts", "cluster-node")
NAMES = {"a": "node1", "b": "node2"}
# The guide's example addresses of node1 and node2.
GUIDE_ADDR = {"a": "10.1.0.1", "b": "10.1.0.2"}
RESOURCE = "colo"
# Where the agent keeps its QMP socket and the guest's serial output, in
# a node's /run (the agent's default state_dir for the resource).
STATE = f"/run/rdma-colo/{RESOURCE}"
SERIAL = "/run/rdma-colo/guest.serial"
FAULTS = ("kill-qemu", "poweroff-primary", "poweroff-secondary", "partition")


def log(msg):
    print(f"cluster: {msg}", flush=True)


class Failure(Exception):
    """An oracle's verdict against the cluster."""


# --- The user guide's recipe ---------------------------------------------

def guide_block(first_line):
    """The indented block of the user guide whose first line is
    @first_line (stripped), without its indentation."""
    lines, indent = [], None
    for line in open(GUIDE):
        line = line.rstrip("\n")
        if indent is None:
            if line.strip() == first_line and line.startswith("    "):
                indent = len(line) - len(line.lstrip())
            else:
                continue
        if line.strip() and len(line) - len(line.lstrip()) < indent:
            break
        lines.append(line[indent:])
    while lines and not lines[-1]:
        lines.pop()
    if not lines:
        raise Failure(f"docs/user-guide.md has no block starting '{first_line}'")
    return lines


def guide_corosync_conf(addr):
    """The guide's corosync.conf with the nodes' addresses (@addr[a|b])."""
    text = "\n".join(guide_block("totem {")) + "\n"
    for n in "ab":
        if GUIDE_ADDR[n] not in text:
            raise Failure(f"the guide's corosync.conf has no {GUIDE_ADDR[n]}")
        text = text.replace(GUIDE_ADDR[n], addr[n])
    return text


def shell_commands(lines):
    """The commands of a block of shell lines (with \\ continuations), each
    as an argv."""
    return [shlex.split(c) for c in
            "\n".join(lines).replace("\\\n", " ").splitlines() if c.strip()]


def guide_pcs_commands():
    """The guide's pcs commands: fencing, then the resource."""
    fencing = guide_block(
        "pcs property set stonith-enabled=true priority-fencing-delay=10s")
    create = next(line.strip() for line in open(GUIDE)
                  if line.lstrip().startswith("pcs resource create ")
                  and line.startswith("    "))
    return shell_commands(fencing) + shell_commands(guide_block(create))


def test_pcs_commands(addr, params):
    """The guide's pcs commands as this test runs them: its fence devices
    (fence_ipmilan, one per node) replaced by one fence_rxe_pair device,
    and in 'pcs resource create' the test's addresses and the parameters
    @params (the QEMU, the guest) in place of the example's."""
    out, fenced = [], False
    for argv in guide_pcs_commands():
        if argv[:3] == ["pcs", "stonith", "create"]:
            if not fenced:
                out.append(["pcs", "stonith", "create", "fence-pair", "fence_rxe_pair",
                            "pcmk_host_map=node1:a;node2:b",
                            "pcmk_host_list=node1 node2"])
                fenced = True
            continue
        if argv[:3] == ["pcs", "resource", "create"]:
            argv = list(argv)
            seen = set()
            for i, a in enumerate(argv):
                k = a.split("=", 1)[0]
                if "=" in a and k in params:
                    argv[i] = f"{k}={params[k]}"
                    seen.add(k)
                if a.startswith("nodes="):
                    v = a
                    for n in "ab":
                        v = v.replace(GUIDE_ADDR[n], addr[n])
                    argv[i] = v
            # Parameters the example leaves at their defaults go before
            # the meta attributes.
            at = argv.index("meta") if "meta" in argv else argv.index("promotable")
            argv[at:at] = [f"{k}={v}" for k, v in params.items() if k not in seen]
        out.append(argv)
    if not fenced:
        raise Failure("the guide's recipe creates no fence device")
    return out


# --- The nodes and their power -------------------------------------------

class PowerController(threading.Thread):
    """The nodes' "BMC": a unix socket in the shared directory, on which
    fence_rxe_pair asks for "off N", "on N", "status N" or "ping"."""

    def __init__(self, cluster):
        super().__init__(daemon=True)
        self.cluster = cluster
        self.path = os.path.join(cluster.shared, "ctl")
        self.sock = socket.socket(socket.AF_UNIX)
        self.sock.bind(self.path)
        self.sock.listen(8)
        self.lock = threading.Lock()
        self.events = []    # (monotonic time, request)

    def run(self):
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            threading.Thread(target=self.serve, args=(conn,), daemon=True).start()

    def serve(self, conn):
        with conn:
            req = conn.makefile().readline().split()
            try:
                reply = self.handle(req)
            except Exception as e:  # the agent must hear of it
                reply = f"error {e}"
            conn.sendall((reply + "\n").encode())

    def handle(self, req):
        if req == ["ping"]:
            return "ok"
        if len(req) != 2 or req[1] not in ("a", "b"):
            return f"error bad request {' '.join(req)!r}"
        action, n = req
        with self.lock:
            if action == "status":
                return "on" if self.cluster.powered(n) else "off"
            self.events.append((time.monotonic(), f"{action} {n}"))
            log(f"fence device: {action} node {NAMES[n]}")
            if action == "off":
                self.cluster.poweroff(n)
            elif action == "on":
                self.cluster.boot(n)
            else:
                return f"error unknown action {action}"
        return "ok"

    def close(self):
        self.sock.close()


class Cluster:
    def __init__(self, fabric, qemu, qemu_src, work):
        self.fabric, self.qemu, self.work = fabric, qemu, work
        self.shared = os.path.join(work, "shared")
        os.makedirs(self.shared)
        os.chmod(work, 0o755)
        self.addr = {n: fabric.node(n).addr for n in "ab"}
        self.procs = {}
        open(os.path.join(self.shared, "bootsect"), "wb").write(bootsector(qemu_src))
        self.power = PowerController(self)
        self.power.start()
        authkey = os.urandom(256)
        token = os.urandom(24).hex().encode()
        conf = guide_corosync_conf(self.addr)
        for n in "ab":
            cdir = os.path.join(work, f"node-{n}", "config")
            os.makedirs(cdir)
            open(os.path.join(cdir, "corosync.conf"), "w").write(conf)
            open(os.path.join(cdir, "authkey"), "wb").write(authkey)
            open(os.path.join(cdir, "token"), "wb").write(token)

    # Power.
    def powered(self, n):
        return not os.path.exists(f"/run/rdma-colo-pair/off-{n}")

    def poweroff(self, n):
        rxe_pair("poweroff", n)
        p = self.procs.pop(n, None)
        if p:
            p.wait()
        try:
            os.unlink(self.pidfile(n))
        except FileNotFoundError:
            pass

    def boot(self, n):
        """Power node @n on (if off) and boot it, unless it runs."""
        if self.powered(n) and self.init_pid(n):
            return
        rxe_pair("poweron", n)
        logf = open(os.path.join(self.work, f"node-{n}", "boot.log"), "a")
        # Its own pid namespace too: Pacemaker's daemons look for each
        # other in /proc.
        p = self.procs[n] = subprocess.Popen(
            [RXE_PAIR, "run", n, "--", "unshare", "-m", "-u", "-p", "-f",
             "--mount-proc", "--propagation", "private", NODE_INIT, n, self.work],
            stdout=logf, stderr=subprocess.STDOUT, start_new_session=True)

        def init():
            # unshare's child, the node's pid 1 (its pid out here).
            if not os.path.exists(self.pidfile(n)):
                return None
            try:
                kids = open(f"/proc/{p.pid}/task/{p.pid}/children").read().split()
            except OSError:
                return None
            if kids:
                open(self.pidfile(n), "w").write(kids[0])
            return bool(kids)
        try:
            wait_until(f"node {NAMES[n]} booting", init, 30, 0.1)
        except Hang as e:
            logf.flush()
            raise Failure(f"{e}: " + open(logf.name, errors="replace").read()[-1500:])

    def pidfile(self, n):
        return os.path.join(self.work, f"node-{n}", "pid")

    def init_pid(self, n):
        """The pid of node @n's init (its mount namespace), or None."""
        try:
            pid = int(open(self.pidfile(n)).read())
            os.kill(pid, 0)
            return pid
        except (OSError, ValueError):
            return None

    def root(self, n):
        """Node @n's file system as its processes see it."""
        pid = self.init_pid(n)
        return f"/proc/{pid}/root" if pid else None

    def on_node(self, n, argv, check=True, timeout=120):
        """@argv run in node @n's namespaces (an administrator's shell
        there); its output."""
        pid = self.init_pid(n)
        if not pid:
            raise Failure(f"node {NAMES[n]} is not running")
        p = subprocess.run(["nsenter", "-t", str(pid), "-m", "-u", "-p", "-r", "-w", "--"] + argv,
                           capture_output=True, text=True, timeout=timeout)
        if check and p.returncode:
            raise Failure(f"on {NAMES[n]}: {' '.join(argv)}: exit {p.returncode}: "
                          f"{(p.stderr or p.stdout).strip()[-800:]}")
        return p.stdout if check else p.stdout + p.stderr

    def qemus(self, n):
        """The pids of QEMUs among node @n's processes."""
        out = []
        try:
            procs = open(f"/sys/fs/cgroup/rdma-colo-node-{n}/cgroup.procs").read().split()
        except OSError:
            return out
        for pid in procs:
            try:
                if open(f"/proc/{pid}/comm").read().startswith("qemu-system"):
                    out.append(int(pid))
            except OSError:
                continue
        return out

    # QMP, briefly: QEMU serves one monitor client at a time, and the
    # agent's monitor action needs it every few seconds.
    def qmp(self, n, timeout=10):
        root = self.root(n)
        if not root:
            return None
        path = f"{root}{STATE}/qmp.sock"
        if not os.path.exists(path) or not self.qemus(n):
            return None
        try:
            return Monitor(path, timeout, name=NAMES[n], alive=lambda: bool(self.qemus(n)))
        except (Hang, QemuGone, OSError):
            return None

    def state(self, n):
        """(pid, status, COLO mode) of node @n's QEMU, or None."""
        q = self.qmp(n)
        if q is None:
            return None
        try:
            pids = self.qemus(n)
            return (pids[0] if pids else None, q.cmd("query-status")["status"],
                    q.cmd("query-colo-status")["mode"])
        except (QemuGone, QmpError, Hang):
            return None
        finally:
            q.close()

    def serial(self, n):
        root = self.root(n)
        return f"{root}{SERIAL}" if root else None


def runs_vm(st):
    """Whether a QEMU state runs the VM as its own (a promoted instance:
    not a secondary, not waiting for an incoming migration)."""
    return (st is not None and st[2] != "secondary"
            and st[1] not in ("inmigrate", "prelaunch", "shutdown"))


class SplitBrainWatch(threading.Thread):
    """At most one node runs the VM, checked all along from both nodes'
    QMP.  Both sampled running it is a split brain only if the first one
    still runs it, the same QEMU, after the second was sampled (a QEMU that
    runs the VM stops doing so only by dying, so it ran it throughout)."""

    def __init__(self, cluster):
        super().__init__(daemon=True)
        self.c = cluster
        self.stop = threading.Event()
        self.samples = 0
        self.violations = []

    def run(self):
        while not self.stop.wait(0.5):
            a = self.c.state("a")
            b = self.c.state("b")
            self.samples += 1
            if runs_vm(a) and runs_vm(b):
                a2 = self.c.state("a")
                if runs_vm(a2) and a2[0] == a[0]:
                    self.violations.append(f"{time.strftime('%T')}: node1 {a}, node2 {b}")
                    log(f"SPLIT BRAIN: node1 {a}, node2 {b}")


# --- The scenarios -------------------------------------------------------

class Run:
    def __init__(self, c, timeout):
        self.c, self.timeout = c, timeout
        self.results = []   # (fault, to running s, to replicated s)

    def crm_mon(self, n="a"):
        for m in (n, "b" if n == "a" else "a"):
            if self.c.init_pid(m):
                return self.c.on_node(m, ["crm_mon", "-1", "-r"], check=False)
        return "(no node up)"

    def replicating(self):
        """(primary, secondary) once the pair replicates in COLO."""
        s = {n: self.c.state(n) for n in "ab"}
        for p, q in (("a", "b"), ("b", "a")):
            if (s[p] and s[p][2] == "primary" and s[p][1] in ("running", "colo")
                    and s[q] and s[q][2] == "secondary"):
                return p, q
        return None

    def wait_replicating(self, what):
        try:
            return wait_until(what, self.replicating, self.timeout, 0.5)
        except Hang as e:
            raise Failure(f"{e}\n{self.crm_mon()}")

    def wait_checkpoints(self, p, n=2):
        """@n checkpoints on the primary @p (its STOP-RESUME pairs)."""
        q = self.c.qmp(p)
        if q is None:
            raise Failure(f"no QMP on {NAMES[p]}")
        try:
            got, deadline = 0, time.monotonic() + 60
            while got < n and time.monotonic() < deadline:
                got += sum(1 for e in q.events() if e["event"] == "RESUME")
                time.sleep(0.1)
        finally:
            q.close()
        if got < n:
            raise Failure(f"{NAMES[p]}: {got} checkpoints in 60 s")

    def check_survivor(self, n):
        """The VM runs on node @n, its guest progresses and its memory is
        one consistent state."""
        serial = self.c.serial(n)
        before = count_b(serial)
        try:
            wait_until(f"the guest on {NAMES[n]} making progress",
                       lambda: count_b(serial) > before, 60, 0.2)
        except Hang as e:
            raise Failure(str(e))
        q = self.c.qmp(n)
        if q is None:
            raise Failure(f"no QMP on {NAMES[n]}")
        try:
            bad = memory_problems(q, os.path.join(self.c.shared, f"survivor-{n}.mem"),
                                  f"/run/rdma-colo-cluster/survivor-{n}.mem")
        finally:
            q.close()
        if bad:
            raise Failure(f"the guest on {NAMES[n]} is not one consistent state: "
                          f"{len(bad)} pages, first {bad[:3]}")

    def fault(self, kind):
        p, s = self.wait_replicating("the pair replicating")
        self.wait_checkpoints(p)
        victim = {"kill-qemu": p, "poweroff-primary": p,
                  "poweroff-secondary": s, "partition": None}[kind]
        log(f"{kind}: primary {NAMES[p]}, secondary {NAMES[s]}"
            + (f"; the fault hits {NAMES[victim]}" if victim else ""))
        fences = len(self.c.power.events)
        t0 = time.monotonic()
        if kind == "kill-qemu":
            for pid in self.c.qemus(p):
                os.kill(pid, signal.SIGKILL)
        elif kind.startswith("poweroff"):
            with self.c.power.lock:
                self.c.poweroff(victim)
        else:
            self.c.fabric.link("cut")

        # The VM runs alone on the survivor: a former secondary after
        # failover, a former primary that left COLO.
        def running_alone():
            for n in ("ab" if victim is None else ("b" if victim == "a" else "a")):
                st = self.c.state(n)
                if st and st[2] == "none" and st[1] == "running":
                    return n
            return None
        try:
            survivor = wait_until("the VM running on a survivor", running_alone,
                                  self.timeout, 0.3)
        except Hang as e:
            raise Failure(f"{kind}: {e}\n{self.crm_mon()}")
        t_run = time.monotonic() - t0
        other = "b" if survivor == "a" else "a"
        log(f"{kind}: the VM runs on {NAMES[survivor]} {t_run:.1f} s after the fault")
        if kind == "partition":
            # Fencing decided: the loser was powered off (and is being
            # powered on again); the link heals for its return.
            try:
                wait_until("the other node fenced",
                           lambda: any(e.startswith("off") for _, e in
                                       self.c.power.events[fences:]), self.timeout, 0.3)
            except Hang:
                raise Failure(f"partition: {NAMES[other]} was never fenced, yet "
                              f"{NAMES[survivor]} runs the VM")
            self.c.fabric.link("heal")
            log(f"partition: fencing kept {NAMES[survivor]} "
                f"({'the primary' if survivor == p else 'the secondary'}); the link heals")
        self.check_survivor(survivor)
        log(f"{kind}: the guest on {NAMES[survivor]} progresses and its memory "
            f"is one consistent state")
        if kind.startswith("poweroff"):
            # A powered-off node comes back by its fence device's reboot.
            if not any(e == f"on {victim}" for _, e in self.c.power.events[fences:]):
                try:
                    wait_until(f"{NAMES[victim]} fenced and powered on again",
                               lambda: any(e == f"on {victim}" for _, e in
                                           self.c.power.events[fences:]),
                               self.timeout, 0.3)
                except Hang:
                    raise Failure(f"{NAMES[victim]} was not fenced")
        p2, s2 = self.wait_replicating("replication resuming")
        t_rep = time.monotonic() - t0
        if p2 != survivor:
            raise Failure(f"replication resumed from {NAMES[p2]}, not from the "
                          f"survivor {NAMES[survivor]}")
        fenced = [e for _, e in self.c.power.events[fences:]]
        log(f"{kind}: replicating again, {NAMES[p2]} to {NAMES[s2]}, {t_rep:.1f} s "
            f"after the fault (fence device: {', '.join(fenced) or 'not used'})")
        for n in "ab":
            if len(self.c.qemus(n)) > 1:
                raise Failure(f"{NAMES[n]} runs {len(self.c.qemus(n))} QEMUs")
        self.results.append((kind, t_run, t_rep))


def main():
    ap = argparse.ArgumentParser(
        prog="cluster", description="A two-node Pacemaker cluster runs the COLO "
        "pair over rdma-colo; nodes fail and come back (docs/testing.md).")
    ap.add_argument("--faults", default=",".join(FAULTS),
                    help=f"comma-separated, in order (default: {','.join(FAULTS)})")
    ap.add_argument("--cycles", type=int, default=1,
                    help="run the list of faults this many times in a row")
    ap.add_argument("--timeout", type=float, default=180,
                    help="seconds each step may take (default: 180)")
    ap.add_argument("--qemu-build", default=os.environ.get(
        "RDMA_COLO_QEMU_BUILD", f"{TOP}/build/qemu/build"))
    ap.add_argument("--logs", default=os.path.join(os.getcwd(), "cluster-logs"),
                    help="where the nodes' logs go (default: ./cluster-logs)")
    args = ap.parse_args()
    faults = args.faults.split(",")
    for f in faults:
        if f not in FAULTS:
            die(f"no fault '{f}' ({', '.join(FAULTS)})", "cluster")
    fabric = Fabric()
    if fabric.topology != "pair":
        die("needs the pair topology: scripts/with-rxe --topology pair -- scripts/cluster",
            "cluster")
    for tool in ("corosync", "pacemakerd", "pcs", "crm_mon", "nsenter", "unshare"):
        if not shutil.which(tool):
            die(f"{tool} missing: scripts/bootstrap pacemaker", "cluster")
    qemu, qemu_src = qemu_paths(args.qemu_build)
    log(fabric.describe())
    work = tempfile.mkdtemp(prefix="cluster-")
    c = Cluster(fabric, qemu, qemu_src, work)
    watch = SplitBrainWatch(c)
    run = Run(c, args.timeout)
    ok = False
    try:
        t0 = time.monotonic()
        for n in "ab":
            with c.power.lock:
                c.boot(n)

        def members():
            out = c.on_node("a", ["crm_mon", "-1"], check=False)
            return "Online: [ node1 node2 ]" in out
        try:
            wait_until("both nodes online in the cluster", members, 180, 1)
        except Hang as e:
            raise Failure(f"{e}\n{run.crm_mon()}")
        log(f"corosync and pacemaker on node1 and node2: both online "
            f"({time.monotonic() - t0:.0f} s)")
        params = {
            "qemu": qemu,
            "vm_args": "-accel tcg -machine pc -m 150M -display none -nodefaults "
                       "-drive file=/run/rdma-colo-cluster/bootsect,format=raw,if=ide,snapshot=on "
                       f"-serial file:{SERIAL}",
            # The test guest rewrites all its memory all the time: the
            # initial copy converges only with room.
            "downtime_limit": "30000", "max_bandwidth": "1000000000",
        }
        for argv in test_pcs_commands(c.addr, params):
            c.on_node("a", argv)
            shown = " ".join(shlex.quote(a) for a in argv)
            log(f"node1# {shown[:150]}{'...' if len(shown) > 150 else ''}")
        t1 = time.monotonic()
        p, s = run.wait_replicating("the first replication")
        log(f"the cluster started the VM on {NAMES[p]} and replicates it to "
            f"{NAMES[s]} ({time.monotonic() - t1:.0f} s)")
        watch.start()
        for cycle in range(args.cycles):
            for f in faults:
                run.fault(f)
            if args.cycles > 1:
                log(f"cycle {cycle + 1} of {args.cycles} done")
        watch.stop.set()
        watch.join()
        if watch.violations:
            raise Failure(f"split brain: {'; '.join(watch.violations)}")
        log(f"split brain: never ({watch.samples} samples of both nodes' QMP)")
        # The end: the resource stopped, nothing left.
        c.on_node("a", ["pcs", "resource", "disable", f"{RESOURCE}-clone", "--wait=120"])
        left = {n: c.qemus(n) for n in "ab"}
        mrs = subprocess.run(["rdma", "resource", "show", "mr"], capture_output=True,
                             text=True).stdout.strip()
        if any(left.values()) or mrs:
            raise Failure(f"left over after the resource stopped: QEMUs {left}, "
                          f"registrations {mrs!r}")
        log("the resource disabled: no QEMU on either node, no memory registration left")
        table(run.results)
        ok = True
    except Failure as e:
        log(f"FAIL: {e}")
    finally:
        watch.stop.set()
        keep_logs(c, args.logs)
        for n in "ab":
            with c.power.lock:
                if c.powered(n):
                    c.poweroff(n)
                rxe_pair("poweron", n)
        c.power.close()
        try:
            c.fabric.link("heal")
        except RuntimeError:
            pass
        shutil.rmtree(work, ignore_errors=True)
    return 0 if ok else 1


def keep_logs(c, dest):
    """Each node's logs (Pacemaker's, corosync's, the agent's QEMU's) in
    @dest: the work directory is in the micro-VM's /tmp, gone with it."""
    shutil.rmtree(dest, ignore_errors=True)
    for n in "ab":
        d = os.path.join(dest, NAMES[n])
        os.makedirs(d, exist_ok=True)
        for src in ("var-u/log/pacemaker/pacemaker.log", "var-u/log/cluster/corosync.log",
                    f"run-u/rdma-colo/{RESOURCE}/qemu.log", "boot.log"):
            path = os.path.join(c.work, f"node-{n}", src)
            if os.path.exists(path):
                shutil.copy(path, d)
    log(f"the nodes' logs: {dest}")


def table(results):
    print("\n| fault | runs | to a running VM p50 / max | to replicated again p50 / max |")
    print("| --- | --- | --- | --- |")
    for kind in FAULTS:
        r = [x for x in results if x[0] == kind]
        if not r:
            continue
        run_s = [x[1] for x in r]
        rep_s = [x[2] for x in r]
        print(f"| {kind} | {len(r)} | {median(run_s):.1f} / {max(run_s):.1f} s | "
              f"{median(rep_s):.1f} / {max(rep_s):.1f} s |")
    print(flush=True)
