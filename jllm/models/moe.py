"""Mixture of experts (Mixtral, Qwen2/3-MoE, OLMoE, Granite MoE, Phi-3.5-MoE, ERNIE 4.5 MoE, Llama 4, DeepSeek,
GLM-4-MoE, gpt-oss, Nemotron 3's plain experts, LongCat-Flash's zero-computation experts; Gemma 4's beside a dense MLP,
``MoEBesideMLP``): a router picks each token's experts, and every expert's tokens go through one grouped matmul
(``jax.lax.ragged_dot_general``) instead of a loop over experts.

Each token is copied once per chosen expert; the copies are sorted by expert, so each expert's rows are contiguous
and ``group_sizes`` (tokens per expert) tells the grouped matmul where each expert's rows start. Expert kernels are
stacked ``[experts, in, ...]`` and split across devices along their inner (MLP) axis, as a dense MLP is.

The routing rules are small functions of the router's float32 logits, one per family kind (``ROUTINGS``; DeepSeek's
group-limited router is ``GroupedRouting`` / ``grouped_top_k``), each returning the chosen experts and their weights
as transformers computes them at inference.

Where this module sits: docs/architecture.md.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import jax
import jax.numpy as jnp
from flax import nnx

from jllm.models.layers import ACTIVATIONS, MLP, ClampedSwiGLU, Linear, RMSNorm, param

# x [rows, in] @ kernel [experts, in, *out] with rows grouped by expert -> [rows, *out]
GROUPED = jax.lax.RaggedDotDimensionNumbers(
    dot_dimension_numbers=(([1], [1]), ([], [])), lhs_ragged_dimensions=[0], rhs_group_dimensions=[0]
)


def route_softmax(logits: jax.Array, top_k: int, renormalize: bool) -> tuple[jax.Array, jax.Array]:
    """Mixtral, Qwen, OLMoE, Granite: the top ``top_k`` of the softmax, renormalised to sum to one where
    ``renormalize`` (Granite's softmax over the top-k logits is the same)."""
    weights, chosen = jax.lax.top_k(jax.nn.softmax(logits, axis=-1), top_k)
    return chosen, weights / jnp.sum(weights, axis=-1, keepdims=True) if renormalize else weights


def route_sparsemixer(logits: jax.Array, eps: float) -> tuple[jax.Array, jax.Array]:
    """Phi-3.5-MoE's sparsemixer at inference: always two experts. The first is the top logit, weighted by its share
    of a softmax over the logits within ``2 * eps`` (relative) of it; the second the top of the rest, weighted by its
    share of a softmax over the others within ``2 * eps`` of it."""

    def pick(masked: jax.Array) -> tuple[jax.Array, jax.Array]:
        top = jnp.max(masked, axis=-1, keepdims=True)  # [T, 1]
        chosen = jnp.argmax(masked, axis=-1)[:, None]  # [T, 1]
        far = (top - logits) / jnp.maximum(jnp.abs(logits), top) > 2 * eps
        probs = jax.nn.softmax(jnp.where(far, -jnp.inf, masked), axis=-1)
        return chosen, jnp.take_along_axis(probs, chosen, axis=-1)

    first, w1 = pick(logits)
    rest = jnp.where(jnp.arange(logits.shape[-1]) == first, -jnp.inf, logits)
    second, w2 = pick(rest)
    return jnp.concatenate([first, second], axis=-1), jnp.concatenate([w1, w2], axis=-1)


def route_softmax_corrected(
    logits: jax.Array, bias: jax.Array, top_k: int, norm_min: float
) -> tuple[jax.Array, jax.Array]:
    """ERNIE 4.5's router: experts chosen by softmax probability plus a per-expert correction ``bias``, weighted by
    their uncorrected probabilities, renormalised (the sum floored at ``norm_min``)."""
    probs = jax.nn.softmax(logits, axis=-1)
    _, chosen = jax.lax.top_k(probs + bias, top_k)
    weights = jnp.take_along_axis(probs, chosen, axis=-1)
    return chosen, weights / jnp.maximum(jnp.sum(weights, axis=-1, keepdims=True), norm_min)


def route_sigmoid(logits: jax.Array, top_k: int, renormalize: bool) -> tuple[jax.Array, jax.Array]:
    """Llama 4's and Flint's router: the top ``top_k`` logits, each through a sigmoid, renormalised to sum to one
    where ``renormalize`` (Flint's ``norm_topk_prob``; never Llama 4's)."""
    values, chosen = jax.lax.top_k(logits, top_k)
    weights = jax.nn.sigmoid(values)
    return chosen, weights / jnp.sum(weights, axis=-1, keepdims=True) if renormalize else weights


# the routing rules by name; "sigmoid_input" (Llama 4) scales each expert's input by its weight, the others its output;
# "sigmoid" (Flint's, Cohere2-MoE's): ``route_sigmoid``'s weights on the outputs, renormalised where asked
ROUTINGS = ("softmax", "sparsemixer", "softmax_corrected", "sigmoid_input", "sigmoid")


# the grouped router's expert scores, by name
SCORINGS: dict[str, Callable[[jax.Array], jax.Array]] = {
    "softmax": lambda logits: jax.nn.softmax(logits, axis=-1),
    "sigmoid": jax.nn.sigmoid,
    "sqrtsoftplus": lambda logits: jnp.sqrt(jax.nn.softplus(logits)),
}


@dataclasses.dataclass(frozen=True)
class GroupedRouting:
    """DeepSeek's router: experts in ``num_groups`` groups, a token's experts chosen from its ``top_groups`` best
    groups only, the chosen weights times ``scale`` (``routed_scaling_factor``). "softmax" scores (V2) rank a group by
    its best expert; "sigmoid" scores (V3's ``noaux_tc``) are chosen with a learned bias added
    (``e_score_correction_bias``), a group ranked by the sum of its two best biased scores, and weighted unbiased;
    "sqrtsoftplus" scores (DeepSeek-V4's ``sqrt(softplus(logit))``) likewise, in one group."""

    scoring: str = "softmax"
    num_groups: int = 1
    top_groups: int = 1
    scale: float = 1.0
    logit_bias: bool = False  # the choice bias added to the logits, not to the sigmoid scores (Kolibri-1)
    softmax_bias: bool = False  # a choice bias on softmax scores too (LongCat-Flash's); sigmoid scores always have one

    @property
    def choice_bias(self) -> bool:
        """The router holds a learned choice bias (``e_score_correction_bias``)."""
        return self.scoring != "softmax" or self.softmax_bias

    def __post_init__(self) -> None:
        if self.scoring not in SCORINGS:
            raise ValueError(f"routing scoring {self.scoring!r} is not supported (supported: {', '.join(SCORINGS)})")
        if self.scoring == "sqrtsoftplus" and self.num_groups > 1:
            raise ValueError(f"sqrtsoftplus scoring is implemented in one group (DeepSeek-V4's), not {self.num_groups}")
        if not 0 < self.top_groups <= self.num_groups:
            raise ValueError(f"top_groups={self.top_groups} must be between 1 and num_groups={self.num_groups}")


def grouped_top_k(
    logits: jax.Array,  # [T, experts] float32
    top_k: int,
    routing: GroupedRouting,
    renormalize: bool,
    choice_bias: jax.Array | None = None,  # [experts] float32, added to the scores only to choose (V3, LongCat)
    fixed: jax.Array | None = None,  # [T, k] int32: the experts, chosen already (DeepSeek-V4's hash routing)
) -> tuple[jax.Array, jax.Array]:
    """transformers' ``DeepseekV2TopkRouter`` / ``DeepseekV3TopkRouter`` / ``DeepseekV4TopKRouter``: each token's
    experts ``[T, k]`` int32 and their float32 weights ``[T, k]``; with ``fixed`` (``DeepseekV4HashRouter``) only the
    weights of those experts."""
    t, experts = logits.shape
    scores = SCORINGS[routing.scoring](logits)
    if fixed is not None:
        return fixed, _weighed(scores, fixed, routing, renormalize)
    choice = scores if choice_bias is None else (logits if routing.logit_bias else scores) + choice_bias
    if routing.num_groups > 1:
        grouped = choice.reshape(t, routing.num_groups, experts // routing.num_groups)
        if routing.scoring == "softmax":
            group_scores = jnp.max(grouped, axis=-1)  # [T, groups]
        else:
            group_scores = jnp.sum(jax.lax.top_k(grouped, 2)[0], axis=-1)
        _, best = jax.lax.top_k(group_scores, routing.top_groups)  # [T, top_groups]
        kept = jnp.any(best[:, :, None] == jnp.arange(routing.num_groups), axis=1)  # [T, groups]
        choice = jnp.where(jnp.repeat(kept, experts // routing.num_groups, axis=1), choice, -jnp.inf)
    _, chosen = jax.lax.top_k(choice, top_k)
    return chosen, _weighed(scores, chosen, routing, renormalize)


def _weighed(scores: jax.Array, chosen: jax.Array, routing: GroupedRouting, renormalize: bool) -> jax.Array:
    """The chosen experts' unbiased scores ``[T, k]``, renormalised where asked, times the routing's scale."""
    weights = jnp.take_along_axis(scores, chosen, axis=-1)
    if renormalize:
        weights = weights / (jnp.sum(weights, axis=-1, keepdims=True) + 1e-20)
    return weights * routing.scale


class Router(nnx.Module):
    """DeepSeek's gate: logits in float32 whatever the model's dtype (transformers keeps ``gate.weight`` in float32),
    and with sigmoid scoring the choice bias, stored beside the weight as ``e_score_correction_bias``; in
    DeepSeek-V4's hash-routed layers (``hash_vocab``: the vocabulary) no bias but ``tid2eid``, each token id's
    ``top_k`` experts, a frozen table."""

    def __init__(self, dim: int, experts: int, dtype, choice_bias: bool, hash_vocab: int = 0, top_k: int = 0):
        self.kernel = param((dim, experts), dtype, ("embed", None))
        self.e_score_correction_bias = param((experts,), jnp.float32, (None,)) if choice_bias else None
        self.tid2eid = param((hash_vocab, top_k), jnp.int32, (None, None)) if hash_vocab else None

    def __call__(self, x: jax.Array) -> jax.Array:
        return x.astype(jnp.float32) @ self.kernel[...].astype(jnp.float32)  # [T, experts]


def row_experts(group_sizes: jax.Array, rows: int) -> jax.Array:
    """``[rows]`` int32: the expert of each row of a grouped matmul's rows, sorted by expert."""
    experts = jnp.arange(group_sizes.shape[0], dtype=jnp.int32)
    return jnp.repeat(experts, group_sizes, total_repeat_length=rows)


class ExpertLinear(nnx.Module):
    """One linear map per expert, stacked: ``kernel [experts, in, *out]`` (and ``bias [experts, *out]``); rows of
    ``x`` sorted by expert."""

    def __init__(
        self, experts: int, d_in: int, d_out: tuple[int, ...], axes: tuple[str | None, ...], dtype, bias: bool = False
    ):
        self.kernel = param((experts, d_in, *d_out), dtype, ("experts", *axes))
        self.bias = param((experts, *d_out), dtype, ("experts", *axes[1:])) if bias else None

    def __call__(self, x: jax.Array, group_sizes: jax.Array) -> jax.Array:
        y = jax.lax.ragged_dot_general(x, self.kernel[...], group_sizes, GROUPED)
        if self.bias is None:
            return y
        return y + jnp.take(self.bias[...], row_experts(group_sizes, x.shape[0]), axis=0)


class Experts(nnx.Module):
    """Every expert's SwiGLU (or ``glu``), or without ``gated`` its plain ``down(act(up(x)))`` (Nemotron 3's
    squared-ReLU experts), stacked (a module of its own, as checkpoints keep ``experts.{e}``)."""

    def __init__(
        self,
        experts: int,
        dim: int,
        hidden: int,
        dtype,
        act: str,
        bias: bool = False,
        glu: ClampedSwiGLU | None = None,
        gated: bool = True,
        out_norm_eps: float | None = None,
    ):
        """``out_norm_eps``: each expert's output RMS-normed (this eps) with a weight of its own, ``post_expert_norm
        [experts, dim]`` float32 (Ergo's)."""
        if gated:
            self.gate_up_proj = ExpertLinear(experts, dim, (2, hidden), ("embed", None, "mlp"), dtype, bias)
        else:
            self.up_proj = ExpertLinear(experts, dim, (hidden,), ("embed", "mlp"), dtype, bias)
        self.down_proj = ExpertLinear(experts, hidden, (dim,), ("mlp", "embed"), dtype, bias)
        self.post_expert_norm = None if out_norm_eps is None else param((experts, dim), jnp.float32, (None, "embed"))
        self.act, self.glu, self.gated, self.out_norm_eps = act, glu, gated, out_norm_eps

    def __call__(self, x: jax.Array, group_sizes: jax.Array) -> jax.Array:
        """``x [rows, dim]`` sorted by expert, ``group_sizes [experts]`` -> ``[rows, dim]``."""
        if not self.gated:
            return self._normed(
                self.down_proj(ACTIVATIONS[self.act](self.up_proj(x, group_sizes)), group_sizes), group_sizes
            )
        gate_up = self.gate_up_proj(x, group_sizes)  # [rows, 2, hidden]
        gate, up = gate_up[:, 0], gate_up[:, 1]
        h = ACTIVATIONS[self.act](gate) * up if self.glu is None else self.glu(gate, up)
        return self._normed(self.down_proj(h, group_sizes), group_sizes)

    def _normed(self, y: jax.Array, group_sizes: jax.Array) -> jax.Array:
        """Each row's output through its expert's RMSNorm (float32), where the experts have them."""
        if self.post_expert_norm is None:
            return y
        y32 = y.astype(jnp.float32)
        y32 = y32 * jax.lax.rsqrt(jnp.mean(y32 * y32, axis=-1, keepdims=True) + self.out_norm_eps)
        return (y32 * jnp.take(self.post_expert_norm[...], row_experts(group_sizes, y.shape[0]), axis=0)).astype(
            y.dtype
        )


def mix_experts(
    experts: Experts,
    x: jax.Array,  # [T, dim]
    chosen: jax.Array,  # [T, k] int32
    weights: jax.Array,  # [T, k] float32
    num_experts: int,
    weigh_inputs: bool = False,
    skips: bool = False,
) -> jax.Array:
    """Each token's weighted sum of its chosen experts' outputs ``[T, dim]`` (with ``weigh_inputs`` the sum of their
    outputs on its weighted input: Llama 4's): each token copied once per choice, the copies sorted by expert, one
    grouped matmul per projection. With ``skips`` a choice of ``num_experts`` or more runs no expert (LongCat-Flash's
    zero-computation experts): its rows sort last, outside every group, and add nothing."""
    t, k = chosen.shape
    flat = chosen.reshape(t * k)  # [T * k] expert of each (token, choice)
    order = jnp.argsort(flat, stable=True)  # rows sorted by expert
    token = order // k  # [T * k] the token each sorted row copies
    group_sizes = jnp.bincount(flat, length=num_experts).astype(jnp.int32)  # [experts] (skipped choices dropped)
    row_weights = weights.reshape(t * k)[order][:, None].astype(x.dtype)  # [T * k, 1]
    if weigh_inputs:
        out = experts(x[token] * row_weights, group_sizes)  # [T * k, dim]
    else:
        out = experts(x[token], group_sizes) * row_weights
    if skips:  # rows past every group: whatever the grouped matmul left there, nothing
        out = jnp.where((flat[order] < num_experts)[:, None], out, 0)
    return jnp.zeros_like(x).at[token].add(out)


class SparseMoE(nnx.Module):
    """transformers' sparse MoE blocks: the router's logits in float32, each token's experts and weights by the
    ``routing`` rule (``ROUTINGS``) or DeepSeek's ``grouped`` router, each token's output the weighted sum of its
    experts' SwiGLU outputs (Llama 4: the sum of its experts' outputs on its weighted input); with ``shared_hidden``
    plus a dense SwiGLU every token takes, scaled by a sigmoid gate where ``shared_gated`` (Qwen2-MoE) or not (Granite
    MoE Shared, ERNIE, Llama 4, DeepSeek), added to the experts' output or, with ``shared_mean``, averaged with it
    (Cohere2-MoE's "average").

    ``top_k`` and ``renormalize`` serve the softmax rules and the grouped router; ``router_eps`` is sparsemixer's
    jitter epsilon or the corrected softmax's floor on the weights' sum. gpt-oss's: ``bias`` on the router and each
    expert's projections, its ``glu``, and softmax over its k chosen logits (what renormalising the k of a softmax
    over all of them is). ``out_bias``: a bias on the sum of the experts' outputs (JetMoE's). ``router_float32``: the
    router's weight in float32 whatever ``dtype`` (Flint's, LongCat-Flash's; ERNIE's corrected softmax always).
    Without ``gated`` the experts and the shared expert are plain MLPs, ``down(act(up(x)))`` (Nemotron 3's).
    ``zero_experts``: so many more experts the router may choose that compute nothing, each adding its weight times
    the token's input (LongCat-Flash's zero-computation experts: the identity). ``out_norm_eps``: each expert's output
    RMS-normed with a weight of its own, and the shared expert's with one (Ergo's)."""

    def __init__(
        self,
        dim: int,
        hidden: int,
        experts: int,
        top_k: int,
        dtype,
        act: str = "silu",
        renormalize: bool = True,
        shared_hidden: int = 0,
        routing: str = "softmax",
        shared_gated: bool = True,
        router_eps: float = 0.0,
        grouped: GroupedRouting | None = None,
        bias: bool = False,
        glu: ClampedSwiGLU | None = None,
        out_bias: bool = False,
        shared_mean: bool = False,
        router_float32: bool = False,
        gated: bool = True,
        zero_experts: int = 0,
        shared_glu: ClampedSwiGLU | None = None,
        out_norm_eps: float | None = None,
        hash_vocab: int = 0,
    ):
        if routing not in ROUTINGS:
            raise ValueError(f"expert routing {routing!r} is not one of {', '.join(ROUTINGS)}")
        if zero_experts and (grouped is None or bias):
            raise ValueError(
                "zero-computation experts are implemented behind the grouped router only (LongCat-Flash's)"
            )
        # ERNIE, Flint and LongCat keep their routers (ERNIE's correction bias too) in float32 (transformers'
        # _keep_in_fp32_modules)
        router_dtype = jnp.float32 if router_float32 or routing == "softmax_corrected" else dtype
        if hash_vocab and grouped is None:
            raise ValueError("hash routing (tid2eid) is implemented behind the grouped router only (DeepSeek-V4's)")
        if grouped is not None:
            choice_bias = grouped.choice_bias and not hash_vocab
            self.gate = Router(dim, experts + zero_experts, router_dtype, choice_bias, hash_vocab, top_k)
        else:
            self.gate = Linear(dim, experts, ("embed", None), router_dtype, bias=bias)  # the router
        self.e_score_correction_bias = (
            param((1, experts), jnp.float32, (None, None)) if routing == "softmax_corrected" else None
        )
        self.experts = Experts(experts, dim, hidden, dtype, act, bias, glu, gated, out_norm_eps)
        self.output_bias = param((dim,), dtype, ("embed",)) if out_bias else None
        self.shared_expert = MLP(dim, shared_hidden, dtype, act, gated, glu=shared_glu) if shared_hidden else None
        normed = shared_hidden and out_norm_eps is not None  # Ergo's: the shared expert's output normed as well
        self.shared_expert_norm = RMSNorm(dim, out_norm_eps, jnp.float32, float32_weight=True) if normed else None
        shared_gate = shared_hidden and shared_gated
        self.shared_expert_gate = Linear(dim, 1, ("embed", None), dtype) if shared_gate else None
        self.num_experts, self.top_k, self.renormalize = experts, top_k, renormalize
        self.routing, self.router_eps, self.grouped = routing, router_eps, grouped
        self.shared_mean, self.zero_experts = shared_mean, zero_experts

    def route(self, x: jax.Array, token_ids: jax.Array | None = None) -> tuple[jax.Array, jax.Array]:
        """Each token's ``top_k`` experts ``[T, k]`` int32 and their float32 weights ``[T, k]``; ``token_ids [T]``:
        a hash-routed layer's tokens."""
        if self.grouped is not None:
            bias, table = self.gate.e_score_correction_bias, self.gate.tid2eid
            bias = None if bias is None else bias[...]
            fixed = None if table is None else jnp.take(table[...], token_ids, axis=0)  # [T, k]
            return grouped_top_k(self.gate(x), self.top_k, self.grouped, self.renormalize, bias, fixed)
        if self.routing == "softmax_corrected":
            logits = self.gate(x.astype(jnp.float32))  # [T, experts]
            return route_softmax_corrected(logits, self.e_score_correction_bias[0], self.top_k, self.router_eps)
        logits = self.gate(x).astype(jnp.float32)  # [T, experts]
        if self.routing == "sparsemixer":
            return route_sparsemixer(logits, self.router_eps)
        if self.routing == "sigmoid_input":
            return route_sigmoid(logits, self.top_k, renormalize=False)
        if self.routing == "sigmoid":
            return route_sigmoid(logits, self.top_k, self.renormalize)
        return route_softmax(logits, self.top_k, self.renormalize)

    def __call__(self, x: jax.Array, token_ids: jax.Array | None = None) -> jax.Array:
        chosen, weights = self.route(x, token_ids)
        zero = chosen >= self.num_experts  # [T, k] a zero-computation expert's choice (none without them)
        y = mix_experts(
            self.experts, x, chosen, weights, self.num_experts, self.routing == "sigmoid_input", self.zero_experts > 0
        )
        if self.zero_experts:  # each chosen zero-computation expert adds its weight times the input
            identity = jnp.sum(jnp.where(zero, weights, 0), axis=-1, keepdims=True)  # [T, 1] float32
            y = y + (x.astype(jnp.float32) * identity).astype(x.dtype)
        if self.output_bias is not None:
            y = y + self.output_bias[...]
        if self.shared_expert is None:
            return y
        shared = self.shared_expert(x)
        if self.shared_expert_norm is not None:
            shared = self.shared_expert_norm(shared).astype(y.dtype)
        if self.shared_expert_gate is None:
            return (y + shared) / 2 if self.shared_mean else y + shared
        return y + jax.nn.sigmoid(self.shared_expert_gate(x)) * shared


class ScaledRouter(nnx.Module):
    """Gemma 4's router: the residual stream RMS-normed, times a learned scale (the checkpoint's ``router.scale``,
    kept as this norm's weight) and ``dim ** -0.5``, projected to the experts' logits; the softmax's top k
    renormalised, each weight times its expert's learned ``per_expert_scale``."""

    def __init__(self, dim: int, experts: int, dtype, eps: float):
        self.norm = RMSNorm(dim, eps, dtype)
        self.proj = Linear(dim, experts, ("embed", None), dtype)
        self.per_expert_scale = param((experts,), dtype, (None,))
        self.root = dim**-0.5

    def __call__(self, x: jax.Array, top_k: int) -> tuple[jax.Array, jax.Array]:
        """Each token's ``top_k`` experts ``[T, k]`` int32 and their float32 weights ``[T, k]``."""
        logits = self.proj(self.norm(x) * jnp.asarray(self.root, x.dtype)).astype(jnp.float32)  # [T, experts]
        chosen, weights = route_softmax(logits, top_k, renormalize=True)
        return chosen, weights * self.per_expert_scale[...].astype(jnp.float32)[chosen]


class MoEBesideMLP(nnx.Module):
    """Gemma 4's mixture of experts beside each layer's dense MLP (``enable_moe_block``): its router reads the residual
    stream (``ScaledRouter``), its experts their own normed copy of it; the MLP's output and the experts' are normed
    apart and summed (the layer norms the sum, as it norms a dense MLP's output). Norms named as the checkpoint's."""

    def __init__(
        self,
        dim: int,
        hidden: int,
        experts: int,
        top_k: int,
        dtype,
        act: str,
        eps: float,
        make_norm: Callable[[], nnx.Module],
    ):
        self.router = ScaledRouter(dim, experts, dtype, eps)
        self.experts = Experts(experts, dim, hidden, dtype, act)
        self.pre_feedforward_layernorm_2 = make_norm()  # the experts' input
        self.post_feedforward_layernorm_1 = make_norm()  # the dense MLP's output
        self.post_feedforward_layernorm_2 = make_norm()  # the experts' output
        self.num_experts, self.top_k = experts, top_k

    def __call__(self, residual: jax.Array, mlp_out: jax.Array) -> jax.Array:
        """``residual [T, dim]``: the layer's stream after attention; ``mlp_out``: the dense MLP's output on it."""
        chosen, weights = self.router(residual, self.top_k)
        routed_in = self.pre_feedforward_layernorm_2(residual)
        routed = mix_experts(self.experts, routed_in, chosen, weights, self.num_experts)
        return self.post_feedforward_layernorm_1(mlp_out) + self.post_feedforward_layernorm_2(routed)
