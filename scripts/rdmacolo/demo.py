# SPDX-License-Identifier: GPL-2.0-or-later
"""colo-demo: a real COLO pair of QEMUs over rdma-colo.

Starts a primary and a secondary QEMU (built by scripts/build-qemu) with a
tiny guest that dirties 100 MiB of RAM in a loop, replicates it over
rdma-colo (4 multifd channels RDMA-writing into the secondary's COLO cache),
prints a line per checkpoint, then kills the primary, fails over to the
secondary and shows that the guest goes on running there.

Run it where an RDMA device exists (scripts/demo --colo does that through
scripts/with-rxe):

    scripts/with-rxe -- scripts/colo-demo [--checkpoints N] [--delay MS]
        [--transport both|all|tcp|rdma-colo|rdma-colo-bg]
        [--workload migration-test|sweep|hot]

--transport all compares TCP, rdma-colo and rdma-colo with background sync
(dirty pages sent between checkpoints) in one run; --workload picks how the
guest dirties its RAM (see --help).

The guest is QEMU's own migration-test boot sector (taken from the QEMU
source tree at run time): it increments one byte in every 4 KiB page from
1 MiB to 100 MiB and prints 'B' on the serial port after each pass.  Disks
and networking (block replication, colo-compare) are left out: they are
not what the transport carries.
"""
import argparse
import os
import tempfile
import time

from . import colo, failback, fabric
from .guest import bootsector, sweep_guest
from .node import Qemu
from .qmp import event_time
from .trace import TraceLog
from .util import TOP, die, percentile, thread_cpu_ms, write_secret

TRACE_EVENTS = ("rdma_colo_*", "colo_flush_ram_cache_begin",
                "colo_send_message", "colo_receive_message",
                "colo_background_sync")


def session_stats(q, side):
    st = colo.session_stats(q)
    if st is None:
        die(f"{side}: query-migrate has no rdma-colo statistics: "
            f"{q.cmd('query-migrate')}")
    return st


def report_session(qp, qs, ptrace):
    """The sessions' statistics from QMP after the measured checkpoints,
    checked against the trace's per-checkpoint figures."""
    pst, sst = session_stats(qp, "primary"), session_stats(qs, "secondary")
    lat = pst.get("fence-latency")
    if not lat or not 0 < lat["p50"] <= lat["p99"] <= lat["max"]:
        die(f"primary: implausible fence latency in query-migrate: {lat}")
    # Counters only grow: by now at least what the trace logs saw.
    traced = ptrace.totals()
    if pst["bytes"] < traced[0] or pst["write-requests"] < traced[3]:
        die(f"primary: query-migrate counts {pst['bytes']} bytes in "
            f"{pst['write-requests']} WRITEs, the trace {traced[0]} in {traced[3]}")
    for side, st in (("primary", pst), ("secondary", sst)):
        if st.get("error") or not st["regions"] or not st["registered-bytes"]:
            die(f"{side}: query-migrate: {st}")
    print(f"   query-migrate: primary RDMA-wrote {pst['bytes'] / 2**20:.1f} MiB "
          f"({pst['pages']} pages, {pst['write-requests']} WRITEs, "
          f"{pst['descriptors']} descriptors), {pst['fences']} fences, "
          f"{pst['barriers']} barriers, {pst['credit-waits']} credit waits; "
          f"fence latency p50 {lat['p50'] / 1000:.1f} ms, p99 "
          f"{lat['p99'] / 1000:.1f} ms, max {lat['max'] / 1000:.1f} ms over the "
          f"last {lat['samples']}; longest wait for the secondary "
          f"{pst['owed-wait-max'] / 1000:.1f} ms")
    print(f"   registered: primary {pst['registered-bytes'] / 2**20:.0f} MiB in "
          f"{pst['regions']} regions, secondary {sst['registered-bytes'] / 2**20:.0f}"
          f" MiB in {sst['regions']} ({'on demand' if pst['on-demand-paging'] else 'pinned'})")


