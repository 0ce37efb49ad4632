"""Sparse-autoencoder feature knockdown: remove one TopK-SAE feature's contribution at a hook point and
read the margin (the ablation card's "final-token feature knockdown" of feature 18641 at 14.mid).

A TopK SAE (Gao et al. 2024) encodes a residual-stream vector ``x`` as
``z = TopK_k(ReLU((x - b_dec) @ W_enc + b_enc))`` (all but the ``k`` largest pre-activations zeroed)
and decodes ``x_hat = z @ W_dec + b_dec``. Knocking feature ``f`` down while *keeping the
reconstruction error* ``e = x - x_hat`` gives ``x' = (x_hat - z_f W_dec[f]) + e = x - z_f W_dec[f]``:
only the feature's own contribution leaves the stream, the SAE's imperfection stays. That is what
:class:`FeatureKnockdown` writes, at the chosen positions (``last``: the last token, as in the card;
``all``: every token), in rows where the feature is active (``z_f > 0``; elsewhere ``x`` is untouched).

Hook points are ``"<layer>.<where>"``:

* ``<l>.in``  -- the residual stream entering decoder layer ``l`` (a forward pre-hook on the layer);
* ``<l>.mid`` -- the residual stream after layer ``l``'s token mixer (attention or linear attention)
  and before its MLP: layer input + mixer output. The layer input is kept by a pre-hook on the layer,
  and the mixer's output is shifted by ``-z_f W_dec[f]`` by a forward hook on the mixer, so the MLP
  and everything after read ``x'``;
* ``<l>.out`` -- the residual stream leaving layer ``l`` (a forward hook on the layer).

Checkpoints are safetensors files holding ``W_enc [d_in, F]``, ``b_enc [F]``, ``W_dec [F, d_in]`` and
``b_dec [d_in]`` (``nn.Linear`` style ``encoder.weight [F, d_in]`` / ``decoder.weight [d_in, F]`` and
their biases are accepted too), with ``k`` in the file's metadata or given by the caller.

Not yet wired into study.yaml: the ablation block of ``schemas/study.schema.json`` has no field naming an
SAE, a hook point and features, so this is library code that capture can call once the schema has one.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from lockstep.errors import CaptureError

_POINT = re.compile(r"^(\d+)\.(in|mid|out)$")
_MIXERS = ("self_attn", "linear_attn", "attn", "mixer")


@dataclass(frozen=True)
class TopKSAE:
    """A TopK sparse autoencoder: ``w_enc [d_in, F]``, ``b_enc [F]``, ``w_dec [F, d_in]``, ``b_dec [d_in]``, ``k``."""

    w_enc: torch.Tensor
    b_enc: torch.Tensor
    w_dec: torch.Tensor
    b_dec: torch.Tensor
    k: int

    @property
    def d_in(self) -> int:
        return int(self.w_enc.shape[0])

    @property
    def n_features(self) -> int:
        return int(self.w_enc.shape[1])

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """Feature activations ``[..., F]`` (float32) of ``x [..., d_in]``."""
        pre = (x.float() - self.b_dec.to(x.device)) @ self.w_enc.to(x.device) + self.b_enc.to(x.device)
        top = torch.topk(pre, self.k, dim=-1)
        return torch.zeros_like(pre).scatter(-1, top.indices, torch.relu(top.values))

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        return z @ self.w_dec.to(z.device) + self.b_dec.to(z.device)


_ALIASES = {
    "w_enc": (("W_enc", False), ("w_enc", False), ("encoder.weight", True)),
    "b_enc": (("b_enc", False), ("encoder.bias", False)),
    "w_dec": (("W_dec", False), ("w_dec", False), ("decoder.weight", True)),
    "b_dec": (("b_dec", False), ("decoder.bias", False), ("b_pre", False)),
}


def load_topk_sae(path: Path, k: int | None = None) -> TopKSAE:
    """Read a TopK SAE from a safetensors file (see the module docstring for the names it accepts)."""
    from safetensors import safe_open

    path = Path(path)
    if not path.is_file():
        raise CaptureError(f"SAE checkpoint not found at {path}", hint="give the path of a .safetensors file")
    with safe_open(str(path), framework="pt") as handle:
        names = set(handle.keys())
        meta = handle.metadata() or {}
        found = {}
        for field, options in _ALIASES.items():
            hit = next(((n, t) for n, t in options if n in names), None)
            if hit is None:
                raise CaptureError(f"{path} has no {field} (looked for {', '.join(n for n, _ in options)}; it has {sorted(names)})")
            tensor = handle.get_tensor(hit[0]).float()
            found[field] = tensor.T.contiguous() if hit[1] else tensor
    if k is None:
        raw = meta.get("k") or meta.get("top_k")
        if raw is None:
            raise CaptureError(f"{path} does not record k (metadata 'k' or 'top_k')", hint="pass k explicitly")
        k = int(raw)
    d_in, n = found["w_enc"].shape
    if found["w_dec"].shape != (n, d_in) or found["b_enc"].shape != (n,) or found["b_dec"].shape != (d_in,):
        raise CaptureError(f"{path}: inconsistent SAE shapes W_enc {tuple(found['w_enc'].shape)}, W_dec "
                           f"{tuple(found['w_dec'].shape)}, b_enc {tuple(found['b_enc'].shape)}, b_dec {tuple(found['b_dec'].shape)}")
    if not 1 <= k <= n:
        raise CaptureError(f"{path}: k = {k} is not between 1 and the {n} features")
    return TopKSAE(found["w_enc"], found["b_enc"], found["w_dec"], found["b_dec"], int(k))


def _decoder_layers(model) -> nn.ModuleList:
    for name, module in model.named_modules():
        if isinstance(module, nn.ModuleList) and name.split(".")[-1] == "layers" and "visual" not in name.split("."):
            if len(module) and hasattr(module[0], "mlp"):
                return module
    raise CaptureError("the model has no decoder layer list (a ModuleList named `layers` whose blocks have an `mlp`)")


def _parse_point(model, point: str) -> tuple[nn.Module, str, nn.Module | None]:
    match = _POINT.match(point)
    if not match:
        raise CaptureError(f"hook point {point!r} is not '<layer>.in', '<layer>.mid' or '<layer>.out'")
    layers = _decoder_layers(model)
    layer = int(match.group(1))
    if layer >= len(layers):
        raise CaptureError(f"hook point {point!r}: the model has {len(layers)} layers")
    block = layers[layer]
    mixer = next((getattr(block, n) for n in _MIXERS if isinstance(getattr(block, n, None), nn.Module)), None)
    if match.group(2) == "mid" and mixer is None:
        raise CaptureError(f"hook point {point!r}: layer {layer} has no token mixer ({', '.join(_MIXERS)})")
    return block, match.group(2), mixer


def _first(value):
    return value[0] if isinstance(value, tuple) else value


def _replace_first(value, new):
    return (new, *value[1:]) if isinstance(value, tuple) else new


class FeatureKnockdown:
    """Knock SAE features down at a hook point, one feature per row of a forward.

    Parameters
    ----------
    model : torch.nn.Module
    sae : TopKSAE
    point : str
        ``"<layer>.in"``, ``"<layer>.mid"`` or ``"<layer>.out"``.
    position : {"last", "all"}
        Where the feature is removed (rows are left-padded, so ``last`` is the last column).

    :meth:`knocking` is a context manager around one forward; ``row_features[r]`` is the feature
    removed in row ``r`` (``None``: the row is untouched). After the forward, :attr:`activations`
    holds each row's activation of its feature at the last position (0 for untouched rows).
    """

    def __init__(self, model, sae: TopKSAE, point: str, position: str = "last"):
        if position not in ("last", "all"):
            raise CaptureError(f"knockdown position {position!r} is not 'last' or 'all'")
        hidden = model.get_input_embeddings().weight.shape[1]
        if sae.d_in != hidden:
            raise CaptureError(f"the SAE reads {sae.d_in} channels but the model's residual stream has {hidden}")
        self.model, self.sae, self.point, self.position = model, sae, point, position
        self.block, self.where, self.mixer = _parse_point(model, point)
        self.activations: np.ndarray | None = None

    def _delta(self, x: torch.Tensor, features: torch.Tensor) -> torch.Tensor:
        """``-z_f W_dec[f]`` per row at the knockdown positions, zeros elsewhere; records activations."""
        cols = slice(x.shape[1] - 1, x.shape[1]) if self.position == "last" else slice(None)
        z = self.sae.encode(x[:, cols])                                     # [R, T', F]
        keep = features >= 0
        index = features.clamp(min=0).to(x.device)
        coeff = z.gather(-1, index.view(-1, 1, 1).expand(-1, z.shape[1], 1)).squeeze(-1)   # [R, T']
        coeff = coeff * keep.to(x.device).view(-1, 1)
        self.activations = coeff[:, -1].double().cpu().numpy()
        delta = torch.zeros_like(x, dtype=torch.float32)
        delta[:, cols] = -coeff.unsqueeze(-1) * self.sae.w_dec.to(x.device)[index].unsqueeze(1)
        return delta

    @contextmanager
    def knocking(self, row_features: Sequence[int | None]) -> Iterator[None]:
        features = torch.tensor([-1 if f is None else int(f) for f in row_features], dtype=torch.long)
        if (features >= self.sae.n_features).any():
            raise CaptureError(f"feature index out of range (the SAE has {self.sae.n_features} features)")
        handles, stash = [], {}

        def check(x):
            if x.shape[0] != len(features):
                raise RuntimeError(f"the knockdown plan has {len(features)} rows but the forward has {x.shape[0]}")

        def pre_in(module, args, kwargs):
            x = args[0] if args else kwargs["hidden_states"]
            check(x)
            new = x + self._delta(x, features).to(x.dtype)
            if args:
                return (new, *args[1:]), kwargs
            return args, {**kwargs, "hidden_states": new}

        def keep_input(module, args, kwargs):
            stash["x"] = args[0] if args else kwargs["hidden_states"]

        def post_mixer(module, args, kwargs, output):
            out = _first(output)
            mid = stash.pop("x") + out
            check(mid)
            return _replace_first(output, out + self._delta(mid, features).to(out.dtype))

        def post_out(module, args, kwargs, output):
            x = _first(output)
            check(x)
            return _replace_first(output, x + self._delta(x, features).to(x.dtype))

        try:
            if self.where == "in":
                handles.append(self.block.register_forward_pre_hook(pre_in, with_kwargs=True))
            elif self.where == "mid":
                handles.append(self.block.register_forward_pre_hook(keep_input, with_kwargs=True))
                handles.append(self.mixer.register_forward_hook(post_mixer, with_kwargs=True))
            else:
                handles.append(self.block.register_forward_hook(post_out, with_kwargs=True))
            yield
        finally:
            for handle in handles:
                handle.remove()


def knockdown_margins(fwd, knock: FeatureKnockdown, rows: list[list[int]], answer: list[int], wrong: list[int],
                      features: Sequence[int], stack: int = 1) -> tuple[np.ndarray, np.ndarray]:
    """Margins of ``rows`` with each feature knocked down alone, and the feature's activation at the last
    position: two ``[len(features), len(rows)]`` arrays. ``stack`` features share one forward."""
    margins = np.empty((len(features), len(rows)))
    active = np.empty((len(features), len(rows)))
    for start in range(0, len(features), stack):
        group = list(features[start:start + stack])
        with knock.knocking([f for f in group for _ in rows]):
            m = fwd.margins(rows * len(group), answer * len(group), wrong * len(group))
        margins[start:start + len(group)] = m.reshape(len(group), len(rows))
        active[start:start + len(group)] = knock.activations.reshape(len(group), len(rows))
    return margins, active


def feature_table(baseline: np.ndarray, margins: np.ndarray, active: np.ndarray, features: Sequence[int]) -> list[dict]:
    """Per feature, as the card reports feature 18641: pairs where it is active at the last token and the
    mean clean-margin drop over those pairs (NaN when it is active nowhere)."""
    out = []
    for j, f in enumerate(features):
        on = active[j] > 0
        drops = baseline[on] - margins[j, on]
        out.append({"feature": int(f), "active_pairs": int(on.sum()),
                    "mean_drop_active": float(drops.mean()) if on.any() else float("nan"),
                    "mean_activation_active": float(active[j, on].mean()) if on.any() else float("nan")})
    return out
