"""``creativity-fast sweep``: a grid over machine, P, lam, gamma, beta and attend_on, with metrics per grid point.

For every grid point the samples are drawn from the same seeds (same initial noise),
saved as ``runs/<point>.npz`` (the ``sample`` format, so ``analyze`` works on each), and
scored with the docs/theory.md §7 metrics. Outputs in ``--out``:

- ``sweep.json`` (settings and one row per point), ``sweep.csv``, ``sweep.md`` (on twin glyphs the
  consistency fractions with Wilson 95% intervals and their chance rates, ``metrics.glyph_chance_rates``);
- ``sweep.png``: memorized fraction, novelty and consistency against each parameter.

Resumable: finished points are skipped on a rerun with the same settings (``rows/<point>.json``),
and a point interrupted mid-way resumes from its last finished batch.
Parameters that do not apply to a machine are collapsed: ``lam``/``gamma`` only vary for
``aels``, ``beta``/``attend_on`` only for ``pels`` (docs/theory.md §3.7), ``P`` not for ``ideal``
or ``gaussian``.
"""

from __future__ import annotations

import csv
import io as _pyio
import itertools
import json
import math
import time
from pathlib import Path

import numpy as np

from .. import io
from ..paired import ATTEND_ON
from ..registry import get_machine, machine_names, make_denoiser
from . import common
from .analyze import glyph_alphabet, heldout_images, is_twin_glyphs


def _floats(text: str, name: str) -> list[float]:
    try:
        values = [float(v) for v in str(text).split(",") if v.strip()]
    except ValueError:
        raise ValueError(f"--{name} must be a comma list of numbers; got {text!r}") from None
    if not values or any(not math.isfinite(v) for v in values):
        raise ValueError(f"--{name} must be a non-empty comma list of finite numbers; got {text!r}")
    return values


def _odd_ints(text: str) -> list[int]:
    try:
        values = [int(v) for v in str(text).split(",") if v.strip()]
    except ValueError:
        raise ValueError(f"--P must be a comma list of odd ints; got {text!r}") from None
    if not values or any(v <= 0 or v % 2 == 0 for v in values):
        raise ValueError(f"--P must be a comma list of odd positive ints; got {text!r}")
    return values


def register(sub) -> None:
    p = sub.add_parser("sweep", help="grid over machine, P, lam, gamma, beta, attend_on: samples, metrics table "
                                     "and plots")
    common.add_data_options(p)
    g = p.add_argument_group("grid")
    g.add_argument("--machines", default="els,aels", help="comma list of machines (default: %(default)s)")
    g.add_argument("--P", default="3,5,7", help="comma list of patch sizes (default: %(default)s)")
    g.add_argument("--lam", default="0,1", help="AELS attention-prior strengths (default: %(default)s)")
    g.add_argument("--gamma", default="0,1", help="AELS sample-time attention strengths (default: %(default)s)")
    g.add_argument("--beta", default="1", help="PELS partner-distance weights (default: %(default)s)")
    g.add_argument("--attend-on", default="z", help="PELS attention source(s), comma list of z, x0 "
                                                    "(default: %(default)s)")
    g.add_argument("--tau", type=float, default=None, help="AELS soft-attention temperature (default: top-1)")
    g.add_argument("--attention-P", type=int, default=None, help="AELS/PELS attention patch size (default: P)")
    g.add_argument("--exclude", type=int, default=None, help="AELS/PELS exclusion radius (default: attention P)")
    m = p.add_argument_group("machine")
    m.add_argument("--boundary", default="zeros", choices=("zeros", "circular"))
    m.add_argument("--keys", default="all", choices=("all", "valid"))
    m.add_argument("--backend", default="auto", choices=("auto", "kernel", "reference"))
    common.add_sampling_options(p, default_seeds="0-63")
    common.add_device_option(p)
    a = p.add_argument_group("analysis")
    a.add_argument("--glyphs", default="auto", choices=("auto", "on", "off"),
                   help="twin-glyph global consistency (auto: when the data set is twin glyphs)")
    a.add_argument("--no-heldout", action="store_true", help="skip the held-out novelty comparison")
    p.add_argument("--out", default="out/sweep", help="output directory (default: %(default)s)")
    p.set_defaults(func=run)


def grid(args) -> list[dict]:
    """The grid points, collapsed where a parameter does not apply, in a stable order."""
    machines = [m.strip() for m in args.machines.split(",") if m.strip()]
    known = machine_names()
    for m in machines:
        if m not in known:
            raise ValueError(f"--machines: unknown machine {m!r}; known: {', '.join(known)}")
    Ps, lams, gammas = _odd_ints(args.P), _floats(args.lam, "lam"), _floats(args.gamma, "gamma")
    if any(v < 0 for v in lams):
        raise ValueError(f"--lam values must be >= 0; got {args.lam!r}")
    betas = _floats(args.beta, "beta")
    if any(v < 0 for v in betas):
        raise ValueError(f"--beta values must be >= 0; got {args.beta!r}")
    sources = [v.strip() for v in str(args.attend_on).split(",") if v.strip()]
    if not sources or any(v not in ATTEND_ON for v in sources):
        raise ValueError(f"--attend-on must be a comma list of {', '.join(ATTEND_ON)}; got {args.attend_on!r}")
    points, seen = [], set()
    for machine in machines:
        aels, pels = machine == "aels", machine == "pels"
        for P, lam, gamma, beta, source in itertools.product(Ps, lams, gammas, betas, sources):
            point = {"machine": machine, "P": P if get_machine(machine).takes("P") else None,
                     "lam": lam if aels else None, "gamma": gamma if aels else None,
                     "beta": beta if pels else None, "attend_on": source if pels else None}
            key = tuple(point.values())
            if key not in seen:
                seen.add(key)
                points.append(point)
    return points