def wait_checkpoint_traces(ptrace, strace, n, work):
    """Checkpoint @n in both trace logs: (sent, received).  Both hold it by
    the time the secondary resumed; allow the file system a moment."""
    deadline = time.monotonic() + 5
    while True:
        ptrace.read()
        strace.read()
        sent, recv = ptrace.checkpoint(n), strace.checkpoint(n)
        if sent and recv and recv[2]:
            return sent, recv
        if time.monotonic() > deadline:
            die(f"checkpoint {n}: its COLO request or flush is missing "
                f"from the trace logs in {work}")
        time.sleep(0.05)


def checkpoint_row(n, pause, sent, recv, cpu_ms, rdma, background):
    """A checkpoint's figures, checked: every page written reaches COLO's
    bitmap, and the flush covers the pages sent."""
    d, fences, _, bg = sent
    got, _, flushes, _ = recv
    row = {"pause": pause, "flushed": sum(flushes), "cpu": cpu_ms,
           "background": bg, "at_ckpt": d[1] + d[2] - bg if rdma else None,
           "bytes": d[0] if rdma else None}
    line = f"   {n:4d}  {pause:9.1f}  {row['flushed']:13d}  {row['cpu']:11.0f}"
    if rdma:
        line += (f"  {d[1]:10d}  {d[2]:4d}  {bg:10d}  {row['at_ckpt']:7d}"
                 f"  {d[0] / 2**20:8.1f}  {d[3]:6d}"
                 f"  {len(fences):6d}  {max(fences, default=0) / 1000:12.1f}")
        if (d[1], d[2]) != (got[1], got[2]):
            die(f"checkpoint {n}: {d[1]}+{d[2]} pages (+zero) sent but "
                f"{got[1]}+{got[2]} received for marking on the secondary")
        # The flush also restores what the secondary's own guest dirtied,
        # so it may flush more than was sent.  A page sent in the
        # background and again at the checkpoint counts twice in what was
        # sent, once in the flush.
        distinct = row["at_ckpt"] if background else d[1] + d[2]
        if row["flushed"] < distinct:
            die(f"checkpoint {n}: {distinct} pages sent at the checkpoint "
                f"but only {row['flushed']} flushed on the secondary")
    print(line)
    return row


