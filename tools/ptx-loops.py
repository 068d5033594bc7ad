#!/usr/bin/env python3
"""tools/ptx-loops.py - the fused matvec's inner loops, counted in PTX and
in the machine code (SASS) ptxas makes of it.

    make ptx-loops                 (nvcc -ptx and -cubin for sm_90, then this)
    tools/ptx-loops.py FILE.ptx [--cubin FILE.cubin] [--ops] [--all]

For each mv_kernel<type, BT, pair, digits> in the PTX of
kernels/gpu_matvec.cu, prints the instructions of two loops:

  unit loop   the innermost loop holding __dp4a: one unit of a block
              decoded and multiplied (both matrices for a pair); with the
              dp4a it holds, the instructions per weight a thread executes
              there (weights = dp4a x 4 / digits: 8-bit activations are one
              digit, exact ones three)
  copy loop   the innermost loop holding cp.async: a warp's copy of a row's
              chunk into shared memory, per cp.async (each 32 words)

B = 1 kernels only (the decode step's), unless --all. PTX is what the
compiler front end writes, before ptxas allocates registers and schedules:
a measure to compare builds by. Counted: every instruction line, not
labels, braces or comments.

With --cubin (what nvcc -cubin -arch=sm_90 writes for the same source) the
same two loops are also found in the machine code, which is what the GPU
issues: ptxas merges loads PTX repeats, folds masks and ORs into one LOP3,
unrolls the copy loop. Each kernel's code is its ELF section
.text.<name>, 16 bytes an instruction; the loops are found from the
backward branches (BRA) and what lies between a branch and its target:

  opcode      bits 0..8 of the instruction's first 64 bits (the kinds this
              script names are listed in SASS_OPS: IDP is dp4a, LDGSTS is
              cp.async; these values are the public facts of the encoding
              that Mesa's NVK compiler (NAK, sm70 encoder) writes, and
              LDGSTS, VIADD, I2FP were read off this build's own loops)
  BRA target  a signed offset in 4-byte units from the next instruction:
              bits 16..23 its low 8 bits, bits 34..81 the rest (checked on
              kernels whose loops are known: a 10-instruction loop, a
              160-instruction one, the self-branch that ends every kernel)

The SASS columns: the unit loop's instructions and per weight, and "int
per w", those of them that run on the integer units (LOP3, SHF, IADD3,
LEA, VIADD, ISETP, SEL, PRMT, IMAD, IDP...: SASS_INT), which on sm_90 issue
64 lanes a clock per SM against 128 for FFMA/FMUL: the count that bounds
the matvec's rate when the bytes arrive fast enough; the copy's innermost
loop per LDGSTS, and "row loop", the loop around it over a warp's rows,
whole (a row's copies, its setup and its ragged-word paths, some of which
a row skips: what a row costs at most, about). --ops prints each loop's
instructions by kind. Still a count, not a time: what the GPU spends
waiting on memory only a profile on a GPU can say.
"""
import re
import struct
import sys

TYPES = {2: "q4_0", 8: "q8_0", 10: "q2_K", 11: "q3_K", 12: "q4_K",
         13: "q5_K", 14: "q6_K", 39: "mxfp4"}
# mv_kernel<type, BT, pair, digits>'s mangled name, in PTX and in the cubin
KERNEL = r"mv_kernelILi(\d+)ELi(\d+)ELb([01])ELi(\d+)E"
ENTRY = re.compile(r"^\.entry\s+\S*" + KERNEL)
LABEL = re.compile(r"^(\$L__BB\w+):")
BRANCH = re.compile(r"\bbra(?:\.uni)?\s+(\$L__BB\w+);")


def is_instr(line):
    s = line.strip()
    return bool(s) and not s.startswith("//") and not s.endswith(":") \
        and s not in ("{", "}") and not s.startswith(".")


def innermost(body, marker):
    """(instructions, markers) of the shortest loop whose body has marker."""
    labels = {}
    for i, l in enumerate(body):
        m = LABEL.match(l)
        if m:
            labels[m.group(1)] = i
    best = None
    for i, l in enumerate(body):
        m = BRANCH.search(l)
        if not m or labels.get(m.group(1), i) >= i:
            continue
        loop = body[labels[m.group(1)]:i + 1]
        n_mark = sum(marker in x for x in loop)
        if n_mark and (best is None or len(loop) < len(best)):
            best = loop
    if best is None:
        return None
    return sum(map(is_instr, best)), sum(marker in x for x in best)


