"""Instructions per (query pixel, key) pair of the CUDA kernels' hot loops, read from their
sm_90 machine code (SASS), without a GPU.

    python bench/sass_count.py                  # table of the standard cases
    python bench/sass_count.py --json out.json  # also machine-readable
    python bench/sass_count.py --breakdown      # per source line of the hot loop
    python bench/sass_count.py --ptxas          # registers and spills of every kernel (-Xptxas -v)

Needs ``nvcc`` (CUDA 12+/13) and ``nvdisasm`` (on PATH, under ``$CUDA_HOME/bin``, or from the
``nvidia-cuda-nvdisasm`` wheel: ``pip install nvidia-cuda-nvdisasm``). No torch, no GPU.

Counting method
---------------
1. ``nvcc -cubin -arch=sm_90 -O3 --use_fast_math -lineinfo`` compiles ``csrc/cuda/patch_kernels.cu``,
   ``csrc/cuda/paired_kernels.cu`` and ``csrc/cuda/patch_argmax_attention.cu`` (the flags of the extension build, which
   matter: fast math changes the exp and sqrt sequences); ``nvdisasm --print-line-info-inline``
   disassembles them with, per instruction, its source line and the chain of lines it was
   inlined at.
2. Loops are the backward branches of each kernel (a ``BRA`` to a lower address): the
   instructions between the target and the branch. The source line of a loop's back edge (or
   a line of its inline chain) carries an annotation in the kernel source, a trailing comment
   ``// sass: ...``:
   ``tile=<expr>``  the hot loop, one iteration = <expr> (query, key) pairs per thread;
   ``trips=<expr>`` the mean trip count of a loop inside it (per thread, averaged over the
   block's warps: a loop that only some warps run counts for the fraction that does);
   ``cold``         code that runs a bounded number of times per block, not per tile (a new
   running maximum, padding keys, the non-finite fallbacks): weight 0;
   ``weight=<expr>`` code that runs on a fraction of the iterations (the real entries of a
   padded chunk). Lines of headers outside csrc/cuda are annotated by EXTERNAL_TAGS below.
   A loop inside the hot loop without a ``trips`` annotation is an error, so the annotations
   cannot silently go stale.
3. Each instruction of the hot loop counts the product of the trip counts of the loops that
   hold it (inside the hot loop) and of the weights of its inline chain. The sum over one
   hot-loop iteration, divided by its pairs per thread, is the number of instructions a
   thread issues per pair (= warp instructions x 32 / pairs: the issue slots a pair costs).
   Every instruction in a loop body counts, both sides of a branch included (what a warp
   issues when its lanes diverge, and an upper bound otherwise), except code annotated cold or
   guarded by a boundary mode the case does not use (circular wrap for zeros). The line table
   sometimes loses the call site of an inlined instruction: such an instruction inherits the
   cold / weight annotations of the back edge of the innermost loop that holds it.

The result is a static model, not a measurement: it omits stalls, dual issue, replays of
shared-memory bank conflicts and uncoalesced accesses; it is exact for straight-line code and
for loops whose trip counts are the annotated ones. Cases: Fashion-MNIST geometry (28 x 28),
zeros boundary, an interior query group (the bulk of the pairs), ``D = C * P * P`` entries.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CSRC = ROOT / "csrc"  # --root DIR counts another checkout's sources (e.g. a `git archive` of a baseline)
THREADS = 256  # kThreads and kAttnThreads of csrc/cuda/common.cuh

# Annotations of lines in headers outside csrc/cuda (files shared with the CPU kernels), as
# (file name, regex of the line, annotation).
EXTERNAL_TAGS = [
    ("dictionary.h", r"if \(boundary == Boundary::Circular\) return", "circular"),
    ("attention_rules.h", r"for \(int ch = 0; ch < C; \+\+ch\)", "trips=C"),
    ("attention_rules.h", r"for \(int orr = or0; orr <= or1; \+\+orr\)", "trips=P"),
    ("attention_rules.h", r"for \(int rr = imax\(0, r - m\)", "trips=P"),
    ("attention_rules.h", r"for \(int cc = imax\(0, c - m\)", "trips=P"),
]

TAG_RE = re.compile(r"//.*?\bsass:\s*(.*?)\s*$")


def find_tool(name: str) -> str:
    """Path of a CUDA tool: PATH, $CUDA_HOME/bin, /usr/local/cuda/bin, or an nvidia-* wheel."""
    found = shutil.which(name)
    if found:
        return found
    for base in (os.environ.get("CUDA_HOME"), "/usr/local/cuda"):
        if base and (Path(base) / "bin" / name).exists():
            return str(Path(base) / "bin" / name)
    try:
        import nvidia  # namespace package of the nvidia-* wheels

        for root in nvidia.__path__:
            for cand in Path(root).glob(f"*/bin/{name}"):
                return str(cand)
    except ImportError:
        pass
    raise SystemExit(f"sass_count: {name} not found (install the CUDA toolkit, or `pip install nvidia-cuda-{name}`)")


# ---------------------------------------------------------------------------------------
# Source annotations


def source_tags() -> dict[tuple[str, int], list[str]]:
    """{(file name, line): [annotation, ...]} from ``// sass:`` comments and EXTERNAL_TAGS."""
    tags: dict[tuple[str, int], list[str]] = {}
    for path in sorted((CSRC / "cuda").glob("*.cuh")):
        for i, line in enumerate(path.read_text().splitlines(), 1):
            m = TAG_RE.search(line)
            if m:
                tags[(path.name, i)] = [t.strip() for t in m.group(1).split(";") if t.strip()]
    for fname, pattern, tag in EXTERNAL_TAGS:
        lines = (CSRC / fname).read_text().splitlines()
        hits = [i for i, line in enumerate(lines, 1) if re.search(pattern, line)]
        if not hits:
            raise SystemExit(f"sass_count: EXTERNAL_TAGS pattern {pattern!r} matches no line of {fname}")
        for i in hits:
            tags.setdefault((fname, i), []).append(tag)
    return tags


