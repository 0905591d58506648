"""`LoRAManager`: adapters in host memory (an LRU) and in the model's device slots.

Three threads touch it, each with its own part: a worker thread reads adapters from
disk (`load`, never inside a step), the event loop pins and unpins them for live
requests, and the step's thread maps the step's adapters onto device slots
(`prepare`). A lock guards the host cache; the slots belong to the step's thread.

An adapter pinned by a live request is never dropped from host memory, so a step
always finds the weights of every adapter it schedules. Beyond the pinned ones, the
least recently used adapters are dropped once more than ``max_cpu_loras`` are held.
"""

from __future__ import annotations

import collections
import threading
from collections.abc import Sequence

import torch
from torch import nn

from corral.lora.adapter import LoRAAdapter, find_targets, load_adapter
from corral.lora.layers import LoRABatch, LoRALinear, wrap_model
from corral.lora.request import LoRARequest


class LoRAManager:
    """Wraps a built model's projections and serves adapters to its steps.

    Args:
        model: The built model; its target projections are wrapped in place.
        max_loras: Device slots (most distinct adapters in one step).
        max_rank: Largest adapter rank (``max_lora_rank``).
        max_cpu_loras: Unpinned adapters kept in host memory.
    """

    def __init__(self, model: nn.Module, max_loras: int, max_rank: int, max_cpu_loras: int) -> None:
        self.max_loras = max_loras
        self.max_rank = max_rank
        self.max_cpu_loras = max_cpu_loras
        self.targets = find_targets(model)
        if not self.targets:
            raise ValueError(f"{type(model).__name__} has no projection LoRA can apply to")
        self.dtype = next(model.parameters()).dtype
        self.batch = LoRABatch()
        self.wrappers: dict[str, LoRALinear] = wrap_model(
            model, self.targets, self.batch, max_loras, max_rank
        )
        self._lock = threading.Lock()
        # lora_int_id -> adapter, least recently used first.
        self._host: collections.OrderedDict[int, LoRAAdapter] = collections.OrderedDict()
        self._pins: collections.Counter[int] = collections.Counter()
        # Removed while pinned: dropped when the last pin goes.
        self._drop_when_free: set[int] = set()
        # Slot contents (the adapter object, so that an id reloaded from another
        # folder is copied again), and the step each slot was last used.
        self._slot_adapters: list[LoRAAdapter | None] = [None] * max_loras
        self._slot_used_at = [0] * max_loras
        self._step = 0
        self.num_loads = 0
        self.num_evictions = 0
        self.num_slot_fills = 0

    # -- host memory (worker thread and event loop) --

    def load(self, request: LoRARequest, *, pin: bool = False) -> LoRAAdapter:
        """Make ``request``'s adapter resident in host memory, reading it if needed.

        Blocking (disk reads): call it in a worker thread. With ``pin``, the adapter
        is also pinned, atomically with the load (see `pin`).

        Raises:
            ValueError: a bad adapter (see `corral.lora.adapter.load_adapter`), or an
                id already loaded under another name or path.
        """
        with self._lock:
            adapter = self._resident(request)
            if adapter is not None:
                if pin:
                    self._pins[request.lora_int_id] += 1
                return adapter
        adapter = load_adapter(request, self.targets, max_rank=self.max_rank, dtype=self.dtype)
        with self._lock:
            resident = self._resident(request)
            if resident is None:
                self._host[request.lora_int_id] = adapter
                self.num_loads += 1
            else:
                adapter = resident
            if pin:
                self._pins[request.lora_int_id] += 1
            self._evict()
        return adapter

    def _resident(self, request: LoRARequest) -> LoRAAdapter | None:
        adapter = self._host.get(request.lora_int_id)
        if adapter is None:
            return None
        known = adapter.request
        if (known.lora_name, known.lora_path) != (request.lora_name, request.lora_path):
            raise ValueError(
                f"lora_int_id {request.lora_int_id} already names adapter "
                f"{known.lora_name!r} ({known.lora_path}); give {request.lora_name!r} another id"
            )
        self._host.move_to_end(request.lora_int_id)
        return adapter

    def pin(self, request: LoRARequest) -> bool:
        """Pin a resident adapter for one more live request; False if not resident.

        Raises:
            ValueError: the id is resident under another name or path.
        """
        with self._lock:
            if self._resident(request) is None:
                return False
            self._pins[request.lora_int_id] += 1
            return True

    def unpin(self, lora_int_id: int) -> None:
        """One live request of the adapter ended."""
        with self._lock:
            self._pins[lora_int_id] -= 1
            if self._pins[lora_int_id] <= 0:
                del self._pins[lora_int_id]
            self._evict()

    def remove(self, lora_int_id: int) -> bool:
        """Drop an adapter from host memory once no live request uses it.

        Returns:
            Whether it was resident.
        """
        with self._lock:
            if lora_int_id not in self._host:
                return False
            self._host.move_to_end(lora_int_id, last=False)
            self._drop_when_free.add(lora_int_id)
            self._evict()
            return True

    def _evict(self) -> None:
        for lora_int_id in list(self._drop_when_free):
            if lora_int_id not in self._pins:
                self._drop(lora_int_id)
        unpinned = [i for i in self._host if i not in self._pins]
        excess = len(self._host) - self.max_cpu_loras
        for lora_int_id in unpinned[: max(excess, 0)]:
            self._drop(lora_int_id)

    def _drop(self, lora_int_id: int) -> None:
        if self._host.pop(lora_int_id, None) is not None:
            self.num_evictions += 1
        self._drop_when_free.discard(lora_int_id)

    def resident_ids(self) -> list[int]:
        """Ids in host memory, least recently used first."""
        with self._lock:
            return list(self._host)

    # -- device slots (the step's thread) --

    def prepare(
        self,
        lora_ids: Sequence[int],
        num_new_tokens: Sequence[int],
    ) -> None:
        """Map the step's adapters onto slots and set each token's slot.

        Args:
            lora_ids: Per scheduled sequence, its ``lora_int_id`` (0: base model).
            num_new_tokens: Per scheduled sequence, its tokens in this step.

        The token slots stay on the CPU on every device: the op validates them there
        before any kernel trusts them (on CUDA that saves a synchronisation per call).

        Raises:
            RuntimeError: more than ``max_loras`` distinct adapters, or an adapter not
                in host memory (the scheduler and the front doors prevent both).
        """
        self._step += 1
        wanted = sorted({i for i in lora_ids if i})
        if not wanted:
            self.batch.token_slots = None
            return
        if len(wanted) > self.max_loras:
            raise RuntimeError(
                f"LoRA: {len(wanted)} adapters in one step, above max_loras={self.max_loras}"
            )
        with self._lock:
            adapters = {i: self._host.get(i) for i in wanted}
        slot_of = {
            a.request.lora_int_id: s for s, a in enumerate(self._slot_adapters) if a is not None
        }
        for lora_int_id, adapter in adapters.items():
            if adapter is None:
                raise RuntimeError(
                    f"LoRA: adapter {lora_int_id} is scheduled but not loaded in host memory "
                    "(requests must go through a front door, which loads it first)"
                )
            slot = slot_of.get(lora_int_id)
            if slot is None or self._slot_adapters[slot] is not adapter:
                slot = self._free_slot(set(wanted)) if slot is None else slot
                self._fill(slot, adapter)
                slot_of[lora_int_id] = slot
            self._slot_used_at[slot] = self._step
        per_seq = [slot_of[i] if i else -1 for i in lora_ids]
        self.batch.token_slots = torch.repeat_interleave(
            torch.tensor(per_seq, dtype=torch.int64),
            torch.tensor(list(num_new_tokens), dtype=torch.int64),
        )

    def finish_step(self) -> None:
        """Forget the step's token slots (a later forward without `prepare` is base only)."""
        self.batch.token_slots = None

    def _free_slot(self, wanted: set[int]) -> int:
        best = None
        for slot, adapter in enumerate(self._slot_adapters):
            if adapter is None:
                return slot
            if adapter.request.lora_int_id not in wanted and (
                best is None or self._slot_used_at[slot] < self._slot_used_at[best]
            ):
                best = slot
        if best is None:
            raise RuntimeError("LoRA: no free device slot (more adapters than max_loras)")
        return best

    def _fill(self, slot: int, adapter: LoRAAdapter) -> None:
        for path, wrapper in self.wrappers.items():
            wrapper.set_slot(slot, adapter.weights.get(path))
        self._slot_adapters[slot] = adapter
        self.num_slot_fills += 1
