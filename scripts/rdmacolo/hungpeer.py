# SPDX-License-Identifier: GPL-2.0-or-later
"""hung-peer: a peer QEMU that hangs in a checkpoint while its process and
its rdma-colo transport live on; the other side must end COLO within the
checkpoint deadline (x-colo-checkpoint-timeout, qemu-glue/0015) and take
over.

    scripts/with-rxe --topology pair -- scripts/hung-peer
        [--victim primary|secondary|both] [--deadline-ms MS]

For each victim, a COLO pair of QEMUs over rdma-colo (migration-test's
boot sector; the primary on node A, the secondary on node B), both with
x-colo-checkpoint-timeout = --deadline-ms.  gdb attaches to the victim
before COLO starts (the attach stops the whole process for seconds while
gdb reads QEMU's symbols under TCG).  After two checkpoints, its
breakpoint is armed and holds the victim's COLO thread inside the next
checkpoint, in the device-state code it runs under QEMU's big lock:
qemu_load_device_state() on a secondary, qemu_save_device_state() on a
primary (the breakpoint's commands call sleep()).  Holding the big lock,
the victim's main loop and monitor hang too; its library threads run on
and answer keepalives, so the transport sees a live peer.  rdma-colo's
timeout= is 60 s here, so that only the checkpoint's deadline can end
the session.

The oracle, per victim:
  - the survivor reports COLO_EXIT with reason "error" one deadline after
    its VM stopped for the checkpoint (QMP timestamps of its STOP and
    COLO_EXIT events): not more than 1 s sooner (the deadline starts at the
    checkpoint's request, a moment before the stop) nor 2 s later (the
    timer runs in its main loop, under nested TCG);
  - its stderr names the cause ("x-colo-checkpoint-timeout");
  - failed over (yank, x-colo-lost-heartbeat), it runs, its guest makes
    progress, and its memory is one consistent state of the guest.
Exit status 1 if any of it fails.
"""
import argparse
import os
import shutil
import subprocess
import tempfile
import time

from . import colo, fabric
from .guest import bootsector
from .node import Qemu
from .qmp import event_time
from .util import TOP, Hang, die, wait_until, write_secret

# Where gdb holds the victim's COLO thread (under the big lock).
HOLD_AT = {"secondary": "qemu_load_device_state",
           "primary": "qemu_save_device_state"}
HOLD_S = 600          # longer than the test: the victim is killed
SLACK_S = 2.0         # the deadline timer's main loop, nested TCG


class Hold:
    """gdb on @q, attached before COLO starts (the attach stops the whole
    process while gdb reads QEMU's symbols: seconds under TCG, which must
    not fall into a checkpoint), with a breakpoint at @fn that holds the
    thread reaching it (a sleep) once @arm() was called."""

    def __init__(self, q, work, fn):
        self.marks = os.path.join(work, f"{q.name}.marks")
        self.armfile = os.path.join(work, f"{q.name}.arm")
        self.log = os.path.join(work, f"{q.name}.gdb.log")
        open(self.marks, "w").close()
        cmds = os.path.join(work, f"{q.name}.gdb")
        # Markers by 'shell', which completes before gdb's next command
        # (gdb's own output to a file is block-buffered).  QEMU's signals
        # pass through without stopping it.
        with open(cmds, "w") as f:
            f.write("set pagination off\n"
                    "set confirm off\n"
                    "handle all nostop noprint pass\n"
                    # The condition in gdb's Python: an inferior call in a
                    # condition (access()) would run while QEMU's threads
                    # come and go.
                    "python\n"
                    "import os\n"
                    "class Hold(gdb.Breakpoint):\n"
                    "    def stop(self):\n"
                    f"        return os.path.exists({self.armfile!r})\n"
                    f"Hold({fn!r})\n"
                    "end\n"
                    f"shell echo attached >>{self.marks}\n"
                    "continue\n"
                    f"shell echo held >>{self.marks}\n"
                    f"call (unsigned int)sleep({HOLD_S})\n"
                    "continue\n")
        self.gdb = subprocess.Popen(["gdb", "-nx", "-batch", "-p", str(q.pid),
                                     "-x", cmds], stdout=open(self.log, "w"),
                                    stderr=subprocess.STDOUT)

    def marked(self, word):
        return word in open(self.marks).read().split()

    def wait_attached(self, timeout):
        wait_until("gdb attached", lambda: self.marked("attached")
                   or self.gdb.poll() is not None, timeout)
        if self.gdb.poll() is not None:
            raise RuntimeError(f"gdb could not attach: "
                               f"{open(self.log).read()[-800:]}")

    def arm(self):
        open(self.armfile, "w").close()

    def close(self):
        try:
            self.gdb.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.gdb.kill()
            self.gdb.wait()


