"""Series key → arena slot.

Per-key state lives in arrays indexed by slot, so gathering the state of every
key in a step is one fancy-indexing op. Slots of forgotten keys are reused.
"""
from __future__ import annotations

import sys

import numpy as np


class KeyIndex:
    """
    >>> ki = KeyIndex()
    >>> ki.slots(np.array(["b", "a", "b"], dtype=object)).tolist()
    [1, 0, 1]
    >>> ki.capacity >= 2, ki.key_of(1)
    (True, 'b')
    """

    def __init__(self, capacity: int = 1024):
        self._slot: dict[str, int] = {}
        self._keys: list[str | None] = []
        self._free: list[int] = []
        self.capacity = capacity
        self._listeners: list = []
        self.generation = 0  # changes whenever a key comes or goes


    def __len__(self) -> int:
        return len(self._slot)

    def __contains__(self, key: str) -> bool:
        return key in self._slot

    def on_grow(self, fn) -> None:
        """fn(new_capacity) is called before a slot beyond the capacity is handed out."""
        self._listeners.append(fn)
        fn(self.capacity)

    def slots(self, keys: np.ndarray) -> np.ndarray:
        """Slots of keys, creating new ones; one dict lookup per distinct key."""
        if len(keys) == 0:
            return np.empty(0, dtype=np.int64)
        uniq, inverse = np.unique(keys, return_inverse=True)
        uniq_keys = uniq.tolist()
        self._reserve(sum(1 for k in uniq_keys if k not in self._slot))
        out = np.empty(len(uniq), dtype=np.int64)
        for i, k in enumerate(uniq_keys):
            s = self._slot.get(k)
            if s is None:
                s = self._new_slot(k)
            out[i] = s
        return out[inverse]

    def get(self, key: str) -> int | None:
        return self._slot.get(key)

    def key_of(self, slot: int) -> str:
        k = self._keys[slot]
        assert k is not None
        return k

    def keys_of(self, slots: np.ndarray) -> np.ndarray:
        return np.array([self._keys[s] for s in slots.tolist()], dtype=object)

    def items(self):
        return self._slot.items()

    def slot_keys(self) -> list[str | None]:
        """The key of every slot handed out so far (None where it was freed)."""
        return self._keys

    def forget(self, keys) -> list[int]:
        """Drop keys (e.g. their partition was revoked); returns the freed slots."""
        freed = []
        for k in keys:
            s = self._slot.pop(k, None)
            if s is not None:
                self._keys[s] = None
                self._free.append(s)
                freed.append(s)
        self.generation += 1
        return freed

    def _reserve(self, new_keys: int) -> None:
        """Grow once to fit ``new_keys`` more keys: to exactly what they need when that is more than
        double (a first batch or a restore of many keys leaves no doubling slack), else by doubling."""
        self._grow_to(len(self._keys) + max(0, new_keys - len(self._free)))

    def _grow_to(self, needed: int) -> None:
        """Make room for ``needed`` slots: at least double, and tell the listeners first."""
        if needed > self.capacity:
            new_cap = max(self.capacity * 2, needed)
            for fn in self._listeners:
                fn(new_cap)
            self.capacity = new_cap

    def _new_slot(self, key: str) -> int:
        self.generation += 1
        if self._free:
            s = self._free.pop()
            self._keys[s] = key
        else:
            s = len(self._keys)
            self._keys.append(key)
            self._grow_to(s + 1)
        self._slot[key] = s
        return s


def grow(arr, capacity: int, fill=0):
    """Return arr (numpy or torch) grown along axis 0 to capacity rows, new rows = fill."""
    n = arr.shape[0]
    if n >= capacity:
        return arr
    torch = sys.modules.get("torch")  # a tensor means torch is imported; never import it for numpy arrays
    if torch is not None and isinstance(arr, torch.Tensor):
        grown = torch.full((capacity, *arr.shape[1:]), fill, dtype=arr.dtype)
        grown[:n] = arr
        return grown
    out = np.full((capacity, *arr.shape[1:]), fill, dtype=arr.dtype)
    out[:n] = arr
    return out
