"""Which consumer of which service each rank is: the per-node and global layouts, checked at attach.

Two ways to run a job on N nodes of P ranks each (``torchrun --nnodes N --nproc-per-node P``):

- **per-node**: one ``clipserve start --shard-id n --num-shards N`` on each node n; its P ranks
  attach to it as consumers ``LOCAL_RANK`` of ``LOCAL_WORLD_SIZE`` (same host: shared memory).
- **global**: the job's W = N·P ranks attach as consumers ``RANK`` of ``WORLD_SIZE`` to one
  service (``--num-shards 1``), or to each of K decode services that together serve one epoch
  (service k: ``--shard-id k --num-shards K``; ``--server URL0 ... URLK-1``).

``auto`` picks per-node when one service reports ``num_shards > 1`` and global otherwise. A layout
that would leave videos unread (a consumer world size that splits a shard into parts no rank reads,
a shard that is not this node's, a missing shard) raises :class:`~trainer.config.ConfigError`
naming the flag to pass. Everything here is a pure function of the services' ``/v1/info`` and
torchrun's environment.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from clipserve.client import ClipStreamError
from clipserve.client_multi import ServiceShard, order_shard_set
from trainer.config import ConfigError

LAYOUTS = ("auto", "per-node", "global")
"""``--service-layout`` values."""


@dataclass(frozen=True)
class LaunchEnv:
    """This process's place in the job, from torchrun's variables (a single process without them)."""

    rank: int
    world_size: int
    local_rank: int
    local_world_size: int
    node_rank: int
    """torchrun's ``GROUP_RANK`` (``--node-rank``), in [0, num_nodes)."""

    @property
    def num_nodes(self) -> int:
        return self.world_size // self.local_world_size

    @classmethod
    def from_environ(cls, environ: Mapping[str, str] | None = None) -> LaunchEnv:
        """Read ``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``, ``LOCAL_WORLD_SIZE``, ``GROUP_RANK``.

        Raises:
            ConfigError: a value is not an int, or the ranks are out of range, or the nodes differ
                in size (``WORLD_SIZE`` not a multiple of ``LOCAL_WORLD_SIZE``).
        """
        env = os.environ if environ is None else environ

        def read(name: str, default: int) -> int:
            raw = env.get(name)
            if raw is None or raw == "":
                return default
            try:
                return int(raw)
            except ValueError:
                raise ConfigError(f"environment variable {name} ({raw!r}) must be an int") from None

        world_size = read("WORLD_SIZE", 1)
        rank = read("RANK", 0)
        local_world_size = read("LOCAL_WORLD_SIZE", world_size)
        local_rank = read("LOCAL_RANK", rank % max(local_world_size, 1))
        node_rank = read("GROUP_RANK", rank // max(local_world_size, 1))
        launch = cls(rank, world_size, local_rank, local_world_size, node_rank)
        if not (world_size >= 1 and 0 <= rank < world_size and 1 <= local_world_size <= world_size
                and 0 <= local_rank < local_world_size):
            raise ConfigError(f"inconsistent torchrun environment: {launch}")
        if world_size % local_world_size:
            raise ConfigError(f"WORLD_SIZE ({world_size}) is not a multiple of LOCAL_WORLD_SIZE ({local_world_size}): "
                              "the per-node layout needs the same --nproc-per-node on every node")
        if not 0 <= node_rank < launch.num_nodes:
            raise ConfigError(f"GROUP_RANK ({node_rank}) must be in [0, {launch.num_nodes}) for {world_size} ranks of "
                              f"{local_world_size} per node")
        return launch


@dataclass(frozen=True)
class ConsumerSlot:
    """How this rank attaches: as consumer ``rank`` of ``world_size`` to every service of ``urls``."""

    layout: str
    """'per-node' or 'global' (never 'auto')."""
    urls: tuple[str, ...]
    """In shard order."""
    rank: int
    world_size: int
    shards: tuple[ServiceShard, ...] = ()
    """What each service reported, in the order of ``urls`` (checked again after a re-attach)."""

    def describe(self) -> str:
        return (f"{self.layout} layout: consumer {self.rank} of {self.world_size} on "
                f"{len(self.urls)} service(s) {', '.join(self.urls)}")


def resolve_layout(layout: str, shards: Sequence[ServiceShard], launch: LaunchEnv,
                   node_shards: Mapping[int, Sequence[int]] | None = None) -> ConsumerSlot:
    """The consumer slot of this rank, or ConfigError when ``layout`` and the services disagree.

    Args:
        layout: 'auto', 'per-node' or 'global'.
        shards: what each ``--server`` URL reports (``clipserve.client_multi.fetch_service_shard``).
        launch: this process's place in the job.
        node_shards: node rank → the shard id each of its ranks' service reports, gathered from all
            ranks (:func:`node_shard_map`); None when this rank cannot see the others.
    """
    if layout not in LAYOUTS:
        raise ConfigError(f"--service-layout must be one of {', '.join(LAYOUTS)}; got {layout!r}")
    if not shards:
        raise ConfigError("no --server given")
    if layout == "auto":
        layout = "per-node" if len(shards) == 1 and shards[0].num_shards > 1 else "global"
    if layout == "per-node":
        return _per_node(shards, launch, node_shards)
    try:
        ordered = order_shard_set(shards)
    except ClipStreamError as error:
        hint = ("; for one service per node, pass only this node's service and --service-layout per-node"
                if len(shards) == 1 else "")
        raise ConfigError(f"--service-layout global: {error}{hint}") from None
    return ConsumerSlot("global", tuple(shard.url for shard in ordered), launch.rank, launch.world_size,
                        tuple(ordered))


def node_shard_map(gathered: Sequence[tuple[int, int]]) -> dict[int, list[int]]:
    """``[(node rank, shard id) of every rank]`` → ``{node rank: [shard ids its ranks see]}``."""
    out: dict[int, list[int]] = {}
    for node, shard_id in gathered:
        out.setdefault(int(node), []).append(int(shard_id))
    return out


def _per_node(shards: Sequence[ServiceShard], launch: LaunchEnv,
              node_shards: Mapping[int, Sequence[int]] | None) -> ConsumerSlot:
    if len(shards) != 1:
        raise ConfigError(f"--service-layout per-node takes one --server (this node's service), got {len(shards)}; "
                          "for several decode hosts use --service-layout global")
    shard = shards[0]
    nodes = launch.num_nodes
    if shard.num_shards != nodes:
        if shard.num_shards > nodes:
            other = f", or pass all {shard.num_shards} services' URLs to --server (several decode hosts, global layout)"
        elif shard.num_shards == 1:
            other = ", or attach every rank to this one service with --service-layout global"
        else:
            other = ""
        raise ConfigError(
            f"{shard.url} serves shard {shard.shard_id} of {shard.num_shards}, but this job has {nodes} node(s) "
            f"(WORLD_SIZE {launch.world_size} / LOCAL_WORLD_SIZE {launch.local_world_size}), so some videos would be "
            f"read twice or never: start each node's service with --shard-id <node rank> --num-shards {nodes}{other}"
        )
    if node_shards is not None and launch.num_nodes > 1:
        _check_node_shards(shard, launch, node_shards)
    elif shard.shard_id != launch.node_rank:
        raise ConfigError(
            f"{shard.url} serves shard {shard.shard_id} of {shard.num_shards}, but this is node {launch.node_rank} "
            f"(GROUP_RANK): point --server at this node's service, or start it with --shard-id {launch.node_rank} "
            f"--num-shards {nodes}"
        )
    return ConsumerSlot("per-node", (shard.url,), launch.local_rank, launch.local_world_size, (shard,))


def _check_node_shards(shard: ServiceShard, launch: LaunchEnv, node_shards: Mapping[int, Sequence[int]]) -> None:
    """Every node's ranks see one shard, and the nodes' shards are 0..N-1, each once.

    torchrun's c10d rendezvous numbers the nodes in an order of its own (``--node-rank`` counts only
    for the static rendezvous), so a node's shard need not equal its ``GROUP_RANK``: what matters is
    that no shard is read twice and none is left out.
    """
    nodes = launch.num_nodes
    for node, ids in sorted(node_shards.items()):
        if len(set(ids)) != 1:
            raise ConfigError(f"the ranks of node {node} attach to services of different shards {sorted(set(ids))}: "
                              "point --server of every rank of a node at that node's one service")
    seen = {node: ids[0] for node, ids in node_shards.items()}
    by_shard: dict[int, list[int]] = {}
    for node, shard_id in seen.items():
        by_shard.setdefault(shard_id, []).append(node)
    missing = sorted(set(range(nodes)) - set(by_shard))
    twice = {shard_id: sorted(nodes_of) for shard_id, nodes_of in by_shard.items() if len(nodes_of) > 1}
    if missing or twice:
        listing = ", ".join(f"node {node}: shard {shard_id}" for node, shard_id in sorted(seen.items()))
        raise ConfigError(
            f"the nodes' services must serve shards 0..{nodes - 1}, each once ({listing}); shard(s) "
            f"{missing} would never be read: start node n's service with --shard-id n --num-shards {nodes} "
            f"(this node, {launch.node_rank}, reads {shard.url})"
        )
