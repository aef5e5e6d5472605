#!/usr/bin/env python3
"""Regenerates the hand-made seed corpus under tests/fuzz/corpus/<target>/.

Every seed is built here from the format specifications (ELF64, the Linux x86
boot protocol, the 16550 register map, System.map), not copied from anywhere.
Run from anywhere: python3 tests/fuzz/corpus/make_seeds.py
"""
import os
import struct

HERE = os.path.dirname(os.path.abspath(__file__))


def out(target, name, data):
    d = os.path.join(HERE, target)
    os.makedirs(d, exist_ok=True)
    with open(os.path.join(d, name), "wb") as f:
        f.write(data)


# ------------------------------------------------------------------ kernel --

EHDR = "<16sHHIQQQIHHHHHH"  # Elf64_Ehdr, 64 bytes
PHDR = "<IIQQQQQQ"  # Elf64_Phdr, 56 bytes
PT_LOAD, PT_NOTE = 1, 4


def elf(entry, phdrs, body, body_off):
    """phdrs: (type, flags, offset, vaddr, paddr, filesz, memsz, align)."""
    ident = b"\x7fELF" + bytes([2, 1, 1]) + bytes(9)  # ELFCLASS64, LSB, EV_CURRENT
    eh = struct.pack(EHDR, ident, 2, 62, 1, entry, 64, 0, 0, 64, 56, len(phdrs), 0, 0, 0)
    ph = b"".join(struct.pack(PHDR, *p) for p in phdrs)
    img = bytearray(eh + ph)
    img += bytes(max(0, body_off - len(img)))
    img[body_off:body_off + len(body)] = body
    return bytes(img)


CODE = bytes([0xf4, 0xeb, 0xfd]) + bytes(13)  # hlt; jmp .-1


def xen_note(entry):
    name = b"Xen\0"
    desc = struct.pack("<I", entry)
    return struct.pack("<III", len(name), len(desc), 18) + name + desc


def bzimage(setup_sects=1, version=0x020F, loadflags=0x01, xloadflags=0x03, reloc=1,
            align=0x200000, pref=0x1000000, init_size=0x10000, payload=0x240,
            initrd_max=0x7FFFFFFF, cmdline_size=2047):
    sects = setup_sects or 4
    img = bytearray((sects + 1) * 512 + payload)
    img[0x1F1] = setup_sects
    struct.pack_into("<H", img, 0x1FE, 0xAA55)
    struct.pack_into("<H", img, 0x200, 0xEB | ((0x26C - 0x202) << 8))  # jmp over the header
    img[0x202:0x206] = b"HdrS"
    struct.pack_into("<H", img, 0x206, version)
    img[0x211] = loadflags
    struct.pack_into("<I", img, 0x22C, initrd_max)
    struct.pack_into("<I", img, 0x230, align)
    img[0x234] = reloc
    struct.pack_into("<H", img, 0x236, xloadflags)
    struct.pack_into("<I", img, 0x238, cmdline_size)
    struct.pack_into("<Q", img, 0x250, 0xDEADBEEF)  # setup_data: must not reach the zero page
    struct.pack_into("<Q", img, 0x258, pref)
    struct.pack_into("<I", img, 0x260, init_size)
    base = (sects + 1) * 512
    for i in range(payload):
        img[base + i] = i & 0xFF
    return bytes(img)


def kernel_seeds():
    t = "fuzz_kernel_loader"
    # One PT_LOAD at 1 MiB, physical entry, a small .bss.
    out(t, "elf-one-load", elf(0x100000, [(PT_LOAD, 5, 0x78, 0x100000, 0x100000, 16, 0x1000, 0x1000)],
                               CODE, 0x78))
    # Kernel-virtual entry translated through p_vaddr, plus a Xen PVH note.
    note = xen_note(0x1000000)
    out(t, "elf-virt-pvh", elf(0xFFFFFFFF81000000,
                               [(PT_LOAD, 5, 0xB0, 0xFFFFFFFF81000000, 0x1000000, 16, 0x2000, 0x1000),
                                (PT_NOTE, 4, 0xC0, 0, 0, len(note), len(note), 4)],
                               CODE + note, 0xB0))
    # Two loads, the second all .bss.
    out(t, "elf-two-loads", elf(0x200000,
                                [(PT_LOAD, 5, 0xB0, 0x200000, 0x200000, 16, 16, 0x1000),
                                 (PT_LOAD, 6, 0, 0x201000, 0x201000, 0, 0x3000, 0x1000)],
                                CODE, 0xB0))
    out(t, "bzimage-reloc", bzimage())
    out(t, "bzimage-fixed", bzimage(reloc=0, pref=0x200000, setup_sects=0, init_size=0x1000))
    out(t, "bzimage-old-proto", bzimage(version=0x0204))


