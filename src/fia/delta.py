"""The WeightDelta artifact: an edit that adds to weights, kept apart from the model.

UCE's closed form and ESD-x's fine-tuning change the cross-attention
weights. A :class:`WeightDelta` holds that change as ``after - before``
(float32) per edited parameter, named by its qualified name in the denoiser
(e.g. ``down_blocks.0.attentions.0.transformer_blocks.0.attn2.to_k.weight``),
so the edit is reversible and can be shipped without the model, like
:class:`fia.mask.ConceptMask`.

A delta file (``edit.safetensors``) holds, per edited parameter,

* ``delta/<parameter>``: ``after - before`` (float32);
* ``original/<parameter>``: ``before``, in the dtype of the model the delta
  was made from, so that the edit is undone bit for bit from the file alone;

and one JSON string under the header key ``fia-delta``: the format, the
method and its settings, the concepts, the package version, the model
dtype, the parameter names and shapes, the method's run statistics (e.g.
ESD-x's loss per step) and ``fingerprint``, the sha256 of the base model's
edited parameters computed as :func:`fia.weights.fingerprint_weights` does
(float16-rounded values, so a float32 and a float16 copy of the same model
match). It holds no timestamps or paths: the same inputs give the same bytes.

:meth:`WeightDelta.apply_` checks the fingerprint and writes, in the
model's dtype, ``original + delta``; :meth:`WeightDelta.restore_` checks
that the model holds exactly those values and writes the originals back.
Both follow the rules every edit shares (:mod:`fia.edit_base`), so any
copy of a delta undoes it, and one delta can be applied to several copies
of a pipeline at once.

Files of format version 1 (written before the originals were stored) still
load and apply, but cannot be restored: :meth:`WeightDelta.restore_` says
so, and so does the summary.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

from fia.edit_base import UNKNOWN, EditFile
from fia.errors import FIAError
from fia.targets import denoiser
from fia.weights import fingerprint_weights  # the same model fingerprint as masks

FORMAT = "fia-delta"
FORMAT_VERSION = 2  # the newest this package writes: 1 = deltas only, 2 = deltas + original values
HEADER_KEY = "fia-delta"
_TENSOR_PREFIX = "delta/"
_ORIGINAL_PREFIX = "original/"


def _dtype_names(tensors: Mapping[str, Tensor]) -> str:
    return ",".join(sorted({str(t.dtype).replace("torch.", "") for t in tensors.values()}))


@dataclass(eq=False)  # compared by file bytes (EditFile.__eq__)
class WeightDelta(EditFile):
    """A change ``after - before`` of some denoiser parameters, with its provenance.

    Build one with :meth:`from_models`; load one with :meth:`load` (or
    :func:`fia.load_edit`). ``stats`` holds the method's run statistics
    (JSON values, e.g. ``{"losses": [...]}``) and is saved with the delta.
    ``originals`` holds the edited parameters before the edit, in the base
    model's dtype (``None`` only for a delta read from a format-1 file).
    """

    method: str
    concepts: list[str]
    config: dict[str, Any]
    deltas: dict[str, Tensor]  # parameter name -> float32 after - before, in module order
    fingerprint: str
    dtype: str = "float32"
    version: str = ""
    stats: dict[str, Any] = field(default_factory=dict)
    originals: dict[str, Tensor] | None = field(default=None, repr=False)  # parameter name -> before, model dtype

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
        is what :meth:`apply_` checks, and its values (in their own dtype)
        are what :meth:`restore_` writes back. The delta is computed in float32.
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
            originals={name: old.detach().cpu().clone().contiguous() for name, old in before.items()},
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
        """The edited parameters of ``target`` (pipeline or denoiser), after checking it is the right model.

        The right model is the one the delta was made from (its fingerprint),
        as it was or carrying this delta.
        """
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
        got = fingerprint_weights(found)
        if got != self.fingerprint and not self._holds_applied(found):
            raise FIAError(  # an applied model changed since looks no different from another model
                f"this {self.method} edit was made for a different model (fingerprint {self.fingerprint[:12]}, "
                f"model {got[:12]}), or the model was changed after the edit was applied; apply it to the "
                "unedited model it was made from"
            )
        return found

    def _holds_applied(self, params: Mapping[str, Tensor]) -> bool:
        """Whether ``params`` hold exactly what :meth:`apply_` writes (False when the file stores no originals)."""
        if self.originals is None:
            return False
        return all(torch.equal(now, applied) for now, applied, _ in self._entries(params))

    # apply_, restore_ and applied (EditFile) follow the rules every edit shares; these say what they write
    def _applied_value(self, name: str, original: Tensor) -> Tensor:
        """``original + delta`` of parameter ``name``, added in float32 and rounded to ``original``'s dtype."""
        d = self.deltas[name].to(device=original.device)
        return (original.float() + d).to(original.dtype)

    def _entries(self, weights: Mapping[str, Tensor]) -> Iterator[tuple[Tensor, Tensor, Tensor]]:
        """Per parameter: its values, ``original + delta`` and the original, in the parameter's dtype.

        Only for a delta that stores its originals (``_state`` and
        ``_holds_applied`` do not ask a format-1 delta).
        """
        originals = self.originals or {}
        for name, p in weights.items():
            original = originals[name].to(device=p.device, dtype=p.dtype)
            yield p.detach(), self._applied_value(name, original), original

    def _write(self, weights: Mapping[str, Tensor], applied: bool) -> None:
        for name, p in weights.items():
            if self.originals is None:  # a format-1 file: add to the model's own values
                p.copy_(self._applied_value(name, p.detach()))
                continue
            original = self.originals[name].to(device=p.device, dtype=p.dtype)
            p.copy_(self._applied_value(name, original) if applied else original)

    def _state(self, weights: Mapping[str, Tensor]) -> str:
        return UNKNOWN if self.originals is None else super()._state(weights)

    def _cannot_restore(self) -> str:
        if self.originals is not None:
            return ""
        return (
            f"this {self.method} weight delta comes from a format-1 file, which does not store the original "
            "weights, so restore_ cannot undo it; reload the model, or re-run fia unlearn to write a delta that can"
        )

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
        if self.originals is None:
            lines.append("format version 1: no original weights stored, so restore_ cannot undo it (re-run fia unlearn)")
        return "\n".join(lines)

    # --------------------------------------------------------------- storage
    def provenance(self) -> dict[str, Any]:
        # a delta read from a format-1 file is written back as one (it has no originals to store)
        return super().provenance() | {"format_version": FORMAT_VERSION if self.originals is not None else 1}

    def metadata(self) -> dict[str, Any]:
        """The JSON header: everything but the tensors."""
        return self.provenance() | {
            "parameters": [{"name": n, "shape": list(d.shape)} for n, d in self.deltas.items()],
            "stats": self.stats,
        }

    def _tensors(self) -> dict[str, Tensor]:
        tensors = {f"{_TENSOR_PREFIX}{n}": d.to(torch.float32).contiguous() for n, d in self.deltas.items()}
        for n, original in (self.originals or {}).items():
            tensors[f"{_ORIGINAL_PREFIX}{n}"] = original.contiguous()
        return tensors

    @classmethod
    def from_bytes(cls, data: bytes) -> WeightDelta:
        """Parse the bytes of :meth:`to_bytes`, checking the header against the tensors."""
        meta, tensors = cls.unpack(data)
        has_originals = int(meta.get("format_version", 1)) >= 2
        deltas: dict[str, Tensor] = {}
        originals: dict[str, Tensor] = {}
        for info in meta["parameters"]:
            name, shape = info["name"], list(info["shape"])
            d = tensors[f"{_TENSOR_PREFIX}{name}"]
            if list(d.shape) != shape or d.dtype != torch.float32:
                raise ValueError(f"parameter {name} is inconsistent")
            deltas[name] = d
            if has_originals:
                original = tensors[f"{_ORIGINAL_PREFIX}{name}"]
                if list(original.shape) != shape or not original.is_floating_point():
                    raise ValueError(f"the original values of parameter {name} are inconsistent")
                originals[name] = original
        if len(deltas) + len(originals) != len(tensors):
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
            originals=originals if has_originals else None,
        )
