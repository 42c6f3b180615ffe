"""The one registry of machines: name -> factory, its options, and its torch.distributed form.

Every ``--machine`` of the command line, ``make_denoiser`` and the sharded machines of
``distributed`` come from here. A factory declares its options by its signature:
``factory(data, [P], *, option=default, ...)`` with no ``**kwargs``, so a misspelt
option is an error, never silently ignored. The sharded form, where there is one,
takes the same options plus ``offset``, ``image_ids`` and ``group``
(``distributed.machines``).

Built-in machines (docs/theory.md §3): ``ideal``, ``local``, ``els``, ``gaussian``,
``aels``, ``pels``, ``nearest``, ``smoothed``, ``pca_locality``, ``pspc``. Add your own with
:func:`register_machine`.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass
from typing import Any, Callable, Optional

from ._validate import check_choice


@dataclass(frozen=True)
class Machine:
    """A registered machine: ``factory(data, **options)``, and ``sharded(shard, *, offset, image_ids, group,
    **options)`` or None (then it runs replicated under torchrun: every rank holds the whole set)."""

    name: str
    factory: Callable[..., Any]
    options: tuple[str, ...]
    sharded: Optional[Callable[..., Any]] = None

    def takes(self, option: str) -> bool:
        return option in self.options


_MACHINES: dict[str, Machine] = {}


def _declared_options(name: str, factory: Callable) -> tuple[str, ...]:
    """The keyword options of ``factory(data, ...)``: every parameter after the first."""
    params = list(inspect.signature(factory).parameters.values())
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params):
        raise TypeError(f"machine {name!r}: the factory must declare its options (no **kwargs)")
    return tuple(p.name for p in params[1:] if p.kind is not inspect.Parameter.VAR_POSITIONAL)


def register_machine(name: str, factory: Callable[..., Any], *, options: Optional[tuple[str, ...]] = None,
                     sharded: Optional[Callable[..., Any]] = None) -> Machine:
    """Register ``factory(data, **options) -> denoiser`` under ``name`` (replacing an earlier one).

    ``options``: the keyword options it takes (default: read from its signature).
    ``sharded``: ``factory(shard, *, offset, image_ids, group, **options)`` building the form
    over a training set split across ranks (``distributed.make_sharded_denoiser``).
    """
    if not isinstance(name, str) or not name.isidentifier():
        raise ValueError(f"machine name must be an identifier-like str; got {name!r}")
    entry = Machine(name, factory, tuple(options) if options is not None else _declared_options(name, factory),
                    sharded)
    _MACHINES[name] = entry
    return entry


def machine_names() -> tuple[str, ...]:
    return tuple(_MACHINES)


def get_machine(name: str) -> Machine:
    """The registry entry of ``name`` (ValueError naming the known machines otherwise)."""
    return _MACHINES[check_choice("machine", name, machine_names())]


def check_options(name: str, options: dict) -> None:
    """ValueError for an option that machine ``name`` does not take."""
    entry = get_machine(name)
    for key in options:
        if not entry.takes(key):
            raise ValueError(f"machine {name!r} does not take the option {key!r}; "
                             f"its options: {', '.join(entry.options) or 'none'}")


def applicable(name: str, **settings) -> dict:
    """The subset of ``settings`` that machine ``name`` takes (how a command passes its shared
    options, such as ``P`` or ``boundary``, to machines that have them)."""
    entry = get_machine(name)
    return {k: v for k, v in settings.items() if entry.takes(k)}


def make_denoiser(name: str, data, **options):
    """Build the registered machine ``name`` on ``data [N, C, H, W]``; unknown options are errors."""
    check_options(name, options)
    return get_machine(name).factory(data, **options)


def is_shardable(name: str) -> bool:
    """Whether ``name`` has a sharded form (else it runs replicated: every rank holds all the data)."""
    return get_machine(name).sharded is not None


def sharded_machine_names() -> tuple[str, ...]:
    return tuple(name for name, entry in _MACHINES.items() if entry.sharded is not None)


def make_sharded_denoiser(name: str, shard, *, offset: Optional[int] = None, image_ids=None, group=None,
                          **options):
    """The sharded form of ``name`` on this rank's shard ``[n, C, H, W]``; options as :func:`make_denoiser`.

    A collective when ``offset`` and ``image_ids`` are both None (the shards' offsets are found
    in rank order).
    """
    check_choice("machine (with a sharded form)", name, sharded_machine_names())
    check_options(name, options)
    return get_machine(name).sharded(shard, offset=offset, image_ids=image_ids, group=group, **options)


def _register_builtin() -> None:
    from .attention import AELSDenoiser
    from .paired import PELSDenoiser
    from .denoisers import ELSDenoiser, GaussianDenoiser, IdealDenoiser, LocalDenoiser
    from .distributed import machines as sharded
    from .peers import NearestDenoiser, PatchPosteriorAverage, PCALocalityDenoiser, SmoothedDenoiser

    register_machine("ideal", IdealDenoiser, sharded=sharded.sharded_ideal)
    register_machine("local", LocalDenoiser, sharded=sharded.sharded_local)
    register_machine("els", ELSDenoiser, sharded=sharded.sharded_els)
    register_machine("gaussian", GaussianDenoiser, sharded=sharded.DistributedGaussianDenoiser)
    register_machine("aels", AELSDenoiser, sharded=sharded.sharded_aels)
    register_machine("pels", PELSDenoiser, sharded=sharded.sharded_pels)
    register_machine("nearest", NearestDenoiser)
    register_machine("smoothed", SmoothedDenoiser)
    register_machine("pca_locality", PCALocalityDenoiser)
    register_machine("pspc", PatchPosteriorAverage)


_register_builtin()
