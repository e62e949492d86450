# SPDX-License-Identifier: GPL-2.0-or-later
"""The guests of the harness and the oracle on their memory.

migration-test: QEMU's own boot sector from its migration tests (taken
from the unpacked QEMU tree at run time): it increments one byte in every
4 KiB page from 1 MiB to 100 MiB, in order, forever, and prints 'B' on
the serial port after each pass.  Its memory has an oracle: one
consistent state of the guest has every page's byte equal to the previous
page's or one less, at one edge only.

sweep_guest(): a boot sector of ours for workloads migration-test cannot
make (a slow sweep, a small hot set).
"""
import os
import re

# migration-test's range and page.
START, END, PAGE = 1 << 20, 100 << 20, 4096
PAGES = (END - START) // PAGE


def bootsector(qemu_src):
    """migration-test's x86 boot sector (512 bytes) from @qemu_src."""
    header = os.path.join(qemu_src, "tests/qtest/migration/i386/a-b-bootblock.h")
    try:
        text = open(header).read()
    except OSError:
        raise FileNotFoundError(f"{header} missing: run scripts/build-qemu first")
    body = text[text.index("x86_bootsect[] = {"):]
    body = body[:body.index("}")]
    data = bytes(int(x, 16) for x in re.findall(r"0x([0-9a-fA-F]{2})", body))
    if len(data) != 512:
        raise ValueError(f"unexpected boot sector size {len(data)} in {header}")
    return data


def sweep_guest(start_mib, end_mib, delay):
    """A boot sector that increments one byte in every 4 KiB page of
    [start, end) MiB, spins @delay iterations of LOOP after each page (so a
    pass can take longer than a checkpoint interval), and prints 'B' after
    every MiB (its progress).

    Hand-assembled (no assembler needed in the micro-VM): real mode -> flat
    32-bit protected mode, then the loop.
    """
    def le32(v):
        return v.to_bytes(4, "little")

    base = 0x7C00
    gdt_at, gdtdesc_at = 0x7C80, 0x7C98
    code = bytearray()
    code += b"\xFA"                                  # cli
    code += b"\x0F\x01\x16" + gdtdesc_at.to_bytes(2, "little")  # lgdt [gdtdesc]
    code += b"\x66\xB8" + le32(1)                    # mov eax, 1
    code += b"\x0F\x22\xC0"                          # mov cr0, eax
    pm = base + len(code) + 8
    code += b"\x66\xEA" + le32(pm) + b"\x08\x00"      # ljmp 8:pm (32-bit offset)
    assert base + len(code) == pm
    code += b"\xE4\x92\x0C\x02\xE6\x92"              # A20: in al,0x92; or al,2; out
    code += b"\xB8" + le32(16) + b"\x8E\xD8"          # mov eax,16; mov ds,eax
    code += b"\xB0\x41\x66\xBA\xF8\x03\xEE"          # 'A' to the serial port
    loop_pass = len(code)
    code += b"\xBB" + le32(start_mib << 20)          # mov ebx, start
    inner = len(code)
    code += b"\xFE\x03"                              # inc byte [ebx]
    code += b"\xB9" + le32(max(delay, 1))            # mov ecx, delay
    code += b"\xE2\xFE"                              # loop $
    code += b"\x81\xC3" + le32(4096)                 # add ebx, 4096
    code += b"\xF7\xC3" + le32(0xFFFFF)              # test ebx, 1 MiB - 1
    code += b"\x75\x03"                              # jnz +3
    code += b"\xB0\x42\xEE"                          # 'B': one more MiB
    code += b"\x81\xFB" + le32(end_mib << 20)        # cmp ebx, end
    code += b"\x7C" + bytes([(inner - (len(code) + 2)) & 0xFF])      # jl inner
    code += b"\xEB" + bytes([(loop_pass - (len(code) + 2)) & 0xFF])  # jmp pass
    assert base + len(code) <= gdt_at
    sector = bytearray(512)
    sector[:len(code)] = code
    gdt = (b"\x00" * 8 + b"\xFF\xFF\x00\x00\x00\x9A\xCF\x00"  # null, code, data:
           + b"\xFF\xFF\x00\x00\x00\x92\xCF\x00")             # flat 4 GiB
    sector[gdt_at - base:gdt_at - base + 24] = gdt
    sector[gdtdesc_at - base:gdtdesc_at - base + 6] = (23).to_bytes(2, "little") + le32(gdt_at)
    sector[510:512] = b"\x55\xAA"
    return bytes(sector)


def count_b(path):
    """The guest's progress so far: 'B's on its serial output."""
    try:
        with open(path, "rb") as f:
            return f.read().count(b"B")
    except OSError:
        return 0


def oracle(dump):
    """Problems with one consistent state of migration-test's counter pages
    in the memory dump @dump of [START, END) ([] if none)."""
    data = open(dump, "rb").read()
    if len(data) != END - START:
        return [f"dump is {len(data)} bytes"]
    last, edge, bad = data[0], False, []
    for off in range(PAGE, END - START, PAGE):
        b = data[off]
        if b == last:
            continue
        if (b + 1) % 256 == last and not edge:
            edge = True
        else:
            bad.append(f"page at {START + off:#x}: {b} after {last}")
        last = b
    return bad


def oracle_self_test(tmpdir):
    """The oracle passes one consistent state and fails torn ones."""
    path = os.path.join(tmpdir, "oracle-self-test")

    def check(counters):
        mem = bytearray(END - START)
        mem[::PAGE] = bytes(counters)
        with open(path, "wb") as f:
            f.write(mem)
        return oracle(path)

    cut = PAGES // 3
    good = [7] * cut + [6] * (PAGES - cut)            # the incrementer at cut
    wrap = [0] * cut + [255] * (PAGES - cut)          # the same, mod 256
    torn = good[:2 * cut] + [7] * (PAGES - 2 * cut)   # two edges
    skip = [8] * cut + [6] * (PAGES - cut)            # a generation missing
    if check(good) or check(wrap) or check([9] * PAGES):
        raise AssertionError("the memory oracle fails a consistent state")
    if not check(torn) or not check(skip):
        raise AssertionError("the memory oracle passes a torn state")
    os.unlink(path)