def run_victim(args, qemu, work, sockdir, disk, victim, n):
    survivor = "primary" if victim == "secondary" else "secondary"
    fab = args.fabric
    token = write_secret(os.path.join(work, f"token{n}"))
    uri = (f"rdma-colo:{fab.b.addr}:{args.port + n}"
           f"?secret=colo-token&timeout=60000")
    q, hold = {}, None
    try:
        for side, extra, node in (("secondary", ["-incoming", "defer"], fab.b),
                                  ("primary", [], fab.a)):
            q[side] = Qemu(qemu, f"h{n}-{side}", work, sockdir, disk=disk,
                           extra=extra, secrets=[("colo-token", token)],
                           qmp_timeout=args.timeout, node=node)
            colo.prepare(q[side], args.channels)
            q[side].cmd("migrate-set-parameters",
                        **{"x-colo-checkpoint-timeout": args.deadline_ms})
        colo.primary_parameters(q["primary"], args.delay)
        t0 = time.monotonic()
        hold = Hold(q[victim], work, HOLD_AT[victim])
        hold.wait_attached(args.timeout)
        attach_s = time.monotonic() - t0
        took = colo.replicate(q["primary"], q["secondary"], uri, args.timeout)
        for _ in range(2):
            q["secondary"].mon.wait_event("RESUME", args.timeout)
        print(f"hung-peer: {victim}: gdb attached in {attach_s:.1f} s; COLO up "
              f"in {took:.1f} s, two checkpoints done within "
              f"x-colo-checkpoint-timeout = {args.deadline_ms} ms", flush=True)
        early = [e for e in q[survivor].mon.events() if e["event"] == "COLO_EXIT"]
        if early:
            raise RuntimeError(f"COLO ended before the hold: {early}")
        hold.arm()
        wait_until(f"the {victim}'s COLO thread reaching {HOLD_AT[victim]}",
                   lambda: hold.marked("held"), args.timeout, interval=0.01)
        t_held = time.monotonic()
        events = []

        def exited():
            events.extend(q[survivor].mon.events())
            return any(e["event"] == "COLO_EXIT" for e in events)
        bound = args.deadline_ms / 1000 + SLACK_S
        wait_until(f"the {survivor}'s COLO_EXIT", exited,
                   bound + args.timeout, interval=0.02)
        held_s = time.monotonic() - t_held
        exit_ev = next(e for e in events if e["event"] == "COLO_EXIT")
        # The checkpoint's start on the survivor's clock: its VM stopped
        # for it (the last STOP before COLO_EXIT; QMP timestamps).
        stops = [e for e in events if e["event"] == "STOP"
                 and event_time(e) <= event_time(exit_ev)]
        problems = []
        if not stops:
            problems.append(f"no STOP of the {survivor} before its COLO_EXIT")
            took = None
        else:
            took = event_time(exit_ev) - event_time(stops[-1])
        ev = exit_ev["data"]
        print(f"hung-peer: {victim}: held in {HOLD_AT[victim]} (big lock "
              f"held, library threads running); the {survivor} sent COLO_EXIT "
              f"{ev} {took if took is None else f'{took:.2f}'} s after its VM "
              f"stopped for the checkpoint ({held_s:.2f} s after the hold "
              f"was seen; deadline {args.deadline_ms} ms)", flush=True)
        if took is not None and not (args.deadline_ms / 1000 - 1.0 <= took
                                     <= bound):
            problems.append(f"COLO ended {took:.2f} s into the checkpoint, "
                            f"not within the deadline's "
                            f"{args.deadline_ms / 1000:.1f} s - 1 s .. "
                            f"+ {SLACK_S} s")
        if ev.get("reason") != "error" or ev.get("mode") != survivor:
            problems.append(f"COLO_EXIT {ev}, want mode {survivor} reason error")
        err = q[survivor].stderr(4000)
        line = next((l for l in err.splitlines()
                     if "x-colo-checkpoint-timeout" in l), None)
        if not line:
            problems.append(f"the {survivor}'s stderr does not name the "
                            f"deadline:\n{err}")
        else:
            print(f"hung-peer: {victim}: the {survivor} said: {line.strip()}")
        t0 = time.monotonic()
        colo.fail_over(q[survivor], args.timeout)
        bad = colo.check_memory(q[survivor], work, args.timeout)
        print(f"hung-peer: {victim}: the {survivor} failed over in "
              f"{time.monotonic() - t0:.2f} s, runs, its guest progresses, "
              f"memory {'consistent' if not bad else 'INCONSISTENT'}",
              flush=True)
        problems += [f"survivor memory: {b}" for b in bad[:5]]
        return problems
    finally:
        for side in ("secondary", "primary"):
            if side in q:
                q[side].close()
        if hold is not None:
            hold.close()


