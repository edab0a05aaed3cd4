"""The WeightDelta artifact: an edit that adds to weights, kept apart from the model.

UCE's closed form and ESD-x's fine-tuning change the cross-attention
weights. A :class:`WeightDelta` holds that change as ``after - before``
(float32) per edited parameter, named by its qualified name in the denoiser
(e.g. ``down_blocks.0.attentions.0.transformer_blocks.0.attn2.to_k.weight``),
so the edit is reversible and can be shipped without the model, like
:class:`fia.mask.ConceptMask`.

A delta file (``edit.safetensors``) holds one tensor ``delta/<parameter>``
per edited parameter and one JSON string under the header key
``fia-delta``: the format, the method and its settings, the concepts, the
package version, the model dtype, the parameter names and shapes, the
method's run statistics (e.g. ESD-x's loss per step) and ``fingerprint``,
the sha256 of the base model's edited parameters computed as
:func:`fia.mask.fingerprint_weights` does (float16-rounded values, so a
float32 and a float16 copy of the same model match). It holds no
timestamps or paths: the same inputs give the same bytes.

:meth:`WeightDelta.apply_` checks the fingerprint, keeps the current
tensors in memory and adds the delta; :meth:`WeightDelta.restore_` puts
those tensors back, bit for bit. The originals are kept per model, so one
delta can be applied to several copies of a pipeline at once.
"""

from __future__ import annotations

import json
import weakref
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

from fia.edit import EditFile
from fia.errors import FIAError
from fia.mask import (  # the same model fingerprint as masks
    denoiser,
    fingerprint_weights,
)

FORMAT = "fia-delta"
FORMAT_VERSION = 1
HEADER_KEY = "fia-delta"
_TENSOR_PREFIX = "delta/"


def _dtype_names(tensors: Mapping[str, Tensor]) -> str:
    return ",".join(sorted({str(t.dtype).replace("torch.", "") for t in tensors.values()}))