# ------------------------------------------------------------------ serial --

def rec(op, window, delta, size, value):
    """One access record: see fuzz_serial.cc (op, target, size, u32 value)."""
    return struct.pack("<BBBI", op, window + 8 * (delta + 4), size, value)


R, W, IN, RT, RMW, MUT = range(6)
COM1, COM1_HI, KBD_DATA, KBD_CMD, PROBE, PROBE_MMIO, PROBE_MMIO_HI, NONE = range(8)


def serial_seeds():
    t = "fuzz_serial"
    # Linux 8250 probe-ish: LCR=DLAB, divisor, LCR=8N1, FCR, IER, MCR, THR writes, reads.
    init = b"".join([
        rec(W, COM1, 3, 1, 0x80), rec(W, COM1, 0, 1, 0x01), rec(W, COM1, 1, 1, 0x00),
        rec(W, COM1, 3, 1, 0x03), rec(W, COM1, 2, 1, 0xC7), rec(W, COM1, 4, 1, 0x0B),
        rec(W, COM1, 1, 1, 0x0F), rec(R, COM1, 2, 1, 0), rec(W, COM1, 0, 1, ord("h")),
        rec(R, COM1, 5, 1, 0), rec(R, COM1, 6, 1, 0), rec(R, COM1, 2, 1, 0),
    ])
    out(t, "serial-init", init)
    # Host input past the FIFO bound, then reads draining it; a 2-byte read.
    out(t, "serial-input", b"".join([
        rec(W, COM1, 1, 1, 0x05), rec(IN, COM1, 0, 0, 0x00411100), rec(IN, COM1, 0, 0, 0x00420010),
        rec(R, COM1, 0, 1, 0), rec(R, COM1, 5, 1, 0), rec(R, COM1, 0, 2, 0), rec(RT, COM1, 0, 0, 0),
        rec(W, COM1, 2, 1, 0x02), rec(R, COM1, 5, 1, 0),
    ]))
    # Loopback: THR writes land in the RX FIFO; MCR changes set MSR deltas.
    out(t, "serial-loopback", b"".join([
        rec(W, COM1, 4, 1, 0x1F), rec(W, COM1, 1, 1, 0x0D), rec(W, COM1, 0, 1, 0x55),
        rec(R, COM1, 6, 1, 0), rec(W, COM1, 4, 1, 0x10), rec(R, COM1, 6, 1, 0),
        rec(R, COM1, 0, 1, 0), rec(R, COM1_HI, 2, 4, 0), rec(MUT, COM1, 0, 0, 0x00000110),
    ]))
    # i8042: read command byte, write command byte, write output port (reset), 0xfe.
    out(t, "i8042", b"".join([
        rec(W, KBD_CMD, 0, 1, 0x20), rec(R, KBD_CMD, 0, 1, 0), rec(R, KBD_DATA, 0, 1, 0),
        rec(W, KBD_CMD, 0, 1, 0x60), rec(W, KBD_DATA, 0, 1, 0x47), rec(W, KBD_CMD, 0, 1, 0xD1),
        rec(W, KBD_DATA, 0, 1, 0xFE), rec(W, KBD_CMD, 0, 1, 0xFE), rec(W, KBD_CMD, 0, 2, 0xFE),
    ]))
    # Boot probe over PIO and MMIO: marks, signature reads, exit requests, odd sizes.
    out(t, "boot-probe", b"".join([
        rec(W, PROBE, 0, 1, 0x42), rec(R, PROBE, 0, 1, 0), rec(R, PROBE, 4, 4, 0),
        rec(R, PROBE_MMIO, 4, 2, 0), rec(W, PROBE_MMIO, 0, 1, 0x17), rec(R, PROBE_MMIO_HI, 0, 4, 0),
        rec(W, PROBE, 4, 4, 7), rec(W, PROBE, 6, 4, 1), rec(R, PROBE, -2, 4, 0),
        rec(W, NONE, 0, 1, 0x99),
    ]))


