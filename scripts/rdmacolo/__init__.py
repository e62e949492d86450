# SPDX-License-Identifier: GPL-2.0-or-later
"""rdmacolo: the project's Python harness for COLO pairs of real QEMUs.

One package, imported normally, behind every script and qemu-suite test
that drives QEMU (scripts/colo-demo, scripts/failback, scripts/chaos,
scripts/netfaults, tests/qemu/colo-startup-race, tests/qemu/ocf-agent):

  util     die, Hang, wait_until, percentiles, per-thread CPU time
  qmp      Monitor: QEMU's own QMP library (qemu.qmp's asyncio QMPClient)
           behind a small synchronous face, with events and out-of-band
           commands
  fabric   where a test runs: the RDMA address with-rxe gives, the nodes
  guest    the guests (QEMU's migration-test boot sector, our sweep
           guest) and the memory oracle (one consistent state)
  trace    TraceLog: the rdma-colo and COLO trace events per checkpoint
  client   the full-stack guest's client (run as its own process, in the
           client's network namespace) and the log it leaves
  node     Qemu: one QEMU process of ours, started the same way everywhere
  fullstack  the full COLO stack around a real guest: its network (bridge,
           taps, the client's namespace), qemu-colo.rst's command lines and
           failovers, the survivor's disk read back and checked
  colo     a COLO pair: capabilities, replication, failover, survivor checks
  demo, stack, failback, netfaults, chaos
           the programs behind the scripts of the same names (stack:
           scripts/colo-stack)

Calls go downwards in that list (check-harness-layers in the unit suite
verifies it); the scripts are thin entry points.  QEMU's qemu.machine is
not used: its QEMUMachine owns the monitor socket as a server and waits
for QEMU at shutdown, while these tests SIGKILL and SIGSTOP QEMUs on
purpose and need the monitor's out-of-band commands during a fault.
"""
