"""SigLIP's attention-pooling head as a pure function: the ``head_attention`` and
``head_features`` inputs of a reducer (FastVID's, :mod:`aot.reducers.fastvid`).

SigLIP ends with ``post_layernorm`` and a multi-head attention-pooling head: one learnt probe
query attends over the patches (``nn.MultiheadAttention``), then a layernorm + MLP residual block
gives one pooled vector per image. LLaVA drops the head (and skips the post-layernorm); FastVID's
release loads both from google/siglip-so400m-patch14-384 and runs them on the tower output the
projector reads (the 26th layer's output in LLaVA-OneVision), keeping the probe's attention
(averaged over heads) and the pooled vector. :class:`PoolingHead` holds those weights (from a
state dict, :meth:`PoolingHead.from_state_dict`); :func:`apply_pooling_head` runs them.

Pure torch: the model integrations attach a head to a model
(``aot_integrations.pooling_head.attach_pooling_head``) and call :func:`apply_pooling_head`.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass

import torch
import torch.nn.functional as F

#: PoolingHead field -> the end of its name in a SigLIP vision checkpoint
#: (``vision_model.post_layernorm.weight``, ``vision_model.head.probe``, ...).
STATE_KEYS = {
    "norm_weight": "post_layernorm.weight",
    "norm_bias": "post_layernorm.bias",
    "probe": "head.probe",
    "in_proj_weight": "head.attention.in_proj_weight",
    "in_proj_bias": "head.attention.in_proj_bias",
    "out_proj_weight": "head.attention.out_proj.weight",
    "out_proj_bias": "head.attention.out_proj.bias",
    "head_norm_weight": "head.layernorm.weight",
    "head_norm_bias": "head.layernorm.bias",
    "fc1_weight": "head.mlp.fc1.weight",
    "fc1_bias": "head.mlp.fc1.bias",
    "fc2_weight": "head.mlp.fc2.weight",
    "fc2_bias": "head.mlp.fc2.bias",
}
ACTIVATIONS = ("gelu_pytorch_tanh", "gelu")


@dataclass(frozen=True)
class PoolingHead:
    """Weights of SigLIP's post-layernorm and attention-pooling head (C channels, I hidden).

    norm_weight, norm_bias: (C,) ``post_layernorm``; probe: (C,) the query;
    in_proj_weight: (3C, C) and in_proj_bias: (3C,) the packed q/k/v projections of
    ``nn.MultiheadAttention``; out_proj_weight: (C, C), out_proj_bias: (C,);
    head_norm_weight, head_norm_bias: (C,) the head's layernorm; fc1_weight: (I, C), fc1_bias:
    (I,), fc2_weight: (C, I), fc2_bias: (C,) its MLP.
    num_heads: attention heads (16 in so400m); eps: both layernorms' epsilon (1e-6);
    activation: the MLP's, ``"gelu_pytorch_tanh"`` (SigLIP) or ``"gelu"``.
    """

    norm_weight: torch.Tensor
    norm_bias: torch.Tensor
    probe: torch.Tensor
    in_proj_weight: torch.Tensor
    in_proj_bias: torch.Tensor
    out_proj_weight: torch.Tensor
    out_proj_bias: torch.Tensor
    head_norm_weight: torch.Tensor
    head_norm_bias: torch.Tensor
    fc1_weight: torch.Tensor
    fc1_bias: torch.Tensor
    fc2_weight: torch.Tensor
    fc2_bias: torch.Tensor
    num_heads: int = 16
    eps: float = 1e-6
    activation: str = "gelu_pytorch_tanh"

    def __post_init__(self) -> None:
        object.__setattr__(self, "probe", self.probe.reshape(-1))
        channels = self.probe.shape[0]
        if (isinstance(self.num_heads, bool) or not isinstance(self.num_heads, int)
                or self.num_heads < 1 or channels % self.num_heads):
            raise ValueError(f"PoolingHead.num_heads={self.num_heads!r}: expected a positive "
                             f"integer dividing the {channels} channels")
        if self.activation not in ACTIVATIONS:
            raise ValueError(f"PoolingHead.activation={self.activation!r}: expected one of "
                             f"{ACTIVATIONS}")
        hidden = self.fc1_weight.shape[0]
        shapes = {"norm_weight": (channels,), "norm_bias": (channels,),
                  "in_proj_weight": (3 * channels, channels), "in_proj_bias": (3 * channels,),
                  "out_proj_weight": (channels, channels), "out_proj_bias": (channels,),
                  "head_norm_weight": (channels,), "head_norm_bias": (channels,),
                  "fc1_weight": (hidden, channels), "fc1_bias": (hidden,),
                  "fc2_weight": (channels, hidden), "fc2_bias": (channels,)}
        for name, shape in shapes.items():
            value = getattr(self, name)
            if not isinstance(value, torch.Tensor) or tuple(value.shape) != shape:
                raise ValueError(f"PoolingHead.{name}: expected shape {shape} (probe of "
                                 f"{channels} channels), got "
                                 f"{tuple(getattr(value, 'shape', ())) or type(value).__name__}")

    @property
    def channels(self) -> int:
        return self.probe.shape[0]

    @classmethod
    def from_state_dict(cls, state: Mapping[str, torch.Tensor], *, num_heads: int = 16,
                        eps: float = 1e-6, activation: str = "gelu_pytorch_tanh") -> PoolingHead:
        """The head in a SigLIP (vision) state dict: each key of :data:`STATE_KEYS` is found as a
        name ending in it (``vision_model.head.probe``, ``head.probe``, ...); a missing or
        ambiguous one raises a ValueError naming it."""
        if not isinstance(state, Mapping):
            raise TypeError(f"PoolingHead.from_state_dict: expected a mapping of names to "
                            f"tensors, got {type(state).__name__}")
        weights = {}
        for name, suffix in STATE_KEYS.items():
            found = [key for key in state if key == suffix or key.endswith("." + suffix)]
            if len(found) != 1:
                what = "no key" if not found else f"several keys {sorted(found)}"
                raise ValueError(f"PoolingHead.from_state_dict: {what} ending in {suffix!r}; "
                                 f"expected the weights of a SigLIP vision model with its head "
                                 f"(e.g. google/siglip-so400m-patch14-384)")
            weights[name] = state[found[0]]
        return cls(**weights, num_heads=num_heads, eps=eps, activation=activation)

    def to(self, device=None, dtype=None) -> PoolingHead:
        """A copy with every tensor moved / cast."""
        return dataclasses.replace(self, **{
            item.name: getattr(self, item.name).to(device=device, dtype=dtype)
            for item in dataclasses.fields(self)
            if isinstance(getattr(self, item.name), torch.Tensor)})


def apply_pooling_head(hidden: torch.Tensor, head: PoolingHead
                       ) -> tuple[torch.Tensor, torch.Tensor]:
    """The head on a tower output (computed in float32; float64 stays float64).

    Args:
        hidden: (N, T, C) the tower output of N images (frames), before ``post_layernorm``.
        head: the weights.
    Returns:
        attention: (N, T) the probe's softmax attention over the T patches, averaged over heads
            (``nn.MultiheadAttention``'s averaged weights: each row sums to 1);
        pooled: (N, C) the head's output (``pooler_output`` of a SigLIP vision model).
    """
    if hidden.dim() != 3 or hidden.shape[-1] != head.channels:
        raise ValueError(f"apply_pooling_head: hidden has shape {tuple(hidden.shape)}; expected "
                         f"(images, patches, {head.channels})")
    dtype = torch.promote_types(hidden.dtype, torch.float32)
    w = head.to(device=hidden.device, dtype=dtype)
    frames, tokens, channels = hidden.shape
    heads, width = w.num_heads, channels // w.num_heads
    x = F.layer_norm(hidden.to(dtype), (channels,), w.norm_weight, w.norm_bias, w.eps)
    w_q, w_k, w_v = w.in_proj_weight.chunk(3)
    b_q, b_k, b_v = w.in_proj_bias.chunk(3)
    query = (F.linear(w.probe, w_q, b_q) * width ** -0.5).reshape(heads, width)      # (H, d)
    key = F.linear(x, w_k, b_k).reshape(frames, tokens, heads, width)
    value = F.linear(x, w_v, b_v).reshape(frames, tokens, heads, width)
    probs = torch.einsum("hd,nthd->nht", query, key).softmax(dim=-1)                 # (N, H, T)
    attended = torch.einsum("nht,nthd->nhd", probs, value).reshape(frames, channels)
    out = F.linear(attended, w.out_proj_weight, w.out_proj_bias)
    normed = F.layer_norm(out, (channels,), w.head_norm_weight, w.head_norm_bias, w.eps)
    approximate = "tanh" if w.activation == "gelu_pytorch_tanh" else "none"
    mlp = F.linear(F.gelu(F.linear(normed, w.fc1_weight, w.fc1_bias), approximate=approximate),
                   w.fc2_weight, w.fc2_bias)
    return probs.mean(dim=1), out + mlp
