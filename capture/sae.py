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

Checkpoints hold ``W_enc [d_in, F]``, ``b_enc [F]``, ``W_dec [F, d_in]`` and ``b_dec [d_in]``
(``nn.Linear`` style ``encoder.weight [F, d_in]`` / ``decoder.weight [d_in, F]`` and their biases are
accepted too), in one of three formats (:func:`load_sae`):

* ``saelens``: a folder with ``cfg.json`` (``d_in``, ``d_sae``, ``k`` or ``activation_fn_kwargs.k``,
  ``normalize_activations``) and ``sae_weights.safetensors``;
* ``state_dict``: one ``.safetensors`` file (``k`` in its metadata or given by the study);
* ``pt``: a ``torch.save``d state dict, read only through ``torch.load(weights_only=True)``.

The SAE may expect its input normalised (:attr:`TopKSAE.scaling`): ``none``; ``scalar`` (it reads
``scale * x``, SAELens ``expected_average_only_in`` with its estimated factor); ``token_norm`` (it reads
``x * sqrt(d_in) / |x|`` per token, SAELens ``constant_norm_rescale``). Reconstructions and a
feature's contribution are mapped back to the model's units by the same factor.

A study names an SAE in ``ablation.saes`` and knocks its features down in an ``sae_knockdown`` analysis
(:mod:`capture.designs.ablation_sae`).
"""

from __future__ import annotations

import json
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
    scaling: str = "none"      # none | scalar | token_norm: the input normalisation the SAE expects
    scale: float = 1.0         # the factor of ``scalar`` scaling

    @property
    def d_in(self) -> int:
        return int(self.w_enc.shape[0])

    @property
    def n_features(self) -> int:
        return int(self.w_enc.shape[1])

    def input_scale(self, x: torch.Tensor) -> torch.Tensor:
        """``[..., 1]``: the factor the SAE's input is ``x`` times (1, ``scale``, or ``sqrt(d_in)/|x|``)."""
        if self.scaling == "token_norm":
            return self.d_in ** 0.5 / x.float().norm(dim=-1, keepdim=True).clamp(min=1e-12)
        return torch.full((*x.shape[:-1], 1), float(self.scale) if self.scaling == "scalar" else 1.0, device=x.device)

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """Feature activations ``[..., F]`` (float32) of ``x [..., d_in]`` (normalised as the SAE expects)."""
        pre = (x.float() * self.input_scale(x) - self.b_dec.to(x.device)) @ self.w_enc.to(x.device) + self.b_enc.to(x.device)
        top = torch.topk(pre, self.k, dim=-1)
        return torch.zeros_like(pre).scatter(-1, top.indices, torch.relu(top.values))

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        return z @ self.w_dec.to(z.device) + self.b_dec.to(z.device)

    def reconstruct(self, x: torch.Tensor) -> torch.Tensor:
        """The SAE's reconstruction of ``x``, in the model's units (float32)."""
        return self.decode(self.encode(x)) / self.input_scale(x)


_ALIASES = {
    "w_enc": (("W_enc", False), ("w_enc", False), ("encoder.weight", True)),
    "b_enc": (("b_enc", False), ("encoder.bias", False)),
    "w_dec": (("W_dec", False), ("w_dec", False), ("decoder.weight", True)),
    "b_dec": (("b_dec", False), ("decoder.bias", False), ("b_pre", False)),
}


FORMATS = ("saelens", "state_dict", "pt")
SCALINGS = ("none", "scalar", "token_norm")
SAELENS_CONFIG, SAELENS_WEIGHTS = "cfg.json", "sae_weights.safetensors"
# SAELens cfg.json normalize_activations -> the scaling it means here
_SAELENS_SCALING = {"none": "none", "expected_average_only_in": "scalar", "constant_norm_rescale": "token_norm"}