# ---------------------------------------------------------------------------------------
# Disassembly


@dataclass
class Instr:
    addr: int
    text: str
    chain: tuple  # ((file, line), ...) innermost first


@dataclass
class Kernel:
    name: str
    instrs: list = field(default_factory=list)
    labels: dict = field(default_factory=dict)


LOC_RE = re.compile(r'"([^"]+)", line (\d+)')  # a location and each 'inlined at' one


def disassemble(cubin: Path, nvdisasm: str) -> dict[str, Kernel]:
    out = subprocess.run([nvdisasm, "--print-line-info-inline", "-c", str(cubin)], check=True,
                         capture_output=True, text=True).stdout
    return parse_disassembly(out)


def parse_disassembly(out: str) -> dict[str, Kernel]:
    """{kernel name: Kernel} from ``nvdisasm --print-line-info-inline -c`` text."""
    kernels: dict[str, Kernel] = {}
    cur = None
    chain: tuple = ()
    pending: list = []
    for raw in out.splitlines():
        line = raw.strip()
        m = re.match(r"\.text\.(\S+):$", line)
        if m:
            cur = kernels.setdefault(m.group(1), Kernel(m.group(1)))
            continue
        if cur is None:
            continue
        if line.startswith("//##"):
            pending.append(tuple((Path(f).name, int(n)) for f, n in LOC_RE.findall(line)))
            continue
        m = re.match(r"(\.L_x_\d+):", line)
        if m:
            cur.labels[m.group(1)] = len(cur.instrs)
            continue
        m = re.match(r"/\*([0-9a-f]+)\*/\s+(.*?)\s*;", line)
        if m:
            if pending:  # consecutive location lines: the innermost first, each with its caller
                chain = tuple(dict.fromkeys(loc for locs in pending for loc in locs))
                pending = []
            cur.instrs.append(Instr(int(m.group(1), 16), m.group(2), chain))
    return kernels


def compile_cubin(source: Path, out: Path, nvcc: str) -> None:
    cmd = [nvcc, "-cubin", "-arch=sm_90", "-O3", "--use_fast_math", "-lineinfo", "-std=c++17",
           "--expt-relaxed-constexpr", "-w", f"-I{CSRC}", str(source), "-o", str(out)]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"sass_count: nvcc failed on {source.name}:\n{proc.stderr}")