# ----------------------------------------------------------------- symbols --

def symbols_seeds():
    t = "fuzz_symbols"
    out(t, "system-map", (
        b"ffffffff81000000 T _text\n"
        b"ffffffff81000100 t early_setup\n"
        b"ffffffff81001000 T start_kernel\n"
        b"ffffffff82000000 D some_data\n"
        b"0000000000000000 A fixed_percpu_data\n"
        b"ffffffff81002000 W weak_thing\n"
        b"ffffffff81003000 T a.b.c_d\n"
        b"xyz T not_hex\n"
        b"\n"))
    out(t, "panic-console", (
        b"[    0.000000] Linux version 6.1.0 (test)\r\n"
        b"[    1.234567] Kernel panic - not syncing: VFS: Unable to mount root fs\r\n"
        b"[    1.234600] CPU: 0 PID: 1 Comm: swapper/0\n"
        b"[    1.234700] ---[ end Kernel panic - not syncing: VFS ]---\n"))
    out(t, "mixed", (
        b"ffffffff81000000 T _text\n"
        b"Kernel panic - not syncing: Attempted to kill init!\n"
        b"0xffffffff81000010 t with_prefix\n"
        b"-1 T negative\n"))


if __name__ == "__main__":
    kernel_seeds()
    serial_seeds()
    symbols_seeds()


# ------------------------------------------------------------------ virtio --
# fuzz_virtio records: op, u16 offset/addr, u32 value, u8 extra (8 bytes).


def rec(op, off=0, val=0, extra=0):
    return struct.pack("<BHIB", op, off, val & 0xffffffff, extra)


def memw(addr, val):
    return rec(2, addr, val)


def blk_read_seed(readonly, req_type):
    # Queue 0: desc 0x1000, avail 0x2000, used 0x3000; header at 0x8000,
    # data at 0x9000, status at 0x8100.
    s = bytes([0, 1 if readonly else 0])
    s += rec(3, 0, (1 << 9))  # bring-up with FLUSH
    s += memw(0x8000, req_type) + memw(0x8008, 2) + memw(0x800c, 0)
    # desc 0: header (16, NEXT, next 1); 1: data 1024 (WRITE|NEXT for reads),
    # 2: status 1 WRITE.
    data_flags = 3 if req_type == 0 else 1
    s += memw(0x1000, 0x8000) + memw(0x1004, 0) + memw(0x1008, 16) + memw(0x100c, 1 | (1 << 16))
    s += memw(0x1010, 0x9000) + memw(0x1014, 0) + memw(0x1018, 1024) + memw(0x101c, data_flags | (2 << 16))
    s += memw(0x1020, 0x8100) + memw(0x1024, 0) + memw(0x1028, 1) + memw(0x102c, 2)
    s += memw(0x2004, 0) + memw(0x2000, 1 << 16)  # ring[0] = 0, idx = 1
    s += rec(4, 0, 0, 0) + rec(1, 0x70, 0, 3)
    return s


out("fuzz_virtio", "blk_read", blk_read_seed(False, 0))
out("fuzz_virtio", "blk_write", blk_read_seed(False, 1))
out("fuzz_virtio", "blk_write_ro", blk_read_seed(True, 1))
out("fuzz_virtio", "blk_flush", blk_read_seed(False, 4))


def net_seed():
    s = bytes([1, 0])
    s += rec(3, 0, (1 << 5))
    # RX queue 0: one writable 2048-byte buffer at 0x9000.
    s += memw(0x1000, 0x9000) + memw(0x1004, 0) + memw(0x1008, 2048) + memw(0x100c, 2)
    s += memw(0x2004, 0) + memw(0x2000, 1 << 16)
    s += rec(4, 0, 0, 0) + rec(5, 0, 100, 7) + rec(6)
    # TX queue 1 (desc 0x4000, avail 0x5000): header+frame readable at 0xa000.
    s += memw(0x4000, 0xa000) + memw(0x4004, 0) + memw(0x4008, 12 + 60) + memw(0x400c, 0)
    s += memw(0x5004, 0) + memw(0x5000, 1 << 16)
    s += rec(4, 0, 0, 1) + rec(6)
    return s


