# SPDX-License-Identifier: GPL-2.0-or-later
"""docs/user-guide.md's complete example (sections 4 to 6), made by the
functions scripts/colo-stack runs: the command lines of fullstack, the QMP
commands of fullstack and colo, recorded instead of sent.
tests/qemu/guide-check fails when the guide's blocks differ from these.

    python3 -m rdmacolo.guide        prints every block, as the guide has it

The example's hosts, ports and paths are the guide's; what differs from
the tests is only what a test cannot have: -accel kvm (the tests run TCG)
and the primary booting its guest (the tests restore a booted one, with
-incoming defer; -S keeps it paused in both until COLO starts it).
"""
import json
import shlex
from types import SimpleNamespace

from . import colo, fullstack

PRIMARY_HOST, SECONDARY_HOST = "192.0.2.1", "192.0.2.2"
PORTS = fullstack.Ports(9000, nbd=9999, migrate=9998)
DIR = "/var/lib/colo"
CHANNELS = 4
DELAY_MS = 2000
URI = f"rdma-colo:{SECONDARY_HOST}:{PORTS.migrate}?secret=colo-token"


def shell_command(argv):
    """@argv as the guide prints a command: an option and its value per
    line."""
    lines, i = [shlex.quote(argv[0])], 1
    while i < len(argv):
        if i + 1 < len(argv) and not argv[i + 1].startswith("-"):
            lines.append(f"{argv[i]} {shlex.quote(argv[i + 1])}")
            i += 2
        else:
            lines.append(argv[i])
            i += 1
    return " \\\n    ".join(lines)


def base_args(name):
    """What every QEMU of the example has besides the COLO stack (the tests'
    rdmacolo.node.Qemu, with KVM)."""
    return ["qemu-system-x86_64", "-name", name, "-accel", "kvm",
            "-machine", "pc", "-m", fullstack.GUEST_MEMORY,
            "-display", "none", "-nodefaults",
            "-qmp", f"unix:/run/colo/{name}.qmp,server=on,wait=off",
            "-serial", f"file:/var/log/colo/{name}.serial",
            "-object", "secret,id=colo-token,file=/etc/colo/token"]


def command_lines():
    """{"primary": text, "secondary": text}."""
    guest = f"{DIR}/guest"
    primary = base_args("primary") + fullstack.primary_args(
        guest, "tap0", PRIMARY_HOST, PORTS, f"{DIR}/primary.raw")
    secondary = base_args("secondary") + fullstack.secondary_args(
        guest, "tap0", PRIMARY_HOST, PORTS, f"{DIR}/secondary.raw",
        f"{DIR}/secondary-active.qcow2", f"{DIR}/secondary-hidden.qcow2") + [
        "-incoming", "defer"]
    return {"primary": shell_command(primary),
            "secondary": shell_command(secondary)}


class Recorder:
    """A QEMU's monitor that writes down what it is sent, as the guide
    prints QMP commands."""

    def __init__(self, name):
        self.name = name
        self.lines = []

    def cmd(self, command, **args):
        if command.startswith("query-"):
            # A wait, not a step: the guide says what to wait for.
            return []
        msg = {"execute": command}
        if args:
            msg["arguments"] = args
        self.lines.append(json.dumps(msg))
        return {}

    def oob(self, command, **args):
        self.lines.append(json.dumps({"exec-oob": command, "id": 1,
                                      "arguments": args}))
        return {}


def qmp_blocks():
    """[(title, [QMP lines])]: each QEMU's commands in the order
    scripts/colo-stack sends them."""
    primary, secondary = Recorder("primary"), Recorder("secondary")
    colo.prepare(primary, CHANNELS)
    colo.prepare(secondary, CHANNELS)
    colo.primary_parameters(primary, DELAY_MS)
    stack = SimpleNamespace(ports=PORTS)
    fullstack.start_replication(stack, primary, secondary,
                                SimpleNamespace(addr=SECONDARY_HOST), URI)
    takeover, stays = Recorder("secondary"), Recorder("primary")
    fullstack.fail_over_secondary(takeover, colo.yank)
    fullstack.fail_over_primary(stays, colo.yank)
    resumed = []
    for was_secondary, survivor_host, new_host in (
            (True, SECONDARY_HOST, PRIMARY_HOST),
            (False, PRIMARY_HOST, SECONDARY_HOST)):
        survivor, new = Recorder("survivor"), Recorder("new secondary")
        survivor_node = SimpleNamespace(addr=survivor_host)
        new_node = SimpleNamespace(addr=new_host)
        fullstack.start_resync(stack, survivor, was_secondary, survivor_node,
                               new, new_node)
        start = survivor.lines
        survivor.lines = []
        uri = f"rdma-colo:{new_host}:{PORTS.migrate}?secret=colo-token-2"
        fullstack.attach_secondary(stack, survivor, was_secondary, new,
                                   new_node, uri, timeout=0)
        role = "a former secondary" if was_secondary else "a former primary"
        # In the order they are sent: the export, the resync, the attach,
        # then the migration on both sides.
        resumed += [(f"the new secondary of {role} exports its disk",
                     new.lines[:-1]),
                    (f"{role} resyncs the new secondary's disk", start),
                    (f"{role} attaches the new secondary", survivor.lines[:-1]),
                    (f"{role} and its new secondary migrate",
                     new.lines[-1:] + survivor.lines[-1:])]
    return [("the secondary's start", secondary.lines),
            ("the primary's start", primary.lines),
            ("the secondary's failover (the primary died)", takeover.lines),
            ("the primary's failover (the secondary died)", stays.lines)
            ] + resumed


def blocks():
    """[(title, text)]: everything guide-check looks for in the guide."""
    out = [(f"the {k}'s command line", v) for k, v in command_lines().items()]
    out += [(title, "\n".join(lines)) for title, lines in qmp_blocks()]
    return out


if __name__ == "__main__":
    for title, text in blocks():
        print(f"# {title}\n{text}\n")
