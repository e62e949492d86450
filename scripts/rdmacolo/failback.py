# SPDX-License-Identifier: GPL-2.0-or-later
"""failback: COLO over rdma-colo through N failover/failback cycles.

    scripts/with-rxe -- scripts/failback --cycles N [--checkpoints K]
    (also: scripts/colo-demo --cycles N)

A COLO pair starts over rdma-colo (the guest of scripts/chaos: QEMU's
migration-test boot sector, whose memory has a consistency oracle).  Each
cycle, after K checkpoints, one side is SIGKILLed, alternately the primary
and the secondary, and the script plays the cluster manager:

  detect     the survivor's own report that its peer is gone: the COLO_EXIT
             event (reason error) or, for a primary whose COLO thread only
             waits, query-migrate's rdma-colo member naming the error;
  take over  yank (out of band) and x-colo-lost-heartbeat on the survivor,
             until it runs alone (query-colo-status mode none, VM running);
  replicate  a new secondary QEMU (-incoming defer, a new port and token),
             and `migrate` from the survivor, as docs/user-guide.md's
             "Resume replication" says, until COLO runs again.

Before each failure it checks that the pair's first COLO checkpoint
carried every page of the guest's range: the interval before it is a
whole x-checkpoint-delay, in which the guest writes each of them, so a
page missing is a write the primary's dirty tracking lost (the nodes'
traces of CHECKPOINT_EVENTS, read by TraceLog).
After each takeover it checks the survivor:
  - its guest memory is one consistent state of the guest (stopped,
    dumped with pmemsave, the oracle of rdmacolo.guest);
  - nothing of the old session is left: query-migrate has no rdma-colo
    member (no registered memory), no migration or COLO thread runs
    (/proc/PID/task names), and its open RDMA device files and fds are
    as many as after its previous takeover (a process survives two cycles
    running: once as secondary or primary, then as primary);
and after each failback that the new session registered the guest anew.
It prints per cycle the time to detect, to take over and to be replicated
again, and exits 1 on any inconsistent memory, leak, hang or error.
"""
import argparse
import os
import tempfile
import time

from . import colo, fabric
from .guest import PAGES, bootsector, oracle_self_test
from .node import Qemu
from .qmp import QemuGone, QmpError
from .trace import TraceLog
from .util import TOP, Hang, wait_until, write_secret

# Trace events every node logs to its stderr file, for TraceLog
# (first_checkpoint()).
CHECKPOINT_EVENTS = ("rdma_colo_recv_sync", "colo_receive_message",
                     "colo_flush_ram_cache_begin")


class Node(Qemu):
    """One QEMU of the cluster: a COLO side now, the survivor later."""

    def __init__(self, args, qemu, work, sockdir, disk, name, pairing,
                 node, boot=False):
        self.token = token_path(work, pairing)
        super().__init__(
            qemu, name, work, sockdir, disk=disk,
            extra=(["-S"] if boot else ["-incoming", "defer"])
            + (["-msg", "timestamp=on"] if args.trace else []),
            trace=list(CHECKPOINT_EVENTS) + args.trace,
            secrets=[(f"colo-token-{pairing}", self.token)],
            qmp_timeout=args.timeout, node=node)
        colo.prepare(self, args.channels)
        self.takeover_fds = None
        self.secret = pairing
        if boot:
            self.cmd("cont")


def token_path(work, pairing):
    return os.path.join(work, f"token-{pairing}")


def first_checkpoint(node):
    """(pages the secondary @node received in its first COLO checkpoint,
    pages it flushed then), from its trace: None before its flush (which
    follows every channel's last pages of it)."""
    log = TraceLog(node.stderr_path)
    log.read()
    first = log.checkpoint(1)
    if first is None or not first[2]:
        return None
    sent = first[0]
    return sent[1] + sent[2], first[2][0]


def replicate(args, primary, secondary, port, pairing):
    """COLO from @primary (running) to the fresh @secondary with the
    pairing's own token (a new secret object on the primary, the old one
    deleted); returns the seconds until the secondary is in COLO."""
    uri = f"rdma-colo:{secondary.node.addr}:{port}?secret=colo-token-{pairing}"
    if primary.secret != pairing:
        primary.cmd("object-add", **{"qom-type": "secret",
                                     "id": f"colo-token-{pairing}",
                                     "file": token_path(primary.work, pairing)})
        primary.cmd("object-del", id=f"colo-token-{primary.secret}")
        primary.secret = pairing
    primary.cmd("migrate-set-parameters", **{
        "x-checkpoint-delay": args.delay, "downtime-limit": 30000,
        "max-bandwidth": 1000000000})
    return colo.replicate(primary, secondary, uri, args.timeout)