def kernels(lines):
    starts = [i for i, l in enumerate(lines) if l.startswith(".entry")]
    for k, i in enumerate(starts):
        m = ENTRY.match(lines[i])
        if not m:
            continue
        end = starts[k + 1] if k + 1 < len(starts) else len(lines)
        yield tuple(int(g) for g in m.groups()), lines[i:end]


# ---- the machine code -------------------------------------------------

# opcode (bits 0..8) -> name, for the kinds that matter here
SASS_OPS = {0x002: "MOV", 0x007: "SEL", 0x00b: "FSETP", 0x00c: "ISETP",
            0x010: "IADD3", 0x011: "LEA", 0x012: "LOP3", 0x016: "PRMT",
            0x019: "SHF", 0x01c: "PLOP3", 0x020: "FMUL", 0x021: "FADD",
            0x023: "FFMA", 0x024: "IMAD", 0x025: "IMAD.WIDE", 0x026: "IDP",
            0x030: "HADD2", 0x036: "VIADD", 0x045: "I2FP", 0x104: "F2F",
            0x105: "F2I", 0x106: "I2F", 0x108: "MUFU", 0x118: "NOP",
            0x141: "BSYNC", 0x145: "BSSY", 0x147: "BRA", 0x14d: "EXIT",
            0x181: "LDG", 0x182: "LDC", 0x184: "LDS", 0x186: "STG",
            0x188: "STS", 0x189: "SHFL", 0x1ae: "LDGSTS"}
# the integer units' kinds (bit 91 clear: not the uniform datapath's)
SASS_INT = {"SEL", "ISETP", "IADD3", "LEA", "LOP3", "PRMT", "SHF", "IMAD",
            "IMAD.WIDE", "IDP", "VIADD", "MOV"}
SASS_ENTRY = re.compile(KERNEL)


def elf_sections(data):
    """(name, bytes) of each section of an ELF64 little-endian file."""
    if data[:4] != b"\x7fELF" or data[4] != 2 or data[5] != 1:
        raise ValueError("not an ELF64 little-endian file")
    shoff, = struct.unpack_from("<Q", data, 0x28)
    shentsize, shnum, shstrndx = struct.unpack_from("<HHH", data, 0x3a)
    hdrs = [struct.unpack_from("<IIQQQQ", data, shoff + i * shentsize)
            for i in range(shnum)]
    strtab = hdrs[shstrndx][4]
    for name, _typ, _flags, _addr, off, size in hdrs:
        end = data.index(b"\0", strtab + name)
        yield data[strtab + name:end].decode(), data[off:off + size]


def sass_decode(text):
    """[(name, lo, hi)] of a kernel's code; uniform-datapath ops get a U."""
    out = []
    for i in range(0, len(text) - 15, 16):
        lo, hi = struct.unpack_from("<QQ", text, i)
        name = SASS_OPS.get(lo & 0x1ff, "op%03x" % (lo & 0x1ff))
        if (hi >> 27) & 1 and name in SASS_INT:
            name = "U" + name
        out.append((name, lo, hi))
    return out


def sass_target(i, lo, hi):
    """The instruction index a BRA at index i goes to."""
    off = ((lo >> 16) & 0xff) | ((((lo >> 34) | (hi << 30)) &
                                  ((1 << 48) - 1)) << 8)
    if off >> 55:
        off -= 1 << 56
    return i + 1 + off // 4


def sass_loops_with(ins, marker):
    """(start, end) of every loop (a backward BRA to its target) holding
    marker."""
    res = []
    for i, (name, lo, hi) in enumerate(ins):
        if name != "BRA":
            continue
        t = sass_target(i, lo, hi)
        if t <= i and any(x[0] == marker for x in ins[t:i + 1]):
            res.append((t, i))
    return res


def sass_innermost(ins, marker, outer=0):
    """The shortest loop holding marker; outer=1: the shortest one around
    that (for the copy, the loop over a warp's rows)."""
    loops = sass_loops_with(ins, marker)
    if not loops:
        return None
    best = min(loops, key=lambda l: l[1] - l[0])
    if outer:
        around = [l for l in loops if l != best and l[0] <= best[0] and
                  l[1] >= best[1]]
        if not around:
            return None
        best = min(around, key=lambda l: l[1] - l[0])
    return ins[best[0]:best[1] + 1]


def sass_loops(path):
    """{(type, bt, pair, digits): (unit loop, copy loop, row loop)} of a
    cubin."""
    with open(path, "rb") as f:
        data = f.read()
    res = {}
    for name, text in elf_sections(data):
        m = SASS_ENTRY.search(name)
        if not name.startswith(".text.") or not m:
            continue
        ins = sass_decode(text)
        res[tuple(int(g) for g in m.groups())] = (
            sass_innermost(ins, "IDP"), sass_innermost(ins, "LDGSTS"),
            sass_innermost(ins, "LDGSTS", outer=1))
    return res