out("fuzz_virtio", "net_rx_tx", net_seed())


def rng_seed():
    s = bytes([2, 0])
    s += rec(3, 0, 0)
    s += memw(0x1000, 0x9000) + memw(0x1004, 0) + memw(0x1008, 64) + memw(0x100c, 2)
    s += memw(0x2004, 0) + memw(0x2000, 1 << 16)
    s += rec(4, 0, 0, 0) + rec(7, 0x40, 0x9000, 0x21) + rec(4, 0, 0, 0)
    return s


out("fuzz_virtio", "rng", rng_seed())


# ---------------------------------------------------------------- snapshot --
# fuzz_snapshot: state files (vmm/snapshot/state_file.h) and bare state trees
# (vmm/snapshot/state_tree.h), written here from the format description.

SECTION, U8, U16, U32, U64, I64, BOOL, BYTES, STRING = range(1, 10)


def crc32c(data):
    crc = 0xFFFFFFFF
    for b in data:
        crc ^= b
        for _ in range(8):
            crc = (crc >> 1) ^ 0x82F63B78 if crc & 1 else crc >> 1
    return crc ^ 0xFFFFFFFF


def tlv(kind, name, value):
    name = name.encode()
    return struct.pack("<BB", kind, len(name)) + name + struct.pack("<I", len(value)) + value


def state_file(header, payload, version=1):
    body = b"VMMSTATE" + struct.pack("<IIIQ", version, 0, len(header), len(payload))
    body += header + payload
    return body + struct.pack("<I", crc32c(body))


def snapshot_seeds():
    t = "fuzz_snapshot"
    header = (tlv(STRING, "vmm_version", b"0.1.0") + tlv(STRING, "cpu_template", b"host")
              + tlv(U64, "created_unix", struct.pack("<Q", 1700000000))
              + tlv(SECTION, "config", tlv(STRING, "mem_bytes", b"536870912")
                    + tlv(STRING, "vcpus", b"2") + tlv(STRING, "acpi", b"on")
                    + tlv(STRING, "rng", b"off")
                    + tlv(STRING, "disk0", b"sectors=2048,readonly=off,id=root")
                    + tlv(STRING, "net0", b"mac=52:54:00:12:34:56")))
    serial = tlv(SECTION, "serial0", tlv(U8, "dll", b"\x0c") + tlv(U8, "lcr", b"\x03")
                 + tlv(BOOL, "thr_ipending", b"\x01") + tlv(BYTES, "rx_fifo", b"hi\n"))
    queue = tlv(SECTION, "queue1", tlv(U16, "size", struct.pack("<H", 256))
                + tlv(U16, "next_avail", struct.pack("<H", 7)) + tlv(BOOL, "ready", b"\x01"))
    virtio = tlv(SECTION, "virtio0", tlv(U32, "status", struct.pack("<I", 15))
                 + tlv(U64, "features", struct.pack("<Q", 1 << 32)) + queue)
    vcpu = tlv(SECTION, "vcpu0", tlv(SECTION, "regs", tlv(BYTES, "regs", bytes(range(144))))
               + tlv(I64, "tsc_offset", struct.pack("<q", -5))
               + tlv(STRING, "mp_state", b"runnable"))
    payload = serial + virtio + vcpu + tlv(U64, "clock", struct.pack("<Q", 123456789))
    out(t, "state-file", state_file(header, payload))
    out(t, "state-file-empty", state_file(header, b""))
    out(t, "state-file-future", state_file(header, payload, version=2))
    out(t, "tree", payload)
    deep = tlv(U8, "v", b"\x01")
    for _ in range(16):
        deep = tlv(SECTION, "d", deep)
    out(t, "tree-deep", deep)


snapshot_seeds()