def point_id(point: dict) -> str:
    parts = [point["machine"]]
    if point["P"] is not None:
        parts.append(f"P{point['P']}")
    if point["lam"] is not None:
        parts += [f"lam{point['lam']:g}", f"gamma{point['gamma']:g}"]
    if point.get("beta") is not None:
        parts += [f"beta{point['beta']:g}", f"on{point['attend_on']}"]
    return "_".join(parts).replace("-", "m")


def machine_options(point: dict, args, data) -> dict:
    """Keyword arguments of the grid point's machine (the sweep's settings it takes, and the AELS options)."""
    opts: dict = {}
    if point["machine"] == "aels":
        opts.update(lam=point["lam"], gamma=point["gamma"], tau=args.tau, attention_P=args.attention_P,
                    exclude=args.exclude)
    if point["machine"] == "pels":
        opts.update(beta=point["beta"], attend_on=point["attend_on"], attention_P=args.attention_P,
                    exclude=args.exclude)
    settings = dict(boundary=args.boundary, keys=args.keys, backend=args.backend, labels=data.labels,
                    class_label=common.class_label_of(args, data), record_stats=True)
    if point["P"] is not None:
        settings["P"] = point["P"]
    return common.machine_kwargs(point["machine"], opts, **settings)


def flatten_row(point: dict, summary: dict, seconds: float, glyphs: bool) -> dict:
    mem = summary["memorization"]
    nov = summary["novelty"]
    row = dict(point)
    # one plotted line per machine and attention source
    row["series"] = point["machine"] + (f" on={point['attend_on']}" if point.get("attend_on") else "")
    row.update(id=point_id(point), n=summary["n_samples"], seconds=round(seconds, 2),
               memorized=mem["fraction"], memorized_lo=mem["ci95"][0], memorized_hi=mem["ci95"][1],
               nn_median=nov["sample"]["median"], nn_relative=nov.get("relative_median"))
    if "local_consistency" in summary:
        row["local_consistency"] = summary["local_consistency"]["pixel_fraction"]["median"]
    if "provenance" in summary:
        row["n_sources"] = summary["provenance"]["n_sources"]["median"]
    if glyphs and "global_consistency" in summary:
        g = summary["global_consistency"]
        for name in ("consistent", "twin", "mixed", "same_given_two"):
            row[name] = g[name]["fraction"]
            row[f"{name}_lo"], row[f"{name}_hi"] = g[name]["ci95"]
            row[f"{name}_chance"] = g["chance"][name]
        row["n_two"] = g["same_given_two"]["n"]
    return row


def run_point(point, args, data, sigmas, seeds, out: Path, heldout, glyphs, alphabet, base_settings) -> dict:
    from ..metrics import analyze_samples

    pid = point_id(point)
    # PELS keys only where they apply, so the settings (and resumes) of other machines' points are as before
    shown = {k: v for k, v in point.items() if k not in ("beta", "attend_on") or v is not None}
    settings = json.dumps({**base_settings, **shown, "machine": point["machine"], "id": pid,
                           "patch_schedule": str(point["P"] or 1), "tau": args.tau,
                           "attention_P": args.attention_P, "exclude": args.exclude}, sort_keys=True)
    row_path = out / "rows" / f"{pid}.json"
    if row_path.exists():
        try:
            saved = json.loads(row_path.read_text())
            if saved.get("settings") == settings:
                return saved["row"]
        except (json.JSONDecodeError, KeyError):
            pass
    run_path = out / "runs" / f"{pid}.npz"
    P = point["P"] or 1
    denoiser = make_denoiser(point["machine"], data.images, **machine_options(point, args, data))
    partial = common.partial_results_path(out / "runs", pid)
    done = common.load_partial(partial, settings)
    start = time.perf_counter()
    results = common.sample_images(denoiser, seeds, data.image_shape, sigmas, sampler=args.sampler, eta=args.eta,
                                   batch_size=args.batch_size, progress=False, done=done,
                                   checkpoint=lambda r: common.save_partial(partial, r, settings),
                                   device=data.images.device)
    seconds = time.perf_counter() - start
    samples, provenance = common.stack_results(results, seeds)
    arrays = dict(samples=samples.numpy(), seeds=np.array(seeds), settings=np.array(settings),
                  sigmas=sigmas.numpy(), patch_sizes=np.array([P] * (len(sigmas) - 1)))
    if provenance is not None:
        arrays["provenance"] = provenance.numpy()
    io.save_npz(run_path, **arrays)
    common.remove_quietly(partial)
    mode = {"ideal": "ideal", "local": "local"}.get(point["machine"], "els")
    on_device = common.to_device((samples, provenance), data.images.device)  # the metrics run there too
    metrics = analyze_samples(on_device[0], data.images, P=None if point["machine"] in ("gaussian", "nearest") else P,
                              mode=mode, boundary=args.boundary, keys=args.keys, provenance=on_device[1],
                              heldout=heldout, glyphs=glyphs, alphabet=alphabet, backend=args.backend)
    row = flatten_row(point, metrics["summary"], seconds, glyphs)
    io.save_json(row_path, {"settings": settings, "row": row, "summary": metrics["summary"]})
    return row