def _pick(path: Path, names: set[str], get) -> dict[str, torch.Tensor]:
    """The four SAE tensors under any accepted name, float32, in ``W_enc [d_in, F]`` orientation."""
    found = {}
    for name, options in _ALIASES.items():
        hit = next(((n, t) for n, t in options if n in names), None)
        if hit is None:
            raise CaptureError(f"{path} has no {name} (looked for {', '.join(n for n, _ in options)}; it has {sorted(names)})",
                               hint="save the SAE's W_enc, b_enc, W_dec and b_dec under these names")
        tensor = get(hit[0])
        if not isinstance(tensor, torch.Tensor):
            raise CaptureError(f"{path}: {hit[0]} is a {type(tensor).__name__}, not a tensor")
        tensor = tensor.float()
        found[name] = tensor.T.contiguous() if hit[1] else tensor
    return found


def _checked(path: Path, found: dict[str, torch.Tensor], k: int, scaling: str, scale: float) -> TopKSAE:
    """A TopKSAE from ``found``, or one CaptureError naming the file and the field that is wrong."""
    if found["w_enc"].dim() != 2:
        raise CaptureError(f"{path}: w_enc has shape {tuple(found['w_enc'].shape)}; expected [d_in, width]")
    d_in, n = found["w_enc"].shape
    expected = {"w_dec": (n, d_in), "b_enc": (n,), "b_dec": (d_in,)}
    for name, shape in expected.items():
        if tuple(found[name].shape) != shape:
            raise CaptureError(f"{path}: {name} has shape {tuple(found[name].shape)}, but w_enc {tuple(found['w_enc'].shape)} "
                               f"asks for {shape}", hint="the file does not hold one consistent SAE")
    for name, tensor in found.items():
        if not torch.isfinite(tensor).all():
            bad = int((~torch.isfinite(tensor)).sum())
            raise CaptureError(f"{path}: {name} holds {bad} NaN or infinite value(s)", hint="the checkpoint is damaged; re-export it")
    if not 1 <= int(k) <= n:
        raise CaptureError(f"{path}: k = {k} is not between 1 and the {n} features")
    if scaling not in SCALINGS:
        raise CaptureError(f"{path}: input normalisation {scaling!r} is not one of {', '.join(SCALINGS)}")
    if scaling == "scalar" and not (np.isfinite(scale) and scale > 0):
        raise CaptureError(f"{path}: scalar normalisation needs a positive finite scale, not {scale!r}")
    return TopKSAE(found["w_enc"], found["b_enc"], found["w_dec"], found["b_dec"], int(k), scaling, float(scale))


def _read_safetensors(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(path), framework="pt") as handle:
            names = set(handle.keys())
            return _pick(path, names, handle.get_tensor), dict(handle.metadata() or {})
    except SafetensorError as exc:
        raise CaptureError(f"{path} is not a readable safetensors file ({exc})", hint="re-export the SAE with safetensors") from None


