"""The kinds of layer a LoRA file holds: LoRA/LoCon, LyCORIS LoHa and LoKr.

Each layer updates one Linear or Conv2d weight W (out, in) or (out, in, kh, kw):

    W ← W + multiplier · scale · ΔW,   scale = alpha / rank (1 when the file has no alpha)

LoRA / LoCon: ΔW = up @ down (a conv's factors flattened to matrices; with a LyCORIS `lora_mid`
Tucker core, up · mid · down). LoHa: ΔW = (w1_a @ w1_b) ⊙ (w2_a @ w2_b). LoKr: ΔW = w1 ⊗ w2
(Kronecker), each factor whole or a low-rank product. `build_layer` makes the right kind from
one module's tensors and checks on the meta device that its factors fit together.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from collections.abc import Mapping
from dataclasses import dataclass, field

import torch
from torch import Tensor


class LoraLayer(ABC):
    """The update of one Linear or Conv2d weight.

    `delta` gives ΔW as an (out_features, fan_in) float32 matrix, fan_in = in · kh · kw, which
    the caller reshapes to the weight's shape; `kernel` is (kh, kw) where the factors show it,
    else None (a Linear-shaped factor fits a 1×1 conv, a flattened one any kernel).
    """

    name: str
    alpha: float | None

    @property
    @abstractmethod
    def rank(self) -> int | None:
        """The rank that `alpha` is divided by; None where the layer has none (whole LoKr)."""

    @property
    @abstractmethod
    def out_features(self) -> int: ...

    @property
    @abstractmethod
    def fan_in(self) -> int: ...

    @property
    @abstractmethod
    def kernel(self) -> tuple[int, int] | None: ...

    @abstractmethod
    def product(self, device: torch.device) -> Tensor:
        """ΔW before scaling: (out_features, fan_in) float32 on `device`."""

    @property
    def scale(self) -> float:
        """alpha / rank, or 1 when the file stores no alpha (kohya's and A1111's rule)."""
        if self.alpha is None or not self.rank:
            return 1.0
        return self.alpha / self.rank

    def delta(self, device: torch.device) -> Tensor:
        """scale · ΔW: (out_features, fan_in) float32 on `device`."""
        return self.product(device) * self.scale

    @property
    def shape(self) -> tuple[int, ...]:
        """The weight shape this layer updates: (out, in, kh, kw) if the kernel is known, else
        (out, fan_in)."""
        if self.kernel is None:
            return (self.out_features, self.fan_in)
        kh, kw = self.kernel
        return (self.out_features, self.fan_in // (kh * kw), kh, kw)

    def fits(self, weight_shape: tuple[int, ...]) -> bool:
        """Whether ΔW can be added to a weight of `weight_shape` (Linear (out, in) or Conv2d
        (out, in, kh, kw))."""
        kernel = tuple(weight_shape[2:]) if len(weight_shape) == 4 else (1, 1)
        return (
            weight_shape[0] == self.out_features
            and math.prod(weight_shape[1:]) == self.fan_in
            and (self.kernel is None or self.kernel == kernel)
        )


def _f32(tensor: Tensor, device: torch.device) -> Tensor:
    return tensor.to(device=device, dtype=torch.float32)


def _tucker(core: Tensor, out_factor: Tensor, in_factor: Tensor) -> Tensor:
    """core (r1, r2, kh, kw), out_factor (out, r1), in_factor (r2, in) → (out, in, kh, kw)."""
    return torch.einsum("abkl,oa,bi->oikl", core, out_factor, in_factor)


@dataclass(frozen=True, eq=False)
class LowRankLayer(LoraLayer):
    """kohya LoRA / LyCORIS LoCon: ΔW = up @ down, with a Tucker core up · mid · down.

    down: (rank, in) for a Linear, (rank, in, kh, kw) for a Conv2d ((rank, in, 1, 1) with mid)
    up: (out, rank), or (out, rank, 1, 1) for a Conv2d
    mid: None, or (rank_up, rank_down, kh, kw) — LyCORIS' `lora_mid` for a kh×kw conv
    """

    name: str
    down: Tensor = field(repr=False)
    up: Tensor = field(repr=False)
    alpha: float | None = None
    mid: Tensor | None = field(default=None, repr=False)

    @property
    def rank(self) -> int:
        return int(self.down.shape[0])

    @property
    def out_features(self) -> int:
        return int(self.up.shape[0])

    @property
    def kernel(self) -> tuple[int, int] | None:
        source = self.mid if self.mid is not None else self.down
        return (int(source.shape[2]), int(source.shape[3])) if source.ndim == 4 else None

    @property
    def fan_in(self) -> int:
        kh, kw = self.kernel or (1, 1)
        return int(self.down.shape[1]) * kh * kw

    def product(self, device: torch.device) -> Tensor:
        up = _f32(self.up, device).flatten(1)  # (out, rank)
        down = _f32(self.down, device).flatten(1)  # (rank, in · kh · kw), or (rank, in) with mid
        if self.mid is None:
            return up @ down
        return _tucker(_f32(self.mid, device), up, down).flatten(1)


@dataclass(frozen=True, eq=False)
class LohaLayer(LoraLayer):
    """LyCORIS LoHa: ΔW = (w1_a @ w1_b) ⊙ (w2_a @ w2_b), rank = w1_b's rows.

    Plain: w1_a, w2_a (out, r); w1_b, w2_b (r, in · kh · kw).
    Tucker (t1 and t2 (r, r, kh, kw) given): w1_a, w2_a (r, out); w1_b, w2_b (r, in); each
    factor is then core ×₁ w_aᵀ ×₂ w_bᵀ (the mode products of LyCORIS).
    """

    name: str
    w1_a: Tensor = field(repr=False)
    w1_b: Tensor = field(repr=False)
    w2_a: Tensor = field(repr=False)
    w2_b: Tensor = field(repr=False)
    alpha: float | None = None
    t1: Tensor | None = field(default=None, repr=False)
    t2: Tensor | None = field(default=None, repr=False)

    @property
    def rank(self) -> int:
        return int(self.w1_b.shape[0])

    @property
    def out_features(self) -> int:
        return int(self.w1_a.shape[1] if self.t1 is not None else self.w1_a.shape[0])

    @property
    def kernel(self) -> tuple[int, int] | None:
        return None if self.t1 is None else (int(self.t1.shape[2]), int(self.t1.shape[3]))

    @property
    def fan_in(self) -> int:
        kh, kw = self.kernel or (1, 1)
        return int(math.prod(self.w1_b.shape[1:])) * kh * kw

    def _factor(self, a: Tensor, b: Tensor, core: Tensor | None, device: torch.device) -> Tensor:
        if core is None:
            return _f32(a, device) @ _f32(b, device).flatten(1)
        return _tucker(_f32(core, device), _f32(a, device).T, _f32(b, device)).flatten(1)

    def product(self, device: torch.device) -> Tensor:
        first = self._factor(self.w1_a, self.w1_b, self.t1, device)
        return first * self._factor(self.w2_a, self.w2_b, self.t2, device)


@dataclass(frozen=True, eq=False)
class LokrLayer(LoraLayer):
    """LyCORIS LoKr: ΔW = w1 ⊗ w2 (Kronecker product of the two as matrices).

    w1: (a, b), or w1_a (a, r) @ w1_b (r, b)
    w2: (c, d) or (c, d, kh, kw), or w2_a (c, r) @ w2_b (r, d · kh · kw), or with a Tucker
        core t2 (r, r, kh, kw): w2_a (r, c), w2_b (r, d)
    ΔW: (a · c, b · d · kh · kw); rank (for alpha) = w1_b's rows, else w2_b's, else none.
    """

    name: str
    w1: Tensor | None = field(default=None, repr=False)
    w1_a: Tensor | None = field(default=None, repr=False)
    w1_b: Tensor | None = field(default=None, repr=False)
    w2: Tensor | None = field(default=None, repr=False)
    w2_a: Tensor | None = field(default=None, repr=False)
    w2_b: Tensor | None = field(default=None, repr=False)
    t2: Tensor | None = field(default=None, repr=False)
    alpha: float | None = None

    @property
    def rank(self) -> int | None:
        for b in (self.w1_b, self.w2_b):
            if b is not None:
                return int(b.shape[0])
        return None

    def _w1_shape(self) -> tuple[int, int]:
        if self.w1 is not None:
            return (int(self.w1.shape[0]), int(self.w1.shape[1]))
        assert self.w1_a is not None and self.w1_b is not None
        return (int(self.w1_a.shape[0]), int(self.w1_b.shape[1]))

    def _w2_shape(self) -> tuple[int, int]:
        """w2 as a matrix: (c, d · kh · kw)."""
        if self.w2 is not None:
            return (int(self.w2.shape[0]), int(math.prod(self.w2.shape[1:])))
        assert self.w2_a is not None and self.w2_b is not None
        if self.t2 is not None:
            kh, kw = self.t2.shape[2:]
            return (int(self.w2_a.shape[1]), int(self.w2_b.shape[1]) * kh * kw)
        return (int(self.w2_a.shape[0]), int(math.prod(self.w2_b.shape[1:])))

    @property
    def out_features(self) -> int:
        return self._w1_shape()[0] * self._w2_shape()[0]

    @property
    def fan_in(self) -> int:
        return self._w1_shape()[1] * self._w2_shape()[1]

    @property
    def kernel(self) -> tuple[int, int] | None:
        source = self.t2 if self.t2 is not None else self.w2
        if source is None or source.ndim != 4:
            return None
        return (int(source.shape[2]), int(source.shape[3]))

    def product(self, device: torch.device) -> Tensor:
        if self.w1 is not None:
            w1 = _f32(self.w1, device)
        else:
            assert self.w1_a is not None and self.w1_b is not None
            w1 = _f32(self.w1_a, device) @ _f32(self.w1_b, device)
        if self.w2 is not None:
            w2 = _f32(self.w2, device).flatten(1)
        else:
            assert self.w2_a is not None and self.w2_b is not None
            a, b = _f32(self.w2_a, device), _f32(self.w2_b, device).flatten(1)
            w2 = a @ b if self.t2 is None else _tucker(_f32(self.t2, device), a.T, b).flatten(1)
        # kron of (a, b) and (c, d·kh·kw) flattened row-major equals the 4-D kron flattened,
        # so the conv layout comes out right after the caller's reshape.
        return torch.kron(w1, w2)


LOW_RANK_KEYS = {"lora_down.weight": "down", "lora_up.weight": "up", "lora_mid.weight": "mid"}
LOHA_KEYS = {f"hada_{k}": k for k in ("w1_a", "w1_b", "w2_a", "w2_b", "t1", "t2")}
LOKR_KEYS = {f"lokr_{k}": k for k in ("w1", "w1_a", "w1_b", "w2", "w2_a", "w2_b", "t2")}
NETWORK_KEYS = {**LOW_RANK_KEYS, **LOHA_KEYS, **LOKR_KEYS}
ALPHA_KEY = "alpha"


def _shape(t: Tensor) -> tuple[int, ...]:
    return tuple(int(n) for n in t.shape)


def build_layer(name: str, tensors: Mapping[str, Tensor]) -> LoraLayer:
    """The layer described by one module's tensors (suffix → tensor); ValueError saying why
    when they do not form one."""
    alpha: float | None = None
    if ALPHA_KEY in tensors:
        value = tensors[ALPHA_KEY]
        if value.numel() != 1:
            raise ValueError(f"alpha must be one number; it has shape {_shape(value)}")
        alpha = float(value.float().reshape(()))
    parts = set(tensors) - {ALPHA_KEY}
    for suffix in sorted(parts):
        if not tensors[suffix].is_floating_point():
            raise ValueError(f"{suffix} has dtype {tensors[suffix].dtype}, not a float type")

    layer: LoraLayer
    if parts <= LOW_RANK_KEYS.keys():
        t = {LOW_RANK_KEYS[s]: tensors[s] for s in parts}
        _require(t, "down", "up", spelling="lora_{}.weight")
        down, up = t["down"], t["up"]
        if "mid" not in t and up.ndim >= 2 and down.ndim >= 1 and up.shape[1] != down.shape[0]:
            raise ValueError(
                f"lora_up {_shape(up)} does not fit lora_down {_shape(down)}: "
                f"rank {up.shape[1]} vs {down.shape[0]}"
            )
        layer = LowRankLayer(name, down, up, alpha, t.get("mid"))
    elif parts <= LOHA_KEYS.keys():
        t = {LOHA_KEYS[s]: tensors[s] for s in parts}
        _require(t, "w1_a", "w1_b", "w2_a", "w2_b", spelling="hada_{}")
        if ("t1" in t) != ("t2" in t):
            raise ValueError("hada_t1 and hada_t2 come together or not at all")
        layer = LohaLayer(
            name, t["w1_a"], t["w1_b"], t["w2_a"], t["w2_b"], alpha, t.get("t1"), t.get("t2")
        )
    elif parts <= LOKR_KEYS.keys():
        t = {LOKR_KEYS[s]: tensors[s] for s in parts}
        for i in ("1", "2"):
            present = (f"w{i}" in t, f"w{i}_a" in t, f"w{i}_b" in t)
            if present not in ((True, False, False), (False, True, True)):
                raise ValueError(f"needs either lokr_w{i} or both lokr_w{i}_a and lokr_w{i}_b")
        if "t2" in t and "w2" in t:
            raise ValueError("lokr_t2 belongs to lokr_w2_a and lokr_w2_b, not to lokr_w2")
        layer = LokrLayer(name, **t, alpha=alpha)
    else:
        raise ValueError(f"it mixes keys of different network kinds: {sorted(parts)}")

    # Multiply the factors out on the meta device (shapes only, no data): whatever does not
    # fit together fails here, with every shape named.
    try:
        product = layer.product(torch.device("meta"))
        fitting = tuple(product.shape) == (layer.out_features, layer.fan_in)
    except (RuntimeError, IndexError, ValueError):
        fitting = False
    if not fitting:
        shapes = ", ".join(f"{s} {_shape(tensors[s])}" for s in sorted(parts))
        raise ValueError(f"its factors do not fit together: {shapes}")
    return layer


def _require(t: Mapping[str, Tensor], *names: str, spelling: str) -> None:
    """ValueError unless `t` has all `names`; `spelling` ("lora_{}.weight") gives the keys."""
    missing = [spelling.format(n) for n in names if n not in t]
    if missing:
        present = sorted(spelling.format(k) for k in t)
        raise ValueError(f"{' and '.join(missing)} missing (it has {present})")
