# SPDX-License-Identifier: GPL-2.0-or-later
"""colo-stack: a real COLO VM, the full stack, and a client that watches a
failover.

    scripts/with-rxe --topology pair -- scripts/colo-stack \\
        [--transport tcp|rdma-colo|rdma-colo-bg|all] [--seconds S]
        [--kill primary|secondary|none] [--kill-in interval|checkpoint]
        [--failback]

For each transport: the guest (scripts/guest-image: Linux, busybox and
colo-svc on an ext4 disk) boots on a primary on node A; a secondary on
node B joins it with block replication (quorum + replication + NBD), the
COLO proxy (filter-mirror, filter-redirector, filter-rewriter,
colo-compare) and memory over the transport, as QEMU's
docs/system/qemu-colo.rst and docs/user-guide.md say.  A client in its own
network namespace sends requests through the primary's network path for
S seconds and measures them; then the chosen side is killed (SIGKILL, the
host's death), the survivor takes over, and the client goes on.

Debugging: COLO_SVC_DEBUG=1 (when the snapshot is taken: scripts/guest-image)
makes the guest's service print each request's steps on its console (the
QEMUs' .serial files); RDMA_COLO_STACK_HMP=1 gives each QEMU a human
monitor, SOCKDIR/primary.hmp and secondary.hmp.

The oracle, after the client stopped:
  client   no error, only a stall: no request lost, repeated or reordered
           (it checks every answer's sequence number and running checksum)
  disk     the survivor's disk as its guest sees it (exported over NBD):
           e2fsck clean, and its log holds every answered request, in order,
           once, with the client's last sequence number and checksum
"""
import argparse
import os
import signal
import subprocess
import sys
import tempfile
import time

from . import colo, fullstack
from .client import read_log, replay, request_text
from .fabric import Fabric, qemu_paths
from .qmp import event_time
from .util import TOP, percentile, thread_cpu_ms, wait_until, write_secret

TRANSPORTS = ("tcp", "rdma-colo", "rdma-colo-bg")


class Client:
    """rdmacolo.client in the client's namespace."""

    def __init__(self, net, log, rate):
        self.log = log
        env = dict(os.environ, PYTHONPATH=os.path.join(TOP, "scripts"))
        self.proc = subprocess.Popen(
            net.ns_cmd([sys.executable, "-m", "rdmacolo.client",
                        fullstack.GUEST_IP, str(fullstack.SVC_PORT), log,
                        "--rate", str(rate)]),
            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)

    def samples(self):
        try:
            return read_log(self.log)[0]
        except (OSError, ValueError):
            return []

    def stop(self, timeout=120):
        self.proc.send_signal(signal.SIGTERM)
        try:
            _, err = self.proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            _, err = self.proc.communicate()
        samples, verdict = read_log(self.log)
        if verdict is None:
            verdict = {"answered": len(samples),
                       "errors": [f"the client ended without a verdict: "
                                  f"{err.decode(errors='replace')[-300:]}"]}
        return samples, verdict


def control(net, command):
    """One command on colo-svc's control port, from the client's side."""
    code = ("import socket,sys;"
            f"s=socket.create_connection(('{fullstack.GUEST_IP}',"
            f"{fullstack.SVC_PORT + 1}),timeout=30);"
            f"s.sendall(b'{command}\\n');"
            "print(s.makefile().readline().strip())")
    return net.ns(sys.executable, "-c", code).strip()


def uri_of(transport, node, port, secret):
    """The migration address of a secondary on @node."""
    if transport == "tcp":
        return f"tcp:{node.addr}:{port}"
    return f"rdma-colo:{node.addr}:{port}?secret={secret}"


def fault(args, primary, primary_node, secondary, secondary_node, client):
    """SIGKILL of the side args.kill names (args.kill_in: when), the
    survivor's failover as qemu-colo.rst says, and args.after answers to
    the client from it: (survivor, its node, the victim's node, the
    client's longest wait across it in ms)."""
    if args.kill == "primary":
        victim, survivor, survivor_node, victim_node = (
            primary, secondary, secondary_node, primary_node)
    else:
        victim, survivor, survivor_node, victim_node = (
            secondary, primary, primary_node, secondary_node)
    before = len(client.samples())
    when = ""
    if args.kill_in == "checkpoint":
        # The primary stops its guest for each checkpoint: kill the victim
        # as soon as the next one has begun, while the pages, the device
        # state and the disk's buffered writes are on their way.
        primary.mon.events()
        stop = primary.mon.wait_event("STOP", 3 * args.delay / 1000 + 30)
        when = (f" {(time.time() - event_time(stop)) * 1000:.0f} ms "
                f"into a checkpoint")
    t_kill = time.monotonic()
    victim.kill()
    print(f"   killed the {args.kill} on node {victim_node.name}{when} "
          f"(SIGKILL)", flush=True)
    if args.kill == "primary":
        fullstack.fail_over_secondary(survivor, colo.yank)
    else:
        fullstack.fail_over_primary(survivor, colo.yank)
    wait_until(f"{survivor.name} running alone",
               lambda: survivor.cmd("query-colo-status")["mode"] == "none"
               and survivor.cmd("query-status")["running"], args.timeout)
    wait_until("the client's answers after the failover",
               lambda: len(client.samples()) >= before + args.after,
               args.timeout)
    after = [s for s in client.samples() if s[2] + s[3] / 1000 >= t_kill]
    stall = max((s[3] for s in after), default=0)
    print(f"   the survivor took over; the client's longest wait across it: "
          f"{stall / 1000:.1f} s", flush=True)
    return survivor, survivor_node, victim_node, stall