def ptxas_report(nvcc: str, sources=("patch_kernels.cu", "paired_kernels.cu", "ideal_kernels.cu",
                                     "patch_argmax_attention.cu")):
    """Per kernel of each source: registers, spill stores / loads and stack (bytes), static shared
    memory, from ``-Xptxas -v`` with the flags of compile_cubin (sm_90)."""
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for src in sources:
            cmd = [nvcc, "-cubin", "-arch=sm_90", "-O3", "--use_fast_math", "-std=c++17", "--expt-relaxed-constexpr",
                   "-w", "-Xptxas", "-v", f"-I{CSRC}", str(CSRC / "cuda" / src), "-o", str(Path(tmp) / "k.cubin")]
            proc = subprocess.run(cmd, capture_output=True, text=True)
            if proc.returncode != 0:
                raise SystemExit(f"sass_count: nvcc failed on {src}:\n{proc.stderr}")
            rows.extend(parse_ptxas(proc.stderr, src))
    return rows


def parse_ptxas(text: str, src: str = "") -> list[dict]:
    """[{source, kernel, registers, spill_stores, spill_loads, stack, smem}] of the entry functions
    in ``ptxas -v`` output (a function's properties line precedes its 'Used' line)."""
    rows, props, cur = [], {}, None
    for line in text.splitlines():
        m = re.search(r"Compiling entry function '(\S+)'", line)
        if m:
            cur = m.group(1)
            continue
        m = re.search(r"Function properties for (\S+)", line)
        if m:
            fn = m.group(1)
            continue
        m = re.search(r"(\d+) bytes stack frame, (\d+) bytes spill stores, (\d+) bytes spill loads", line)
        if m:
            props[fn] = tuple(int(x) for x in m.groups())
            continue
        m = re.search(r"Used (\d+) registers(?:.*?(\d+) bytes smem)?", line)
        if m and cur:
            stack, st, ld = props.get(cur, (0, 0, 0))
            short = re.sub(r"^_ZN15creativity_fast4cuda6detail\d+", "", cur)
            rows.append(dict(source=src, kernel=short, registers=int(m.group(1)), spill_stores=st,
                             spill_loads=ld, stack=stack, smem=int(m.group(2) or 0)))
            cur = None
    return rows


# ---------------------------------------------------------------------------------------
# Counting


def loops_of(k: Kernel) -> list[tuple[int, int]]:
    """(first, last) instruction indices of every loop (backward branch)."""
    out = []
    for i, ins in enumerate(k.instrs):
        m = re.search(r"BRA\s+`\((\.L_x_\d+)\)", ins.text)
        if m and m.group(1) in k.labels and k.labels[m.group(1)] <= i:
            out.append((k.labels[m.group(1)], i))
    return out


def tags_of_chain(chain, tags) -> list[str]:
    return [t for loc in chain for t in tags.get(loc, [])]


def evaluate(expr: str, env: dict) -> float:
    return float(eval(expr, {"__builtins__": {}, "ceil": math.ceil, "min": min, "max": max}, env))  # noqa: S307


