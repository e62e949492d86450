# SPDX-License-Identifier: GPL-2.0-or-later
"""A COLO pair, driven as docs/user-guide.md says and checked as the
harness's oracles want.

    prepare(q, channels)           x-colo, multifd, events; channel count
    primary_parameters(q, ...)     checkpoint delay, convergence room
    replicate(primary, secondary, uri, timeout)
                                   migrate-incoming + migrate until COLO runs
    yank(q), fail_over(q, ...)     the cluster manager's takeover
    check_memory(q, dumpdir, ...)  the survivor's guest: one consistent state
    memory_problems(q, dump)       the same for any monitor, no progress check
    session_stats(q)               query-migrate's rdma-colo member
"""
import os
import time

from .guest import END, START, oracle
from .qmp import QmpError
from .util import wait_until

CAPABILITIES = ("x-colo", "multifd", "events")

# Threads that exist only while a migration or COLO runs (QEMU's names,
# -name debug-threads=on).
SESSION_THREADS = ("live_migration", "mig/", "multifdsend", "multifdrecv",
                   "COLO", "colo", "rdma")

# Migration states in which a primary's outgoing migration still runs.
MIGRATING = ("active", "setup", "cancelling", "colo", "device", "wait-unplug")


def prepare(q, channels):
    q.cmd("migrate-set-capabilities",
          capabilities=[{"capability": c, "state": True} for c in CAPABILITIES])
    q.cmd("migrate-set-parameters", **{"multifd-channels": channels})


def primary_parameters(q, delay, background=False):
    """As QEMU's COLO tests: let precopy converge under a busy guest (a
    large downtime limit, no bandwidth limit)."""
    q.cmd("migrate-set-parameters", **{
        "x-checkpoint-delay": delay, "downtime-limit": 30000,
        "max-bandwidth": 1000000000, "x-colo-background-sync": background})


def in_colo(secondary):
    return secondary.cmd("query-colo-status")["mode"] == "secondary"


def start_replication(primary, secondary, uri):
    secondary.cmd("migrate-incoming", uri=uri, **{"exit-on-error": False})
    primary.cmd("migrate", uri=uri)


def wait_colo(primary, secondary, timeout):
    """Until @secondary is in COLO; the migration failing on @primary is an
    error with its reason."""
    def colo():
        st = primary.cmd("query-migrate")
        if st.get("status") in ("failed", "cancelled"):
            raise RuntimeError(f"migrate from {primary.name} to {secondary.name} "
                               f"{st['status']}: {st.get('error-desc')}")
        return in_colo(secondary)
    wait_until(f"COLO from {primary.name} to {secondary.name}", colo, timeout)


def replicate(primary, secondary, uri, timeout):
    """COLO from the running @primary to @secondary (-incoming defer); the
    seconds until the secondary is in COLO."""
    t0 = time.monotonic()
    start_replication(primary, secondary, uri)
    wait_colo(primary, secondary, timeout)
    return time.monotonic() - t0


def yank(q):
    """Yank the migration out of band, as production does (in band, it
    would wait for the lock a stalled checkpoint holds); nothing to yank is
    fine (the migration ended)."""
    try:
        q.oob("yank", instances=[{"type": "migration"}])
    except QmpError as e:
        if "not found" not in e.desc:
            raise


def fail_over(q, timeout):
    """The cluster manager's takeover on a COLO side whose peer died: yank,
    x-colo-lost-heartbeat, until it runs alone."""
    yank(q)
    q.cmd("x-colo-lost-heartbeat")
    wait_until(f"{q.name} leaving COLO",
               lambda: q.cmd("query-colo-status")["mode"] == "none", timeout)
    wait_until(f"{q.name} running",
               lambda: q.cmd("query-status")["running"], timeout)


def peer_gone(q):
    """Whether @q has reported its peer gone: a COLO_EXIT event, an error
    on its rdma-colo session (a primary whose COLO thread only waits), or
    a migration that failed (the initial copy)."""
    if any(e["event"] == "COLO_EXIT" for e in q.mon.events()):
        return True
    st = q.cmd("query-migrate")
    return (bool(st.get("rdma-colo", {}).get("error"))
            or st.get("status") in ("failed", "cancelled"))


def check_memory(q, dumpdir, timeout):
    """The survivor @q runs, its guest progresses, and its memory is one
    consistent state (problems, [] if none)."""
    before = q.passes()
    wait_until(f"{q.name}'s guest making progress",
               lambda: q.passes() > before, timeout)
    dump = os.path.join(dumpdir, f"{q.name}-{os.getpid()}.mem")
    return memory_problems(q, dump)


def memory_problems(q, dump, dump_seen_by_qemu=None):
    """The guest of @q paused for a pmemsave of its range into @dump (which
    QEMU writes as @dump_seen_by_qemu, if it sees the file system from
    another mount namespace), then resumed: the oracle's problems."""
    q.cmd("stop")
    try:
        q.cmd("pmemsave", val=START, size=END - START,
              filename=dump_seen_by_qemu or dump)
    finally:
        q.cmd("cont")
    bad = oracle(dump)
    os.unlink(dump)
    return bad


def session_threads(q):
    return [t for t in q.threads() if t.startswith(SESSION_THREADS)]


def session_stats(q):
    """query-migrate's rdma-colo member (qemu-glue 0013), or None."""
    return q.cmd("query-migrate").get("rdma-colo")
