# SPDX-License-Identifier: GPL-2.0-or-later
"""chaos: faults at random points of a COLO pair over rdma-colo, and a
consistency oracle on the guest memory that survives.

    scripts/with-rxe -- scripts/chaos --seed N --points K [--delay MS]
                                      [--background]

Each point starts a COLO pair of QEMUs over rdma-colo (QEMU's
migration-test boot sector, which increments one byte in every 4 KiB page
from 1 MiB to 100 MiB, in order, forever), picks a victim (primary or
secondary), a fault (SIGKILL: the process died, its kernel closes its
connections; SIGSTOP: the process hangs but its NIC still acknowledges;
on the pair topology also poweroff: the victim's node stops at once and
nothing of it answers, and partition: the link is cut, both sides must
find out by themselves, the victim is fenced and, after the failover, the
link healed and the survivor replicated again; --faults restricts the
draw) and a moment:

  initial     during the initial copy, before COLO runs
  checkpoint  while both VMs are stopped for a checkpoint (the pages and
              the fence are in flight): a random time after the primary's
              STOP event
  between     while both VMs run between checkpoints: a random time after
              the secondary's RESUME event (with --background, while the
              primary's background sync may have pages in flight)

then plays the cluster manager: after a random detection delay it fails
over to the survivor (yank, out of band as production does, then
x-colo-lost-heartbeat; migrate_cancel on a primary still in its initial
copy) and checks the outcome:

  - nothing hangs: every step has a deadline;
  - the survivor leaves COLO (or, for a fault in the initial copy, ends the
    migration) and runs on, and its guest makes progress;
  - its guest memory is one consistent state of the guest: stopped and
    dumped (pmemsave), every page's counter byte equals the previous page's
    or is one less, at one edge only (the oracle of QEMU's migration-test;
    a checkpoint applied in part, or pages of two checkpoints mixed, breaks
    it: in one checkpoint interval the guest makes many passes);
  - a secondary whose primary died in the initial copy has nothing to run
    (its incoming migration fails, which is the right outcome).

It prints one line per point and a summary: hangs, errors (a QMP command
refused, a survivor that vanished), inconsistent memories, and the time
from the failover command to a running survivor (p50, max).  Exit status 1
if any point hung, failed or found an inconsistent memory.
"""
import argparse
import os
import random
import signal
import tempfile
import time

from . import colo, fabric
from .guest import bootsector, oracle_self_test
from .node import Qemu
from .qmp import QemuGone, QmpError
from .util import TOP, Hang, die, wait_until, write_secret

PHASES = ("initial", "checkpoint", "between")


class Pair:
    """A primary and a secondary QEMU, in COLO over rdma-colo."""

    def __init__(self, args, qemu, work, sockdir, disk, n):
        self.tag = f"p{n}"
        token = self.token = write_secret(os.path.join(work, f"{self.tag}-token"))
        fab = args.fabric
        self.uri = f"rdma-colo:{fab.b.addr}:{args.port + n}?secret=colo-token"
        self.node = {"primary": fab.a, "secondary": fab.b}
        self.q = {}
        try:
            for side, extra, node in (("secondary", ["-incoming", "defer"], fab.b),
                                      ("primary", ["-S"], fab.a)):
                self.q[side] = Qemu(qemu, f"{self.tag}-{side}", work, sockdir,
                                    disk=disk, extra=extra,
                                    secrets=[("colo-token", token)],
                                    qmp_timeout=args.timeout, node=node)
            for q in self.q.values():
                colo.prepare(q, args.channels)
            colo.primary_parameters(self.q["primary"], args.delay,
                                    args.background)
            self.q["secondary"].cmd("migrate-incoming", uri=self.uri,
                                    **{"exit-on-error": False})
            self.q["primary"].cmd("cont")
            time.sleep(0.5)
            self.q["primary"].cmd("migrate", uri=self.uri)
        except BaseException:
            self.close()
            raise

    def in_colo(self):
        return colo.in_colo(self.q["secondary"])

    def close(self):
        for q in self.q.values():
            q.close()