def checkpoint_pauses(q, since):
    """Pauses (ms) of @q's VM from its STOP/RESUME events after @since
    (QEMU's clock), in order."""
    pauses, stop = [], None
    for ev in q.mon.events():
        t = event_time(ev)
        if t < since:
            continue
        if ev["event"] == "STOP":
            stop = t
        elif ev["event"] == "RESUME" and stop is not None:
            pauses.append((t - stop) * 1000)
            stop = None
    return pauses


def verdict_lines(verdict, records, disk_problems):
    """The oracle's lines and whether it holds."""
    ok = True
    lines = []
    errors = verdict.get("errors", [])
    answered = verdict.get("answered", 0)
    # What the disk says about the requests: record k is "seq r<n> pad".
    texts = [r.split(" ", 1)[1] if " " in r else r for r in records]
    want = [request_text(n) for n in range(1, answered + 1)]
    first = verdict.get("first_seq") or 1
    ours = texts[first - 1:]
    ours_set, want_set = set(ours), set(want)
    lost = sum(1 for t in want if t not in ours_set)
    dup = len(ours) - len(ours_set)
    order = 0 if [t for t in ours if t in want_set] == want else 1
    try:
        seq, h = replay(records)
        tail_ok = (seq, f"{h:016x}") == (verdict.get("last_seq"),
                                         verdict.get("last_sum"))
        # A request sent but not answered when the client stopped may be
        # on the disk: one record more is allowed, nothing else.
        extra = len(ours) - answered
        if extra == 1 and ours[-1] == request_text(answered + 1):
            tail_ok = True
        elif extra != 0:
            tail_ok = False
    except ValueError as e:
        tail_ok = False
        disk_problems = disk_problems + [f"the log is out of order: {e}"]
    lines.append(f"client: {answered} requests, {lost} lost, {dup} duplicated, "
                 f"{order} out of order"
                 + (f"; errors: {'; '.join(errors)}" if errors else ""))
    if errors or lost or dup or order or answered == 0:
        ok = False
    if disk_problems or not tail_ok:
        ok = False
        lines.append("disk: INCONSISTENT: " + "; ".join(
            disk_problems + ([] if tail_ok else [
                f"the log ends at record {len(records)}, the client's last "
                f"answer was seq {verdict.get('last_seq')}"])))
    else:
        lines.append(f"disk: consistent (e2fsck clean, {len(records)} records, "
                     f"the client's last answer is the last record)")
    return ok, lines


def failback(args, stack, transport, survivor, survivor_node, secondary,
             secondary_node, client, token):
    """Replication resumed from @survivor to a new @secondary (the disk
    resynced, the pairing's own @token), the client measured again, then
    the same fault as before: (the new survivor, its node, the resync's
    seconds)."""
    survivor.cmd("object-add", **{"qom-type": "secret", "id": "colo-token-2",
                                  "file": token})
    survivor.cmd("object-del", id="colo-token")
    colo.prepare(secondary, args.channels)
    colo.primary_parameters(survivor, args.delay, transport == "rdma-colo-bg")
    uri = uri_of(transport, secondary_node, stack.ports.migrate, "colo-token-2")
    was_secondary = args.kill == "primary"
    t0 = time.monotonic()
    fullstack.start_resync(stack, survivor, was_secondary, survivor_node,
                           secondary, secondary_node)
    fullstack.wait_resynced(survivor, args.timeout)
    resync = time.monotonic() - t0
    fullstack.attach_secondary(stack, survivor, was_secondary, secondary,
                               secondary_node, uri, args.timeout)
    colo.wait_colo(survivor, secondary, args.timeout)
    print(f"   replication resumed to a new secondary on node "
          f"{secondary_node.name}: its disk resynced (drive-mirror) in "
          f"{resync:.1f} s, in COLO {time.monotonic() - t0:.1f} s after "
          f"the resync began", flush=True)
    n0 = len(client.samples())
    time.sleep(args.seconds)
    print(f"   {len(client.samples()) - n0} requests answered in "
          f"{args.seconds:.0f} s of COLO", flush=True)
    survivor, survivor_node, _, _ = fault(args, survivor, survivor_node,
                                          secondary, secondary_node, client)
    return survivor, survivor_node, resync


