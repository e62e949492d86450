# SPDX-License-Identifier: GPL-2.0-or-later
"""Where the harness runs: the RDMA fabric scripts/with-rxe set up.

with-rxe exports, for the node a command runs on and for the other one
(RDMA_COLO_TEST_PEER_*), the address, RDMA device and netdev, and
RDMA_COLO_TOPOLOGY:

  loopback  one rxe device; both "nodes" are it (the peer's variables name
            the same device and address)
  pair      node A (rxe0 on veth0) and node B (rxe1 on veth1), their RDMA
            traffic over the veth pair between them; scripts/rxe-pair runs
            a command on a node, degrades, cuts and heals the link, powers
            a node off (docs/testing.md, "Two nodes on a wire")

A harness program runs outside both nodes (a power-off does not take it
along) and starts each QEMU on a node: Fabric.node("a").wrap(cmd).
"""
import os
import subprocess

from .util import TOP, die

RXE_PAIR = os.path.join(TOP, "scripts", "rxe-pair")


def rxe_pair(*args):
    """scripts/rxe-pair ARGS; its output, or RuntimeError with its error."""
    p = subprocess.run([RXE_PAIR] + list(args), capture_output=True, text=True)
    if p.returncode:
        raise RuntimeError(f"rxe-pair {' '.join(args)}: "
                           f"{(p.stderr or p.stdout).strip()}")
    return p.stdout


class Node:
    def __init__(self, fabric, name, addr, dev, netdev):
        self.fabric, self.name = fabric, name
        self.addr, self.dev, self.netdev = addr, dev, netdev

    def wrap(self, cmd):
        """@cmd as a process of this node."""
        if self.fabric.topology != "pair":
            return list(cmd)
        return [RXE_PAIR, "run", self.name, "--"] + list(cmd)

    def poweroff(self):
        self.fabric.need_pair("a power-off")
        rxe_pair("poweroff", self.name)

    def poweron(self):
        self.fabric.need_pair("a power-on")
        rxe_pair("poweron", self.name)

    def __repr__(self):
        return f"node {self.name.upper()} ({self.dev} at {self.addr})"


class Fabric:
    """The fabric of the environment (with-rxe's), or @addr alone."""

    def __init__(self, addr=None):
        env = os.environ
        self.topology = env.get("RDMA_COLO_TOPOLOGY", "loopback")
        self.kind = env.get("RDMA_COLO_FABRIC", "host")
        a = addr or env.get("RDMA_COLO_TEST_ADDR")
        if not a:
            die("no RDMA address: run under scripts/with-rxe, or give --addr")
        if addr or self.topology != "pair":
            self.topology = "loopback" if addr else self.topology
            dev = env.get("RDMA_COLO_TEST_DEV", "?")
            self.a = Node(self, "a", a, dev, env.get("RDMA_COLO_TEST_NETDEV"))
            self.b = Node(self, "b", a, dev, env.get("RDMA_COLO_TEST_NETDEV"))
        else:
            self.a = Node(self, "a", a, env["RDMA_COLO_TEST_DEV"],
                          env["RDMA_COLO_TEST_NETDEV"])
            self.b = Node(self, "b", env["RDMA_COLO_TEST_PEER_ADDR"],
                          env["RDMA_COLO_TEST_PEER_DEV"],
                          env["RDMA_COLO_TEST_PEER_NETDEV"])

    def node(self, name):
        return {"a": self.a, "b": self.b}[name]

    def other(self, node):
        return self.b if node is self.a else self.a

    def need_pair(self, what):
        if self.topology != "pair":
            raise RuntimeError(f"{what} needs the pair topology "
                               f"(scripts/with-rxe --topology pair)")

    def link(self, *args):
        """rxe-pair link ARGS (degrade NETEM..., clean, cut, heal)."""
        self.need_pair("the link")
        rxe_pair("link", *args)

    def counters(self):
        """The link's counters (bytes_a_to_b, ...) and the rxe devices'; {}
        on loopback, where nothing crosses a link."""
        if self.topology != "pair":
            return {}
        out = rxe_pair("counters")
        return {k: int(v) for k, v in (line.split() for line in out.splitlines())}

    def describe(self):
        """One line naming the fabric, for a program's header."""
        if self.topology == "pair":
            return (f"fabric pair: {self.a} and {self.b} over "
                    f"{self.a.netdev}-{self.b.netdev} ({self.kind}), "
                    f"{os.cpu_count()} CPUs")
        return (f"fabric {self.a.dev} at {self.a.addr} ({self.kind}), "
                f"{os.cpu_count()} CPUs")


def qemu_paths(qemu_build):
    """(qemu-system-x86_64, the QEMU source tree) of a build-qemu build dir."""
    qemu = os.path.join(qemu_build, "qemu-system-x86_64")
    if not os.access(qemu, os.X_OK):
        die(f"{qemu} missing: run scripts/build-qemu first")
    return qemu, os.path.join(os.path.dirname(qemu_build), "src")