def count_hot_loop(k: Kernel, tags, env: dict, breakdown: bool = False):
    """Issued instructions per pair of the kernel's hot loop (the loop tagged ``tile=``)."""
    loops = loops_of(k)
    info = []
    for first, last in loops:
        ltags = tags_of_chain(k.instrs[last].chain, tags)
        info.append((first, last, ltags))
    tiles = [(f, l, t) for f, l, t in info if any(x.startswith("tile=") for x in t)]
    if len(tiles) != 1:
        raise SystemExit(f"sass_count: {k.name}: expected one loop tagged tile=, found {len(tiles)}")
    tf, tl, ttags = tiles[0]
    pairs = evaluate(next(x for x in ttags if x.startswith("tile="))[5:], env)
    # Loops inside the hot loop, grouped by source loop (the location of their trips= tag) and
    # enclosing SASS loop: nvcc unrolls a loop of runtime trip count n by U into a main loop
    # (U copies of the body) and a remainder loop, which then run n // U and n % U times.
    groups: dict = {}
    for f, l, t in info:
        if tf <= f and l <= tl and (f, l) != (tf, tl):
            trips = [x for x in t if x.startswith("trips=")]
            if not trips:
                loc = k.instrs[l].chain
                raise SystemExit(f"sass_count: {k.name}: loop [{f}, {l}] at {loc} inside the hot loop has no "
                                 f"'// sass: trips=' annotation")
            tagloc = next(loc for loc in k.instrs[l].chain if any(x.startswith("trips=") for x in tags.get(loc, [])))
            parent = min(((pf, pl) for pf, pl, _ in info if pf < f and l < pl), key=lambda r: r[1] - r[0],
                         default=None)
            groups.setdefault((tagloc, parent), []).append((f, l, evaluate(trips[0][6:], env)))
    # Copies of one source loop of about the same size are an enclosing loop unrolled (each runs
    # n times); two of very different sizes are a main loop and its remainder.
    inner = []
    for members in groups.values():
        sizes = [l - f + 1 for f, l, _ in members]
        if len(members) != 2 or max(sizes) < 1.8 * min(sizes):
            inner.extend(members)
            continue
        members.sort(key=lambda m: m[1] - m[0])
        (rf, rl, n), (mf, ml, _) = members
        U = max(1, round((ml - mf + 1) / (rl - rf + 1)))
        main = n // U if float(n).is_integer() else max(0.0, (n - (U - 1) / 2) / U)
        inner.append((mf, ml, main))
        inner.append((rf, rl, n - U * main))
    # The line table sometimes drops the outer part of an instruction's inline chain (the call
    # site), and with it the call site's annotations: an instruction inherits the cold / weight
    # annotations of the back edge of the innermost loop (inside the hot loop) that holds it,
    # those it does not carry already.
    backedge = [(f, l, [t for t in tags_of_chain(k.instrs[l].chain, tags) if t == "cold" or t.startswith("weight=")])
                for f, l, _ in info if tf <= f and l <= tl and (f, l) != (tf, tl)]
    total = 0.0
    by_line: dict = {}
    for i in range(tf, tl + 1):
        ins = k.instrs[i]
        ctags = tags_of_chain(ins.chain, tags)
        holders = [(l - f, lt) for f, l, lt in backedge if f <= i <= l]
        if holders:
            ctags = ctags + [t for t in min(holders, key=lambda h: h[0])[1] if t not in ctags]
        w = 1.0
        for t in ctags:
            if t == "cold":
                w = 0.0
            elif t == "circular" and env["boundary"] != "circular":
                w = 0.0
            elif t.startswith("weight="):
                w *= evaluate(t[7:], env)
        for f, l, trips in inner:
            if f <= i <= l:
                w *= trips
        total += w
        if breakdown and w:
            key = ins.chain[0] if ins.chain else ("?", 0)
            by_line[key] = by_line.get(key, 0.0) + w
    return total / pairs, by_line


# ---------------------------------------------------------------------------------------
# Cases


def attention_geometry(H: int, W: int, exclude: int):
    """Mean h, w and h*w of the displacement list of the attention kernel (ops_impl.cuh)."""
    hs, ws, hws = [], [], []
    for dr in range(H):
        for dc in range(1 if dr == 0 else -(W - 1), W):
            if max(dr, abs(dc)) >= exclude:
                h, w = H - dr, W - abs(dc)
                hs.append(h)
                ws.append(w)
                hws.append(h * w)
    n = len(hs)
    return sum(hs) / n, sum(ws) / n, sum(hws) / n


