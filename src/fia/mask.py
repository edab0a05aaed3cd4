"""The ConceptMask artifact: what FIA prunes, stored compactly with its provenance.

A mask file (``mask.safetensors``) holds, per edited layer,

* ``indices/<layer>``: the flat indices (row-major, int32) of the pruned weights;
* ``values/<layer>``: their original values (float32), so the edit can be
  undone without the base model;
* with a closed-form repair (:mod:`fia.core.repair`), also ``rows/<layer>``
  (int32 indices of the rows the repair rewrote), ``row_values/<layer>``
  (those rows after the edit, float32, pruned entries 0) and
  ``row_originals/<layer>`` (the same rows before it), so the whole edit,
  pruning and update, is applied and undone from the file alone;

and one JSON string under the header key ``fia`` with the concepts, every
hyperparameter (:meth:`FIAConfig.to_dict`), per-layer and total counts,
layer names and shapes, the package version, the target kind and two
fingerprints of the base model's target weights:

* ``fingerprint``: sha256 over the layer names, shapes and the weights
  rounded to float16 (a float32 and a float16 copy of the same model match);
* ``edit_fingerprint``: the same with the pruned entries set to zero, which is
  what :meth:`ConceptMask.check` compares, so it accepts both the base
  model and a model already edited by this mask, and refuses any other;
* ``applied_fingerprint`` (repaired masks only): the same over the weights
  as the edit leaves them (pruned and rewritten), so a repaired model is
  recognised too.

A mask without a repair is written exactly as before (format version 1); a
repaired one has format version 2, which older packages refuse with a
request to upgrade.

The file holds no timestamps or paths: the same inputs give the same bytes.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

from fia.edit_base import EditFile, save_edited_pipeline
from fia.errors import FIAError
from fia.targets import denoiser
from fia.weights import fingerprint_weights

# denoiser, fingerprint_weights and save_edited_pipeline live lower down; callers may import them from here too
__all__ = ["FORMAT", "FORMAT_VERSION", "ConceptMask", "LayerMask", "denoiser", "fingerprint_weights", "save_edited_pipeline"]

FORMAT = "fia-mask"
FORMAT_VERSION = 2  # the newest this package writes: 1 = pruning only, 2 = pruning + repaired rows
_HEADER_KEY = "fia"
_SUMMARY_KEYS = (
    "task",
    "r1",
    "r2",
    "alpha",
    "saliency_steps",
    "num_inference_steps",
    "guidance_scale",
    "seed",
    "saliency",
    "cfg_rows",
    "selection",
    "fusion",
)
_CAUSAL_SUMMARY_KEYS = (
    "task",
    "world",
    "variant",
    "budget",
    "rounds",
    "anchor_weight",
    "anchors",
    "alpha",
    "score_steps",
    "guidance_scale",
    "contrasts",
    "concept_prompts_per_concept",
    "anchor_prompts",
    "evidence_timesteps",
    "stop_evidence",
    "seed",
)
# the settings a mask's summary shows, by the variant its record names
_HEADLINE_KEYS = {"paper": _SUMMARY_KEYS, "causal": _CAUSAL_SUMMARY_KEYS, "rewrite": _SUMMARY_KEYS}


# ------------------------------------------------------------------ model access
def _weights_by_name(model: nn.Module, names: Iterable[str]) -> dict[str, Tensor]:
    modules = dict(model.named_modules())
    out = {}
    for name in names:
        mod = modules.get(name)
        w = getattr(mod, "weight", None) if mod is not None else None
        if not isinstance(w, Tensor):
            raise FIAError(
                f"the model has no layer {name!r}; this mask was made for a different model, "
                "apply it to the model it was made from"
            )
        out[name] = w
    return out


# ---------------------------------------------------------------------- artifact
@dataclass
class LayerMask:
    """The pruned entries of one layer."""

    name: str
    shape: tuple[int, int]
    indices: Tensor  # int64 flat row-major indices, sorted
    values: Tensor  # float32 original values, same order
    agnostic: int = 0  # entries selected by >= tau_ca concepts (kept)
    tau_ca: int = 2
    selected: dict[str, int] = field(default_factory=dict)  # concept -> |Q_c|
    # the closed-form repair (None: pruning only): rewritten rows, their new and their original values
    rows: Tensor | None = None  # int64 sorted row indices
    row_values: Tensor | None = None  # float32 (len(rows), in): after the edit, pruned entries 0
    row_originals: Tensor | None = None  # float32 (len(rows), in): before it

    @property
    def numel(self) -> int:
        return int(self.shape[0]) * int(self.shape[1])

    @property
    def pruned(self) -> int:
        return int(self.indices.numel())

    @property
    def repaired_rows(self) -> int:
        return 0 if self.rows is None else int(self.rows.numel())


@dataclass(eq=False)  # compared by file bytes (EditFile.__eq__)
class ConceptMask(EditFile):
    """A pruning mask with the original values and provenance: an :class:`fia.edit.Edit`.

    FIA's fused mask (``method="fia"``, built with :func:`fia.erase`) or the
    mask of another pruning method such as ConceptPrune (``method``
    names it). Load one with :meth:`ConceptMask.load`.
    """

    concepts: list[str]
    config: dict[str, Any]
    layers: list[LayerMask]
    fingerprint: str
    edit_fingerprint: str
    target_kind: str = "ffn2"
    dtype: str = "float32"
    version: str = ""
    method: str = "fia"  # the registered method that made it (fia.methods); files without one are FIA's
    applied_fingerprint: str = ""  # repaired masks: fingerprint of the weights as the edit leaves them
    stats: dict[str, Any] | None = field(default=None, repr=False, compare=False)  # erase's run statistics, not saved

    HEADER_KEY = _HEADER_KEY
    FORMAT = FORMAT
    FORMAT_VERSION = FORMAT_VERSION
    KIND, FILE_NAME, COMMAND = "mask", "mask.safetensors", "fia erase"

    # ------------------------------------------------------------ construction
    @classmethod
    def from_prune_masks(
        cls,
        weights: Mapping[str, Tensor],
        prune: Mapping[str, Tensor],
        *,
        concepts: list[str],
        config: dict[str, Any],
        target_kind: str,
        agnostic: Mapping[str, int] | None = None,
        tau_ca: Mapping[str, int] | None = None,
        selected: Mapping[str, Mapping[str, int]] | None = None,
        fingerprint: str | None = None,
        method: str = "fia",
    ) -> ConceptMask:
        """From dense bool prune masks and the (unedited) weights they apply to."""
        from fia._version import __version__

        layers = []
        for name in weights:  # the caller's (module) order
            w = weights[name].detach()
            p = prune[name]
            if tuple(p.shape) != tuple(w.shape):
                raise ValueError(f"mask of {name} has shape {tuple(p.shape)}, weight {tuple(w.shape)}")
            idx = torch.nonzero(p.reshape(-1).cpu(), as_tuple=False).reshape(-1).to(torch.int64)
            vals = w.reshape(-1).cpu()[idx].to(torch.float32).clone()
            layers.append(
                LayerMask(
                    name=name,
                    shape=(int(w.shape[0]), int(w.shape[1])),
                    indices=idx,
                    values=vals,
                    agnostic=int((agnostic or {}).get(name, 0)),
                    tau_ca=int((tau_ca or {}).get(name, 0)),
                    selected={c: int(v) for c, v in ((selected or {}).get(name, {})).items()},
                )
            )
        idx_map = {lm.name: lm.indices for lm in layers}
        dtypes = {str(w.dtype).replace("torch.", "") for w in weights.values()}
        return cls(
            concepts=list(concepts),
            config=dict(config),
            layers=layers,
            fingerprint=fingerprint or fingerprint_weights(weights),
            edit_fingerprint=fingerprint_weights(weights, idx_map),
            target_kind=target_kind,
            dtype=",".join(sorted(dtypes)),
            version=__version__,
            method=method,
        )

    def with_repair(self, weights: Mapping[str, Tensor], repairs: Mapping[str, Any]) -> ConceptMask:
        """This mask plus the closed-form repair's rewritten rows (``layer -> LayerRepair``, :mod:`fia.core.repair`).

        ``weights`` are the unedited weights of the masked layers (the rows'
        original values are read from them). A rewritten row must keep every
        pruned entry of its row at exactly 0.
        """
        layers, edited = [], {}
        for lm in self.layers:
            w = weights[lm.name].detach()
            rep = repairs.get(lm.name)
            if rep is None or rep.rows.numel() == 0:
                layers.append(dataclasses.replace(lm, rows=None, row_values=None, row_originals=None))
                edited[lm.name] = self._masked_copy(lm, w)
                continue
            rows = rep.rows.to(torch.int64).cpu()
            values = rep.values.to(torch.float32).cpu().contiguous()
            if values.shape != (rows.numel(), lm.shape[1]):
                raise ValueError(f"repair of {lm.name}: {tuple(values.shape)} values for {rows.numel()} rows of width {lm.shape[1]}")
            pruned_here = self.to_dense(lm.name)[rows]
            if bool((values[pruned_here] != 0).any()):
                raise ValueError(f"repair of {lm.name} sets a pruned weight to a non-zero value")
            originals = w.cpu()[rows].to(torch.float32).clone()
            layers.append(dataclasses.replace(lm, rows=rows, row_values=values, row_originals=originals))
            out = self._masked_copy(lm, w)
            out[rows] = values.to(out.dtype)
            edited[lm.name] = out
        return dataclasses.replace(self, layers=layers, applied_fingerprint=fingerprint_weights(edited), stats=self.stats)

    @staticmethod
    def _masked_copy(lm: LayerMask, w: Tensor) -> Tensor:
        out = w.detach().cpu().clone()
        flat = out.reshape(-1)
        flat[lm.indices.long()] = 0
        return out

    @property
    def repaired(self) -> bool:
        """Whether the mask carries a closed-form repair (rewritten rows)."""
        return any(lm.rows is not None for lm in self.layers)

    @property
    def repaired_rows(self) -> int:
        return sum(lm.repaired_rows for lm in self.layers)

    # --------------------------------------------------------------- counting
    @property
    def layer_names(self) -> list[str]:
        return [lm.name for lm in self.layers]

    def layer(self, name: str) -> LayerMask:
        for lm in self.layers:
            if lm.name == name:
                return lm
        raise KeyError(name)

    @property
    def pruned(self) -> int:
        return sum(lm.pruned for lm in self.layers)

    @property
    def agnostic(self) -> int:
        return sum(lm.agnostic for lm in self.layers)

    @property
    def total_weights(self) -> int:
        return sum(lm.numel for lm in self.layers)

    @property
    def pruned_share(self) -> float:
        return self.pruned / self.total_weights if self.total_weights else 0.0

    def to_dense(self, layer: str) -> Tensor:
        """The bool prune mask of ``layer`` (True = weight is zeroed)."""
        lm = self.layer(layer)
        dense = torch.zeros(lm.numel, dtype=torch.bool)
        dense[lm.indices.long()] = True
        return dense.reshape(lm.shape)

    # ---------------------------------------------------------- model editing
    def check(self, target: Any) -> dict[str, Tensor]:
        """Weights of ``target``'s masked layers, after checking it is the right model."""
        model = denoiser(target)
        weights = _weights_by_name(model, self.layer_names)
        for lm in self.layers:
            if tuple(weights[lm.name].shape) != tuple(lm.shape):
                raise FIAError(
                    f"layer {lm.name} has shape {tuple(weights[lm.name].shape)} but the mask expects "
                    f"{tuple(lm.shape)}; this mask was made for a different model, apply it to the model "
                    "it was made from"
                )
        got = fingerprint_weights(weights, {lm.name: lm.indices for lm in self.layers})
        if got != self.edit_fingerprint and not (self.repaired and got == self.applied_fingerprint):
            raise FIAError(
                f"this mask was made for a different model (fingerprint {self.edit_fingerprint[:12]}, "
                f"model {got[:12]}); apply it to the model it was made from"
            )
        return weights

    # apply_, restore_ and applied (EditFile) follow the rules every edit shares; these say what they write
    def _entries(self, weights: Mapping[str, Tensor]) -> Iterator[tuple[Tensor, Tensor, Tensor]]:
        """Per layer: the pruned entries (applied: 0) and the repaired rows (applied: the rewritten rows)."""
        for lm in self.layers:
            w = weights[lm.name]
            if lm.pruned:
                rows, cols = self._pruned_positions(lm, w)
                original = lm.values.to(device=w.device, dtype=w.dtype)
                yield w[rows, cols], torch.zeros_like(original), original
            if lm.rows is not None:
                rows = lm.rows.to(w.device)
                like = {"device": w.device, "dtype": w.dtype}
                yield w[rows], lm.row_values.to(**like), lm.row_originals.to(**like)

    def _write(self, weights: Mapping[str, Tensor], applied: bool) -> None:
        """Applied: zero the pruned entries, then write the repaired rows; undone: the rows' originals, then the pruned ones."""
        for lm in self.layers:
            w = weights[lm.name]
            if applied:
                if lm.pruned:
                    w[self._pruned_positions(lm, w)] = 0
                if lm.rows is not None:
                    w[lm.rows.to(w.device)] = lm.row_values.to(device=w.device, dtype=w.dtype)
            else:
                if lm.rows is not None:
                    w[lm.rows.to(w.device)] = lm.row_originals.to(device=w.device, dtype=w.dtype)
                if lm.pruned:
                    w[self._pruned_positions(lm, w)] = lm.values.to(device=w.device, dtype=w.dtype)

    @staticmethod
    def _pruned_positions(lm: LayerMask, w: Tensor) -> tuple[Tensor, Tensor]:
        """(row, column) index tensors of ``lm``'s pruned entries, on ``w``'s device."""
        idx = lm.indices.to(w.device).long()
        return idx // lm.shape[1], idx % lm.shape[1]

    # ------------------------------------------------------------------- text
    def summary(self) -> str:
        """Human-readable description: concepts, settings, per-layer table, pruned share."""
        cfg = self.config
        # the recorded settings name their variant; an FIA record shows its headline
        # settings, another method's record all of it (sorted, as in the saved header)
        headline = _HEADLINE_KEYS.get(cfg.get("variant", "paper"), _SUMMARY_KEYS) if "r2" in cfg else None
        shown = [k for k in headline if k in cfg] if headline else sorted(cfg)
        title = "FIA concept mask" if self.method.startswith("fia") else f"{self.method} concept mask"
        lines = [
            f"{title} (method {self.method}, forget-it-all {self.version}, targets {self.target_kind}, "
            f"model dtype {self.dtype})",
            f"concepts ({len(self.concepts)}): {', '.join(self.concepts)}",
            "settings: " + ", ".join(f"{k}={cfg[k]}" for k in shown),
        ]
        for k in ("r1_overrides", "r2_overrides"):
            if cfg.get(k):
                lines.append(f"{k}: " + ", ".join(f"{c}={v}" for c, v in cfg[k].items()))
        lines.append(f"model fingerprint: {self.fingerprint[:16]}")
        width = max([len(lm.name) for lm in self.layers] + [5])
        lines.append(f"{'layer':<{width}}  {'shape':>12}  {'pruned':>9}  {'agnostic':>9}  {'tau_ca':>6}  {'share':>8}")
        for lm in self.layers:
            shape = f"{lm.shape[0]}x{lm.shape[1]}"
            lines.append(
                f"{lm.name:<{width}}  {shape:>12}  {lm.pruned:>9}  {lm.agnostic:>9}  {lm.tau_ca:>6}  "
                f"{100 * lm.pruned / lm.numel:>7.3f}%"
            )
        lines.append(
            f"total: {self.pruned} of {self.total_weights} weights pruned ({100 * self.pruned_share:.3f} %), "
            f"{self.agnostic} concept-agnostic kept, {len(self.layers)} layers"
        )
        if self.repaired and "rewrite" in cfg:  # only a rewrite records rewrite settings
            rw = cfg.get("rewrite") or {}
            lines.append(
                f"closed-form rewrite: every row of {len(self.layers)} layers ({self.repaired_rows} rows), no weight pruned"
                + (", settings: " + ", ".join(f"{k}={v}" for k, v in sorted(rw.items())) if rw else "")
            )
        elif self.repaired:
            rep = cfg.get("repair") or {}
            lines.append(
                f"closed-form repair: {self.repaired_rows} rows rewritten ("
                + ", ".join(f"{lm.name.rsplit('.', 3)[0]}: {lm.repaired_rows}" for lm in self.layers if lm.repaired_rows)
                + ")" + (", settings: " + ", ".join(f"{k}={v}" for k, v in sorted(rep.items())) if rep else "")
            )
        return "\n".join(lines)

    # --------------------------------------------------------------- storage
    def provenance(self) -> dict[str, Any]:
        # a mask without a repair keeps format version 1, so its file is byte-identical to older ones
        return super().provenance() | {"format_version": 2 if self.repaired else 1}

    def metadata(self) -> dict[str, Any]:
        repair = {"applied_fingerprint": self.applied_fingerprint} if self.repaired else {}
        return self.provenance() | repair | {
            "target_kind": self.target_kind,
            "edit_fingerprint": self.edit_fingerprint,
            "layers": [
                {
                    "name": lm.name,
                    "shape": list(lm.shape),
                    "pruned": lm.pruned,
                    "agnostic": lm.agnostic,
                    "tau_ca": lm.tau_ca,
                    "selected": lm.selected,
                }
                | ({"repaired_rows": lm.repaired_rows} if lm.rows is not None else {})
                for lm in self.layers
            ],
            "totals": {
                "pruned": self.pruned,
                "agnostic": self.agnostic,
                "weights": self.total_weights,
                "pruned_share": self.pruned_share,
            },
        }

    def _tensors(self) -> dict[str, Tensor]:
        tensors = {}
        for lm in self.layers:
            tensors[f"indices/{lm.name}"] = lm.indices.to(torch.int32).contiguous()
            tensors[f"values/{lm.name}"] = lm.values.to(torch.float32).contiguous()
            if lm.rows is not None:
                tensors[f"rows/{lm.name}"] = lm.rows.to(torch.int32).contiguous()
                tensors[f"row_values/{lm.name}"] = lm.row_values.to(torch.float32).contiguous()
                tensors[f"row_originals/{lm.name}"] = lm.row_originals.to(torch.float32).contiguous()
        return tensors

    @classmethod
    def from_bytes(cls, data: bytes) -> ConceptMask:
        meta, tensors = cls.unpack(data)
        layers = []
        for info in meta["layers"]:
            name = info["name"]
            idx = tensors[f"indices/{name}"].to(torch.int64)
            vals = tensors[f"values/{name}"]
            shape = (int(info["shape"][0]), int(info["shape"][1]))
            if idx.numel() != vals.numel() or idx.numel() != int(info["pruned"]):
                raise ValueError(f"layer {name} is inconsistent")
            if idx.numel() and (int(idx.min()) < 0 or int(idx.max()) >= shape[0] * shape[1]):
                raise ValueError(f"layer {name} has indices out of range")
            rows = row_values = row_originals = None
            if "repaired_rows" in info:
                rows = tensors[f"rows/{name}"].to(torch.int64)
                row_values, row_originals = tensors[f"row_values/{name}"], tensors[f"row_originals/{name}"]
                n_rows = int(info["repaired_rows"])
                if rows.numel() != n_rows or row_values.shape != (n_rows, shape[1]) or row_originals.shape != (n_rows, shape[1]):
                    raise ValueError(f"layer {name}'s repaired rows are inconsistent")
                if rows.numel() and (int(rows.min()) < 0 or int(rows.max()) >= shape[0]):
                    raise ValueError(f"layer {name} has repaired rows out of range")
            layers.append(
                LayerMask(
                    name=name,
                    shape=shape,
                    indices=idx,
                    values=vals,
                    agnostic=int(info["agnostic"]),
                    tau_ca=int(info["tau_ca"]),
                    selected={c: int(v) for c, v in info.get("selected", {}).items()},
                    rows=rows,
                    row_values=row_values,
                    row_originals=row_originals,
                )
            )
        return cls(
            concepts=list(meta["concepts"]),
            config=dict(meta["config"]),
            layers=layers,
            fingerprint=meta["fingerprint"],
            edit_fingerprint=meta["edit_fingerprint"],
            target_kind=meta.get("target_kind", "ffn2"),
            dtype=meta.get("dtype", ""),
            version=meta.get("fia_version", ""),
            method=meta.get("method", "fia"),
            applied_fingerprint=meta.get("applied_fingerprint", ""),
        )