def write_table(rows: list[dict], out: Path, config: dict, glyphs: bool) -> list[Path]:
    columns = ["id", "machine", "P", "lam", "gamma", "beta", "attend_on", "n", "memorized", "memorized_lo", "memorized_hi",
               "nn_median", "nn_relative", "local_consistency", "n_sources"]
    if glyphs:
        for name in ("consistent", "twin", "mixed", "same_given_two"):
            columns += [name, f"{name}_lo", f"{name}_hi", f"{name}_chance"]
        columns.insert(columns.index("same_given_two"), "n_two")
    columns.append("seconds")
    paths = [io.save_json(out / "sweep.json", {"config": config, "rows": rows})]
    buffer = _pyio.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=columns, extrasaction="ignore")
    writer.writeheader()
    writer.writerows(rows)
    with io.atomic_open(out / "sweep.csv", "w") as handle:
        handle.write(buffer.getvalue())
    paths.append(out / "sweep.csv")

    def cell(v):
        if v is None:
            return "-"
        return f"{v:.3f}" if isinstance(v, float) else str(v)

    # intervals and chance rates go in their fraction's cell: "0.33 [0.28, 0.39] (chance 0.26)"
    shown = [c for c in columns if not c.endswith(("_lo", "_hi", "_chance"))]
    lines = ["| " + " | ".join(shown) + " |", "|" + "---|" * len(shown)]
    for r in rows:
        cells = []
        for c in shown:
            text = cell(r.get(c))
            if f"{c}_lo" in r and r.get(c) is not None:
                text += f" [{r[c + '_lo']:.2f}, {r[c + '_hi']:.2f}]"
            if r.get(f"{c}_chance") is not None:
                text += f" (chance {r[c + '_chance']:.2f})"
            cells.append(text)
        lines.append("| " + " | ".join(cells) + " |")
    with io.atomic_open(out / "sweep.md", "w") as handle:
        handle.write("\n".join(lines) + "\n")
    paths.append(out / "sweep.md")
    return paths


def run(args) -> int:
    from tqdm.auto import tqdm

    from ..figures import plot_sweep

    start = time.perf_counter()
    seeds = common.parse_seeds(args.seeds)
    points = grid(args)
    device = common.resolve_device(args.device)
    out = common.ensure_out_dir(args.out)
    data = common.load_training_set(args)
    data = common.images_to(data, device)
    sigmas = common.noise_sigmas(args)
    base_settings = json.loads(common.settings_json(args, data_name=data.name, n_train=len(data),
                                                    seeds=[seeds[0], seeds[-1], len(seeds)], device=device.type))
    base_settings.pop("machine", None)
    glyphs = args.glyphs == "on" or (args.glyphs == "auto" and is_twin_glyphs(data, base_settings))
    alphabet = glyph_alphabet(data, None) if glyphs else None
    heldout = None if args.no_heldout else heldout_images(args.data, resize=args.resize)
    heldout = None if heldout is None else heldout.to(device)
    rows = []
    common.report_device(device, args.device, show=not args.no_progress)
    bar = tqdm(points, desc="sweep", disable=args.no_progress)
    for point in bar:
        bar.set_postfix_str(point_id(point))
        rows.append(run_point(point, args, data, sigmas, seeds, out, heldout, glyphs, alphabet, base_settings))
        write_table(rows, out, {"grid": points, "settings": base_settings}, glyphs)  # partial table after each
    paths = write_table(rows, out, {"grid": points, "settings": base_settings}, glyphs)
    metrics = {"memorized": "memorized fraction", "nn_relative" if heldout is not None else "nn_median":
               "NN distance / held-out" if heldout is not None else "median NN distance",
               "local_consistency": "local consistency"}
    if glyphs:
        metrics["consistent"] = "globally consistent"
        metrics["twin"] = "twin (>=2 same glyphs)"
        metrics["mixed"] = "mixed (>=2 different glyphs)"
        metrics["same_given_two"] = "same glyph | >=2 glyphs"
    params = [p for p in ("P", "lam", "gamma", "beta") if len({r.get(p) for r in rows if r.get(p) is not None}) > 1]
    if not params:
        params = ["P"]
    paths.append(plot_sweep(rows, params, metrics, out / "sweep.png", group="series"))
    print(f"{len(points)} grid points, {len(seeds)} samples each, {time.perf_counter() - start:.1f} s on {device}")
    print("wrote " + ", ".join(str(p) for p in paths))
    return 0
