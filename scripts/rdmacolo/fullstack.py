# SPDX-License-Identifier: GPL-2.0-or-later
"""The full COLO stack of QEMU's docs/system/qemu-colo.rst around a real
guest (scripts/guest-image: a Linux kernel, busybox and colo-svc on an
ext4 disk): block replication (quorum + replication + NBD) for the disk,
colo-compare + filter-mirror + filter-redirector + filter-rewriter for the
NIC, and memory over the transport under test (rdma-colo: or tcp:).

    net = GuestNet(tag)               bridge, one tap per QEMU, the client's
                                      network namespace
    p = FullStackQemu.primary(...)    the command lines of qemu-colo.rst
    s = FullStackQemu.secondary(...)
    start_colo(p, s, uri, ...)        NBD export, x-blockdev-change, migrate
    fail_over_secondary(s) / fail_over_primary(p)
    disk_view(q, ...)                 the survivor's disk as its guest sees
                                      it, read over NBD into a file
    check_disk(image)                 e2fsck, and the service's log records

Addresses: the guest is 10.77.0.10/24 behind the bridge, the client
10.77.0.2/24 in its namespace.  The COLO proxy's sockets and NBD run
between the two nodes' addresses (on the pair topology their packets
cross the link, like the transport's), each pair on its own port block.
"""
import os
import shutil
import subprocess
import time

from .node import Qemu
from .qmp import QmpError
from .util import wait_until

GUEST_IP = "10.77.0.10"
CLIENT_IP = "10.77.0.2"
SVC_PORT = 7000
GUEST_MAC = "52:54:00:c0:10:0a"
# The guest's RAM: the kernel and colo-svc need ~40 MiB; the rest is page
# cache for the disk.
GUEST_MEMORY = "192M"
DISK_ID = "colo-disk0"
# What keeps a boot under nested TCG short: no mitigations to patch in, no
# TSC calibration, no crypto self-tests (cryptomgr: 0.24 s of 4 s).
KERNEL_ARGS = ("console=ttyS0 quiet panic=-1 mitigations=off tsc=reliable "
               "no_timer_check cryptomgr.notests"
               + (" svc.debug=1" if os.environ.get("COLO_SVC_DEBUG") else ""))


def sh(*cmd, check=True):
    p = subprocess.run(list(cmd), capture_output=True, text=True)
    if check and p.returncode:
        raise RuntimeError(f"{' '.join(cmd)}: {(p.stderr or p.stdout).strip()}")
    return p.stdout


class GuestNet:
    """The guest's network: a bridge with a tap per QEMU and a veth to the
    client's namespace.  Everything is named after @tag and removed by
    close()."""

    def __init__(self, tag):
        self.bridge = f"cbr{tag}"
        self.netns = f"colo-client-{tag}"
        self.veth = f"ccl{tag}"
        self.taps = []
        self.close()
        sh("ip", "link", "add", self.bridge, "type", "bridge",
           "forward_delay", "0")
        sh("ip", "link", "set", self.bridge, "up")
        sh("ip", "netns", "add", self.netns)
        sh("ip", "link", "add", self.veth, "type", "veth", "peer", "name",
           "eth0", "netns", self.netns)
        sh("ip", "link", "set", self.veth, "master", self.bridge, "up")
        self.ns("ip", "link", "set", "lo", "up")
        self.ns("ip", "addr", "add", f"{CLIENT_IP}/24", "dev", "eth0")
        self.ns("ip", "link", "set", "eth0", "up")

    def ns(self, *cmd):
        return sh("ip", "netns", "exec", self.netns, *cmd)

    def ns_cmd(self, cmd):
        """@cmd as a process of the client's namespace."""
        return ["ip", "netns", "exec", self.netns] + list(cmd)

    def tap(self, name):
        """A new tap on the bridge, for one QEMU (persistent: QEMU opens it
        by name and does not need to create it)."""
        sh("ip", "link", "del", name, check=False)
        sh("ip", "tuntap", "add", "dev", name, "mode", "tap")
        sh("ip", "link", "set", name, "master", self.bridge, "up")
        self.taps.append(name)
        return name

    def close(self):
        for t in self.taps:
            sh("ip", "link", "del", t, check=False)
        self.taps = []
        sh("ip", "link", "del", self.veth, check=False)
        sh("ip", "netns", "del", self.netns, check=False)
        sh("ip", "link", "del", self.bridge, check=False)