def run_pair(args, transport, work, sockdir, net, base_port):
    fab = args.fabric
    qemu, _ = qemu_paths(args.qemu_build)
    qemu_img = os.path.join(args.qemu_build, "qemu-img")
    tag = {"tcp": "t", "rdma-colo": "r", "rdma-colo-bg": "b"}[transport]
    stack = fullstack.FullStack(qemu, qemu_img, args.image, work, sockdir,
                                sockdir, net, fullstack.Ports(base_port), tag)
    token = write_secret(f"{work}/{tag}-token")
    secrets = [("colo-token", token)]
    uri = uri_of(transport, fab.b, stack.ports.migrate, "colo-token")
    print(f"== {transport}: memory over {uri}, disk over NBD, network through "
          f"colo-compare; checkpoint every {args.delay} ms", flush=True)
    result = {"transport": transport}
    qp = qs = client = None
    extra_qemus = []
    try:
        trace = dict(trace=args.trace) if args.trace else {}

        def hmp(name):
            # Debugging: a human monitor beside QMP, in the socket dir.
            if not os.environ.get("RDMA_COLO_STACK_HMP"):
                return []
            return ["-monitor", f"unix:{sockdir}/{name}.hmp,server=on,wait=off"]
        qp = stack.primary(f"{tag}primary", fab.a, secrets=secrets,
                           extra=hmp("primary"), **trace)
        result["restore_s"] = stack.restore(qp, args.timeout)
        print(f"   the booted guest restored on the primary, paused until COLO starts it, in "
              f"{result['restore_s']:.1f} s", flush=True)
        qs = stack.secondary(f"{tag}secondary", fab.b, fab.a, secrets=secrets,
                             extra=hmp("secondary"), **trace)
        for q in (qp, qs):
            colo.prepare(q, args.channels)
        colo.primary_parameters(qp, args.delay, transport == "rdma-colo-bg")
        t0 = time.monotonic()
        fullstack.start_replication(stack, qp, qs, fab.b, uri)
        colo.wait_colo(qp, qs, args.timeout)
        print(f"   in COLO after {time.monotonic() - t0:.1f} s", flush=True)

        client = Client(net, os.path.join(work, f"{tag}client.log"), args.rate)
        wait_until("the client's first answer", lambda: client.samples(),
                   args.timeout)
        qp.mon.events()
        since = time.time()
        cpu0 = thread_cpu_ms(qs.pid, "mig/dst/recv")
        t_measure = time.monotonic()
        time.sleep(args.seconds)
        elapsed = time.monotonic() - t_measure
        cpu = thread_cpu_ms(qs.pid, "mig/dst/recv") - cpu0
        pauses = checkpoint_pauses(qp, since)
        window = [s for s in client.samples() if s[2] >= t_measure]
        lat = [s[3] for s in window]
        if not lat:
            raise RuntimeError("no request was answered while measuring")
        result.update(
            requests=len(lat), rps=len(lat) / elapsed,
            p50=percentile(lat, 50), p99=percentile(lat, 99),
            checkpoints=len(pauses), cps=len(pauses) / elapsed,
            pause=sum(pauses) / len(pauses) if pauses else 0.0,
            recv_cpu=cpu / elapsed / 10)
        print(f"   {len(lat)} requests in {elapsed:.0f} s ({result['rps']:.1f}/s), "
              f"latency p50 {result['p50']:.1f} ms, p99 {result['p99']:.1f} ms; "
              f"{len(pauses)} checkpoints, mean pause {result['pause']:.0f} ms; "
              f"secondary receive CPU {result['recv_cpu']:.1f} %", flush=True)

        if args.kill == "none":
            survivor, survivor_node = qp, fab.a
        else:
            survivor, survivor_node, victim_node, result["stall_ms"] = fault(
                args, qp, fab.a, qs, fab.b, client)
            if args.failback:
                # The new pairing's own token (docs/user-guide.md, 6).
                token2 = write_secret(f"{work}/{tag}-token-2")
                qs2 = stack.secondary(f"{tag}secondary2", victim_node,
                                      survivor_node,
                                      secrets=[("colo-token-2", token2)],
                                      extra=hmp("secondary2"), **trace)
                extra_qemus.append(qs2)
                survivor, survivor_node, result["resync_s"] = failback(
                    args, stack, transport, survivor, survivor_node, qs2,
                    victim_node, client, token2)
        samples, verdict = client.stop()
        client = None
        frozen = control(net, "freeze")
        if not frozen.startswith("frozen "):
            raise RuntimeError(f"the guest's service did not freeze: {frozen}")
        image = fullstack.disk_view(stack, survivor, survivor_node,
                                    os.path.join(sockdir, f"{tag}survivor.raw"),
                                    args.timeout)
        problems, records = fullstack.check_disk(image)
        os.unlink(image)
        ok, lines = verdict_lines(verdict, records, problems)
        for line in lines:
            print(line, flush=True)
        result["ok"] = ok
        return result
    finally:
        if client is not None:
            client.stop()
        for q in [qp, qs] + extra_qemus:
            if q is not None:
                q.close()