def fail_over(q, survivor, colo_up, timeout):
    """The cluster manager on the survivor @q; returns a note, or None."""
    if survivor == "primary":
        colo.yank(q)
        q.cmd("x-colo-lost-heartbeat" if colo_up else "migrate_cancel")
        wait_until("the primary leaving COLO / the migration",
                   lambda: q.cmd("query-colo-status")["mode"] == "none"
                   and q.cmd("query-migrate").get("status") not in colo.MIGRATING,
                   timeout)
    elif colo_up:
        colo.yank(q)
        q.cmd("x-colo-lost-heartbeat")
        wait_until("the secondary leaving COLO",
                   lambda: q.cmd("query-colo-status")["mode"] == "none", timeout)
    else:
        # The primary died before COLO: the secondary has nothing
        # consistent to run; its incoming migration must end, failed.
        colo.yank(q)
        wait_until("the secondary's incoming migration failing",
                   lambda: q.cmd("query-migrate").get("status") == "failed",
                   timeout)
        return " (no COLO state yet: the secondary's incoming failed)"
    wait_until(f"the {survivor} running",
               lambda: q.cmd("query-status")["running"], timeout)
    return None


# The faults: a signal to the victim QEMU, or (pair topology) its node
# powered off, or the link between the nodes cut.
SIGNALS = ("SIGKILL", "SIGSTOP")
NODE_FAULTS = ("poweroff", "partition")


def wait_reports(pair, sides, t0, timeout):
    """Seconds from @t0 until each of @sides reports its peer gone."""
    left, took = set(sides), {}
    deadline = time.monotonic() + timeout
    while left:
        for side in sorted(left):
            if colo.peer_gone(pair.q[side]):
                took[side] = time.monotonic() - t0
        left -= set(took)
        if left and time.monotonic() > deadline:
            raise Hang(f"the {' and the '.join(sorted(left))} did not report "
                       f"the fault within {timeout} s")
        time.sleep(0.02)
    return took


def failback(args, pair, survivor, node, qemu, work, sockdir, disk, n):
    """Replicate the running @survivor again, to a new secondary on @node
    over the healed link; the seconds until its second checkpoint."""
    fresh = Qemu(qemu, f"{pair.tag}-again", work, sockdir, disk=disk,
                 extra=["-incoming", "defer"],
                 secrets=[("colo-token", pair.token)],
                 qmp_timeout=args.timeout, node=node)
    pair.q["again"] = fresh
    colo.prepare(fresh, args.channels)
    colo.primary_parameters(survivor, args.delay, args.background)
    t0 = time.monotonic()
    colo.replicate(survivor, fresh,
                   f"rdma-colo:{node.addr}:{args.port + 500 + n}?secret=colo-token",
                   args.timeout)
    for _ in range(2):
        fresh.mon.wait_event("RESUME", args.timeout)
    return time.monotonic() - t0