def wait_checkpoints(secondary, k, timeout):
    secondary.mon.events()
    for _ in range(k):
        secondary.mon.wait_event("RESUME", timeout)


def detect(survivor, t_kill, timeout):
    """Seconds until the survivor reports its peer gone."""
    wait_until(f"{survivor.name} noticing its peer's death",
               lambda: colo.peer_gone(survivor), timeout)
    return time.monotonic() - t_kill


def check_survivor(node, sockdir, timeout):
    """Problems with the survivor: memory, leftovers of the session."""
    bad = []
    wait_until(f"{node.name}'s rdma-colo session ending",
               lambda: colo.session_stats(node) is None, timeout)
    bad += colo.check_memory(node, sockdir, timeout)
    # Threads exit after the session; give them the moment they take.
    try:
        wait_until(f"{node.name}'s migration threads exiting",
                   lambda: not colo.session_threads(node), 10)
    except Hang:
        bad.append("threads left: " + ", ".join(colo.session_threads(node)))
    fds = node.fds()
    if node.takeover_fds is not None and fds != node.takeover_fds:
        bad.append(f"fds after this takeover {fds[0]} ({fds[1]} RDMA), after the "
                   f"previous one {node.takeover_fds[0]} ({node.takeover_fds[1]} RDMA)")
    node.takeover_fds = fds
    return bad


def grow_tlb(node, n, timeout):
    """Flush @node's TLB @n times while its guest sweeps its range: TCG
    doubles a well-used TLB at a flush, so it ends up holding the whole
    range, as a former COLO secondary's does (flushed at every
    checkpoint).  Each dirty-rate measurement (dirty-bitmap mode) starts
    and stops dirty logging, a TLB flush each."""
    for _ in range(n):
        node.cmd("calc-dirty-rate", **{"calc-time": 200,
                                       "calc-time-unit": "millisecond",
                                       "mode": "dirty-bitmap"})
        wait_until("the dirty-rate measurement",
                   lambda: node.cmd("query-dirty-rate")["status"] == "measured",
                   timeout)


def check_first_checkpoint(primary, secondary):
    """(problems, pages) of the pair's first COLO checkpoint: it follows a
    whole checkpoint interval, in which the guest writes every page of its
    range at least once, so all of them must come from the primary.  A
    page missing is a write the primary's dirty tracking did not see.
    Judged only if the secondary's flush covered the whole range (its own
    copy of the guest, running the same interval, wrote it all); pages
    None if not judged."""
    first = first_checkpoint(secondary)
    if first is None:
        return [f"no checkpoint in {secondary.name}'s trace"], 0
    if first[1] < PAGES:
        # Not even the secondary's own guest wrote them all: the interval
        # was shorter than a pass here (a slow machine), nothing to judge.
        return [], None
    if first[0] < PAGES:
        return [f"{primary.name}'s first checkpoint to {secondary.name} sent "
                f"{first[0]} pages; its guest had written all {PAGES} "
                f"of its range ({PAGES - first[0]} dirty pages not seen)"
                ], first[0]
    return [], first[0]