def print_table(results, args):
    """The transports side by side, then each one's ratios to TCP's: one
    run, the same guest, client and fabric."""
    print()
    print(f"   the same guest and client, checkpoint every {args.delay} ms, "
          f"{args.seconds:.0f} s each:")
    print("   transport      requests/s  p50 ms  p99 ms  ckpt/s  pause ms  "
          "recv CPU %  failover wait s")
    for r in results:
        stall = f"{r['stall_ms'] / 1000:15.1f}" if "stall_ms" in r else f"{'-':>15s}"
        print(f"   {r['transport']:13s}  {r['rps']:10.1f}  {r['p50']:6.1f}  "
              f"{r['p99']:6.1f}  {r['cps']:6.2f}  {r['pause']:8.0f}  "
              f"{r['recv_cpu']:10.1f}  {stall}")
    tcp = next((r for r in results if r["transport"] == "tcp"), None)
    if tcp is None:
        return
    for r in results:
        if r is tcp:
            continue
        ratios = [f"{what} {r[key] / tcp[key]:.2f}x" for what, key in (
            ("requests/s", "rps"), ("p50", "p50"), ("p99", "p99"),
            ("pause", "pause")) if tcp[key]]
        print(f"   {r['transport']} / tcp: {', '.join(ratios)}")


def run(args):
    args.fabric = Fabric()
    print(args.fabric.describe())
    qemu, _ = qemu_paths(args.qemu_build)
    subprocess.run([os.path.join(TOP, "scripts", "guest-image"), "--qemu", qemu,
                    args.image], check=True)
    boot = open(os.path.join(args.image, "boot-seconds")).read().strip()
    print(f"the guest: Linux {open(os.path.join(args.image, 'kernel', 'version')).read().strip()}"
          f", busybox and colo-svc on an ext4 disk; it booted in {boot} s "
          f"when its snapshot was taken (scripts/guest-image)")
    transports = TRANSPORTS if args.transport == "all" else (args.transport,)
    work = args.workdir or tempfile.mkdtemp(prefix="colo-stack.", dir=TOP + "/build")
    os.makedirs(work, exist_ok=True)
    sockdir = tempfile.mkdtemp(prefix="colo-stack.")
    net = fullstack.GuestNet(str(os.getpid() % 10000))
    results = []
    try:
        for i, t in enumerate(transports):
            results.append(run_pair(args, t, work, sockdir, net, args.port + 20 * i))
    finally:
        net.close()
    if len(results) > 1:
        print_table(results, args)
    return 0 if all(r["ok"] for r in results) else 1


def parser():
    ap = argparse.ArgumentParser(prog="colo-stack", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--transport", default="rdma-colo",
                    choices=TRANSPORTS + ("all",))
    ap.add_argument("--seconds", type=float, default=30,
                    help="how long the client is measured before the fault")
    ap.add_argument("--kill", default="primary",
                    choices=("primary", "secondary", "none"))
    ap.add_argument("--kill-in", default="interval",
                    choices=("interval", "checkpoint"),
                    help="when: at a random moment (mostly between "
                         "checkpoints), or as soon as a checkpoint began")
    ap.add_argument("--failback", action="store_true",
                    help="after the failover, resume replication to a new "
                         "secondary on the victim's node (its disk resynced "
                         "by drive-mirror), measure again, then the same "
                         "fault again")
    ap.add_argument("--after", type=int, default=20,
                    help="answers the client must get after the failover")
    ap.add_argument("--rate", type=float, default=20,
                    help="the client's requests per second at most")
    ap.add_argument("--delay", type=int, default=2000,
                    help="x-checkpoint-delay, ms")
    ap.add_argument("--channels", type=int, default=2)
    ap.add_argument("--port", type=int, default=18400)
    ap.add_argument("--timeout", type=float, default=300)
    ap.add_argument("--image", default=os.path.join(TOP, "build", "guest"))
    ap.add_argument("--qemu-build", default=os.path.join(TOP, "build", "qemu", "build"))
    ap.add_argument("--workdir")
    ap.add_argument("--trace", action="append", default=[],
                    help="a QEMU trace event pattern for both QEMUs (their "
                         "stderr files in the work directory)")
    return ap


def main(argv=None):
    return run(parser().parse_args(argv))