def main():
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--victim", choices=("primary", "secondary", "both"),
                    default="both")
    ap.add_argument("--deadline-ms", type=int, default=10000,
                    help="x-colo-checkpoint-timeout on both sides (10000: a "
                    "healthy checkpoint here takes about 1 s, and machines of "
                    "this kind run up to 4 times slower)")
    ap.add_argument("--delay", type=int, default=1000,
                    help="x-checkpoint-delay (ms)")
    ap.add_argument("--channels", type=int, default=2)
    ap.add_argument("--port", type=int, default=47300)
    ap.add_argument("--timeout", type=float, default=120,
                    help="deadline of every harness step (s)")
    ap.add_argument("--qemu-build", default=os.environ.get(
        "RDMA_COLO_QEMU_BUILD", os.path.join(TOP, "build/qemu/build")))
    ap.add_argument("--workdir", default=os.path.join(TOP, "build/hung-peer"))
    ap.add_argument("--keep", action="store_true", help="keep the work dir")
    args = ap.parse_args()
    if not shutil.which("gdb"):
        die("gdb not found (scripts/bootstrap installs it)")
    args.fabric = fabric.Fabric()
    qemu, src = fabric.qemu_paths(args.qemu_build)
    print(f"hung-peer: {args.fabric.describe()}", flush=True)
    os.makedirs(args.workdir, exist_ok=True)
    work = tempfile.mkdtemp(prefix="hung-peer-", dir=args.workdir)
    sockdir = tempfile.mkdtemp(prefix="hung-peer-")
    disk = os.path.join(work, "disk")
    with open(disk, "wb") as f:
        f.write(bootsector(src))
    victims = ("secondary", "primary") if args.victim == "both" else (args.victim,)
    failed = []
    try:
        for n, victim in enumerate(victims):
            try:
                problems = run_victim(args, qemu, work, sockdir, disk, victim, n)
            except (Hang, RuntimeError, OSError, EOFError) as e:
                problems = [f"{type(e).__name__}: {e}"]
            for p in problems:
                print(f"hung-peer: {victim}: FAIL: {p}", flush=True)
            if problems:
                failed.append(victim)
    finally:
        if not args.keep and not failed:
            shutil.rmtree(work, ignore_errors=True)
        shutil.rmtree(sockdir, ignore_errors=True)
    if failed:
        print(f"hung-peer: FAILED for {', '.join(failed)} (work dir {work})")
        return 1
    print(f"hung-peer: {len(victims)} hung peer(s): each survivor ended COLO "
          f"with a named error within the checkpoint deadline and took over "
          f"with a consistent guest")
    return 0
