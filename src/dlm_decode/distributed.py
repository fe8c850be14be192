"""Running under a process launcher: ranks, the process group, and moving results to and from rank 0.

``torchrun --nproc_per_node N`` and ``accelerate launch --num_processes N`` (or a cluster's launcher across nodes)
start one process per rank with the ``torch.distributed`` environment variables ``RANK``, ``WORLD_SIZE``,
``LOCAL_RANK``, ``MASTER_ADDR`` and ``MASTER_PORT``. :func:`distributed` joins the process group those variables
describe (``gloo``: it only carries a few Python objects per run, so it works on CPU and GPU machines alike) and
:func:`gather_objects` / :func:`broadcast_object` move results to and from rank 0. With ``WORLD_SIZE`` unset or 1
everything is a no-op, so single-process runs are unchanged. A model whose ``device`` is ``auto`` or ``cuda`` goes
to ``cuda:LOCAL_RANK`` (see :func:`dlm_decode.models.loading.resolve_device`).
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

#: Seconds a rank waits for the others at a collective before giving up.
TIMEOUT_S = 3600


@dataclass(frozen=True)
class Ranks:
    """This process's place: ``rank`` in ``[0, world_size)``; ``local_rank`` on its node."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def main(self) -> bool:
        return self.rank == 0


def env_ranks() -> Ranks:
    """The ranks the launcher's environment variables describe (a single process when there are none)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local = int(os.environ.get("LOCAL_RANK", str(rank)))
    if world < 1 or not 0 <= rank < world:
        raise RuntimeError(f"inconsistent launcher environment: RANK={rank}, WORLD_SIZE={world}")
    return Ranks(rank, world, local)


def join_process_group() -> tuple[Ranks, bool]:
    """Join the process group of the environment (``gloo``) unless already joined or single-process.

    :return: the ranks, and whether this call created the group (the caller then destroys it).
    """
    import datetime

    import torch.distributed as dist

    ranks = env_ranks()
    if ranks.world_size == 1:
        return ranks, False
    if dist.is_initialized():
        return Ranks(dist.get_rank(), dist.get_world_size(), ranks.local_rank), False
    dist.init_process_group("gloo", timeout=datetime.timedelta(seconds=TIMEOUT_S))
    return Ranks(dist.get_rank(), dist.get_world_size(), ranks.local_rank), True


@contextlib.contextmanager
def distributed() -> Iterator[Ranks]:
    """``with distributed() as ranks:``: the process group for the block (left as found afterwards)."""
    import torch.distributed as dist

    ranks, created = join_process_group()
    try:
        yield ranks
    finally:
        if created and dist.is_initialized():
            dist.destroy_process_group()


def gather_objects(obj: Any, ranks: Ranks) -> list[Any] | None:
    """Every rank's ``obj`` on rank 0 (in rank order), None elsewhere; ``[obj]`` in a single process."""
    if ranks.world_size == 1:
        return [obj]
    import torch.distributed as dist

    gathered = [None] * ranks.world_size if ranks.main else None
    dist.gather_object(obj, gathered, dst=0)
    return gathered


def broadcast_object(obj: Any, ranks: Ranks) -> Any:
    """Rank 0's ``obj`` on every rank."""
    if ranks.world_size == 1:
        return obj
    import torch.distributed as dist

    box = [obj if ranks.main else None]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def barrier(ranks: Ranks) -> None:
    if ranks.world_size > 1:
        import torch.distributed as dist

        dist.barrier()