def run_point(args, rng, qemu, work, sockdir, disk, n):
    victim = rng.choice(("primary", "secondary"))
    fault = rng.choice(args.faults)
    phase = rng.choice(PHASES)
    detect = rng.uniform(0, args.detect_ms / 1000)
    survivor = "secondary" if victim == "primary" else "primary"
    res = {"n": n, "victim": victim, "fault": fault, "phase": phase,
           "hang": None, "bad": [], "error": None, "takeover": None,
           "detect": None, "detect_victim": None, "failback": None,
           "note": "", "checked": False}
    fab = args.fabric
    pair = None
    try:
        pair = Pair(args, qemu, work, sockdir, disk, n)
        t0 = time.monotonic()
        if phase == "initial":
            # Some way into the initial copy (it takes seconds here).
            time.sleep(rng.uniform(0.2, 2.0))
            if pair.in_colo():
                res["note"] = "(COLO already up)"
        else:
            wait_until("COLO", pair.in_colo, args.timeout)
            res["colo_s"] = time.monotonic() - t0
            for q in pair.q.values():
                q.mon.events()
            if phase == "checkpoint":
                pair.q["primary"].mon.wait_event("STOP", args.timeout)
                time.sleep(rng.uniform(0, args.pause_ms / 1000))
            else:
                pair.q["secondary"].mon.wait_event("RESUME", args.timeout)
                time.sleep(rng.uniform(0, args.delay / 1000))
        colo_up = pair.in_colo()
        t_fault = time.monotonic()
        if fault in SIGNALS:
            pair.q[victim].signal(getattr(signal, fault))
            time.sleep(detect)
        elif fault == "poweroff":
            # The victim's host loses power: nothing of it answers again.
            pair.node[victim].poweroff()
            res["detect"] = wait_reports(pair, [survivor], t_fault,
                                         args.timeout)[survivor]
        else:
            # The link is cut; both sides must find out by themselves.
            # Then the cluster manager fences the victim (powers its node
            # off) and fails over to the survivor.
            fab.link("cut")
            took = wait_reports(pair, ["primary", "secondary"], t_fault,
                                args.timeout)
            res["detect"], res["detect_victim"] = took[survivor], took[victim]
            pair.node[victim].poweroff()

        q = pair.q[survivor]
        t_fail = time.monotonic()
        note = fail_over(q, survivor, colo_up, args.timeout)
        res["takeover"] = time.monotonic() - t_fail
        if note:
            res["note"] += note
            return res
        res["bad"] = colo.check_memory(q, sockdir, args.timeout)
        res["checked"] = True
        if not colo_up and survivor == "primary":
            res["note"] += " (fault in the initial copy: primary runs alone)"
        if fault == "partition" and not res["bad"]:
            # Heal the link, power the fenced node on, replicate again.
            fab.link("heal")
            pair.node[victim].poweron()
            res["failback"] = failback(args, pair, q, pair.node[victim], qemu,
                                       work, sockdir, disk, n)
        return res
    except Hang as e:
        res["hang"] = str(e)
        return res
    except (QmpError, QemuGone, RuntimeError, OSError) as e:
        res["error"] = str(e)  # a QMP command failed, or a QEMU vanished
        return res
    finally:
        if pair:
            pair.close()
        if fault in NODE_FAULTS:
            try:
                fab.link("heal")
                fab.a.poweron()
                fab.b.poweron()
            except RuntimeError as e:
                res["error"] = res["error"] or f"cannot restore the fabric: {e}"


def summary(results, elapsed):
    hangs = sum(1 for r in results if r["hang"])
    bad = sum(1 for r in results if r["bad"])
    checked = sum(1 for r in results if r["checked"])
    errors = sum(1 for r in results if r["error"])

    def dist(key, what):
        v = sorted(r[key] for r in results if r[key] is not None)
        if not v:
            return ""
        return f"; {what} p50 {v[len(v) // 2]:.2f} s, max {v[-1]:.2f} s ({len(v)})"

    print(f"chaos: {len(results)} points in {elapsed:.0f} s: "
          f"{hangs} hangs, {errors} errors, {bad} inconsistent memories of "
          f"{checked} checked" + dist("takeover", "failover to a running survivor")
          + dist("detect", "survivor's detection (power-off, partition)")
          + dist("detect_victim", "victim's detection (partition)")
          + dist("failback", "replicated again over the healed link"))
    for key in ("victim", "fault", "phase"):
        counts = {}
        for r in results:
            counts[r[key]] = counts.get(r[key], 0) + 1
        print(f"chaos:   by {key}: " +
              ", ".join(f"{k} {v}" for k, v in sorted(counts.items())))
    return 1 if hangs or errors or bad else 0