class Ports:
    """A pair's TCP ports, from @base: the COLO proxy's four (qemu-colo.rst's
    9001, 9003-9005 for @base 9000), NBD, the migration, the survivor's disk
    export."""

    def __init__(self, base, nbd=None, migrate=None):
        self.mirror, self.compare_sec, self.compare_pri, self.compare_out = (
            base + 3, base + 4, base + 1, base + 5)
        self.nbd, self.migrate, self.export = (
            nbd or base + 9, migrate or base + 8, base + 10)


def guest_args(image_dir, tap):
    """What both sides share: the kernel, the NIC on @tap (None, for the
    snapshot's boot: a hub port without a peer, which has no migration
    state, unlike user networking), the disk's device.  The devices are
    the same, in the same order, wherever the guest runs: a snapshot taken
    with one restores into the other."""
    if tap:
        # No vnet header: the COLO proxy compares plain frames.
        netdev = (f"tap,id=hn0,ifname={tap},script=no,downscript=no,"
                  f"vhost=off,vnet_hdr=off")
    else:
        netdev = "hubport,id=hn0,hubid=0"
    return [
        # The bzImage, through fw_cfg: an ELF kernel's segments are ROM
        # blobs, rewritten into RAM by the reset a COLO secondary does at
        # every checkpoint (scripts/guest-image).
        "-kernel", f"{image_dir}/kernel/vmlinuz",
        "-initrd", f"{image_dir}/initramfs.img",
        "-append", f"{KERNEL_ARGS} svc.ip={GUEST_IP}/24 svc.port={SVC_PORT}",
        "-no-reboot",
        "-netdev", netdev,
        "-device", f"virtio-net-pci,id=e0,netdev=hn0,mac={GUEST_MAC}",
        "-device", f"virtio-blk-pci,drive={DISK_ID}",
    ]


def make_snapshot(qemu, image_dir, work, timeout):
    """Boot the guest once, here, and save it running its service:
    @image_dir/booted.state (a migration stream) and booted.raw (its disk
    then).  Every pair starts from these instead of booting: a boot takes
    3-5 s on one level of TCG but 90-150 s in the with-rxe micro-VM
    (nested TCG), where the pairs run.  The seconds the boot took."""
    disk = os.path.join(work, "booted.raw")
    shutil.copyfile(os.path.join(image_dir, "disk.raw"), disk)
    q = Qemu(qemu, "snapshot", work, work, memory=GUEST_MEMORY,
             extra=guest_args(image_dir, None)
             + ["-drive", f"if=none,id={DISK_ID},file={disk},format=raw"])
    try:
        boot = wait_guest_up(q, timeout)
        # The service has printed its line and waits in poll(): a quiet
        # moment to stop it in.
        time.sleep(1)
        q.cmd("stop")
        state = os.path.join(work, "booted.state")
        q.cmd("migrate", uri=f"file:{state}")
        wait_until("the snapshot saved",
                   lambda: q.cmd("query-migrate").get("status") == "completed",
                   timeout)
        q.cmd("quit")
        q.proc.wait(timeout)
    finally:
        q.close()
    # Moved, not renamed: @work may be on another file system (the
    # micro-VM's /tmp is not its 9p share of the repository).
    shutil.move(state, os.path.join(image_dir, "booted.state"))
    shutil.move(disk, os.path.join(image_dir, "booted.raw"))
    return boot