@dataclass(eq=False)  # compared by file bytes (EditFile.__eq__)
class WeightDelta(EditFile):
    """A change ``after - before`` of some denoiser parameters, with its provenance.

    Build one with :meth:`from_models`; load one with :meth:`load` (or
    :func:`fia.load_edit`). ``stats`` holds the method's run statistics
    (JSON values, e.g. ``{"losses": [...]}``) and is saved with the delta.
    """

    method: str
    concepts: list[str]
    config: dict[str, Any]
    deltas: dict[str, Tensor]  # parameter name -> float32 after - before, in module order
    fingerprint: str
    dtype: str = "float32"
    version: str = ""
    stats: dict[str, Any] = field(default_factory=dict)
    # model -> the tensors apply_ replaced; weak keys, so a dropped model frees them
    _originals: weakref.WeakKeyDictionary = field(
        default_factory=weakref.WeakKeyDictionary, init=False, repr=False
    )

    HEADER_KEY = HEADER_KEY
    FORMAT = FORMAT
    FORMAT_VERSION = FORMAT_VERSION
    KIND, FILE_NAME, COMMAND = "weight delta", "edit.safetensors", "fia unlearn"

    # ------------------------------------------------------------ construction
    @classmethod
    def from_models(
        cls,
        before: Mapping[str, Tensor],
        after: Mapping[str, Tensor],
        *,
        method: str,
        concepts: list[str],
        config: Mapping[str, Any],
        stats: Mapping[str, Any] | None = None,
    ) -> WeightDelta:
        """The delta that turns ``before`` into ``after`` (parameter name -> tensor, same names and shapes).

        ``before`` holds the base model's edited parameters: its fingerprint
        is what :meth:`apply_` checks. The delta is computed in float32.
        """
        from fia._version import __version__

        if list(before) != list(after):
            missing = sorted(set(before) ^ set(after))
            raise ValueError(f"before and after must name the same parameters in the same order; they differ on {missing}")
        if not before:
            raise ValueError("a weight delta needs at least one parameter")
        deltas: dict[str, Tensor] = {}
        for name, old in before.items():
            new = after[name]
            if tuple(new.shape) != tuple(old.shape):
                raise ValueError(f"{name}: before has shape {tuple(old.shape)}, after {tuple(new.shape)}")
            deltas[name] = (new.detach().float().cpu() - old.detach().float().cpu()).contiguous()
        return cls(
            method=str(method),
            concepts=list(concepts),
            # as the file will hold them (tuples become lists), so a loaded delta equals this one
            config=json.loads(json.dumps(dict(config))),
            deltas=deltas,
            fingerprint=fingerprint_weights(before),
            dtype=_dtype_names(before),
            version=__version__,
            stats=json.loads(json.dumps(dict(stats or {}))),
        )

    # --------------------------------------------------------------- counting
    @property
    def parameter_names(self) -> list[str]:
        return list(self.deltas)

    @property
    def total_values(self) -> int:
        """How many weight values the delta covers."""
        return sum(d.numel() for d in self.deltas.values())

    @property
    def changed_values(self) -> int:
        """How many of them it changes (non-zero delta)."""
        return sum(int(torch.count_nonzero(d)) for d in self.deltas.values())

    # ---------------------------------------------------------- model editing
    def check(self, target: Any) -> dict[str, nn.Parameter]:
        """The edited parameters of ``target`` (pipeline or denoiser), after checking it is the right model."""
        model = denoiser(target)
        params = dict(model.named_parameters())
        found: dict[str, nn.Parameter] = {}
        for name, d in self.deltas.items():
            p = params.get(name)
            if p is None or tuple(p.shape) != tuple(d.shape):
                got = "is missing" if p is None else f"has shape {tuple(p.shape)}"
                raise FIAError(
                    f"parameter {name} {got} but the delta expects shape {tuple(d.shape)}; this "
                    f"{self.method} edit was made for a different model, apply it to the model it was made from"
                )
            found[name] = p
        if model in self._originals:
            return found
        got = fingerprint_weights(found)
        if got != self.fingerprint:
            raise FIAError(
                f"this {self.method} edit was made for a different model (fingerprint {self.fingerprint[:12]}, "
                f"model {got[:12]}); apply it to the unedited model it was made from"
            )
        return found

    @torch.no_grad()
    def apply_(self, target: Any) -> Any:
        """Add the delta to ``target``'s weights in place (after checking the model); returns ``target``.

        The replaced tensors are kept in memory so that :meth:`restore_`
        can put them back exactly. Applying twice to the same model without
        restoring in between is refused.
        """
        model = denoiser(target)
        if model in self._originals:
            raise FIAError(
                f"this {self.method} edit is already applied to this model; call restore_ before applying it again"
            )
        params = self.check(target)
        originals = {name: p.detach().clone() for name, p in params.items()}
        for name, p in params.items():
            d = self.deltas[name].to(device=p.device)
            p.copy_((p.float() + d).to(p.dtype))
        self._originals[model] = originals
        return target

    @torch.no_grad()
    def restore_(self, target: Any) -> Any:
        """Put back the exact tensors that :meth:`apply_` replaced in ``target``; returns ``target``."""
        model = denoiser(target)
        originals = self._originals.get(model)
        if originals is None:
            raise FIAError(
                f"this {self.method} edit is not applied to this model, so there is nothing to restore; "
                "restore_ undoes an apply_ made with the same edit object"
            )
        params = self.check(target)
        for name, p in params.items():
            p.copy_(originals[name])
        del self._originals[model]
        return target

    # ------------------------------------------------------------------- text
    def summary(self) -> str:
        """Human-readable description: method, concepts, settings, per-parameter table, size."""
        lines = [
            f"{self.method} weight delta (forget-it-all {self.version}, model dtype {self.dtype})",
            f"concepts ({len(self.concepts)}): {', '.join(self.concepts)}",
            "settings: " + ", ".join(f"{k}={self.config[k]}" for k in sorted(self.config)),  # as in the saved header
            f"model fingerprint: {self.fingerprint[:16]}",
        ]
        width = max([len(n) for n in self.deltas] + [9])
        lines.append(f"{'parameter':<{width}}  {'shape':>12}  {'changed':>9}  {'max |delta|':>11}")
        for name, d in self.deltas.items():
            shape = "x".join(str(s) for s in d.shape)
            biggest = float(d.abs().max()) if d.numel() else 0.0
            lines.append(f"{name:<{width}}  {shape:>12}  {int(torch.count_nonzero(d)):>9}  {biggest:>11.3g}")
        lines.append(
            f"total: {self.changed_values} of {self.total_values} values changed in {len(self.deltas)} parameters"
        )
        if self.stats.get("preserve"):
            lines.append(f"preserved: {', '.join(self.stats['preserve'])}")
        losses = self.stats.get("losses")
        if losses:
            lines.append(f"training loss over {len(losses)} steps: first {losses[0]:.4g}, last {losses[-1]:.4g}")
        return "\n".join(lines)

    # --------------------------------------------------------------- storage
    def metadata(self) -> dict[str, Any]:
        """The JSON header: everything but the tensors."""
        return self.provenance() | {
            "parameters": [{"name": n, "shape": list(d.shape)} for n, d in self.deltas.items()],
            "stats": self.stats,
        }

    def _tensors(self) -> dict[str, Tensor]:
        return {f"{_TENSOR_PREFIX}{n}": d.to(torch.float32).contiguous() for n, d in self.deltas.items()}

    @classmethod
    def from_bytes(cls, data: bytes) -> WeightDelta:
        """Parse the bytes of :meth:`to_bytes`, checking the header against the tensors."""
        meta, tensors = cls.unpack(data)
        deltas: dict[str, Tensor] = {}
        for info in meta["parameters"]:
            d = tensors[f"{_TENSOR_PREFIX}{info['name']}"]
            if list(d.shape) != list(info["shape"]) or d.dtype != torch.float32:
                raise ValueError(f"parameter {info['name']} is inconsistent")
            deltas[info["name"]] = d
        if len(deltas) != len(tensors):
            raise ValueError("tensors not listed in the header")
        return cls(
            method=str(meta["method"]),
            concepts=list(meta["concepts"]),
            config=dict(meta["config"]),
            deltas=deltas,
            fingerprint=str(meta["fingerprint"]),
            dtype=str(meta.get("dtype", "")),
            version=str(meta.get("fia_version", "")),
            stats=dict(meta.get("stats") or {}),
        )