def run_pair(args, transport, qemu, work, sockdir, disk, failover):
    """One COLO pair over @transport, the primary on node A, the secondary
    on node B; returns per-checkpoint figures."""
    rdma = transport != "tcp"
    background = transport == "rdma-colo-bg"
    fab = args.fabric
    if transport == "tcp":
        uri = f"tcp:{fab.b.addr}:{args.port + 1}"
    else:
        uri = (f"rdma-colo:{fab.b.addr}:{args.port + (2 if background else 0)}"
               f"?secret=colo-token")
    tag = {"tcp": "tcp", "rdma-colo": "rdma", "rdma-colo-bg": "rdmabg"}[transport]
    # As the user guide deploys it: a random token per pair, in a 0600 file
    # both QEMUs read through a secret object (never on a command line).
    token = write_secret(f"{work}/{tag}-token")

    def start(name, extra, node):
        return Qemu(qemu, f"{tag}-{name}", work, sockdir, disk=disk,
                    extra=extra, trace=TRACE_EVENTS,
                    log=f"{work}/{tag}-{name}.trace",
                    secrets=[("colo-token", token)], node=node)

    print(f"== {transport}: {uri}, {args.channels} multifd channels, "
          f"checkpoint every {args.delay} ms"
          + (", dirty pages sent between checkpoints (x-colo-background-sync)"
             if background else ""))
    qs = qp = None
    rows = []
    try:
        qs = start("secondary", ["-incoming", "defer"], fab.b)
        qp = start("primary", ["-S"], fab.a)
        for q in (qs, qp):
            colo.prepare(q, args.channels)
        colo.primary_parameters(qp, args.delay, background)
        qs.cmd("migrate-incoming", uri=uri)
        qp.cmd("cont")
        time.sleep(1)
        t0 = time.monotonic()
        qp.cmd("migrate", uri=uri)

        ptrace = TraceLog(f"{work}/{tag}-primary.trace")
        strace = TraceLog(f"{work}/{tag}-secondary.trace")
        while not colo.in_colo(qs):
            st = qp.cmd("query-migrate")
            if st.get("status") == "failed":
                die(f"migration failed: {st.get('error-desc')}")
            if time.monotonic() - t0 > 300:
                die("no COLO state after 300 s; see " + work)
            time.sleep(0.1)
        ptrace.read()
        if rdma:
            # The session's own counters, as an operator reads them.
            st = session_stats(qp, "primary")
            print(f"   in COLO after {time.monotonic() - t0:.1f} s: the initial copy "
                  f"RDMA-wrote {st['pages']} pages ({st['bytes'] / 2**20:.1f} MiB) in "
                  f"{st['write-requests']} WRITEs, plus {st['zero-pages']} zero pages "
                  f"by descriptor only (query-migrate)")
        else:
            print(f"   in COLO after {time.monotonic() - t0:.1f} s")
        print(f"   secondary {qs.cmd('query-colo-status')}")
        print()
        print("   ckpt  paused ms  flushed pages  recv CPU ms"
              + ("  pages sent  zero  background  at ckpt  RDMA MiB  WRITEs  fences"
                 "  max fence us" if rdma else ""))
        stop_t = None
        cpu = thread_cpu_ms(qs.pid, "mig/dst/recv")
        b_colo, t_colo = qp.passes(), time.monotonic()
        qs.mon.events()
        while len(rows) < args.checkpoints:
            for ev in qs.mon.events():
                if ev["event"] == "STOP":
                    stop_t = event_time(ev)
                elif ev["event"] == "RESUME" and stop_t is not None:
                    pause = (event_time(ev) - stop_t) * 1000
                    stop_t = None
                    n = len(rows) + 1
                    sent, recv = wait_checkpoint_traces(ptrace, strace, n, work)
                    now = thread_cpu_ms(qs.pid, "mig/dst/recv")
                    rows.append(checkpoint_row(n, pause, sent, recv, now - cpu,
                                               rdma, background))
                    cpu = now
            if not qp.alive() or not qs.alive():
                die("a QEMU exited during COLO; see " + work)
            time.sleep(0.1)
        # The primary guest's progress in COLO: it runs between checkpoints
        # and is stopped during them, on 2 CPUs shared with the transport.
        passes, secs = qp.passes() - b_colo, time.monotonic() - t_colo
        progress = passes / secs
        for r in rows:
            r["progress"] = progress
        what = ("passes over its 99 MiB" if args.workload == "migration-test"
                else "passes over its range")
        # On a slow fabric one pass can take longer than the checkpoints
        # measured: say so instead of printing a rate of 0.
        print(f"   guest progress in COLO on the primary: "
              + (f"{passes} {what} in {secs:.1f} s ({progress:.2f} per s)"
                 if passes else f"not one of its {what} finished in {secs:.1f} s")
              + " (a 'B' on its serial port each)")
        if rdma:
            report_session(qp, qs, ptrace)
        print()
        if not failover:
            return rows

        # Failover: the primary host "dies"; the secondary takes over.
        print(f"   primary {qp.cmd('query-colo-status')}")
        before = qs.passes()
        t_kill = time.monotonic()
        qp.kill()
        print("   primary killed (SIGKILL); secondary: yank + x-colo-lost-heartbeat")
        colo.fail_over(qs, 30)
        status = qs.cmd("query-status")
        print(f"   secondary left COLO after {time.monotonic() - t_kill:.2f} s: "
              f"{qs.cmd('query-colo-status')}, VM {status['status']}")
        if rdma:
            # The session ends with COLO: nothing stays registered (pinned).
            while colo.session_stats(qs) is not None:
                if time.monotonic() - t_kill > 30:
                    die("30 s after the failover the secondary still has an "
                        "rdma-colo session: " + str(colo.session_stats(qs)))
                time.sleep(0.1)
            print("   its rdma-colo session is gone (query-migrate): "
                  "nothing registered any more")
        time.sleep(5)
        after = qs.passes()
        unit = ("passes over its 99 MiB" if args.workload == "migration-test"
                else "passes over its range")
        print(f"   the guest ran on: {after - before} more {unit} in 5 s on the "
              f"former secondary")
        if after <= before or not status.get("running"):
            die("the secondary's guest did not continue after failover")
        qs.cmd("quit")
        qs.proc.wait(timeout=30)
        print()
        return rows
    finally:
        for q in (qp, qs):
            if q is not None:
                q.close()


