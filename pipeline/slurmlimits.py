"""What a SLURM cluster offers, and whether a job request fits it, before anything is submitted.

A request SLURM can never satisfy (more CPUs, memory or GPUs than any node of the partition has,
a time limit above the partition's) is accepted by ``sbatch`` and then pends forever with a
reason such as ``PartitionConfig``. :func:`check_request` refuses it up front and names the
values that fit; :func:`fitted_slurm_defaults` gives the default ``slurm`` section shrunk to the
cluster it runs on, so a generated config works there as it is.

The cluster is read with one command, ``sinfo -h -N -o "%N|%P|%c|%m|%G|%l"``: per node and
partition the CPUs, memory (MB), generic resources (``gpu:2``) and the partition's time limit;
the default partition is marked with ``*``.
"""

from __future__ import annotations

import re
import subprocess
from dataclasses import dataclass, replace

from .runconfig import SlurmConfig

__all__ = ["SlurmRequestError", "Node", "parse_memory_mb", "parse_minutes", "format_minutes", "parse_sinfo",
           "query_nodes", "check_request_format", "check_request", "fitted_slurm_defaults"]

SINFO = ["sinfo", "-h", "-N", "-o", "%N|%P|%c|%m|%G|%l"]
_MEMORY = re.compile(r"^(\d+)([KMGT]?)B?$", re.IGNORECASE)
_MEMORY_MB = {"K": 1 / 1024, "": 1, "M": 1, "G": 1024, "T": 1024 ** 2}


class SlurmRequestError(ValueError):
    """A malformed SLURM request, one no node can satisfy, or a cluster that cannot be queried."""


@dataclass(frozen=True)
class Node:
    """One node as a member of one partition."""

    name: str
    partition: str
    default: bool
    cpus: int
    memory_mb: int
    gpus: int
    max_minutes: int | None  # None = no time limit


def parse_memory_mb(text: str) -> int:
    """SLURM memory (``16G``, ``500M``, ``1T``, ``2048`` = MB) in MB."""
    match = _MEMORY.match(str(text).strip())
    if not match:
        raise SlurmRequestError(f"memory {text!r} is not a SLURM size: use e.g. 16G, 500M or 2048 (MB)")
    return int(int(match.group(1)) * _MEMORY_MB[match.group(2).upper()])


