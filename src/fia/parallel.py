"""Concept-parallel erasing: the processes of an ``accelerate launch`` (or ``torchrun``) and their few collectives.

``accelerate launch --num_processes N -m fia erase ...`` starts N copies of
the command. Each builds :class:`Workers` from the environment the launcher
set (:meth:`Workers.from_environment`), loads the model and scores its share
of the concepts; the results are gathered so that every process fuses the
same mask, and only the main process writes it.

Shares are dealt round-robin by position: the item at position ``p`` of a
list (a concept of the plan, a concept still running in a causal round) is
scored by process ``p % N``. Every process knows every share, so nothing but
the results travels.

The collectives move tensors only, never pickles: a variable-length tensor
travels as its length first, then padded to the longest; a small record
(statistics, evidence) as its JSON text in a uint8 tensor (Python's float
repr round-trips exactly, so a float keeps its bits).

Not launched (one process), :class:`Workers` is :meth:`Workers.single`:
every collective returns its input and no ``torch.distributed`` call is
made, so a one-process run is exactly what it was.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

import torch
from torch import Tensor

from fia.errors import FIAError

# the environment variables launchers set to the number of processes (torchrun/accelerate, then MPI's)
_WORLD_SIZE_VARIABLES = ("WORLD_SIZE", "PMI_SIZE", "OMPI_COMM_WORLD_SIZE", "MV2_COMM_WORLD_SIZE")

# How long a process may wait at a collective. Processes with fewer concepts
# (or none) wait for the busiest one, and the causal variant's processes wait
# for the anchors and the repair on the main one: that can take hours on a
# large model, far past torch's default of 10-30 minutes.
WAIT_LIMIT = timedelta(hours=24)

# one scored item: its indices per layer (1-D integer tensors) and a JSON-able record
Share = tuple[dict[str, Tensor], dict[str, Any]]


def launched_size() -> int:
    """The number of processes the launcher started (1 when not launched)."""
    for name in _WORLD_SIZE_VARIABLES:
        value = os.environ.get(name)
        if value:
            try:
                return max(1, int(value))
            except ValueError:
                raise FIAError(f"the launcher set {name}={value!r}, which is no process count; launch again") from None
    return 1


@dataclass(frozen=True)
class Workers:
    """This process's place among the processes of one erase run, and the collectives they share.

    Attributes:
        rank: this process's index, 0 for the main process.
        size: how many processes run (1 when not launched).
        local_rank: its index on its machine (picks its GPU).
        device: where the collectives' tensors live (the process's GPU under NCCL, else the CPU).
    """

    rank: int = 0
    size: int = 1
    local_rank: int = 0
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))

    # ------------------------------------------------------------- who is who
    @classmethod
    def single(cls) -> Workers:
        """One process: every share is its own, every collective returns its input."""
        return cls()

    @classmethod
    def from_environment(cls, *, cpu: bool) -> Workers:
        """The processes an ``accelerate launch`` or ``torchrun`` started, or :meth:`single` when not launched.

        ``cpu``: the model runs on the CPU, so the processes talk over gloo
        (else the accelerator's backend, NCCL on GPUs). Initialises
        ``torch.distributed`` through accelerate's ``PartialState`` once.
        """
        if launched_size() <= 1:
            return cls.single()
        from accelerate import PartialState

        state = PartialState(cpu=cpu, timeout=WAIT_LIMIT)
        if state.num_processes <= 1:  # pragma: no cover - a launcher accelerate does not read
            return cls.single()
        device = torch.device("cpu") if state.backend in ("gloo", "mpi") else torch.device(state.device)
        return cls(state.process_index, state.num_processes, state.local_process_index, device)

    @property
    def launched(self) -> bool:
        return self.size > 1

    @property
    def is_main(self) -> bool:
        """The process that writes files, shows progress and runs what is not split."""
        return self.rank == 0

    def owner(self, position: int) -> int:
        """The process that scores the item at ``position``."""
        return position % self.size

    def share(self, count: int) -> list[int]:
        """The positions among ``count`` items this process scores."""
        return list(range(self.rank, count, self.size))

    def name(self) -> str:
        """``"process 2 of 4"`` (counted from 1)."""
        return f"process {self.rank + 1} of {self.size}"

    def idle_note(self, concepts: int) -> str | None:
        """One line for a process that has no concept to score, else ``None``."""
        if not self.share(concepts):
            return f"{self.name()} has no concept to score ({concepts} concepts); it waits for the fusion"
        return None

    def device_for(self, device: str) -> str:
        """The device this process runs on: a bare ``cuda`` becomes its own GPU, ``cuda:<local rank>``."""
        if self.launched and device == "cuda":
            return f"cuda:{self.local_rank}"
        return device

    def close(self) -> None:
        """End the process group (when launched), so the processes exit without torch's warning."""
        if self.launched and torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()

    # ------------------------------------------------------------- collectives
    def all_true(self, flag: bool) -> bool:
        """Whether ``flag`` holds on every process (e.g. every process found a round in the cache)."""
        if not self.launched:
            return flag
        t = torch.tensor([1 if flag else 0], dtype=torch.int64, device=self.device)
        torch.distributed.all_reduce(t, op=torch.distributed.ReduceOp.MIN)
        return bool(int(t.item()))

    def broadcast_(self, tensor: Tensor, src: int = 0) -> Tensor:
        """``tensor`` (whose shape and dtype every process knows) overwritten with process ``src``'s, bit for bit."""
        if not self.launched:
            return tensor
        moved = tensor.to(self.device).contiguous()
        torch.distributed.broadcast(moved, src)
        if moved is not tensor:
            tensor.copy_(moved)
        return tensor

    def broadcast_json(self, value: Any, src: int = 0) -> Any:
        """Process ``src``'s ``value`` (JSON-able) on every process; the others pass ``None``."""
        if not self.launched:
            return value
        data = _to_bytes(value) if self.rank == src else torch.zeros(0, dtype=torch.uint8)
        length = self.broadcast_(torch.tensor([data.numel()], dtype=torch.int64), src)
        buffer = data if self.rank == src else torch.zeros(int(length.item()), dtype=torch.uint8)
        return _from_bytes(self.broadcast_(buffer, src))

    def gather(self, flat: Tensor) -> list[Tensor]:
        """Every process's 1-D ``flat`` (lengths may differ), in process order, on every process (on the CPU).

        The lengths travel first; then each tensor, padded to the longest.
        """
        if not self.launched:
            return [flat]
        dist = torch.distributed
        mine = flat.reshape(-1).to(self.device)
        length = torch.tensor([mine.numel()], dtype=torch.int64, device=self.device)
        lengths = [torch.zeros_like(length) for _ in range(self.size)]
        dist.all_gather(lengths, length)
        longest = max(int(n.item()) for n in lengths)
        if longest == 0:  # nothing to send (e.g. no process selected anything)
            return [flat.new_zeros(0).cpu() for _ in range(self.size)]
        padded = torch.zeros(longest, dtype=mine.dtype, device=self.device)
        padded[: mine.numel()] = mine
        everyone = [torch.empty_like(padded) for _ in range(self.size)]
        dist.all_gather(everyone, padded)
        return [t[: int(n.item())].cpu().clone() for t, n in zip(everyone, lengths)]

    def gather_json(self, value: Any) -> list[Any]:
        """Every process's ``value`` (JSON-able), in process order."""
        return [_from_bytes(b) for b in self.gather(_to_bytes(value))]

    def gather_shares(self, count: int, mine: dict[int, Share]) -> list[Share]:
        """The results of all ``count`` positions, in position order, on every process.

        ``mine`` maps each position of :meth:`share` to its result: integer
        indices per layer (int32 on the way) and a JSON-able record.
        """
        if not self.launched:
            return [mine[p] for p in range(count)]
        positions = sorted(mine)
        pieces = [t.reshape(-1).to(torch.int32).cpu() for p in positions for t in mine[p][0].values()]
        flat = torch.cat(pieces) if pieces else torch.zeros(0, dtype=torch.int32)
        heads = [{"position": p, "layers": [[n, int(t.numel())] for n, t in mine[p][0].items()], "record": mine[p][1]}
                 for p in positions]  # fmt: skip
        results: list[Share | None] = [None] * count
        for flat_of, heads_of in zip(self.gather(flat), self.gather_json(heads)):
            offset = 0
            for head in heads_of:
                indices = {}
                for layer, length in head["layers"]:
                    indices[layer] = flat_of[offset : offset + length]
                    offset += length
                results[head["position"]] = (indices, head["record"])
        missing = [p for p, r in enumerate(results) if r is None]
        if missing:  # pragma: no cover - every position has an owner
            raise RuntimeError(f"no process scored positions {missing}")
        return results  # type: ignore[return-value]


def _to_bytes(value: Any) -> Tensor:
    return torch.frombuffer(bytearray(json.dumps(value).encode()), dtype=torch.uint8)


def _from_bytes(data: Tensor) -> Any:
    return json.loads(bytes(data.cpu().numpy().tobytes()).decode())