def ops_line(loop):
    c = {}
    for x in loop:
        c[x[0]] = c.get(x[0], 0) + 1
    return " ".join("%s %d" % kv for kv in
                    sorted(c.items(), key=lambda kv: (-kv[1], kv[0])))


def main(argv):
    args, cubin, i = [], None, 1
    ok = True
    while i < len(argv):
        a = argv[i]
        if a == "--cubin" and i + 1 < len(argv):
            cubin = argv[i + 1]
            i += 1
        elif a.startswith("-") and a not in ("--all", "--ops"):
            ok = False
        elif not a.startswith("-"):
            args.append(a)
        i += 1
    if len(args) != 1 or not ok:
        sys.stderr.write("usage: tools/ptx-loops.py FILE.ptx [--cubin "
                         "FILE.cubin] [--ops] [--all]\n"
                         "  (make ptx-loops writes both and runs it)\n")
        return 2
    sass = {}
    if cubin:
        try:
            sass = sass_loops(cubin)
        except (OSError, ValueError, struct.error) as e:
            sys.stderr.write("ptx-loops: %s: %s\n" % (cubin, e))
            return 1
    try:
        with open(args[0]) as f:
            lines = f.read().split("\n")
    except OSError as e:
        sys.stderr.write("ptx-loops: %s: %s\n" % (args[0], e.strerror))
        return 1
    rows, ops = [], []
    for (t, bt, pair, nd), body in kernels(lines):
        if bt != 1 and "--all" not in argv:
            continue
        unit = innermost(body, "dp4a")
        copy = innermost(body, "cp.async.ca")
        if unit is None or copy is None:
            sys.stderr.write("ptx-loops: no unit or copy loop in "
                             "mv_kernel<%d,%d,%d,%d>\n" % (t, bt, pair, nd))
            return 1
        weights = unit[1] * 4 // nd // bt
        row = [TYPES.get(t, str(t)), "pair" if pair else "one",
               "8-bit" if nd == 1 else "exact", bt, unit[0], unit[1],
               unit[0] / weights, copy[0] / copy[1]]
        if cubin:
            su, sc, sr = sass.get((t, bt, pair, nd), (None, None, None))
            if su is None or sc is None or sr is None:
                sys.stderr.write("ptx-loops: no unit or copy loop in the "
                                 "machine code of mv_kernel<%d,%d,%d,%d> "
                                 "(%s)\n" % (t, bt, pair, nd, cubin))
                return 1
            n_idp = sum(x[0] == "IDP" for x in su)
            if n_idp != unit[1]:
                sys.stderr.write("ptx-loops: mv_kernel<%d,%d,%d,%d>: %d "
                                 "dp4a in the PTX loop, %d IDP in the "
                                 "machine code's\n" %
                                 (t, bt, pair, nd, unit[1], n_idp))
                return 1
            n_int = sum(x[0] in SASS_INT for x in su)
            row += [len(su), len(su) / weights, n_int / weights,
                    len(sc) / sum(x[0] == "LDGSTS" for x in sc), len(sr)]
            if "--ops" in argv:
                ops.append("%s %s %s B=%d unit: %s\n%s copy: %s" % (
                    row[0], row[1], row[2], bt, ops_line(su),
                    " " * len("%s %s %s B=%d" % (row[0], row[1], row[2],
                                                  bt)), ops_line(sc)))
        rows.append(tuple(row))
    if not rows:
        sys.stderr.write("ptx-loops: no mv_kernel in %s (the PTX of "
                         "kernels/gpu_matvec.cu?)\n" % args[0])
        return 1
    head = "%-6s %-4s %-5s %2s %10s %5s %10s %14s" % (
        "type", "mat", "x", "B", "unit loop", "dp4a", "per weight",
        "copy per 32 w")
    if cubin:
        head += "  | %9s %6s %9s %11s %8s" % ("sass unit", "per w",
                                              "int per w", "copy per cp",
                                              "row loop")
    if cubin:
        print("%-20s %-43s | %s" % ("", "PTX", "machine code (sm_90)"))
    print(head)
    for r in sorted(rows):
        line = "%-6s %-4s %-5s %2d %10d %5d %10.2f %14.2f" % r[:8]
        if cubin:
            line += "  | %9d %6.2f %9.2f %11.2f %8d" % r[8:]
        print(line)
    for o in sorted(ops):
        print(o)
    return 0

if __name__ == "__main__":
    sys.exit(main(sys.argv))