def parser():
    ap = argparse.ArgumentParser(prog="chaos", description=__doc__.split("\n")[0])
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--points", type=int, default=5)
    ap.add_argument("--delay", type=int, default=500,
                    help="x-checkpoint-delay, ms")
    ap.add_argument("--channels", type=int, default=4)
    ap.add_argument("--faults", default=None,
                    help="comma-separated faults to draw from: SIGKILL, "
                         "SIGSTOP and, on the pair topology, poweroff (the "
                         "victim's node) and partition (the link cut, then "
                         "the victim fenced, the survivor failed over, the "
                         "link healed and the survivor replicated again); "
                         "default: all the fabric allows")
    ap.add_argument("--background", action="store_true",
                    help="x-colo-background-sync on: pages also move while "
                    "the VMs run, so 'between' faults hit them in flight")
    ap.add_argument("--pause-ms", type=int, default=1500,
                    help="how far into a checkpoint a fault may land")
    ap.add_argument("--detect-ms", type=int, default=1000,
                    help="most the cluster manager takes to notice")
    ap.add_argument("--timeout", type=int, default=60,
                    help="deadline of every step, s (a hang if missed)")
    ap.add_argument("--addr", help="one RDMA address for both QEMUs (default: "
                    "with-rxe's nodes)")
    ap.add_argument("--port", type=int, default=31000)
    ap.add_argument("--qemu-build", default=os.path.join(TOP, "build/qemu/build"))
    ap.add_argument("--workdir", default=os.path.join(TOP, "build/chaos"))
    return ap


def main(argv=None):
    args = parser().parse_args(argv)
    args.fabric = fabric.Fabric(args.addr)
    allowed = SIGNALS + (NODE_FAULTS if args.fabric.topology == "pair" else ())
    args.faults = tuple(args.faults.split(",")) if args.faults else allowed
    for f in args.faults:
        if f not in allowed:
            die(f"fault '{f}' is not one of {', '.join(allowed)} here"
                + ("" if args.fabric.topology == "pair" else
                   " (power-off and partition need --topology pair)"))
    qemu, qemu_src = fabric.qemu_paths(args.qemu_build)
    os.makedirs(args.workdir, exist_ok=True)
    work = tempfile.mkdtemp(prefix="chaos-", dir=args.workdir)
    sockdir = tempfile.mkdtemp(prefix="chaos-")
    disk = os.path.join(work, "bootsect")
    with open(disk, "wb") as f:
        f.write(bootsector(qemu_src))
    oracle_self_test(sockdir)
    rng = random.Random(args.seed)
    print(f"chaos: seed {args.seed}, {args.points} points, faults "
          f"{', '.join(args.faults)}, checkpoint delay "
          f"{args.delay} ms, {args.channels} channels"
          f"{', background sync' if args.background else ''}, "
          f"{args.fabric.describe()}; files in {work}")
    print("chaos: the oracle passes a consistent memory (one edge, also "
          "across the wrap) and fails a torn one (two edges) and a skipped "
          "generation")
    results = []
    t_start = time.monotonic()
    for n in range(1, args.points + 1):
        r = run_point(args, rng, qemu, work, sockdir, disk, n)
        results.append(r)
        verdict = ("HANG: " + r["hang"] if r["hang"] else
                   "ERROR: " + r["error"] if r["error"] else
                   "INCONSISTENT: " + "; ".join(r["bad"][:3]) if r["bad"] else
                   "ok, memory consistent" if r["checked"] else "ok")
        took = f"{r['takeover']:.2f} s" if r["takeover"] is not None else "-"
        seen = "".join(
            f", {who} saw it after {r[k]:.2f} s" for who, k in
            (("survivor", "detect"), ("victim", "detect_victim"))
            if r[k] is not None)
        back = (f", replicated again in {r['failback']:.1f} s"
                if r["failback"] is not None else "")
        print(f"  {n:3d}  {r['fault']:9s} {r['victim']:9s} {r['phase']:10s} "
              f"failover {took:>7s}  {verdict}{r['note']}{seen}{back}",
              flush=True)
    return summary(results, time.monotonic() - t_start)
