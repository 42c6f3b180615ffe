"""Cost of a PELS step against an ELS step (docs/theory.md §3.7, §9), side by side on the benchmark shapes.

    PYTHONPATH=. python bench/bench_pels.py [--n 1000] [--b 8] [--ps 3,7,15] [--sigmas 0.05,1,10]
                                            [--boundaries zeros,circular] [--repeats 3] [--out bench/results/pels.json]
                                            [--partner-structure]

Shapes: those of ``bench/bench_patch_posterior.py`` (the first N embedded Fashion-MNIST
training images, B test images plus sigma * noise as queries, float32, P = P2 = attention
patch in {3, 7, 15}, sigma in {0.05, 1, 10}, both boundaries). For each case, on the CPU
kernels, the median over ``--repeats`` runs (after one warm-up) of:

- ``els``: ``patch_posterior_mean(mode="els")``, one ELS step;
- ``pels op``: ``paired_patch_posterior_mean`` alone (partners given);
- ``pels step``: what ``PELSDenoiser`` does per call with ``attend_on="z"``: the query
  partners (``patch_argmax_attention`` on z) plus the operator. The training partners are
  cached by the machine (once per data set and attention patch), so they are computed
  once here, outside the timing, and their one-off time is reported separately.

Counted work: pairs = ``count_pairs(B, N, H, W, P, "els", boundary)`` (the same for both
machines); the partner distance adds ``D2 = C * P2^2`` subtractions and as many
multiply-adds per pair (``2 * D2`` flops) to ELS's O(C) box-filter update, except for
pairs whose ELS logit alone already underflows the softmax (skipped exactly).

Floor of the partner term: ``bench/microbench.py``'s ``cf_partner_term_rate`` times one
8-lane partner distance on one thread with its data in cache, in three forms (as the
kernel computes it; keys in double; the dot-product form, one multiply-add per entry).
The fastest form gives the least time any direct evaluation of the term can take on this
machine, ``pairs / 8 / rate / threads`` (perfect scaling, no memory stalls, no pruning),
and so the least PELS / ELS ratio: ``floor ratio = (els + that time) / els``.
Writes the JSON to ``--out`` and prints a markdown table (ratio = pels step / els).
Times on a shared machine are noisy; compare the ratio within one run.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time

import torch

import microbench

import creativity_fast as cf
from creativity_fast.attention import training_partners
from creativity_fast.data import load_dataset
from creativity_fast.ops import mean_patch


def timed(fn, repeats: int) -> float:
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


TERM_FORMS = ("kernel", "double_keys", "dot")


def partner_term_rates(D2: int, seconds: float = 0.5) -> dict:
    """8-lane partner distances per second on one thread, per form (microbench.cpp)."""
    import ctypes

    lib = ctypes.CDLL(str(microbench.build()))
    lib.cf_partner_term_rate.restype = ctypes.c_double
    lib.cf_partner_term_rate.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_double, ctypes.POINTER(ctypes.c_double)]
    sink = ctypes.c_double()
    return {form: lib.cf_partner_term_rate(D2, i, seconds, ctypes.byref(sink)) for i, form in enumerate(TERM_FORMS)}


def partner_structure(data, x0, P, sigma) -> dict:
    """How much structure a partner-distance table could exploit (bench/PELS.md): distinct
    partners per sample and per training image, and the fraction of pixels whose right
    neighbour's partner is the right neighbour of their own partner (coherent gathers)."""
    B, _, H, W = x0.shape
    key_partner = training_partners(data, P, cache=False).view(-1, H, W)
    g = torch.Generator().manual_seed(1234)
    z = x0 + sigma * torch.randn(x0.shape, generator=g)
    query_partner = cf.patch_argmax_attention(z, P, center=mean_patch(data, P)).view(-1, H, W)

    def coherent(p):  # [n, H, W] flat partners -> [n, H, W - 1] bool
        return (p[..., 1:] // W == p[..., :-1] // W) & (p[..., 1:] % W == p[..., :-1] % W + 1)

    groups = key_partner[: key_partner.shape[0] // 8 * 8].view(-1, 8, H, W)
    distinct_keys = sorted(int(p.unique().numel()) for p in key_partner)
    return dict(P=P, sigma=sigma, query_coherent=coherent(query_partner).float().mean().item(),
                key_coherent=coherent(key_partner).float().mean().item(),
                lane_group_coherent=coherent(groups.flatten(0, 1)).view(groups.shape[0], 8, H, W - 1)
                .all(1).float().mean().item() if groups.numel() else float("nan"),
                distinct_query_partners=[int(p.unique().numel()) for p in query_partner],
                distinct_key_partners_median=distinct_keys[len(distinct_keys) // 2],
                distinct_key_partners_max=distinct_keys[-1])


def run_case(data, x0, P, sigma, boundary, repeats):
    B, C, H, W = x0.shape
    g = torch.Generator().manual_seed(1234)
    z = x0 + sigma * torch.randn(x0.shape, generator=g)
    s = torch.full((B,), float(sigma))
    ops = torch.ops.creativity_fast
    center = mean_patch(data, P)
    t0 = time.perf_counter()
    key_partner = training_partners(data, P, cache=False)
    t_train = time.perf_counter() - t0
    query_partner = cf.patch_argmax_attention(z, P, center=center)

    def els():
        return ops.patch_posterior_mean(z, data, s, P, "els", boundary, "all", None, False)[0]

    def pels_op():
        return ops.paired_patch_posterior_mean(z, data, s, P, P, query_partner, key_partner, 1.0, boundary, "all",
                                               False)[0]

    def pels_step():
        q = cf.patch_argmax_attention(z, P, center=center)
        return ops.paired_patch_posterior_mean(z, data, s, P, P, q, key_partner, 1.0, boundary, "all", False)[0]

    t_els, t_op, t_step = timed(els, repeats), timed(pels_op, repeats), timed(pels_step, repeats)
    pairs = cf.count_pairs(B, data.shape[0], H, W, P, "els", boundary)
    rates = partner_term_rates(C * P * P)
    term_floor_s = pairs / 8 / max(rates.values()) / torch.get_num_threads()
    return dict(term_rates_per_s=rates, term_floor_s=term_floor_s, floor_ratio=(t_els + term_floor_s) / t_els,
                P=P, P2=P, sigma=sigma, boundary=boundary, B=B, N=data.shape[0], C=C, H=H, W=W, pairs=pairs,
                extra_flops_per_pair=2 * C * P * P, els_s=t_els, pels_op_s=t_op, pels_step_s=t_step,
                training_partners_s=t_train, ratio_op=t_op / t_els, ratio_step=t_step / t_els)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--n", type=int, default=1000)
    p.add_argument("--b", type=int, default=8)
    p.add_argument("--ps", default="3,7,15")
    p.add_argument("--sigmas", default="0.05,1,10")
    p.add_argument("--boundaries", default="zeros,circular")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--out", default="bench/results/pels.json")
    p.add_argument("--partner-structure", action="store_true",
                   help="print the partners' structure (distinct, coherent) per P and sigma instead of timing")
    args = p.parse_args(argv)
    data = load_dataset(limit=args.n).images.contiguous()
    x0 = load_dataset(split="test", limit=args.b).images.contiguous()
    if args.partner_structure:
        for P in (int(v) for v in args.ps.split(",")):
            for sigma in (float(v) for v in args.sigmas.split(",")):
                print(json.dumps(partner_structure(data, x0, P, sigma)), flush=True)
        return
    rows = []
    for P in (int(v) for v in args.ps.split(",")):
        for sigma in (float(v) for v in args.sigmas.split(",")):
            for boundary in args.boundaries.split(","):
                row = run_case(data, x0, P, sigma, boundary, args.repeats)
                rows.append(row)
                print(f"P={P} sigma={sigma:g} {boundary}: els {row['els_s']:.3f} s, pels op {row['pels_op_s']:.3f} s,"
                      f" pels step {row['pels_step_s']:.3f} s, ratio {row['ratio_step']:.2f}", flush=True)
    meta = dict(command="PYTHONPATH=. python bench/bench_pels.py " + " ".join(argv or []), threads=torch.get_num_threads(),
                cpu=platform.processor() or platform.machine(), load_average=os.getloadavg(),
                when=time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime()))
    os.makedirs(os.path.dirname(args.out) or ".", exist_ok=True)
    with open(args.out, "w") as f:
        json.dump(dict(meta=meta, rows=rows), f, indent=1)
    print("\n| P = P2 | sigma | boundary | extra flops/pair | ELS step | PELS op | PELS step | ratio (step) |"
          " term floor | floor ratio |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['P']} | {r['sigma']:g} | {r['boundary']} | {r['extra_flops_per_pair']} | {r['els_s']:.2f} s |"
              f" {r['pels_op_s']:.2f} s | {r['pels_step_s']:.2f} s | {r['ratio_step']:.2f}x |"
              f" {r['term_floor_s']:.2f} s | {r['floor_ratio']:.2f}x |")
    print("\nns per 8-lane partner distance (one thread, in cache), by form:")
    for r in rows:
        if r["sigma"] == rows[0]["sigma"] and r["boundary"] == rows[0]["boundary"]:
            print(f"  D2 = {r['C'] * r['P2'] ** 2}: " + ", ".join(f"{k} {1e9 / v:.1f}" for k, v in r["term_rates_per_s"].items()))
    print(f"\nload average at the end: {meta['load_average']}")


if __name__ == "__main__":
    import sys

    main(sys.argv[1:])