def primary_proxy_args(addr, ports):
    """qemu-colo.rst's primary: mirror what the guest receives to the
    secondary, compare what both guests send, release what matches.  The
    command-line form of proxy_chardevs and proxy_objects, which a former
    secondary adds over QMP to become a primary: one definition for both.
    (compare1 does not wait for the secondary at startup, unlike the
    rst: the primary boots before the secondary exists.)"""
    args = []
    for c in proxy_chardevs(addr, ports):
        inet = c["backend"]["data"]["addr"]["data"]
        server = ",server=on,wait=off" if c["backend"]["data"]["server"] else ""
        args += ["-chardev", f"socket,id={c['id']},host={inet['host']},"
                             f"port={inet['port']}{server}"]
    for o in proxy_objects(was_secondary=False):
        props = ",".join(f"{k}={v}" for k, v in o.items() if k != "qom-type")
        args += ["-object", f"{o['qom-type']},{props}"]
    return args


def primary_disk_args(disk):
    return ["-drive", f"if=none,id={DISK_ID},driver=quorum,read-pattern=fifo,"
                      f"vote-threshold=1,children.0.file.filename={disk},"
                      f"children.0.driver=raw"]


def secondary_proxy_args(primary_addr, ports):
    """qemu-colo.rst's secondary: its guest gets what the primary's
    receives (red0), what it sends goes to the primary's colo-compare
    (red1), the rewriter keeps its TCP sequence numbers in step."""
    return [
        "-chardev", f"socket,id=red0,host={primary_addr},port={ports.mirror},reconnect-ms=1000",
        "-chardev", f"socket,id=red1,host={primary_addr},port={ports.compare_sec},reconnect-ms=1000",
        "-object", "filter-redirector,id=f1,netdev=hn0,queue=tx,indev=red0",
        "-object", "filter-redirector,id=f2,netdev=hn0,queue=rx,outdev=red1",
        "-object", "filter-rewriter,id=rew0,netdev=hn0,queue=all",
    ]


def secondary_disk_args(disk, active, hidden):
    return [
        "-drive", f"if=none,id=parent0,file.filename={disk},driver=raw",
        "-drive", f"if=none,id=childs0,driver=replication,mode=secondary,"
                  f"file.driver=qcow2,top-id={DISK_ID},file.file.filename={active},"
                  f"file.backing.driver=qcow2,file.backing.file.filename={hidden},"
                  f"file.backing.backing=parent0",
        "-drive", f"if=none,id={DISK_ID},driver=quorum,read-pattern=fifo,"
                  f"vote-threshold=1,children.0=childs0",
    ]


def primary_args(image_dir, tap, addr, ports, disk):
    """A primary's guest, COLO proxy and disk (qemu-colo.rst's primary).
    -S as there: the guest must not write its disk before the secondary's
    copy joins quorum; COLO starts it after its first checkpoint."""
    return (guest_args(image_dir, tap) + primary_proxy_args(addr, ports)
            + primary_disk_args(disk) + ["-S"])


def secondary_args(image_dir, tap, primary_addr, ports, disk, active, hidden):
    """A secondary's guest, COLO proxy and disk (qemu-colo.rst's
    secondary); it also needs -incoming."""
    return (guest_args(image_dir, tap)
            + secondary_proxy_args(primary_addr, ports)
            + secondary_disk_args(disk, active, hidden))