def parse_minutes(text: str) -> int | None:
    """SLURM time (``MM``, ``MM:SS``, ``HH:MM:SS``, ``D-HH[:MM[:SS]]``) in whole minutes (rounded up);
    ``infinite``/``UNLIMITED`` -> None."""
    text = str(text).strip()
    if text.lower() in ("infinite", "unlimited"):
        return None
    days, _, clock = text.rpartition("-")
    parts = clock.split(":")
    if not (days == "" or days.isdigit()) or not all(p.isdigit() for p in parts) or not 1 <= len(parts) <= 3:
        raise SlurmRequestError(f"time {text!r} is not a SLURM time: use e.g. 04:00:00, 90 (minutes) or 1-12:00:00")
    values = [int(p) for p in parts]
    if days:  # D-HH, D-HH:MM, D-HH:MM:SS
        hours, minutes, seconds = (values + [0, 0])[:3]
    elif len(values) == 3:  # HH:MM:SS
        hours, minutes, seconds = values
    else:  # MM, MM:SS
        hours, minutes, seconds = 0, values[0], (values + [0])[1]
    total = ((int(days or 0) * 24 + hours) * 60 + minutes) * 60 + seconds
    return -(-total // 60)


def format_minutes(minutes: int) -> str:
    """Minutes as SLURM ``D-HH:MM:SS`` (``HH:MM:SS`` below a day)."""
    days, rest = divmod(minutes, 24 * 60)
    clock = f"{rest // 60:02d}:{rest % 60:02d}:00"
    return f"{days}-{clock}" if days else clock


def _gpus(gres: str) -> int:
    """GPU count of a ``Gres`` string such as ``gpu:2``, ``gpu:a100:4(S:0-1)`` or ``(null)``."""
    total = 0
    for entry in gres.split(","):
        fields = entry.split("(")[0].split(":")
        if fields[0] == "gpu" and fields[-1].isdigit():
            total += int(fields[-1])
    return total


def parse_sinfo(text: str) -> list[Node]:
    """Nodes from the output of :data:`SINFO`."""
    nodes = []
    for line in text.splitlines():
        fields = line.strip().split("|")
        if len(fields) != 6:
            continue
        name, partition, cpus, memory, gres, limit = fields
        nodes.append(Node(name, partition.rstrip("*"), partition.endswith("*"), int(cpus),
                          int(memory.rstrip("+")), _gpus(gres), parse_minutes(limit)))
    return nodes


def query_nodes() -> list[Node]:
    """The nodes of the cluster ``sinfo`` reaches (``SLURM_CONF``)."""
    try:
        result = subprocess.run(SINFO, capture_output=True, text=True, timeout=60, check=False)
    except FileNotFoundError:
        raise SlurmRequestError("sinfo not found: run this on a SLURM login node (or use --dry-run)") from None
    except subprocess.TimeoutExpired:
        raise SlurmRequestError("sinfo did not answer within 60 s: is slurmctld running (check SLURM_CONF)?") from None
    nodes = parse_sinfo(result.stdout) if result.returncode == 0 else []
    if not nodes:
        reason = " ".join((result.stderr or result.stdout).split()) or "no nodes listed"
        raise SlurmRequestError(f"cannot read the cluster's nodes with sinfo ({reason}): check SLURM_CONF "
                                "and that slurmctld runs")
    return nodes


def check_request_format(slurm: SlurmConfig) -> None:
    """Refuse malformed ``slurm`` values (without asking the cluster)."""
    if slurm.cpus < 1:
        raise SlurmRequestError(f"slurm.cpus (--cpus) must be >= 1, got {slurm.cpus}")
    if slurm.gpus < 0:
        raise SlurmRequestError(f"slurm.gpus (--gpus) must be >= 0, got {slurm.gpus}")
    if slurm.max_array is not None and slurm.max_array < 1:
        raise SlurmRequestError(f"slurm.max_array (--max-array) must be >= 1, got {slurm.max_array}")
    parse_memory_mb(slurm.mem)
    if parse_minutes(slurm.time) is None:
        raise SlurmRequestError(f"slurm.time (--time) {slurm.time!r} must be a limit such as 04:00:00")


def _candidates(partition: str | None, flag: str, nodes: list[Node]) -> tuple[str, list[Node]]:
    """The partition a job asking for ``partition`` (None: the default one) runs in, and its nodes;
    ``flag`` is the option that sets it, for the messages."""
    partitions = sorted({node.partition for node in nodes})
    if partition is None:
        defaults = [node for node in nodes if node.default]
        if not defaults:
            raise SlurmRequestError(f"this cluster has no default partition: pass {flag}, "
                                    f"one of {', '.join(partitions)}")
        return defaults[0].partition, defaults
    members = [node for node in nodes if node.partition == partition]
    if not members:
        raise SlurmRequestError(f"partition {partition!r} does not exist on this cluster: use {flag} "
                                f"{' or '.join(partitions)}")
    return partition, members


def check_request(slurm: SlurmConfig, nodes: list[Node]) -> None:
    """Refuse a request no node of its partition can satisfy; the message names the values that fit.

    The predict jobs ask for ``slurm.gpus`` in ``slurm.gpu_partition`` (when set), the other jobs
    for no GPU in ``slurm.partition``; each request must fit some node of its partition.

    Raises
    ------
    SlurmRequestError
        Unknown partition, no default partition, or more CPUs, memory, GPUs or time than the
        partition's largest node (or its time limit) offers.
    """
    check_request_format(slurm)
    if slurm.gpu_partition is None:
        _check_partition(slurm, slurm.partition, "--partition (slurm.partition)", slurm.gpus, nodes)
    else:
        _check_partition(slurm, slurm.gpu_partition, "--gpu-partition (slurm.gpu_partition)", slurm.gpus, nodes)
        _check_partition(slurm, slurm.partition, "--partition (slurm.partition)", 0, nodes)


def _check_partition(slurm: SlurmConfig, partition: str | None, flag: str, gpus: int, nodes: list[Node]) -> None:
    """Refuse ``slurm``'s CPUs, memory and time with ``gpus`` GPUs when no node of ``partition`` fits them."""
    partition, members = _candidates(partition, flag, nodes)
    memory, minutes = parse_memory_mb(slurm.mem), parse_minutes(slurm.time)

    def fits(node: Node) -> bool:
        return (slurm.cpus <= node.cpus and memory <= node.memory_mb and gpus <= node.gpus
                and (node.max_minutes is None or minutes <= node.max_minutes))

    if any(fits(node) for node in members):
        return
    best = max(members, key=lambda node: (node.gpus >= gpus, node.cpus, node.memory_mb))
    fixes = []
    if slurm.cpus > best.cpus:
        fixes.append(f"--cpus {best.cpus} (slurm.cpus)")
    if memory > best.memory_mb:
        fixes.append(f"--mem {best.memory_mb}M (slurm.mem)")
    if gpus > best.gpus:
        fixes.append(f"--gpus {best.gpus} (slurm.gpus)" if best.gpus else f"--gpus 0 or a partition with GPUs via {flag}")
    if best.max_minutes is not None and minutes > best.max_minutes:
        fixes.append(f"--time {format_minutes(best.max_minutes)} (slurm.time)")
    offered = (f"{best.cpus} CPUs, {best.memory_mb}M memory, {best.gpus} GPUs, time limit "
               f"{format_minutes(best.max_minutes) if best.max_minutes is not None else 'none'}")
    raise SlurmRequestError(f"no node of partition {partition!r} can run a task asking for {slurm.cpus} CPUs, "
                            f"{slurm.mem} memory, {gpus} GPUs for {slurm.time} (largest node {best.name}: "
                            f"{offered}), so SLURM would hold it forever: use {', '.join(fixes)}")


def fitted_slurm_defaults() -> SlurmConfig:
    """The default ``slurm`` section, with CPUs, memory and time shrunk to fit the largest node of the
    reachable cluster's default partition (the plain defaults when no cluster answers)."""
    defaults = SlurmConfig()
    try:
        _, members = _candidates(defaults.partition, "--partition (slurm.partition)", query_nodes())
    except SlurmRequestError:
        return defaults
    node = max(members, key=lambda n: (n.cpus, n.memory_mb))
    memory = parse_memory_mb(defaults.mem)
    minutes = parse_minutes(defaults.time)
    return replace(defaults, cpus=min(defaults.cpus, node.cpus),
                   mem=defaults.mem if memory <= node.memory_mb else f"{node.memory_mb}M",
                   time=defaults.time if node.max_minutes is None or minutes <= node.max_minutes
                   else format_minutes(node.max_minutes))
