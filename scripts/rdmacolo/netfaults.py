# SPDX-License-Identifier: GPL-2.0-or-later
"""netfaults: rdma-colo across a degraded link, against the clean link in
the same run.

    scripts/with-rxe --topology pair -- scripts/netfaults [--conditions L]
        [--bench-size 256M] [--bench-dirty 16M] [--bench-checkpoints 5]
        [--checkpoints 5] [--delay 500] [--uri-options OPTS]

For each link condition (netem on both directions of the pair topology's
link: loss, delay, reorder, duplicate, corrupt; "clean" first), in turn:

  bench  rdma-colo-bench, primary on node A, secondary on node B: every
         checkpoint's data RDMA-written across the link and verified (the
         secondary's copy equals the primary's memory); its throughput and
         checkpoint transfer time;
  colo   a COLO pair of QEMUs (primary on A, secondary on B, 4 multifd
         channels) through K checkpoints: their pause (STOP to RESUME on
         the secondary); then the primary is killed, the secondary takes
         over, and its guest memory must be one consistent state (the
         chaos oracle);

with the link's and the rxe devices' counters (retransmissions, sequence
errors, work requests that ran out of retries) over both.  A degraded link
may end the COLO session: RC retransmits a lost packet retry-count times
(6 by default: `retry-count=` in --uri-options, 7 never gives up on rxe)
and soft-RoCE counts every go-back-N round without a positive ACK as one,
so at 1 % loss a long burst of RDMA WRITEs can run out of them.  That is
accepted on a degraded link (not on the clean one) if the primary named
the cause within --timeout; it then takes over and its guest memory must
be consistent (docs/protocol.md, "Loss").  A corrupted packet must be
dropped by the receiver's ICRC check and sent again: the bench's
verification would see anything else.  It prints a table with each condition's figures and their ratio to
the clean link's, and exits 1 if any checkpoint was not verified or any
guest was inconsistent.
"""
import argparse
import json
import os
import subprocess
import tempfile
import time

from . import colo, fabric
from .guest import bootsector, oracle_self_test
from .node import Qemu
from .qmp import QemuGone, QmpError, event_time
from .util import TOP, Hang, die, median, percentile, write_secret

# label -> netem arguments ("" is no netem).
CONDITIONS = {
    "clean": "",
    "loss-0.1": "loss 0.1%",
    "loss-1": "loss 1%",
    "delay-1ms": "delay 1ms",
    "delay-10ms": "delay 10ms",
    "reorder-1": "delay 1ms reorder 1%",
    "duplicate-1": "duplicate 1%",
    "corrupt-0.1": "corrupt 0.1%",
}

# rxe hw counters worth showing: requests sent again, sequence errors seen.
RXE_COUNTERS = ("completer_retry_err", "rcvd_seq_err", "duplicate_request",
                "out_of_seq_request", "retry_exceeded_err")


def counters_delta(before, after):
    return {k: after.get(k, 0) - before.get(k, 0) for k in after}


def run_bench(args, tmp, label):
    """(rdma MB/s, mean checkpoint transfer ms, verified, total) of one
    bench run across the link."""
    out = os.path.join(tmp, f"bench-{label}.json")
    cmd = [os.path.join(args.build, "bench", "rdma-colo-bench"),
           "--transport", "rdma", "--size", args.bench_size,
           "--dirty", args.bench_dirty, "--checkpoints",
           str(args.bench_checkpoints), "--empty-fences", "10", "--quiet",
           "--json", out]
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=args.timeout * 5)
    if not os.path.exists(out):
        raise RuntimeError(f"bench ({label}) failed: {p.stderr[-800:]}")
    res = json.load(open(out))
    run = next(r for r in res["runs"] if r["transport"] == "rdma")
    samples = run["samples"]
    verified = sum(1 for s in samples if s["verified"])
    nbytes = sum(s["bytes"] for s in samples)
    ns = sum(s["transfer_ns"] for s in samples)
    mbps = nbytes / (ns / 1e9) / 1e6 if ns else 0.0
    return {"mbps": mbps, "transfer_ms": ns / len(samples) / 1e6 if samples else 0,
            "verified": verified, "checkpoints": len(samples),
            "ok": p.returncode == 0 and run["ok"], "link_bytes": run["link_bytes"],
            "bytes": nbytes}


def session_end(primary):
    """Why the primary's rdma-colo session ended, or None while it runs:
    its session's error, or the failed initial copy's."""
    st = primary.cmd("query-migrate")
    err = st.get("rdma-colo", {}).get("error")
    if err:
        return err
    if st.get("status") in ("failed", "cancelled"):
        return st.get("error-desc", "the migration " + st["status"])
    return None