class FullStack:
    """One pair's files: the disk copies, the secondary's active and hidden
    images, in @work."""

    def __init__(self, qemu, qemu_img, image_dir, work, diskdir, sockdir, net,
                 ports, tag):
        """@work: logs and consoles; @diskdir: the disks, on a local file
        system (the micro-VM's /tmp: its 9p shares would make every fsync
        of the guest a round trip to the host)."""
        self.qemu, self.qemu_img, self.image_dir = qemu, qemu_img, image_dir
        self.work, self.diskdir, self.sockdir = work, diskdir, sockdir
        self.net, self.ports, self.tag = net, ports, tag

    def disk_copy(self, name):
        """The booted guest's disk, for one QEMU."""
        path = os.path.join(self.diskdir, f"{name}.raw")
        shutil.copyfile(os.path.join(self.image_dir, "booted.raw"), path)
        return path

    def primary(self, name, node, extra=(), **kw):
        """A primary on @node with the booted guest (make_snapshot), not
        yet running: restore() it; COLO starts it."""
        disk = self.disk_copy(name)
        tap = self.net.tap(f"ct{self.tag}{node.name}p")
        q = Qemu(self.qemu, name, self.work, self.sockdir,
                 memory=GUEST_MEMORY, node=node,
                 extra=primary_args(self.image_dir, tap, node.addr,
                                    self.ports, disk)
                 + ["-incoming", "defer"]
                 + list(extra), **kw)
        q.disk = disk
        return q

    def restore(self, q, timeout):
        """The booted guest into @q (-incoming defer), paused (-S) until
        COLO starts it, its disk still the secondary's copy; the seconds
        it took."""
        t0 = time.monotonic()
        q.cmd("migrate-incoming", uri=f"file:{self.image_dir}/booted.state")
        wait_until(f"{q.name}: the booted guest restored",
                   lambda: q.cmd("query-migrate").get("status") == "completed",
                   timeout)
        if q.cmd("query-status")["running"]:
            raise RuntimeError(f"{q.name}: the restored guest runs before COLO")
        # An incoming migration leaves the disks inactive until `cont`, and
        # COLO starts the guest without activating them (its first write
        # would abort QEMU): activate them here, as a primary started with
        # -S alone has them.
        q.cmd("blockdev-set-active", active=True)
        return time.monotonic() - t0

    def secondary(self, name, node, primary_node, extra=(), **kw):
        """A secondary on @node for the primary on @primary_node:
        -incoming defer, its disk a copy of the one the primary started
        from."""
        disk = self.disk_copy(name)
        size = os.path.getsize(disk)
        active = os.path.join(self.diskdir, f"{name}-active.qcow2")
        hidden = os.path.join(self.diskdir, f"{name}-hidden.qcow2")
        for img in (active, hidden):
            subprocess.run([self.qemu_img, "create", "-q", "-f", "qcow2", img,
                            str(size)], check=True)
        tap = self.net.tap(f"ct{self.tag}{node.name}s")
        q = Qemu(self.qemu, name, self.work, self.sockdir,
                 memory=GUEST_MEMORY, node=node,
                 extra=secondary_args(self.image_dir, tap, primary_node.addr,
                                      self.ports, disk, active, hidden)
                 + ["-incoming", "defer"] + list(extra), **kw)
        q.disk = disk
        return q


def guest_up(q):
    """The guest's console says its service listens."""
    try:
        return "colo-guest: up" in open(q.serial, errors="replace").read()
    except OSError:
        return False


def guest_failed(q):
    try:
        text = open(q.serial, errors="replace").read()
    except OSError:
        return None
    for line in text.splitlines():
        if line.startswith("colo-guest: error") or "Kernel panic" in line:
            return line
    return None


def wait_guest_up(q, timeout):
    """Seconds until the guest on @q serves (RuntimeError if it failed)."""
    t0 = time.monotonic()

    def up():
        bad = guest_failed(q)
        if bad:
            raise RuntimeError(f"{q.name}'s guest failed: {bad}")
        if not q.alive():
            raise RuntimeError(f"{q.name} exited while its guest booted: "
                               f"{q.stderr()}")
        return guest_up(q)
    wait_until(f"{q.name}'s guest up", up, timeout, interval=0.2)
    return time.monotonic() - t0


def start_replication(stack, primary, secondary, secondary_node, uri):
    """qemu-colo.rst steps 3 and 4: the secondary exports its disk's
    parent over NBD, the primary adds it as quorum's second child, then
    COLO starts (the caller waits for it)."""
    secondary.cmd("nbd-server-start", addr={
        "type": "inet", "data": {"host": secondary_node.addr,
                                 "port": str(stack.ports.nbd)}})
    secondary.cmd("nbd-server-add", device="parent0", writable=True)
    primary.cmd("blockdev-add", driver="nbd", **{
        "node-name": "nbd0", "export": "parent0", "detect-zeroes": "on",
        "server": {"type": "inet", "host": secondary_node.addr,
                   "port": str(stack.ports.nbd)}})
    primary.cmd("x-blockdev-change", parent=DISK_ID, node="nbd0")
    secondary.cmd("migrate-incoming", uri=uri, **{"exit-on-error": False})
    primary.cmd("migrate", uri=uri)


