# SPDX-License-Identifier: GPL-2.0-or-later
"""QEMU's trace log of a COLO node, read per checkpoint."""
import re


class TraceLog:
    """Follows a QEMU -D log for the rdma-colo and COLO trace events.

    Figures are split per checkpoint by COLO's own 'checkpoint-request'
    message (sent by the primary, received by the secondary), not by when
    the log is read: the demo may see a RESUME event only after the next
    checkpoint has already begun.
    """

    SYNC = re.compile(r"rdma_colo_sync channel (\d+) fence (\d+) ns; since start "
                      r"(\d+) bytes (\d+) pages (\d+) zero (\d+) writes")
    RECV = re.compile(r"rdma_colo_recv_sync channel (\d+); since start "
                      r"(\d+) pages (\d+) zero")
    FLUSH = re.compile(r"colo_flush_ram_cache_begin dirty_pages (\d+)")
    BACKGROUND = re.compile(r"colo_background_sync sent (\d+) of (\d+) dirty pages")
    REQUEST = re.compile(r"colo_(?:send|receive)_message .*'checkpoint-request'")

    def __init__(self, path):
        self.path = path
        self.offset = 0
        # channel -> (bytes, pages, zero, writes) sent (primary) or
        # (0, pages, zero, 0) received for marking (secondary), cumulative
        self.channels = {}
        self.checkpoints = []  # per request: totals at its start, fences, flushes,
        #                        pages sent in the background before it
        self.background = 0    # pages sent by background rounds since the last request

    def read(self):
        """Take in the whole lines written since the last call."""
        try:
            with open(self.path) as f:
                f.seek(self.offset)
                text = f.read()
        except OSError:
            return
        text = text[:text.rfind("\n") + 1]  # a line still being written waits
        self.offset += len(text.encode())
        for line in text.splitlines():
            cur = self.checkpoints[-1] if self.checkpoints else None
            if m := self.SYNC.search(line):
                ch, ns, *totals = (int(x) for x in m.groups())
                self.channels[ch] = tuple(totals)
                if cur:
                    cur["fences"].append(ns)
            elif m := self.RECV.search(line):
                ch, pages, zero = (int(x) for x in m.groups())
                self.channels[ch] = (0, pages, zero, 0)
            elif m := self.FLUSH.search(line):
                if cur:
                    cur["flushes"].append(int(m.group(1)))
            elif m := self.BACKGROUND.search(line):
                self.background += int(m.group(1))
            elif self.REQUEST.search(line):
                self.checkpoints.append({"start": self.totals(), "fences": [],
                                         "flushes": [], "background": self.background})
                self.background = 0

    def totals(self):
        """(bytes, pages, zero pages, RDMA WRITEs) over all channels."""
        return tuple(sum(v[i] for v in self.channels.values()) for i in range(4))

    def checkpoint(self, n):
        """Checkpoint @n (1-based): (sent totals, fence latencies, flushed
        page counts, pages sent in the background before its request), or
        None while its request is not in the log.  The totals run from its
        request to the next one; they include the background pages before
        it, which the channels report at its fences."""
        if len(self.checkpoints) < n:
            return None
        c = self.checkpoints[n - 1]
        end = (self.checkpoints[n]["start"] if len(self.checkpoints) > n
               else self.totals())
        return ([e - s for e, s in zip(end, c["start"])], c["fences"],
                c["flushes"], c["background"])
