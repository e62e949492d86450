# SPDX-License-Identifier: GPL-2.0-or-later
"""The client of the full-stack guest's service (guest/colo-svc.c), run
outside the guest's hosts (in its own network namespace, see
fullstack.GuestNet) for the whole life of a COLO pair:

    python3 -m rdmacolo.client ADDR PORT LOG [--rate N] [--stall S]

It keeps one TCP connection, as a real client of a COLO service would:
a failover must not break it.  Each request is one line "r<n> <pad>"; the
service appends the record "<seq> r<n> <pad>\\n" to its disk, fsyncs and
answers "<seq> <sum>".  Being the only client, it knows both in advance
(seq counts from the last answer, sum is FNV-1a 64 chained over the
records), so every answer is checked when it arrives.

LOG gets one line per answered request, "n seq sent_s latency_ms" (sent_s
on CLOCK_MONOTONIC, which the harness shares), flushed as it goes; the
last line is "end <json>" with the verdict: requests answered, errors, the
longest stall.  SIGTERM (or SIGINT) ends it after the request in flight.
A request not answered within --stall seconds, a connection that breaks
or an answer it did not expect is an error: the client stops at the first
and says so in the verdict.
"""
import argparse
import json
import signal
import socket
import sys
import time

FNV_BASIS = 0xcbf29ce484222325
FNV_PRIME = 0x100000001b3
PAD = "x" * 40


def fnv1a(h, data):
    for b in data:
        h = ((h ^ b) * FNV_PRIME) & 0xFFFFFFFFFFFFFFFF
    return h


def request_text(n):
    return f"r{n} {PAD}"


def replay(records):
    """(seq, sum) after the log's @records (lines without their newline);
    ValueError if a record's seq is not the next one."""
    seq, h = 0, FNV_BASIS
    for line in records:
        if int(line.split(" ", 1)[0]) != seq + 1:
            raise ValueError(f"record {seq + 1} is '{line[:60]}'")
        seq += 1
        h = fnv1a(h, (line + "\n").encode())
    return seq, h


class Stop(Exception):
    pass


def connect(addr, port, deadline):
    while True:
        try:
            s = socket.create_connection((addr, port), timeout=5)
            s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            return s
        except OSError as e:
            if time.monotonic() > deadline:
                raise OSError(f"cannot connect to {addr}:{port}: {e}") from None
            time.sleep(0.5)


def run(addr, port, log, rate, stall, connect_timeout):
    stopping = []

    def on_signal(signum, frame):
        stopping.append(signum)
    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)

    verdict = {"answered": 0, "errors": [], "max_stall_ms": 0.0,
               "first_seq": None, "last_seq": None}
    sock = connect(addr, port, time.monotonic() + connect_timeout)
    sock.settimeout(stall)
    reader = sock.makefile("rb")
    seq = h = None
    n = 0
    interval = 1.0 / rate if rate else 0
    try:
        while not stopping:
            n += 1
            text = request_text(n)
            t0 = time.monotonic()
            try:
                sock.sendall((text + "\n").encode())
                answer = reader.readline()
            except socket.timeout:
                raise Stop(f"request {n}: no answer within {stall} s")
            except OSError as e:
                raise Stop(f"request {n}: the connection broke: {e}")
            t1 = time.monotonic()
            if not answer:
                raise Stop(f"request {n}: the service closed the connection")
            try:
                got_seq, got_sum = answer.decode().split()
                got_seq, got_sum = int(got_seq), int(got_sum, 16)
            except ValueError:
                raise Stop(f"request {n}: unexpected answer {answer[:80]!r}")
            if seq is None:
                # The first answer tells where the sequence stands (a disk
                # that already had records); the sum is taken on trust
                # once, then checked from here on.
                seq, h = got_seq, got_sum
                verdict["first_seq"] = got_seq
            else:
                seq += 1
                h = fnv1a(h, f"{seq} {text}\n".encode())
                if (got_seq, got_sum) != (seq, h):
                    raise Stop(f"request {n}: answer seq {got_seq} sum "
                               f"{got_sum:016x}, expected seq {seq} sum {h:016x}"
                               f" (a request lost, repeated or reordered)")
            verdict["answered"] = n
            verdict["last_seq"] = seq
            verdict["last_sum"] = f"{h:016x}"
            ms = (t1 - t0) * 1000
            verdict["max_stall_ms"] = max(verdict["max_stall_ms"], ms)
            print(f"{n} {seq} {t0:.6f} {ms:.3f}", file=log, flush=True)
            if interval and t1 - t0 < interval:
                time.sleep(interval - (t1 - t0))
    except Stop as e:
        verdict["errors"].append(str(e))
    finally:
        sock.close()
    print("end " + json.dumps(verdict), file=log, flush=True)
    return 0 if not verdict["errors"] else 1


def read_log(path):
    """(samples [(n, seq, sent_s, latency_ms)], verdict dict or None)."""
    samples, verdict = [], None
    for line in open(path):
        if line.startswith("end "):
            verdict = json.loads(line[4:])
        elif line.strip():
            n, seq, t, ms = line.split()
            samples.append((int(n), int(seq), float(t), float(ms)))
    return samples, verdict


def main():
    ap = argparse.ArgumentParser(prog="rdmacolo.client")
    ap.add_argument("addr")
    ap.add_argument("port", type=int)
    ap.add_argument("log")
    ap.add_argument("--rate", type=float, default=0,
                    help="requests per second at most (0: back to back)")
    ap.add_argument("--stall", type=float, default=60,
                    help="seconds a request may wait for its answer")
    ap.add_argument("--connect-timeout", type=float, default=60)
    a = ap.parse_args()
    with open(a.log, "w") as log:
        try:
            return run(a.addr, a.port, log, a.rate, a.stall, a.connect_timeout)
        except OSError as e:
            print("end " + json.dumps({"answered": 0, "errors": [str(e)]}),
                  file=log, flush=True)
            return 1


if __name__ == "__main__":
    sys.exit(main())