def fail_over_secondary(q, yank):
    """qemu-colo.rst "Secondary Failover": the primary died; the secondary
    stops its NBD server, takes over, drops the redirectors (the rewriter
    stays: the guest's TCP connections keep their adjusted numbers)."""
    yank(q)
    q.cmd("nbd-server-stop")
    q.cmd("x-colo-lost-heartbeat")
    for obj in ("f2", "f1"):
        q.cmd("object-del", id=obj)
    for chardev in ("red1", "red0"):
        q.cmd("chardev-remove", id=chardev)


def fail_over_primary(q, yank):
    """qemu-colo.rst "Primary Failover": the secondary died; the primary
    drops quorum's NBD child and the COLO proxy, and runs alone."""
    yank(q)
    q.cmd("x-blockdev-change", parent=DISK_ID, child="children.1")
    q.cmd("blockdev-del", **{"node-name": "nbd0"})
    for obj in ("comp0", "iothread1", "m0", "redire0", "redire1"):
        q.cmd("object-del", id=obj)
    q.cmd("x-colo-lost-heartbeat")


def proxy_chardevs(addr, ports):
    """The primary's COLO proxy sockets (primary_proxy_args' -chardev
    options) as chardev-add arguments, in the same order: what a former
    secondary adds to become a primary (qemu-colo.rst "Secondary
    Failover")."""
    def sock(cid, host, port, server):
        return {"id": cid, "backend": {"type": "socket", "data": {
            "addr": {"type": "inet", "data": {"host": host, "port": str(port)}},
            "server": server}}}
    lo = "127.0.0.1"
    return [sock("mirror0", addr, ports.mirror, True),
            sock("compare1", addr, ports.compare_sec, True),
            sock("compare0", lo, ports.compare_pri, True),
            sock("compare0-0", lo, ports.compare_pri, False),
            sock("compare_out", lo, ports.compare_out, True),
            sock("compare_out0", lo, ports.compare_out, False)]


def proxy_objects(was_secondary):
    """The primary's COLO proxy objects (primary_proxy_args' -object
    options) as object-add arguments.  A former secondary keeps its
    filter-rewriter: the new filters go before it (qemu-colo.rst's note
    on "insert")."""
    before = {"insert": "before", "position": "id=rew0"} if was_secondary else {}
    return [
        {"qom-type": "filter-mirror", "id": "m0", **before, "netdev": "hn0",
         "queue": "tx", "outdev": "mirror0"},
        {"qom-type": "filter-redirector", "id": "redire0", **before,
         "netdev": "hn0", "queue": "rx", "indev": "compare_out"},
        {"qom-type": "filter-redirector", "id": "redire1", **before,
         "netdev": "hn0", "queue": "rx", "outdev": "compare0"},
        {"qom-type": "iothread", "id": "iothread1"},
        {"qom-type": "colo-compare", "id": "comp0", "primary_in": "compare0-0",
         "secondary_in": "compare1", "outdev": "compare_out0",
         "iothread": "iothread1"},
    ]


