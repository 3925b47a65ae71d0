"""Sharding a dataset over processes: a deterministic split and the launcher's rank variables."""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import TypeVar

from ..errors import ConfigError

T = TypeVar("T")


def shard(videos: Iterable[T], index: int, count: int) -> list[T]:
    """Shard ``index`` of ``count``: the videos sorted by name, every ``count``-th from ``index``.

    Striding (not contiguous blocks) spreads long and short videos evenly; the result depends only
    on the names, so every process computes the same disjoint split. Items are VideoItems (or
    anything with ``.name``) or plain strings.
    """
    from ..datasets import natural_key  # here: the CLI reads the rank before anything heavy

    if count < 1 or not 0 <= index < count:
        raise ConfigError(f"shard {index}/{count}: need count >= 1 and 0 <= index < count")
    items = sorted(videos, key=lambda v: natural_key(str(getattr(v, "name", v))))
    return items[index::count]


def manifest_path(out_root: str | os.PathLike[str], rank: int) -> Path:
    """Where rank ``rank`` records its run (and holds its lock): ``run_manifest_<rank>.json``."""
    return Path(out_root) / f"run_manifest_{rank}.json"


_RANK_VARS = (
    ("RANK", "WORLD_SIZE"),  # torchrun, accelerate launch, deepspeed
    ("LOCAL_RANK", "LOCAL_WORLD_SIZE"),  # single-node launchers that set only the local pair
    ("OMPI_COMM_WORLD_RANK", "OMPI_COMM_WORLD_SIZE"),  # mpirun (Open MPI)
    ("PMI_RANK", "PMI_SIZE"),  # MPICH / Intel MPI
    ("SLURM_PROCID", "SLURM_NTASKS"),  # srun
)


def rank_from_env(env: Mapping[str, str] | None = None) -> tuple[int, int]:
    """(rank, world size) of this process from launcher variables; (0, 1) when none are set.

    Checks RANK/WORLD_SIZE (torchrun, accelerate), then LOCAL_RANK/LOCAL_WORLD_SIZE, Open MPI,
    PMI and SLURM variables, in that order; the first pair whose rank is set wins.
    """
    e = os.environ if env is None else env
    for rank_var, world_var in _RANK_VARS:
        if rank_var not in e:
            continue
        if world_var not in e:
            raise ConfigError(f"{rank_var} is set but {world_var} is not; cannot shard")
        try:
            rank, world = int(e[rank_var]), int(e[world_var])
        except ValueError as err:
            raise ConfigError(
                f"{rank_var}={e[rank_var]!r} / {world_var}={e[world_var]!r} are not integers"
            ) from err
        if world < 1 or not 0 <= rank < world:
            raise ConfigError(f"{rank_var}={rank} is not in [0, {world_var}={world})")
        return rank, world
    return 0, 1