def mean(rows, key):
    return sum(r[key] for r in rows) / len(rows)


TRANSPORTS = {"both": ["tcp", "rdma-colo"],
              "all": ["tcp", "rdma-colo", "rdma-colo-bg"]}


def comparison(args, results):
    """The table of every transport's figures, and the ratios to TCP."""
    warm = min(args.warmup, args.checkpoints - 1)
    results = {t: r[warm:] for t, r in results.items()}
    print("colo-demo: same guest, same fabric, same run "
          f"({args.workload}, checkpoints {warm + 1}..{args.checkpoints}, "
          f"x-checkpoint-delay {args.delay} ms):")
    print("  " + " " * 32 + "".join(f"{t:>14s}" for t in results))
    base = results.get("tcp")
    sweep = args.workload != "migration-test"

    def cpu_per_gib(r):
        return (sum(x["cpu"] for x in r) * 2**18
                / max(1, sum(x["flushed"] for x in r)))

    def pauses(r):
        return [x["pause"] for x in r]

    lines = [("secondary paused, ms, mean", lambda r: mean(r, "pause")),
             ("  p50", lambda r: percentile(pauses(r), 50)),
             ("  p99", lambda r: percentile(pauses(r), 99)),
             ("pages flushed per checkpoint", lambda r: mean(r, "flushed")),
             ("pages sent at the checkpoint",
              lambda r: mean(r, "at_ckpt") if r[0]["at_ckpt"] is not None else None),
             ("pages sent in the background",
              lambda r: mean(r, "background") if r[0]["at_ckpt"] is not None else None),
             ("receive CPU, ms per checkpoint", lambda r: mean(r, "cpu")),
             ("guest progress, MiB/s", lambda r: r[0]["progress"] if sweep else None),
             ("receive CPU, ms per GiB flushed", cpu_per_gib)]
    for name, fn in lines:
        cells = []
        for r in results.values():
            v = fn(r)
            cells.append(f"{v:14.1f}" if v is not None else f"{'-':>14s}")
        print(f"  {name:32s}" + "".join(cells))
    if not base:
        return
    for t, r in results.items():
        if t == "tcp":
            continue
        p50 = percentile(pauses(r), 50) / percentile(pauses(base), 50)
        p99 = percentile(pauses(r), 99) / percentile(pauses(base), 99)
        print(f"  {t}/tcp: paused {mean(r, 'pause') / mean(base, 'pause'):.2f}x "
              f"(p50 {p50:.2f}x, p99 {p99:.2f}x), receive CPU per GiB "
              f"{cpu_per_gib(r) / max(1e-9, cpu_per_gib(base)):.2f}x"
              + (f", guest progress {r[0]['progress'] / base[0]['progress']:.2f}x"
                 if sweep and base[0]["progress"] else ""))


def run_cycles(args):
    """--cycles: scripts/failback with this demo's settings."""
    fargs = failback.parser().parse_args([
        "--cycles", str(args.cycles), "--checkpoints", str(args.checkpoints),
        "--delay", str(args.delay), "--channels", str(args.channels),
        "--grow-tlb", str(args.grow_tlb),
        "--qemu-build", args.qemu_build]
        + (["--addr", args.addr] if args.addr else []))
    return failback.run(fargs)