def run_colo(args, qemu, work, sockdir, disk, label, port):
    """Pauses (ms) of K checkpoints of a COLO pair across the link, then a
    failover to the secondary: (pauses, problems with its memory, None).

    A link this bad may end the session (RC gives up on a packet after
    retry-count retries): then the primary must have named the cause, it
    takes over (the cluster manager's choice when the pair lost each other
    but the primary still runs) and its memory must be consistent:
    (pauses, problems, (seconds into the run, the cause))."""
    fab = args.fabric
    token = write_secret(os.path.join(work, f"{label}-token"))
    uri = f"rdma-colo:{fab.b.addr}:{port}?secret=colo-token"
    if args.uri_options:
        uri += "&" + args.uri_options
    q = {}
    try:
        q["secondary"] = Qemu(qemu, f"{label}-secondary", work, sockdir,
                              disk=disk, extra=["-incoming", "defer"],
                              secrets=[("colo-token", token)],
                              qmp_timeout=args.timeout, node=fab.b)
        q["primary"] = Qemu(qemu, f"{label}-primary", work, sockdir, disk=disk,
                            extra=["-S"], secrets=[("colo-token", token)],
                            qmp_timeout=args.timeout, node=fab.a)
        for x in q.values():
            colo.prepare(x, args.channels)
        colo.primary_parameters(q["primary"], args.delay)
        q["primary"].cmd("cont")
        time.sleep(0.5)
        t0 = time.monotonic()
        deadline = t0 + args.timeout * 3
        pauses, stop, ended, next_look = [], None, None, t0
        try:
            colo.replicate(q["primary"], q["secondary"], uri, args.timeout * 3)
        except (Hang, QmpError) as e:
            ended = session_end(q["primary"])
            if not ended:
                raise
            print(f"  {label}: replication ended: {e}", flush=True)
        q["secondary"].mon.events()
        while not ended and len(pauses) < args.checkpoints:
            for ev in q["secondary"].mon.events():
                if ev["event"] == "STOP":
                    stop = event_time(ev)
                elif ev["event"] == "RESUME" and stop is not None:
                    pauses.append((event_time(ev) - stop) * 1000)
                    stop = None
            now = time.monotonic()
            if now >= next_look:
                ended = session_end(q["primary"])
                next_look = now + 0.5
            if not ended and now > deadline:
                raise Hang(f"{label}: {len(pauses)} checkpoints in "
                           f"{args.timeout * 3} s, and no error")
            time.sleep(0.05)
        if ended:
            ended = (time.monotonic() - t0, ended)
            q["secondary"].kill()
            if q["primary"].cmd("query-colo-status")["mode"] != "none":
                colo.fail_over(q["primary"], args.timeout)
            return pauses, colo.check_memory(q["primary"], sockdir,
                                             args.timeout), ended
        q["primary"].kill()
        colo.fail_over(q["secondary"], args.timeout)
        bad = colo.check_memory(q["secondary"], sockdir, args.timeout)
        return pauses, bad, None
    finally:
        for x in q.values():
            x.close()


def colo_summary(row):
    """The COLO half of a condition's line."""
    guest = ("INCONSISTENT: " + "; ".join(row["bad"][:2]) if row["bad"]
             else "consistent")
    pauses = (f"pause p50 {median(row['pauses']):.0f} ms over "
              f"{len(row['pauses'])} checkpoints" if row["pauses"]
              else "no checkpoint")
    if row.get("ended"):
        t, why = row["ended"]
        return (f"{pauses}, then the session ended after {t:.1f} s: {why}; "
                f"the primary took over, guest {guest}")
    return f"{pauses}, guest {guest}"