def start_resync(stack, survivor, was_secondary, survivor_node, secondary,
                 secondary_node):
    """qemu-colo.rst "Primary resume replication" (@was_secondary False)
    and "Secondary resume replication" (True), first half: the new
    @secondary exports its disk, and @survivor, alone since a failover and
    still running, copies its whole disk there (drive-mirror over NBD, the
    guest's writes followed); a former secondary also gets the primary's
    COLO proxy sockets."""
    secondary.cmd("nbd-server-start", addr={
        "type": "inet", "data": {"host": secondary_node.addr,
                                 "port": str(stack.ports.nbd)}})
    secondary.cmd("nbd-server-add", device="parent0", writable=True)
    if was_secondary:
        for chardev in proxy_chardevs(survivor_node.addr, stack.ports):
            survivor.cmd("chardev-add", **chardev)
    survivor.cmd("drive-mirror", device=DISK_ID, **{
        "job-id": "resync", "mode": "existing", "format": "raw",
        "sync": "full",
        "target": f"nbd://{secondary_node.addr}:{stack.ports.nbd}/parent0"})


def resync_job(q):
    return next((j for j in q.cmd("query-block-jobs")
                 if j["device"] == "resync"), None)


def wait_resynced(survivor, timeout):
    """Until the mirror is ready: the new secondary's disk equals the
    survivor's, and stays so while the job runs."""
    def ready():
        j = resync_job(survivor)
        if j is None:
            raise RuntimeError("the disk resync (drive-mirror) ended before "
                               "it was ready")
        return j.get("ready")
    wait_until("the disk resync ready", ready, timeout)


def attach_secondary(stack, survivor, was_secondary, secondary,
                     secondary_node, uri, timeout):
    """The second half: @survivor pauses, drops the mirror (the disks are
    equal), adds the NBD child and the COLO proxy, and migrates; COLO
    starts the guest again."""
    survivor.cmd("stop")
    survivor.cmd("block-job-cancel", device="resync")
    wait_until("the disk resync gone", lambda: resync_job(survivor) is None,
               timeout)
    survivor.cmd("blockdev-add", driver="nbd", **{
        "node-name": "nbd0", "export": "parent0", "detect-zeroes": "on",
        "server": {"type": "inet", "host": secondary_node.addr,
                   "port": str(stack.ports.nbd)}})
    survivor.cmd("x-blockdev-change", parent=DISK_ID, node="nbd0")
    for obj in proxy_objects(was_secondary):
        survivor.cmd("object-add", **obj)
    secondary.cmd("migrate-incoming", uri=uri, **{"exit-on-error": False})
    survivor.cmd("migrate", uri=uri)


def disk_view(stack, q, node, out, timeout):
    """The disk as the guest on @q sees it now, exported read-only over NBD
    by @q itself and copied to @out (a raw file)."""
    node_name = next((dev["inserted"]["node-name"] for dev in q.cmd("query-block")
                      if dev.get("device") == DISK_ID), None)
    if node_name is None:
        raise RuntimeError(f"{q.name}: no block device {DISK_ID}")
    try:
        q.cmd("nbd-server-stop")     # the secondary's, if it still runs
    except QmpError:
        pass
    q.cmd("nbd-server-start", addr={"type": "inet", "data": {
        "host": node.addr, "port": str(stack.ports.export)}})
    q.cmd("block-export-add", type="nbd", id="oracle", **{
        "node-name": node_name, "name": "oracle", "writable": False})
    try:
        subprocess.run([stack.qemu_img, "convert", "-O", "raw",
                        f"nbd://{node.addr}:{stack.ports.export}/oracle", out],
                       check=True, timeout=timeout, capture_output=True)
    finally:
        q.cmd("block-export-del", id="oracle")
        q.cmd("nbd-server-stop")
    return out


def check_disk(image):
    """(problems, the service's log records) of a raw ext4 image: e2fsck
    -fn must find nothing, debugfs reads /colo-svc.log."""
    problems = []
    p = subprocess.run(["e2fsck", "-fn", image], capture_output=True, text=True)
    if p.returncode:
        problems.append(f"e2fsck -fn exited {p.returncode}: "
                        f"{(p.stdout + p.stderr).strip()[-400:]}")
    p = subprocess.run(["debugfs", "-R", "cat /colo-svc.log", image],
                       capture_output=True, text=True)
    if p.returncode:
        problems.append(f"debugfs: {p.stderr.strip()[-200:]}")
    return problems, p.stdout.splitlines()