def run(args):
    qemu, qemu_src = fabric.qemu_paths(args.qemu_build)
    fab = fabric.Fabric(args.addr)
    os.makedirs(args.workdir, exist_ok=True)
    work = tempfile.mkdtemp(prefix="failback-", dir=args.workdir)
    sockdir = tempfile.mkdtemp(prefix="failback-")
    disk = os.path.join(work, "bootsect")
    with open(disk, "wb") as f:
        f.write(bootsector(qemu_src))
    oracle_self_test(sockdir)
    print(f"failback: {args.cycles} cycles, {args.checkpoints} checkpoints "
          f"each, checkpoint delay {args.delay} ms, {args.channels} channels, "
          f"{fab.describe()}; files in {work}", flush=True)

    nodes, serial = [], 0

    def node(pairing, where, boot=False):
        nonlocal serial
        n = Node(args, qemu, work, sockdir, disk, f"q{serial}", pairing,
                 where, boot)
        serial += 1
        nodes.append(n)
        return n

    results, failed, judged = [], False, []
    try:
        write_secret(token_path(work, 0))
        # The first primary boots the guest; every later node starts as a
        # secondary (-incoming defer) and may become the primary.
        primary = node(0, fab.a, boot=True)
        secondary = node(0, fab.b)
        time.sleep(0.5)
        grow_tlb(primary, args.grow_tlb, args.timeout)
        t_colo = replicate(args, primary, secondary, args.port, 0)
        print(f"  start: {primary.name} -> {secondary.name} in COLO after "
              f"{t_colo:.1f} s", flush=True)
        for c in range(1, args.cycles + 1):
            wait_checkpoints(secondary, args.checkpoints, args.timeout)
            sent, first_pages = check_first_checkpoint(primary, secondary)
            judged.append(first_pages is not None)
            reg = colo.session_stats(primary)["registered-bytes"]
            victim, survivor = ((primary, secondary) if c % 2 else
                                (secondary, primary))
            t_kill = time.monotonic()
            victim.kill()
            t_detect = detect(survivor, t_kill, args.timeout)
            t0 = time.monotonic()
            colo.fail_over(survivor, args.timeout)
            t_take = time.monotonic() - t0
            compared = survivor.takeover_fds is not None
            bad = sent + check_survivor(survivor, sockdir, args.timeout)
            fds = survivor.takeover_fds
            nodes.remove(victim)
            victim.close()
            write_secret(token_path(work, c))
            # The new secondary on the node the victim was on (the other
            # one than the survivor's).
            fresh = node(c, fab.other(survivor.node))
            t_rep = replicate(args, survivor, fresh, args.port + c, c)
            reg2 = colo.session_stats(survivor)["registered-bytes"]
            if not reg2 or reg2 > reg * 2:
                bad.append(f"the new session registered {reg2} bytes "
                           f"(the previous primary {reg})")
            results.append((c, victim.name, survivor.name, t_detect, t_take, t_rep, bad))
            print(f"  cycle {c}: SIGKILL {'primary' if c % 2 else 'secondary'} "
                  f"{victim.name}; {survivor.name} detected it in {t_detect:.2f} s, "
                  f"took over in {t_take:.2f} s, replicated again to {fresh.name} "
                  f"in {t_rep:.1f} s ({reg2 / 2**20:.0f} MiB registered); "
                  + ("INCONSISTENT/LEAK: " + "; ".join(bad) if bad else
                     ("the pair's first checkpoint not judged (the guest "
                        "wrote less than its range in the interval), "
                        if first_pages is None else
                        f"the pair's first checkpoint sent {first_pages} pages "
                        f"(all {PAGES} the guest wrote), ")
                     + f"memory consistent, no session, registration or "
                     f"migration thread left, {fds[0]} fds ({fds[1]} on RDMA "
                     f"devices)" + (", as after its previous takeover"
                                    if compared else "")),
                  flush=True)
            failed |= bool(bad)
            primary, secondary = survivor, fresh
        wait_checkpoints(secondary, args.checkpoints, args.timeout)
        last, last_pages = check_first_checkpoint(primary, secondary)
        judged.append(last_pages is not None)
        if last:
            print(f"  last pairing: {'; '.join(last)}", flush=True)
            failed = True
    except Hang as e:
        print(f"failback: HANG: {e}")
        return 1
    except (QmpError, QemuGone, RuntimeError, OSError) as e:
        print(f"failback: ERROR: {e}")
        return 1
    finally:
        for n in nodes:
            n.close()

    def stats(i):
        v = sorted(r[i] for r in results)
        return f"p50 {v[len(v) // 2]:.2f} s, max {v[-1]:.2f} s"

    print(f"failback: {len(results)} cycles, {sum(1 for r in results if r[6])} "
          f"with a problem; first checkpoints judged in {sum(judged)} of "
          f"{len(judged)} pairs (the guest must write its whole range in one "
          f"interval); detect {stats(3)}; take over {stats(4)}; "
          f"replicated again {stats(5)}")
    return 1 if failed or len(results) != args.cycles else 0


def parser():
    ap = argparse.ArgumentParser(prog="failback",
                                 description=__doc__.split("\n")[0])
    ap.add_argument("--cycles", type=int, default=5)
    ap.add_argument("--checkpoints", type=int, default=3,
                    help="checkpoints before each failure")
    ap.add_argument("--delay", type=int, default=1000,
                    help="x-checkpoint-delay, ms (the first checkpoint's check "
                         "needs the guest to write its range in one interval)")
    ap.add_argument("--channels", type=int, default=4)
    ap.add_argument("--timeout", type=int, default=120,
                    help="deadline of every step, s (a hang if missed)")
    ap.add_argument("--addr", help="one RDMA address for every QEMU (default: "
                    "with-rxe's nodes)")
    ap.add_argument("--port", type=int, default=33000)
    ap.add_argument("--qemu-build", default=os.path.join(TOP, "build/qemu/build"))
    ap.add_argument("--grow-tlb", type=int, default=0, metavar="N",
                    help="flush the first primary's TLB N times before COLO "
                         "(grows it as a former secondary's; see grow_tlb)")
    ap.add_argument("--trace", action="append", default=[], metavar="EVENT",
                    help="a QEMU trace event (pattern) for every node, logged "
                         "to its stderr file in the work directory; repeatable")
    ap.add_argument("--workdir", default=os.path.join(TOP, "build/failback"))
    return ap


def main(argv=None):
    return run(parser().parse_args(argv))