def main(argv=None):
    ap = argparse.ArgumentParser(prog="netfaults",
                                 description=__doc__.split("\n")[0])
    ap.add_argument("--conditions", default=",".join(CONDITIONS),
                    help="comma-separated, from: " + ", ".join(CONDITIONS)
                    + " (clean is always run first)")
    ap.add_argument("--bench-size", default="256M")
    ap.add_argument("--bench-dirty", default="16M")
    ap.add_argument("--bench-checkpoints", type=int, default=5)
    ap.add_argument("--checkpoints", type=int, default=5,
                    help="COLO checkpoints per condition")
    ap.add_argument("--delay", type=int, default=500, help="x-checkpoint-delay, ms")
    ap.add_argument("--channels", type=int, default=4)
    ap.add_argument("--uri-options", default="",
                    help="appended to the COLO pair's address, e.g. "
                    "retry-count=7")
    ap.add_argument("--timeout", type=int, default=60,
                    help="deadline of a step, s (a hang if missed)")
    ap.add_argument("--port", type=int, default=36000)
    ap.add_argument("--build", default=os.path.join(TOP, "build"))
    ap.add_argument("--qemu-build", default=os.path.join(TOP, "build/qemu/build"))
    ap.add_argument("--workdir", default=os.path.join(TOP, "build/netfaults"))
    args = ap.parse_args(argv)
    args.fabric = fabric.Fabric()
    if args.fabric.topology != "pair":
        die("netfaults needs the pair topology: scripts/with-rxe --topology "
            "pair -- scripts/netfaults")
    labels = ["clean"] + [c for c in args.conditions.split(",") if c != "clean"]
    for c in labels:
        if c not in CONDITIONS:
            die(f"unknown condition '{c}' (known: {', '.join(CONDITIONS)})")
    qemu, qemu_src = fabric.qemu_paths(args.qemu_build)
    os.makedirs(args.workdir, exist_ok=True)
    work = tempfile.mkdtemp(prefix="netfaults-", dir=args.workdir)
    sockdir = tempfile.mkdtemp(prefix="netfaults-")
    disk = os.path.join(work, "bootsect")
    with open(disk, "wb") as f:
        f.write(bootsector(qemu_src))
    oracle_self_test(sockdir)
    print(f"netfaults: {args.fabric.describe()}; bench {args.bench_size} guest, "
          f"{args.bench_dirty} dirtied per checkpoint, {args.bench_checkpoints} "
          f"checkpoints; COLO {args.checkpoints} checkpoints every {args.delay} "
          f"ms, {args.channels} channels; files in {work}", flush=True)
    rows, failed = [], False
    for i, label in enumerate(labels):
        netem = CONDITIONS[label]
        fab = args.fabric
        if netem:
            fab.link("degrade", *netem.split())
        else:
            fab.link("clean")
        c0 = fab.counters()
        row = {"label": label, "netem": netem or "-"}
        try:
            row["bench"] = run_bench(args, work, label)
            row["pauses"], row["bad"], row["ended"] = run_colo(
                args, qemu, work, sockdir, disk, label, args.port + i)
        except (Hang, QmpError, QemuGone, RuntimeError, OSError,
                subprocess.TimeoutExpired) as e:
            row["error"] = str(e)
        finally:
            fab.link("clean")
        d = counters_delta(c0, fab.counters())
        row["retries"] = sum(d.get(f"{dev}_completer_retry_err", 0)
                             for dev in ("rxe0", "rxe1"))
        row["seq_err"] = sum(d.get(f"{dev}_{k}", 0) for dev in ("rxe0", "rxe1")
                             for k in ("rcvd_seq_err", "out_of_seq_request",
                                       "duplicate_request"))
        row["retry_exceeded"] = sum(d.get(f"{dev}_retry_exceeded_err", 0)
                                    for dev in ("rxe0", "rxe1"))
        row["link_mib"] = (d.get("bytes_a_to_b", 0) + d.get("bytes_b_to_a", 0)) / 2**20
        rows.append(row)
        b = row.get("bench")
        bad_ckpt = not b or b["verified"] != b["checkpoints"] or not b["ok"]
        # The clean link must carry every checkpoint; a degraded one may end
        # the session, if its cause was named and the survivor consistent.
        ended_clean = bool(row.get("ended")) and not netem
        row["failed"] = bool(row.get("error") or row.get("bad") or bad_ckpt
                             or ended_clean)
        failed |= row["failed"]
        print(f"  {label:12s} netem '{row['netem']}': "
              + (f"ERROR {row['error']}" if row.get("error") else
                 f"bench {b['mbps']:.1f} MB/s, {b['verified']}/{b['checkpoints']} "
                 f"checkpoints verified; COLO " + colo_summary(row))
              + f"; rxe retries {row['retries']}, retries exceeded "
                f"{row['retry_exceeded']}, sequence errors "
                f"{row['seq_err']}, {row['link_mib']:.0f} MiB over the link",
              flush=True)

    clean = rows[0]
    print()
    print("netfaults: condition      bench MB/s  x clean  verified  COLO pause "
          "p50 ms  p99 ms  x clean  guest         retries  seq err")
    for r in rows:
        if r.get("error"):
            print(f"  {r['label']:22s} ERROR: {r['error']}")
            continue
        b, cb = r["bench"], clean.get("bench")
        p50 = median(r["pauses"]) if r["pauses"] else 0
        cp50 = median(clean["pauses"]) if clean.get("pauses") else 0
        print(f"  {r['label']:22s} {b['mbps']:10.1f}  "
              f"{b['mbps'] / cb['mbps'] if cb and cb['mbps'] else 0:7.2f}  "
              f"{b['verified']:3d}/{b['checkpoints']:<3d}  "
              f"{p50:17.0f}  "
              f"{percentile(r['pauses'], 99) if r['pauses'] else 0:6.0f}  "
              f"{p50 / cp50 if cp50 else 0:7.2f}  "
              f"{'INCONSISTENT' if r['bad'] else 'consistent':12s}  "
              f"{r['retries']:7d}  {r['seq_err']:7d}"
              + (f"  session ended after {r['ended'][0]:.1f} s"
                 if r.get("ended") else ""))
    print(f"netfaults: {len(rows)} conditions, "
          f"{sum(1 for r in rows if r['failed'])} with a problem")
    return 1 if failed else 0
