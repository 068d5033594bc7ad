#!/usr/bin/env python3
"""tools/ptx-loops.py - the fused matvec's inner loops, counted in PTX.

    make ptx-loops                 (nvcc -ptx for sm_90, then this script)
    tools/ptx-loops.py FILE.ptx [--all]

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
a measure to compare builds by, not the GPU's instruction count (that
needs a GPU and a profiler). Counted: every instruction line, not labels,
braces or comments.
"""
import re
import sys

TYPES = {2: "q4_0", 8: "q8_0", 10: "q2_K", 11: "q3_K", 12: "q4_K",
         13: "q5_K", 14: "q6_K", 39: "mxfp4"}
ENTRY = re.compile(r"^\.entry\s+\S*mv_kernelILi(\d+)ELi(\d+)ELb([01])ELi(\d+)E")
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


def main(argv):
    args = [a for a in argv[1:] if not a.startswith("-")]
    if len(args) != 1 or any(a not in ("--all",) for a in argv[1:]
                             if a.startswith("-")):
        sys.stderr.write("usage: tools/ptx-loops.py FILE.ptx [--all]\n"
                         "  (make ptx-loops writes the PTX and runs it)\n")
        return 2
    try:
        with open(args[0]) as f:
            lines = f.read().split("\n")
    except OSError as e:
        sys.stderr.write("ptx-loops: %s: %s\n" % (args[0], e.strerror))
        return 1
    rows = []
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
        rows.append((TYPES.get(t, str(t)), "pair" if pair else "one",
                     "8-bit" if nd == 1 else "exact", bt, unit[0], unit[1],
                     unit[0] / weights, copy[0] / copy[1]))
    if not rows:
        sys.stderr.write("ptx-loops: no mv_kernel in %s (the PTX of "
                         "kernels/gpu_matvec.cu?)\n" % args[0])
        return 1
    print("%-6s %-4s %-5s %2s %10s %5s %10s %14s" %
          ("type", "mat", "x", "B", "unit loop", "dp4a", "per weight",
           "copy per 32 w"))
    for r in sorted(rows):
        print("%-6s %-4s %-5s %2d %10d %5d %10.2f %14.2f" % r)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