def parser():
    ap = argparse.ArgumentParser(prog="colo-demo",
                                 description=__doc__.split("\n")[0])
    ap.add_argument("--checkpoints", type=int, default=6)
    ap.add_argument("--warmup", type=int, default=1,
                    help="checkpoints shown but left out of the summary (default 1: "
                         "the first COLO checkpoint is 1.5-2x longer on every transport)")
    ap.add_argument("--delay", type=int, default=1000, help="x-checkpoint-delay, ms")
    ap.add_argument("--channels", type=int, default=4, help="multifd channels")
    ap.add_argument("--transport", default="both",
                    choices=("both", "all", "tcp", "rdma-colo", "rdma-colo-bg"),
                    help="both: TCP first as the baseline, then rdma-colo (with "
                         "failover); all: also rdma-colo with background sync "
                         "(x-colo-background-sync), which then gets the failover; "
                         "rdma-colo-bg: that one alone")
    ap.add_argument("--workload", default="migration-test",
                    choices=("migration-test", "sweep", "hot"),
                    help="migration-test: QEMU's test guest, every page of 99 MiB "
                         "dirtied again and again (tens of passes per second); "
                         "sweep: our guest, one slow pass over --sweep-mib MiB "
                         "(--sweep-delay), each page written about once per "
                         "interval, so the dirty set is mostly stable between "
                         "checkpoints; hot: our guest over 8 MiB at full speed")
    ap.add_argument("--sweep-mib", type=int, default=64,
                    help="sweep: MiB swept from 1 MiB (default 64)")
    ap.add_argument("--sweep-delay", type=int, default=12000,
                    help="sweep: LOOP iterations after each page (default 12000: "
                         "about 4 pages/ms in the rxe micro-VM, nested TCG)")
    ap.add_argument("--addr",
                    help="IPv4 address of the RDMA device, both QEMUs on it "
                         "(default: with-rxe's nodes, $RDMA_COLO_TEST_ADDR and "
                         "$RDMA_COLO_TEST_PEER_ADDR)")
    ap.add_argument("--port", type=int, default=29998)
    ap.add_argument("--qemu-build", default=os.path.join(TOP, "build/qemu/build"))
    ap.add_argument("--workdir", default=os.path.join(TOP, "build/colo-demo"),
                    help="where logs, traces and serial output are kept")
    ap.add_argument("--cycles", type=int, default=0,
                    help="instead of the comparison: N failover/failback cycles "
                         "over rdma-colo, alternately killing the primary and the "
                         "secondary, each survivor replicated again to a new "
                         "secondary (scripts/failback: consistency, leak and "
                         "timing checks); --checkpoints per cycle")
    ap.add_argument("--grow-tlb", type=int, default=0, metavar="N",
                    help="with --cycles: flush the first primary's TLB N times "
                         "before COLO, so that it holds the guest's whole range "
                         "as a former secondary's does (scripts/failback)")
    return ap


def main(argv=None):
    args = parser().parse_args(argv)
    if args.cycles:
        return run_cycles(args)
    args.fabric = fabric.Fabric(args.addr)

    qemu, qemu_src = fabric.qemu_paths(args.qemu_build)
    os.makedirs(args.workdir, exist_ok=True)
    work = tempfile.mkdtemp(prefix="colo-demo-", dir=args.workdir)
    # QMP sockets on a local filesystem (the VM's shares are 9p: no sockets).
    sockdir = tempfile.mkdtemp(prefix="colo-demo-")
    disk = os.path.join(work, "bootsect")
    if args.workload == "migration-test":
        args.guest_pages = (100 - 1) * 256
        sector = bootsector(qemu_src)
    elif args.workload == "sweep":
        if not 2 <= args.sweep_mib <= 140:
            die("--sweep-mib must be 2..140 (the guest has 150 MiB)")
        args.guest_pages = (args.sweep_mib - 1) * 256
        sector = sweep_guest(1, args.sweep_mib, args.sweep_delay)
    else:
        args.guest_pages = (9 - 1) * 256
        sector = sweep_guest(1, 9, 1)
    with open(disk, "wb") as f:
        f.write(sector)

    print(f"colo-demo: QEMU {qemu}")
    print(f"colo-demo: {args.fabric.describe()}; files in {work}")
    print(f"colo-demo: workload {args.workload} ({args.guest_pages} pages)")
    print()
    results = {}
    order = TRANSPORTS.get(args.transport, [args.transport])
    for t in order:
        results[t] = run_pair(args, t, qemu, work, sockdir, disk,
                              failover=(t == order[-1] and t != "tcp"))
    if len(results) >= 2:
        comparison(args, results)
    print("colo-demo: OK")
    return 0
