# SPDX-License-Identifier: GPL-2.0-or-later
"""Small things every harness module needs: errors, deadlines, statistics."""
import os
import sys
import time

TOP = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


class Hang(Exception):
    """A step did not finish within its deadline."""


def die(msg, prog=None):
    """Print an error in the program's name and exit 1."""
    prog = prog or os.path.basename(sys.argv[0])
    print(f"{prog}: error: {msg}", file=sys.stderr, flush=True)
    sys.exit(1)


def wait_until(what, cond, timeout, interval=0.05):
    """Call @cond until it returns a true value, which is returned; Hang
    with @what once @timeout seconds have passed."""
    deadline = time.monotonic() + timeout
    while True:
        v = cond()
        if v:
            return v
        if time.monotonic() > deadline:
            raise Hang(f"{what} not within {timeout} s")
        time.sleep(interval)


def percentile(values, p):
    """Nearest-rank percentile (with few values, p99 is the maximum)."""
    v = sorted(values)
    return v[max(0, -(-len(v) * p // 100) - 1)]


def median(values):
    v = sorted(values)
    n = len(v)
    return v[n // 2] if n % 2 else (v[n // 2 - 1] + v[n // 2]) / 2


def write_secret(path, nbytes=32):
    """A random token, base64, in a new file of mode 0600 (as the user guide
    deploys it: never on a command line)."""
    import base64
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.write(fd, base64.b64encode(os.urandom(nbytes)))
    finally:
        os.close(fd)
    return path


def _task_cpu_ms(path):
    """CPU milliseconds a task has run: the scheduler's own sum (ns
    precision, /proc/.../sched) where the kernel has it, else utime +
    stime, which are sampled at the tick (10 ms: too coarse for a receive
    thread's ~30 ms per checkpoint)."""
    try:
        for line in open(f"{path}/sched"):
            if line.startswith("se.sum_exec_runtime"):
                return float(line.split(":")[1])
    except OSError:
        pass
    fields = open(f"{path}/stat").read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) * 1000 / os.sysconf("SC_CLK_TCK")


def thread_cpu_ms(pid, prefix):
    """CPU milliseconds used so far by @pid's threads whose name starts
    with @prefix."""
    total = 0.0
    try:
        tasks = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return 0.0
    for tid in tasks:
        try:
            comm = open(f"/proc/{pid}/task/{tid}/comm").read().strip()
            if comm.startswith(prefix):
                total += _task_cpu_ms(f"/proc/{pid}/task/{tid}")
        except (OSError, ValueError, IndexError):
            continue
    return total
