#!/usr/bin/env python3
"""Rewrites a .cu or .cuh file so that g++ can compile it against
cuda_emu.h: KERNEL<<<cfg>>>(args) -> emu::launcher(KERNEL, cfg)(args), and
`extern __shared__ [__align__(N)] T name[];` -> a pointer to the launch's
dynamic shared memory (emu::dyn_smem()), and a kernel declared with
__launch_bounds__(N, ...) checks at its start that its CTA has at most N
threads (emu::launch_bound). Used by build.sh.

    transform.py IN.cu OUT.cpp"""
import re, sys
s = open(sys.argv[1]).read()
out = []
i = 0
while True:
    j = s.find('<<<', i)
    if j < 0:
        out.append(s[i:]); break
    # kernel expression before <<<
    k = j
    if s[k-1] == ')':
        depth = 0; k -= 1
        while True:
            if s[k] == ')': depth += 1
            elif s[k] == '(':
                depth -= 1
                if depth == 0: break
            k -= 1
    else:
        while re.match(r'[A-Za-z0-9_:.]', s[k-1]): k -= 1
    e = s.find('>>>', j)
    out.append(s[i:k])
    out.append('emu::launcher(' + s[k:j] + ', ' + s[j+3:e] + ')')
    i = e + 3
s = ''.join(out)
# __launch_bounds__(N[, M]) K(args) {  ->  ... {emu::launch_bound(N, "K");
# (a GPU refuses a launch of more threads a CTA than the kernel was
# compiled for; the emulator had dropped the attribute)
def past_close(s, a):
    """The index just past the ')' that closes the '(' before s[a]."""
    depth = 1
    while depth:
        if s[a] == '(': depth += 1
        elif s[a] == ')': depth -= 1
        a += 1
    return a
out = []
i = 0
for m in re.finditer(r'__launch_bounds__\(', s):
    if m.start() < i:
        continue
    k = past_close(s, m.end())
    bound = s[m.end():k-1].split(',')[0].strip()
    name = re.match(r'\s*(\w+)', s[k:]).group(1)
    # the body's brace: the first { after the parameter list
    b = s.index('{', past_close(s, s.index('(', k) + 1))
    out.append(s[i:b+1])
    out.append('emu::launch_bound(%s, "%s");' % (bound, name))
    i = b + 1
out.append(s[i:])
s = ''.join(out)
s = re.sub(r'extern\s+__shared__\s+(?:__align__\(\d+\)\s+)?(\w+)\s+(\w+)\[\];',
           r'\1 *\2 = (\1 *)emu::dyn_smem();', s)
try:
    same = open(sys.argv[2]).read() == s
except OSError:
    same = False
if not same:  # unchanged output keeps its time stamp
    open(sys.argv[2], 'w').write(s)