def patch_env(C: int, P: int, dtype: str = "float", H: int = 28, W: int = 28, tf32: bool = False) -> dict:
    TQ, TK, DK, DQ = (64, 64, 16, 64) if dtype == "float" else (64, 32, 8, 16)  # csrc/cuda/common.cuh: Cfg
    D = C * min(P, 2 * H - 1) * min(P, 2 * W - 1)
    nchunk, full, rem = math.ceil(D / DK), D // DK, D % DK
    # PARTC: the fraction of chunk-loop iterations that are the last, partial chunk; PARTW:
    # the same times rem / DK, for code of that chunk that runs on its real entries only.
    # QRES: the query patches stay in shared memory for the block (fp32 path, D <= DQ)
    # The forward's CUDA-core path (distance_tile_simt, WIDE) loads ranges of DQ entries:
    # NWIDE ranges; per range, load_range_inside runs LMAIN iterations of 4 entries and LREM of
    # one per thread (means over the LSTEP warp-uniform starts t // 64), accumulate_range AMAIN
    # of 8 and AREM of one; the trip counts are means over the ranges.
    qres = int(D <= DQ and not tf32)
    # PLAIN: the forward's epilogue for a full key tile without key_logw (tile_softmax_plain), the
    # counted case on the fp32 path (the last, partial tile of a block is one in T >= 4, and rarer
    # at scale; key_logw would take tile_softmax_general on every tile)
    plain = int(not tf32)
    # KSMALL: the fp32 forward loads short key patches (D <= 4 * LSTEP) with per-thread offsets
    # in registers (load_key_patch_small) instead of load_key_range
    ksmall = int(not tf32 and D <= 4 * (THREADS // TK))
    lstep = THREADS // TK
    ranges = [min(DQ, D - d0) for d0 in range(0, D, DQ)]
    counts = [len(range(s, n, lstep)) for n in ranges for s in range(lstep)]
    return dict(C=C, P=P, D=D, TQ=TQ, TK=TK, DK=DK, NCHUNK=nchunk, FULL=full, REM=rem, QRES=qres, PLAIN=plain, KSMALL=ksmall,
                NWIDE=len(ranges), LSTEP=lstep, LMAIN=sum(n // 4 for n in counts) / len(counts),
                LREM=sum(n % 4 for n in counts) / len(counts), AMAIN=sum(n // 8 for n in ranges) / len(ranges),
                AREM=sum(n % 8 for n in ranges) / len(ranges),
                PARTW=(1 if rem else 0) / nchunk * rem / DK, PARTC=(1 if rem else 0) / nchunk,
                THREADS=THREADS, H=H, W=W, boundary="zeros",
                KPT=TK // (THREADS // TQ))


def paired_env(C: int, P: int, P2: int, dtype: str = "float", H: int = 28, W: int = 28) -> dict:
    """patch_env plus the partner term's trip counts (patch_kernels.cuh: partner_tile): NPART ranges
    of DP entries of the D2 = C * P2 * P2 window (zeros: P2 clipped to 2H-1), per range the
    window gathers (GMAIN, GREM) and the sums' PMAIN iterations of 8 entries and PREM of one."""
    env = patch_env(C, P, dtype, H, W)
    DP = 32 if dtype == "float" else 16  # csrc/cuda/common.cuh: Cfg<T>::DP
    D2 = C * min(P2, 2 * H - 1) * min(P2, 2 * W - 1)
    ranges = [min(DP, D2 - d0) for d0 in range(0, D2, DP)]

    # load_window_range: per range GMAIN iterations of 4 gathers and GREM of one per thread (means
    # over the LSTEP warp-uniform starts t // TK; the query windows have the same counts: TQ = TK)
    counts = [len(range(s, n, env["LSTEP"])) for n in ranges for s in range(env["LSTEP"])]
    env.update(P2=P2, D2=D2, DP=DP, NPART=len(ranges), GMAIN=sum(c // 4 for c in counts) / len(counts),
               GREM=sum(c % 4 for c in counts) / len(counts),
               PMAIN=sum(n // 8 for n in ranges) / len(ranges), PREM=sum(n % 8 for n in ranges) / len(ranges))
    return env


def attention_env(C: int, P: int, H: int = 28, W: int = 28, K: int = 8) -> dict:
    ah, aw, ahw = attention_geometry(H, W, P)
    return dict(C=C, P=P, H=H, W=W, HW=H * W, K=K, TSTRIDE=(H + 1) * (W + 1), AVG_H=ah, AVG_W=aw, AVG_HW=ahw,
                THREADS=THREADS, boundary="zeros")


def kernel_name(kernels: dict, pattern: str) -> str:
    hits = [n for n in kernels if re.search(pattern, n)]
    if len(hits) != 1:
        raise SystemExit(f"sass_count: {len(hits)} kernels match {pattern!r}: {hits}")
    return hits[0]


def cases():
    """(label, source, kernel regex, env) of the standard table."""
    out = []
    for P in (3, 7):
        for C in (1, 3):
            cmax = 1 if C == 1 else 4
            env = patch_env(C, P)
            out.append((f"forward fp32 C={C} P={P}", "patch_kernels.cu", rf"forward_kernelIfLi{cmax}ELb0E", env))
            out.append((f"forward tf32 C={C} P={P}", "patch_kernels.cu", rf"forward_kernelIfLi{cmax}ELb1E",
                        patch_env(C, P, tf32=True)))
            out.append((f"backward fp32 C={C} P={P}", "patch_kernels.cu", rf"backward_kernelIfLi{cmax}EE",
                        env))
    # The paired-patch machine (P2 = P): its count minus the fp32 forward's of the same C, P is
    # the partner term's cost per pair (bench/PELS.md).
    for P in (3, 7):
        for C in (1, 3):
            cmax = 1 if C == 1 else 4
            out.append((f"paired fp32 C={C} P=P2={P}", "paired_kernels.cu", rf"forward_kernelIfLi{cmax}ELb0ELb1EE",
                        paired_env(C, P, P)))
    for P in (3, 7):
        out.append((f"attention hard C=1 P={P}", "patch_argmax_attention.cu", r"attention_kernelIfLi0EE",
                    attention_env(1, P)))
    return out


def run(breakdown: bool = False, only: str | None = None):
    nvcc, nvdisasm = find_tool("nvcc"), find_tool("nvdisasm")
    tags = source_tags()
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        disasm = {}
        for src in ("patch_kernels.cu", "paired_kernels.cu", "patch_argmax_attention.cu"):
            cubin = Path(tmp) / (src + ".cubin")
            compile_cubin(CSRC / "cuda" / src, cubin, nvcc)
            disasm[src] = disassemble(cubin, nvdisasm)
        for label, src, pattern, env in cases():
            if only and not re.search(only, label):
                continue
            k = disasm[src][kernel_name(disasm[src], pattern)]
            per_pair, by_line = count_hot_loop(k, tags, env, breakdown)
            results.append(dict(case=label, kernel=k.name, instructions_per_pair=round(per_pair, 1),
                                kernel_instructions=len(k.instrs)))
            if breakdown:
                print(f"\n{label}: {per_pair:.1f} per pair; by innermost source line (per pair):")
                pairs = per_pair and sum(by_line.values()) / per_pair
                for (f, line), w in sorted(by_line.items(), key=lambda kv: -kv[1])[:25]:
                    print(f"  {f}:{line:<5d} {w / pairs:8.2f}")
    return results


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--json", help="write the results to this file")
    ap.add_argument("--breakdown", action="store_true", help="per source line of each hot loop")
    ap.add_argument("--only", help="regex of the case labels to count")
    ap.add_argument("--root", help="count the csrc/ of this directory instead of this checkout's")
    ap.add_argument("--ptxas", action="store_true",
                    help="report registers and spills of every kernel (-Xptxas -v) instead of counting")
    args = ap.parse_args(argv)
    if args.root:
        global CSRC
        CSRC = Path(args.root).resolve() / "csrc"
    if args.ptxas:
        rows = ptxas_report(find_tool("nvcc"))
        print(f"{'kernel':64s} {'regs':>5s} {'spill st':>9s} {'spill ld':>9s} {'stack':>6s} {'smem':>6s}")
        for r in rows:
            print(f"{r['kernel'][:64]:64s} {r['registers']:5d} {r['spill_stores']:9d} {r['spill_loads']:9d} "
                  f"{r['stack']:6d} {r['smem']:6d}")
        if args.json:
            Path(args.json).write_text(json.dumps(rows, indent=1))
        return 0
    results = run(args.breakdown, args.only)
    print(f"\n{'case':30s} {'instr/pair':>10s}")
    for r in results:
        print(f"{r['case']:30s} {r['instructions_per_pair']:10.1f}")
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