def _read_pt(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    import pickle

    try:
        state = torch.load(str(path), map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError, ValueError, AttributeError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise CaptureError(f"{path} is not a plain state dict that torch.load(weights_only=True) accepts ({first})",
                           hint="lockstep never unpickles arbitrary objects: save `sae.state_dict()` (tensors only) or "
                                "convert the SAE to safetensors") from None
    if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
        state = state["state_dict"]
    if not isinstance(state, dict):
        raise CaptureError(f"{path} holds a {type(state).__name__}, not a state dict of tensors")
    meta = {"k": str(int(state["k"]))} if isinstance(state.get("k"), (int, torch.Tensor)) else {}
    return _pick(path, {n for n, v in state.items() if isinstance(n, str)}, state.__getitem__), meta


def _saelens_config(folder: Path) -> dict:
    cfg_path = folder / SAELENS_CONFIG
    if not cfg_path.is_file():
        raise CaptureError(f"{folder} has no {SAELENS_CONFIG}", hint="an SAELens folder holds cfg.json and sae_weights.safetensors")
    try:
        cfg = json.loads(cfg_path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise CaptureError(f"{cfg_path} is not JSON ({exc})") from None
    if not isinstance(cfg, dict):
        raise CaptureError(f"{cfg_path} is not a JSON object")
    return cfg


def load_sae(path: Path, fmt: str, *, k: int | None = None, scaling: str = "none", scale: float = 1.0,
             width: int | None = None) -> TopKSAE:
    """Read a TopK SAE in ``fmt`` (``saelens`` folder, ``state_dict`` safetensors, ``pt`` state dict).

    ``k``, ``scaling``, ``scale`` and ``width`` are what the study says; a checkpoint that records a
    different value (SAELens ``cfg.json``, safetensors metadata) is refused, naming the field.
    """
    path = Path(path)
    if fmt not in FORMATS:
        raise CaptureError(f"SAE format {fmt!r} is not one of {', '.join(FORMATS)}")
    recorded: dict[str, object] = {}
    if fmt == "saelens":
        if not path.is_dir():
            raise CaptureError(f"SAE folder not found at {path}", hint="an SAELens SAE is a folder with cfg.json and sae_weights.safetensors")
        cfg = _saelens_config(path)
        weights = path / SAELENS_WEIGHTS
        if not weights.is_file():
            raise CaptureError(f"{path} has no {SAELENS_WEIGHTS}")
        found, _ = _read_safetensors(weights)
        cfg_k = cfg.get("k", (cfg.get("activation_fn_kwargs") or {}).get("k"))
        if cfg_k is not None:
            recorded["k"] = int(cfg_k)
        norm = cfg.get("normalize_activations") or "none"
        if norm not in _SAELENS_SCALING:
            raise CaptureError(f"{path / SAELENS_CONFIG}: normalize_activations {norm!r} is not supported "
                               f"(lockstep reads {', '.join(_SAELENS_SCALING)})")
        recorded["scaling"] = _SAELENS_SCALING[norm]
        for key, name in (("d_sae", "w_enc width"), ("d_in", "w_enc rows")):
            have = int(found["w_enc"].shape[1 if key == "d_sae" else 0])
            if key in cfg and int(cfg[key]) != have:
                raise CaptureError(f"{path / SAELENS_CONFIG}: {key} is {cfg[key]}, but {weights.name} has {name} {have}")
        source = path / SAELENS_CONFIG
    else:
        if not path.is_file():
            raise CaptureError(f"SAE checkpoint not found at {path}", hint=f"give the path of the {fmt} file")
        found, meta = _read_safetensors(path) if fmt == "state_dict" else _read_pt(path)
        raw = meta.get("k") or meta.get("top_k")
        if raw is not None:
            recorded["k"] = int(raw)
        source = path
    if k is None:
        if "k" not in recorded:
            raise CaptureError(f"{path} does not record k (metadata 'k' or 'top_k')", hint="pass k explicitly")
        k = int(recorded["k"])
    elif "k" in recorded and int(recorded["k"]) != int(k):
        raise CaptureError(f"{source}: k is {recorded['k']}, but the study says {k}", hint="make the study's /ablation/saes entry agree")
    if "scaling" in recorded and recorded["scaling"] != scaling:
        raise CaptureError(f"{source}: normalize_activations means {recorded['scaling']!r} input normalisation, but the study "
                           f"says {scaling!r}", hint="make the study's /ablation/saes normalization agree with the checkpoint")
    sae = _checked(path, found, int(k), scaling, scale)
    if width is not None and sae.n_features != int(width):
        raise CaptureError(f"{path}: the SAE has {sae.n_features} features, but the study says width {width}")
    return sae


def load_topk_sae(path: Path, k: int | None = None) -> TopKSAE:
    """Read a TopK SAE from a safetensors state dict (see the module docstring for the names it accepts)."""
    return load_sae(path, "state_dict", k=k)


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
        back = self.sae.input_scale(x[:, cols])                             # [R, T', 1]: to the model's units
        delta[:, cols] = -(coeff.unsqueeze(-1) / back) * self.sae.w_dec.to(x.device)[index].unsqueeze(1)
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
