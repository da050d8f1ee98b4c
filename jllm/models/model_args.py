"""What a model is, as the one decoder (``jllm.models.decoder``) runs it: ``ModelArgs``, its layers' ``LayerSpec``s,
and the checkpoint's tensor names (``WeightMap``). A family reader (``jllm.models.families``) fills these in from a
config.json; nothing here holds a weight.

A family is only what differs: attention kind (grouped-query, or DeepSeek's multi-head latent attention,
``jllm.models.mla``), norm kind, where the norms are (q/k per head, with one weight or a weight per head, or over all
heads, Gemma's sandwich, OLMo 2's outputs-only), multipliers (Granite's residual and logits scales), learned positions
(OPT's two rows on) or rotary, residual layout (sequential, or GPT-NeoX / Falcon / Phi's parallel attention + MLP), MLP
kind (gated, plain, or a mixture of experts, with dense layers among them), activation, biases (the LM head's too),
q/k/v clipping, rotary fraction, layout and scaling, soft-caps, attention sinks, ALiBi slopes, a norm on the embeddings,
per-layer sliding windows, a gate on the attention's output, Llama 4's per-layer q/k norms and query temperature, an LM
head over the first ids only, and the checkpoint's tensor names; and JetMoE's mixture of attention heads
(``jllm.models.moa``) in place of the attention, A.X-K1's norm on a mixture's output, A.X-K2's gated norms; and a
hybrid's recurrent layers (``LayerSpec.mixer``: Qwen3-Next's gated DeltaNet, ``jllm.models.gated_deltanet``; the Mamba2
hybrids' Mamba2, ``jllm.models.mamba2``; LFM2's short convolution, ``jllm.models.short_conv``; MiniMax's lightning
attention, ``jllm.models.lightning_attention``; Jamba's Mamba, ``jllm.models.mamba``, Zamba v1's in heads,
``jllm.models.zamba``; RecurrentGemma's RG-LRU blocks, ``jllm.models.rg_lru``) among its attention ones, or alone
(Mamba, FalconMamba; RWKV's blocks, ``jllm.models.rwkv``, with its eval-mode rescaling, ``LayerSpec.block_scale`` /
``output_scale``; xLSTM's mLSTM layers, ``jllm.models.mlstm``: no layer attends, ``attends``), and layers of one block
alone (Nemotron-H's: a mixer with no MLP, ``LayerSpec.mlp``, or an MLP with no mixer); MiniMax's residuals from the
normed inputs, scaled (``LayerSpec.normed_residual``); Zamba2's shared transformer blocks, invoked by its hybrid layers
before their mixer (``ModelArgs.shared_blocks``, ``LayerSpec.shared_block``: ``jllm.models.zamba2``); Falcon-H1's
attention beside its Mamba2 mixer in one layer, with muP multipliers (``LayerSpec.attention_beside``,
``mlp_multipliers``); Gemma 4's layers of their own KV heads and head width, keys reused as values, layers reading an
earlier layer's K/V (``LayerSpec.kv_source``), per-layer inputs, layer scalars and a mixture beside the dense MLP; Gemma
3n's AltUp streams (``jllm.models.altup``), LAuReL blocks and sparse MLP activations; LongCat-Flash's mixture on a
shortcut from one layer to the next (``LayerSpec.moe_shortcut``) with zero-computation experts; MiMo-V2-Flash's values
narrower than its heads, scaled, and sinks on some layers only; GLM-5's layers attending over an earlier layer's
DeepSeek Sparse Attention selection (``LayerSpec.reuses_selection``); Qwen4-Exp's hyper-connection streams
(``jllm.models.hyper_connections``) and its QSA budget as a context limit; BitNet's norms inside the attention and the
MLP (``sub_norms``); DiffLlama's differential attention (``LayerSpec.diff_lambda_init``,
``jllm.models.diff_attention``); ModernBERT's decoder: its first layer without an input norm (``LayerSpec.input_norm``),
a prediction head before its tied, biased LM head; GPT-1's norms after each residual add (``residual_norms``); CTRL's
sinusoids (``sinusoid_shift``); looped models, each run of a stored layer a layer of its own (``loop``: Dory's and
HRM-Text's, ``jllm.models.looped``); Dory's nGPT layers (``ngpt``, ``jllm.models.ngpt``); Doge's dynamic mask attention
(``dynamic_mask_window``, ``jllm.models.dynamic_mask``) and weighted residuals; Ergo's gated residual adds, normed
experts and scaled global layers; DeepSeek-V4's attention (``v4_attention``), its compressed layers
(``LayerSpec.compress``), Sinkhorn hyper-connections (``hyper_sinkhorn``) and hash-routed mixtures
(``LayerSpec.hash_routed``).

Where this module sits: docs/architecture.md.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from jllm.models.compressed_kv import CompressSpec
from jllm.models.deepseek_v4 import V4AttentionSpec
from jllm.models.gated_deltanet import DeltaNetSpec, GatedDeltaNet
from jllm.models.hyper_connections import SinkhornSpec
from jllm.models.layers import MLP, GatedRMSNorm, LayerNorm, RMSNorm
from jllm.models.lightning_attention import LightningAttention, LightningSpec
from jllm.models.looped import Loop
from jllm.models.mamba import MambaMixer, MambaSpec
from jllm.models.mamba2 import Mamba2Mixer, Mamba2Spec
from jllm.models.mla import MLASpec
from jllm.models.mlstm import MLSTMLayer, MLSTMSpec
from jllm.models.moe import ClampedSwiGLU, GroupedRouting, MoEBesideMLP, SparseMoE
from jllm.models.recurrent_state import StateSpec
from jllm.models.rg_lru import RecurrentBlock, RGLRUSpec
from jllm.models.rope import Rope
from jllm.models.rwkv import RwkvBlock, RwkvSpec
from jllm.models.short_conv import ShortConv, ShortConvSpec
from jllm.models.zamba import MultiHeadMambaMixer
from jllm.models.zamba2 import SharedBlockSpec
from jllm.parallel import KV_HEADS
from jllm.quantization import QuantScheme

# Llama's RMSNorm, Gemma's ``1 + w`` one, one without a weight (NanoChat), Gemma 4's (its weight applied in float32);
# LayerNorm with weight and bias, weight only (Cohere), neither (OLMo 1), or weight and bias with the weight stored
# minus one (Nemotron's LayerNorm1P)
NORMS = (
    "rms",
    "rms_unit_offset",
    "rms_no_affine",
    "rms_float32",
    "layer",
    "layer_no_bias",
    "layer_no_affine",
    "layer_unit_offset",
)
# the model-parallel shards CodeGen's fused qkv_proj is stored in (transformers' CodeGenAttention.mp_num, fixed)
CODEGEN_SHARDS = 4
ATTN_OUTPUT_GATES = ("sigmoid", "softplus")
# a layer's token mixer: attention over the paged pool, or a recurrent mixer with a per-sequence state
# (``jllm.models.recurrent_state``): Qwen3-Next's and Qwen3.5's gated DeltaNet, the Mamba2 hybrids' Mamba2, LFM2's
# short convolution, MiniMax's lightning attention, Mamba's, FalconMamba's and Jamba's Mamba (v1), RWKV's whole block
# (time and channel mixing), RecurrentGemma's RG-LRU block, xLSTM's mLSTM layer; or none (a layer of an MLP alone:
# Nemotron-H's MLP blocks)
MIXERS = (
    "attention",
    "gated_deltanet",
    "mamba2",
    "short_conv",
    "lightning",
    "mamba",
    "rwkv",
    "rg_lru",
    "mlstm",
    "none",
)
# a recurrent mixer's module, and the ModelArgs field that sizes it (with what it holds, for the error without it)
_MIXER_MODULES: dict[str, tuple[str, type[nnx.Module], str]] = {
    "gated_deltanet": ("deltanet", GatedDeltaNet, "its widths"),
    "mamba2": ("mamba2", Mamba2Mixer, "its sizes"),
    "short_conv": ("short_conv", ShortConv, "its kernel"),
    "lightning": ("lightning", LightningAttention, "its widths"),
    "mamba": ("mamba", MambaMixer, "its sizes"),
    "rwkv": ("rwkv", RwkvBlock, "its widths"),
    "rg_lru": ("rg_lru", RecurrentBlock, "its widths"),
    "mlstm": ("mlstm", MLSTMLayer, "its heads and widths"),
}
RECURRENT_MIXERS = MIXERS[1:-1]


@dataclasses.dataclass(frozen=True)
class WeightMap:
    """Where the checkpoint keeps each of our parameters.

    ``qkv``: the tensors our fused QKV is read from and their layout: "separate" (``q_proj``, ``k_proj``,
    ``v_proj``), "concat" (one tensor, all query rows, then K's, then V's: Phi-3), "grouped" (one tensor, per KV
    head its query heads' rows, then its K's, then its V's: GPT-NeoX's per-head ``[q, k, v]``, Falcon) or "codegen"
    (one tensor in ``CODEGEN_SHARDS`` shards, each its share of the heads' queries, then values, then keys) or "gated"
    (``separate``, each query head's rows followed by as many of its output gate's: ``attn_output_gate``). ``gate_up``
    likewise: "separate" (``gate_proj``, ``up_proj``) or "concat" (gate rows then up rows). ``rename``: our module
    name -> the checkpoint's, for every other module whose name differs (or a dotted run of modules: Granite's
    ``mlp.shared_expert`` is its layer's ``shared_mlp``; a name "" drops the level; a parameter's own name too:
    ERNIE's ``e_score_correction_bias``; or modules and their parameter, ``gate.e_score_correction_bias``, for a
    tensor kept elsewhere in its layer: beside its module, MiniMax-M2's router bias on the MoE block, or further up,
    AFMoE's ``mlp.expert_bias``, Kolibri-1's ``moe.router.expert_bias``). A name holding ``{e}`` is one tensor per
    expert (Mixtral's ``experts.{e}.w1``) or per head (StableLM's ``q_layernorm.norms.{e}``), stacked on our
    parameter's leading axis; without it, each expert kernel is one stacked tensor (Granite MoE's ``input_linear``).
    ``reader``: the family's own for parameters its checkpoint lays out its own way, ``reader(index, path, shape,
    dtype)`` -> a slice reader (``jllm.safetensors_index.Reader``), or None where the names above say it (gpt-oss's
    stacked experts, gate and up interleaved, maybe in MXFP4). ``skipped``: the checkpoint tensors the family leaves
    unread on purpose, (a pattern searched in the stored name, the reason); any other unread tensor is an error at
    load (``jllm.unread_tensors``).
    """

    qkv: tuple[str, ...] = ("q_proj", "k_proj", "v_proj")
    qkv_layout: str = "separate"
    gate_up: tuple[str, ...] = ("gate_proj", "up_proj")
    rename: tuple[tuple[str, str], ...] = ()
    prefix: str = "model."  # before every tensor name but the untied LM head's
    head_prefix: str = ""  # before the untied LM head's (``language_model.`` in an image-text checkpoint)
    # a stored name's leading part read as another: transformers 5's in-memory names where a checkpoint keeps them
    # (``model.language_model.`` for the ``language_model.model.`` that transformers saves)
    aliases: tuple[tuple[str, str], ...] = ()
    conv1d: bool = (
        False  # the decoder's linear weights stored ``[in, out]`` as ours (GPT-2's ``Conv1D``), not ``[out, in]``
    )
    # the experts stored as bare parameters named as ours: "in_out" ``[experts, in, out]`` (Llama 4's
    # ``experts.gate_up_proj``), "out_in" ``[experts, out, in]`` (transformers 5's own stacked experts: Mistral 4's);
    # None: not so
    expert_params: str | None = None
    reader: Callable[..., Any] | None = None
    # the stored ``v_proj``'s heads this wide, each zero-padded to the head width in our fused QKV (MiMo-V2-Flash's
    # values are narrower than its queries and keys: ``ModelArgs.v_head_dim``); None: the head width
    v_head_dim: int | None = None
    skipped: tuple[tuple[str, str], ...] = ()


@dataclasses.dataclass(frozen=True)
class NGPTSpec:
    """nGPT's layers (Dory's, ``jllm.models.ngpt``) in place of the decoder's, and the scales their stored
    parameters are read with: ``initializer_range`` (every ``s_init / initializer_range`` divides by it) and
    ``alpha_init`` (the residual rates', Dory's ``ngpt_alpha_init``)."""

    initializer_range: float
    alpha_init: float


@dataclasses.dataclass(frozen=True)
class LayerSpec:
    """What may differ between the layers of one model (Gemma alternates sliding and global layers)."""

    rope: Rope | None  # None: no rotary (GPT-BigCode's learned positions, Cohere2's global layers)
    sliding_window: int | None = None
    # in a mixture-of-experts model, this layer's MLP is a dense gated one this wide (ERNIE's first layer, DeepSeek's
    # first_k_dense_replace layers; with ``moe_beside_mlp``, the dense MLP beside the mixture); elsewhere this layer's
    # MLP width where not intermediate_size (Gemma 4's double-wide MLPs)
    dense_mlp_size: int | None = None
    qk_l2_norm: bool = False  # each query and key head RMS-normed without a weight after the rotary (Llama 4)
    # (floor_scale, attn_scale): queries times log1p(floor((position + shift) / floor_scale)) * attn_scale + 1 (Llama
    # 4's attn_temperature_tuning on its layers without rotary; Ministral 3's llama_4_scaling_beta on every layer)
    attn_temperature: tuple[float, float] | None = None
    attn_temperature_shift: float = 1.0  # Llama 4 counts positions from 1 there, Ministral 3 from 0
    mixer: str = "attention"  # one of MIXERS: a hybrid model's recurrent layers name theirs
    # this layer's own norm layout where it is not the model's (``pre_norms`` / ``sandwich_norms``): "pre" norms on the
    # blocks' inputs only (Llama's), "post" on their outputs only (OLMo 2's); OLMo-Hybrid's recurrent layers are
    # pre-normed beside its output-normed attention layers
    norms: str | None = None
    mlp: bool = True  # False: the token mixer alone, no MLP after it (Nemotron-H's blocks)
    decay_scale: float = 1.0  # a lightning layer's slopes times this (MiniMax's, smaller in deeper layers)
    # MiniMax's layers: each block adds to its normed input, both scaled, ``norm(x) * alpha + block(norm(x)) * beta``:
    # (the mixer's alpha, beta, the MLP's alpha, beta); None: the usual ``x + block(norm(x))``
    normed_residual: tuple[float, float, float, float] | None = None
    # this layer's KV heads and head width where not the model's (Gemma 4's full-attention layers: wider heads, fewer)
    num_kv_heads: int | None = None
    head_dim: int | None = None
    k_eq_v: bool = False  # the values are the key projection's output, before the k norm (Gemma 4's attention_k_eq_v)
    # the layer attends over layer ``kv_source``'s K/V (its pages), with no K/V projection of its own, and writes none
    # (Gemma 4's and Gemma 3n's num_kv_shared_layers)
    kv_source: int | None = None
    # the layer's K and V rounded to NVFP4 and back before they are written (Kolibri-1.1's indexed layers attend so:
    # ``attention_layer.nvfp4_round``); a layer reading its K/V (``kv_source``) reads them rounded
    kv_nvfp4: bool = False
    # > 0: the dense MLP keeps about the top (1 - this) of each token's gate values (Gemma 3n's
    # activation_sparsity_pattern: ``layers.MLP``'s Gaussian cutoff)
    activation_sparsity: float = 0.0
    # Zamba2's hybrid layers: the shared transformer block (``ModelArgs.shared_blocks``) this layer invokes before its
    # mixer, its output added to the mixer's input; the layer keeps KV pages beside its state (``jllm.models.zamba2``)
    shared_block: int | None = None
    # LongCat-Flash's shortcut-connected mixture: "out", the layer runs the model's mixture on its MLP's normed input
    # beside its dense MLP and passes the output on; "in", the layer adds the output passed on to its own (its
    # transformers layer is the two, each of an attention and a dense MLP); None: neither
    moe_shortcut: str | None = None
    sinks: bool = False  # this layer's attention has sinks where the model's (``attn_sinks``) are off (MiMo's sliding)
    # DeepSeek Sparse Attention: the layer has no indexer and attends over the tokens the last layer that ran one
    # selected, in the same step (GLM-5's indexer_types "shared"); its pool entry is the latent pool alone
    reuses_selection: bool = False
    # Falcon-H1's layers: attention beside the recurrent mixer over the same normed input, their outputs summed into
    # the residual; (attention in, attention out, mixer in, mixer out): each one's input and output multipliers (its
    # muP ``attention_in_multiplier``, ...). The layer keeps pages beside its state. None: the mixer alone
    attention_beside: tuple[float, float, float, float] | None = None
    # the mixture's routed experts' and shared expert's activation in place of act(gate) * up: gpt-oss's clamped
    # SwiGLU on every layer's experts, Ling 3's per-layer limits (``expert_swiglu_limit_list`` and the shared one's)
    experts_glu: ClampedSwiGLU | None = None
    shared_expert_glu: ClampedSwiGLU | None = None
    mlp_glu: ClampedSwiGLU | None = None  # the dense MLP's, likewise (MiniMax-M3's clamped SwiGLU on its dense layers)
    # RWKV's eval-mode rescaling (its ``rescale_every``): each block's output times ``block_scale`` (its output
    # weights divided by 2 ** (i // rescale_every)), the layer's output times ``output_scale`` (halved after every
    # ``rescale_every`` blocks); powers of two, so the products are transformers' floats
    block_scale: float = 1.0
    output_scale: float = 1.0
    # DiffLlama's differential attention in this layer (``jllm.models.diff_attention``), its lambda_init (transformers'
    # 0.8 - 0.6 exp(-0.3 layer)); its pages hold value pairs, 2 head_dim wide (``ModelArgs.kv_pool_head_dim``)
    diff_lambda_init: float | None = None
    # False: the mixer reads the layer's input as it is, no norm before it (ModernBERT's first layer, whose embeddings
    # are normed)
    input_norm: bool = True
    score_scale: float = 1.0  # this layer's attention scores times this (Ergo's global layers' global_attention_scale)
    # the mixture picks each token's experts by its id from a frozen table, ``tid2eid`` (DeepSeek-V4's hash_moe layers)
    hash_routed: bool = False
    # DeepSeek-V4's compressed layers: the attention also reads one entry per ``compress.rate`` tokens
    # (``jllm.models.compressed_kv``): each token's pool row keeps its compressor projections beside its head, and the
    # entry of the window it completes
    compress: CompressSpec | None = None

    def __post_init__(self) -> None:
        if self.moe_shortcut not in (None, "out", "in"):
            raise ValueError(f"moe_shortcut {self.moe_shortcut!r} is not one of 'out', 'in' (or None)")
        if self.mixer not in MIXERS:
            raise ValueError(f"mixer {self.mixer!r} is not one of {', '.join(MIXERS)}")
        if self.norms not in (None, "pre", "post"):
            raise ValueError(f"norms {self.norms!r} is not one of 'pre', 'post' (or None: the model's)")
        if self.mixer == "none" and not self.mlp:
            raise ValueError("a layer with mixer 'none' needs its MLP (mlp=True): it would do nothing")
        if self.attention_beside is not None and self.mixer in ("attention", "none"):
            raise ValueError(f"attention_beside needs a recurrent mixer beside the attention, not mixer {self.mixer!r}")
        if self.kv_source is not None and (self.mixer != "attention" or self.k_eq_v):
            raise ValueError("kv_source (K/V read from another layer) needs an attention layer without k_eq_v")

    def scale_queries(self, q: jax.Array, positions: jax.Array) -> jax.Array:
        """``q [T, heads, dim]`` times its position's ``attn_temperature`` factor, where the layer has one."""
        if self.attn_temperature is None:
            return q
        floor_scale, attn_scale = self.attn_temperature
        shifted = positions.astype(jnp.float32) + self.attn_temperature_shift
        scale = jnp.log1p(jnp.floor(shifted / floor_scale)) * attn_scale + 1.0
        return (q * scale[:, None, None]).astype(q.dtype)


@dataclasses.dataclass(frozen=True)
class ModelArgs:
    vocab_size: int
    hidden_size: int
    intermediate_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    norm_eps: float
    max_position_embeddings: int
    tie_word_embeddings: bool
    layers: tuple[LayerSpec, ...]  # one per layer
    norm: str = "rms"  # one of NORMS
    qk_norm: bool = False  # a norm over head_dim on each query and key head before the rotary (Qwen3, Gemma 3)
    qk_norm_all_heads: bool = False  # with qk_norm, over all heads' channels at once instead (OLMo 2, OLMoE)
    qk_norm_per_head: bool = False  # with qk_norm, each head its own weight [heads, head_dim] (StableLM, Cohere)
    qk_norm_kind: str | None = None  # the q/k norms' kind (one of NORMS) where it is not ``norm`` (StableLM's)
    qk_norm_after_rope: bool = False  # with qk_norm, the norms read the rotated q and k (HunYuan's)
    qkv_clip: float | None = None  # q, k and v clipped to [-clip, clip] after the q/k norms (OLMo's clip_qkv)
    pre_norms: bool = True  # norms on the attention's and MLP's inputs; False: none there (OLMo 2)
    sandwich_norms: bool = False  # norms on the attention and MLP outputs, before the residual adds (Gemma, OLMo 2)
    # norms on the residual stream after each add, ``x = norm(x + block(x))``, and no final norm (GPT-1's post-LN)
    residual_norms: bool = False
    moe_out_norm: bool = False  # a norm on the mixture's output in its layers, none on a dense MLP's (A.X-K1)
    # BitNet's norms inside the blocks: on the attention's heads before o_proj (attn_sub_norm) and on a dense MLP's
    # activations before down_proj (ffn_sub_norm)
    sub_norms: bool = False
    # > 0: each layer's input norm, and a mixture layer's MLP norm, an RMSNorm gated by a low-rank projection of its
    # output of this rank (A.X-K2's gated_norm_rank, ``layers.GatedRMSNorm``); a dense MLP's norm stays plain
    gated_norm_rank: int = 0
    qkv_bias: bool = False
    o_bias: bool = False
    mlp_bias: bool = False
    mlp_act: str = "silu"
    mlp_gated: bool = True  # False: GPT-NeoX / Falcon's plain down(act(up(x))) (Nemotron 3's experts too)
    # a dense gated MLP's gate (before its activation) and output times these (Falcon-H1's muP ``mlp_multipliers``)
    mlp_multipliers: tuple[float, float] | None = None
    # attention and MLP both read the layer's input and add to it together (GPT-NeoX, Falcon)
    parallel_residual: bool = False
    shared_input_norm: bool = False  # with parallel_residual, the MLP reads the attention's input norm (Falcon-7B)
    # > 0: a routed mixture of experts replaces the MLP (Mixtral, Qwen2/3-MoE); intermediate_size is each expert's
    num_experts: int = 0
    experts_per_token: int = 0
    experts_renormalize: bool = True  # the chosen experts' weights rescaled to sum to one (Qwen's norm_topk_prob)
    shared_expert_size: int = 0  # > 0: a dense SwiGLU beside the experts, this wide (Qwen2-MoE, DeepSeek)
    shared_expert_gated: bool = True  # the shared expert's output scaled by a sigmoid gate (Qwen2-MoE's)
    shared_expert_mean: bool = False  # the shared and routed outputs averaged, not summed (Cohere2-MoE's "average")
    expert_routing: str = "softmax"  # one of moe.ROUTINGS
    router_float32: bool = False  # the router's weight and logits in float32 (Flint's _keep_in_fp32_modules)
    router_eps: float = 0.0  # sparsemixer's jitter epsilon (Phi-3.5-MoE); the corrected softmax's floor (ERNIE)
    moe_routing: GroupedRouting | None = None  # DeepSeek's group-limited router in place of the softmax top-k
    mla: MLASpec | None = None  # multi-head latent attention (DeepSeek) in place of Attention; num_kv_heads is 1
    deltanet: DeltaNetSpec | None = None  # the widths of the layers whose ``LayerSpec.mixer`` is "gated_deltanet"
    mamba2: Mamba2Spec | None = None  # the sizes of the layers whose ``LayerSpec.mixer`` is "mamba2"
    short_conv: ShortConvSpec | None = None  # the settings of the layers whose ``LayerSpec.mixer`` is "short_conv"
    lightning: LightningSpec | None = None  # the widths of the layers whose ``LayerSpec.mixer`` is "lightning"
    mamba: MambaSpec | None = None  # the sizes of the layers whose ``LayerSpec.mixer`` is "mamba" (Mamba v1)
    rwkv: RwkvSpec | None = None  # the widths of the layers whose ``LayerSpec.mixer`` is "rwkv" (RWKV v4's blocks)
    rg_lru: RGLRUSpec | None = None  # the widths of the layers whose ``LayerSpec.mixer`` is "rg_lru" (RecurrentGemma)
    mlstm: MLSTMSpec | None = None  # the sizes of the layers whose ``LayerSpec.mixer`` is "mlstm" (xLSTM)
    # Zamba2's shared transformer blocks, which its hybrid layers (``LayerSpec.shared_block``) invoke; the attention's
    # heads and widths are theirs, reading ``2 hidden_size`` channels
    shared_blocks: SharedBlockSpec | None = None
    # > 0: JetMoE's mixture of attention heads (``jllm.models.moa``) in place of Attention: each token's queries from
    # its top experts_per_token of this many query experts; num_heads is num_kv_heads * experts_per_token
    attention_experts: int = 0
    moe_out_bias: bool = False  # a bias added to the mixture's output (JetMoE's)
    experts_bias: bool = False  # biases on the router and on each expert's projections (gpt-oss)
    attn_sinks: bool = False  # a learned logit per query head joins each row's softmax, with no value (gpt-oss)
    # the attention's output, before o_proj, times act(attn_gate(normed input)), act one of ATTN_OUTPUT_GATES: per
    # channel (AFMoE's and MiniCPM5-MoE's sigmoid) or, with attn_output_gate_per_head, one factor per head (Laguna's
    # softplus); a projection of its own, or with ``qkv_layout`` "gated" each query head's rows in q_proj followed by
    # its gate's (MiniCPM5-MoE's, sharing q_proj's bias)
    attn_output_gate: str | None = None
    attn_output_gate_per_head: bool = False
    # ALiBi (Bloom, MPT, Falcon-RW): per query head, the slope of a score bias linear in the key's distance back from
    # the query (in place of rotary or learned positions); only the reference attention adds it
    alibi_slopes: tuple[float, ...] | None = None
    embed_scale: float | None = None  # Gemma: sqrt(hidden); Granite's embedding_multiplier
    embed_norm: bool = False  # a norm on the embeddings before the first layer (Bloom's word_embeddings_layernorm)
    sm_scale: float | None = None  # attention scale; None is head_dim ** -0.5
    residual_scale: float | None = None  # each block's output times this before its residual add (Granite)
    attn_softcap: float | None = None
    logits_divisor: float | None = None  # logits divided by this (Granite's logits_scaling), before a soft-cap
    # Llama 4's chunked attention on its rotary layers: jllm has none, so it serves contexts up to one chunk, where
    # chunked attention is causal attention (``max_context``)
    attention_chunk_size: int | None = None
    final_softcap: float | None = None
    lm_head_bias: bool = False  # a bias on the LM head's logits (Phi, GPT-J; ModernBERT's on its tied head)
    # the final states through ``dense``, this activation (one of ``layers.ACTIVATIONS``) and a norm before the LM head
    # reads them (ModernBERT's prediction head, ``layers.HeadTransform``); None: none
    head_transform: str | None = None
    head_transform_bias: bool = False  # with head_transform, a bias on its dense map (ModernBERT's classifier_bias)
    # an untied LM head over the first this many ids only (Apertus 1.5's pruned ``output_vocab_size``): the other ids'
    # logits are -inf, tokens the model never produces; None: the whole vocabulary
    head_vocab_size: int | None = None
    # a sequence classifier (``*ForSequenceClassification``): a bias-free ``score`` head of this many labels in place
    # of the LM head (``jllm.classify``); None: a causal LM
    num_labels: int | None = None
    # a learned position embedding of max_position_embeddings rows added to the token's (GPT-BigCode's wpe)
    learned_positions: bool = False
    # fairseq's fixed sin / cos position embeddings added to the token's (XGLM), computed, not read
    sinusoidal_positions: bool = False
    # their i-th of half frequencies 10000^(-i / (half - shift)): fairseq's 1; CTRL's 0
    sinusoid_shift: int = 1
    # learned or sinusoidal positions: position p reads row p + offset (of a table that much longer: OPT's, XGLM's 2)
    position_offset: int = 0
    weights: WeightMap = WeightMap()
    dtype: Any = jnp.float32
    quant: QuantScheme | None = None  # the decoder layers' linear weights (embeddings, norms, LM head stay dtype)
    # steps of at most this many rows run QKV and gate-up (with SwiGLU) in pallas_kernels.decode_gemv, their RMS norms
    # folded in (``jllm.models.decode_matmuls``); None: XLA's matmuls always
    decode_gemv_max_tokens: int | None = None
    # each attention layer holds the checkpoint's FP8 KV-cache scales, k_scale and v_scale (``jllm.kv_scales``)
    kv_scales: bool = False
    v_norm: bool = False  # each value head RMS-normed without a weight (Gemma 4)
    # Gemma 4's per-layer inputs (PLE, ``jllm.models.per_layer_inputs``): > 0, each layer adds a gated projection of
    # its own this-wide slice of a token embedding and a projection of the input embedding (its
    # ``hidden_size_per_layer_input``), read from a table of ``per_layer_vocab_size`` rows
    per_layer_input_size: int = 0
    per_layer_vocab_size: int = 0
    layer_scalar: bool = False  # each layer's output times a stored scalar (Gemma 4's ``layer_scalar``)
    # the mixture of experts runs beside each layer's dense MLP (its ``dense_mlp_size``), its router reading the
    # residual stream, each output normed, their sum normed (Gemma 4's enable_moe_block; ``moe.MoEBesideMLP``)
    moe_beside_mlp: bool = False
    # Gemma 3n: > 1, the residual stream is this many AltUp streams (``jllm.models.altup``; its altup_num_inputs), the
    # layers' blocks run on the first; altup_correct_scale: the corrected first stream scaled before the per-layer
    # input's gate reads it
    altup_streams: int = 0
    altup_correct_scale: bool = True
    laurel_rank: int = 0  # > 0: Gemma 3n's LAuReL block of this rank beside each attention (``layers.Laurel``)
    # the mixture's router also chooses among so many experts that compute nothing, each adding its weight times the
    # token's input (LongCat-Flash's zero-computation experts, the identity)
    zero_experts: int = 0
    # values narrower than the queries and keys (MiMo-V2-Flash's 128 against 192): V is zero-padded to head_dim in the
    # fused QKV and the pool, and the attention output cut back to it before ``o_proj``; None: head_dim
    v_head_dim: int | None = None
    value_scale: float = 1.0  # the values times this before they are written (MiMo's attention_value_scale)
    # Qwen4-Exp's hyper-connections (``jllm.models.hyper_connections``): > 1, the residual stream is this many streams
    # ``[T, streams, hidden]``, each block's input a learned mix of them (rank ``hyper_rank``) in place of its norm,
    # its output added to each by a learned weight; the final mix in place of the final norm
    hyper_streams: int = 0
    hyper_rank: int = 0
    # DeepSeek-V4's form of them instead (``hyper_connections.SinkhornHyperConnection``): each block's input normed as
    # usual (``pre_norms``), the streams mixed by a doubly stochastic matrix; the final mix before the final norm
    hyper_sinkhorn: SinkhornSpec | None = None
    # DeepSeek-V4's attention (``jllm.models.deepseek_v4``) in place of Attention; num_kv_heads is 1
    v4_attention: V4AttentionSpec | None = None
    # Qwen4-Exp's QSA indexer keeps, per query, the tokens of its best indexer_budget / compress_ratio whole blocks
    # and its last, incomplete block (MiniMax-M3's sparse layers its best index_topk_blocks blocks of
    # index_block_size): jllm has no block-sparse attention, so it serves contexts up to the budget, where every
    # token is kept and the sparse attention is causal attention (``max_context``)
    indexer_budget: int | None = None
    # the block-sparse attention the budget stands in for and the config keys it is read from (``build``'s error
    # past it)
    sparse_attention: tuple[str, str] = ("QSA", "indexer_budget")
    # a looped model's schedule (``jllm.models.looped``: Dory's recurrent section, HRM-Text's stacks): ``layers`` are
    # its invocations, each with pages of its own, the invocations of one stored layer sharing its module
    loop: Loop | None = None
    ngpt: NGPTSpec | None = None  # nGPT's normalized layers, final norm and scaled LM head (Dory's)
    # Doge's dynamic mask attention (``jllm.models.dynamic_mask``): a bias per key and KV head, kept as one more
    # channel of the pool's key heads; its keep_window_size, the longest context served (where every key is kept)
    dynamic_mask_window: int | None = None
    # each block's residual times a learned weight per channel before the add, ``x * w + block(x)`` (Doge's
    # input_residual and post_attention_residual)
    residual_weights: bool = False
    # each block's output and residual mixed by a learned gate per channel (Ergo's, ``layers.ResidualGate``)
    residual_gates: bool = False
    # each expert's output RMS-normed with a weight of its own, the shared expert's with one (Ergo's)
    expert_out_norms: bool = False

    def __post_init__(self) -> None:
        gate = self.attn_output_gate or ATTN_OUTPUT_GATES[0]
        kinds_named = (("norm", self.norm, NORMS), ("norm", self.qk_norm_kind or self.norm, NORMS))
        gated = ("norm (gated by gated_norm_rank)", self.norm if self.gated_norm_rank else "rms", ("rms",))
        kinds_named = (*kinds_named, gated)
        for name, kind, kinds in (*kinds_named, ("attn_output_gate", gate, ATTN_OUTPUT_GATES)):
            if kind not in kinds:
                raise ValueError(f"{name} {kind!r} is not one of {', '.join(kinds)}")
        if (self.qk_norm_all_heads or self.qk_norm_per_head) and not self.qk_norm:
            raise ValueError("qk_norm_all_heads and qk_norm_per_head need qk_norm: they say how the q/k norms are laid")
        if self.qk_norm_all_heads and self.qk_norm_per_head:
            raise ValueError("qk_norm_all_heads and qk_norm_per_head exclude each other")
        if self.qk_norm_per_head and not (self.qk_norm_kind or self.norm).startswith("layer"):
            raise ValueError("qk_norm_per_head is implemented for LayerNorms only (StableLM's and Cohere's q/k norms)")
        if self.residual_norms and (self.pre_norms or self.sandwich_norms or self.parallel_residual):
            raise ValueError(
                "residual_norms (GPT-1's post-LN) needs pre_norms, sandwich_norms and parallel_residual off"
            )
        if self.shared_input_norm and not self.parallel_residual:
            raise ValueError("shared_input_norm needs parallel_residual: a sequential MLP reads its own norm")
        self._check_layer_options()
        if self.quant is not None:
            self._check_quantizable()
        if self.kv_scales and (self.mla is not None or self.attention_experts):
            kind = "multi-head latent attention (DeepSeek)" if self.mla else "a mixture of attention heads (JetMoE)"
            raise ValueError(
                f"the checkpoint's KV-cache scales (k_scale / v_scale) are read for grouped-query attention only, not "
                f"for {kind}; use a checkpoint without them"
            )

    def _check_layer_options(self) -> None:
        """A mixture beside the MLP has an MLP on every layer; a layer reading another's K/V (``kv_source``) reads an
        earlier one with K/V of its own, of its shape."""
        if self.altup_streams == 1:
            raise ValueError("altup_streams=1 is not supported: AltUp needs at least 2 streams (0: no AltUp)")
        gated = self.hyper_sinkhorn is None  # Qwen4-Exp's: they norm each block's input themselves
        if self.hyper_streams and (self.hyper_streams < 2 or (gated and (self.hyper_rank < 1 or self.pre_norms))):
            raise ValueError(
                f"hyper_streams={self.hyper_streams} needs at least 2 streams and, without hyper_sinkhorn, "
                f"hyper_rank >= 1 (got {self.hyper_rank}) and pre_norms False (the hyper-connections norm each block's "
                "input)"
            )
        narrowest = min(self.layer_heads(s)[1] for s in self.layers)
        stored = self.weights.v_head_dim is not None and self.weights.qkv_layout == "separate"
        if self.v_head_dim is not None and not (self.v_head_dim <= narrowest and stored):
            raise ValueError(
                f"v_head_dim={self.v_head_dim} needs every layer's head_dim at least as wide and WeightMap.v_head_dim "
                "(the stored values' width) with qkv_layout 'separate'"
            )
        if self.moe_beside_mlp and (not self.num_experts or any(s.dense_mlp_size is None for s in self.layers)):
            raise ValueError("moe_beside_mlp needs num_experts and every layer's dense_mlp_size (the MLP beside it)")
        shortcuts = [spec.moe_shortcut for spec in self.layers]
        if any(shortcuts) and (not self.num_experts or shortcuts != ["out", "in"] * (len(shortcuts) // 2)):
            raise ValueError(f"moe_shortcut needs num_experts and layers paired 'out', 'in' (got {shortcuts})")
        reusing = [i for i, spec in enumerate(self.layers) if spec.reuses_selection]
        if reusing and (self.mla is None or self.mla.indexer is None or reusing[0] == 0):
            raise ValueError(
                f"layers {reusing} reuse another layer's selection (reuses_selection): that needs DeepSeek Sparse "
                "Attention's indexer (mla.indexer) and an earlier layer that runs it"
            )
        for i, spec in enumerate(self.layers):
            if spec.kv_source is None:
                continue
            source = self.layers[spec.kv_source]
            alike = self.layer_heads(spec) == self.layer_heads(source)
            if spec.kv_source >= i or source.kv_source is not None or not alike:
                raise ValueError(
                    f"layer {i}'s kv_source={spec.kv_source} must be an earlier layer with K/V of its own and the same "
                    "KV heads and head width"
                )

    def layer_heads(self, spec: LayerSpec) -> tuple[int, int]:
        """A layer's (KV heads, head width): its own (Gemma 4's full-attention layers) or the model's."""
        return spec.num_kv_heads or self.num_kv_heads, spec.head_dim or self.head_dim

    def pool_dims(self, spec: LayerSpec) -> tuple[int, int] | None:
        """An attention layer's pages' (KV heads, head width); None where it reads another layer's (``kv_source``). A
        latent pool's one head counts its copies under tensor parallelism (one a device), as ``num_kv_heads`` does."""
        if spec.kv_source is not None:
            return None
        if spec.compress is not None:  # DeepSeek-V4's: the head, then its compressor projections, entries
            return self.num_kv_heads, self.head_dim + spec.compress.feature_width(self.head_dim)
        if self.mla is not None:
            return self.num_kv_heads, self.mla.latent_dim
        kv_heads, head_dim = self.layer_heads(spec)
        return kv_heads, head_dim * (2 if spec.diff_lambda_init is not None else 1) + bool(self.dynamic_mask_window)

    def _check_quantizable(self) -> None:
        """Refuses ``quant`` for the layers with no quantized form yet."""
        if self.mla is not None:
            raise ValueError(
                f"quantization={self.quant.name!r} is not supported for multi-head latent attention (DeepSeek); "
                "leave quantization unset"
            )
        if self.num_experts:
            raise ValueError(
                f"quantization={self.quant.name!r} is not supported for mixture-of-experts models (their experts' "
                "grouped matmuls have no quantized form yet); leave quantization unset"
            )
        if self.mamba2 is not None or self.mamba is not None:
            raise ValueError(
                f"quantization={self.quant.name!r} is not supported for Mamba models and Mamba2 hybrids (the mixers' "
                "projections have no quantized form yet); leave quantization unset"
            )
        if self.rwkv is not None or self.rg_lru is not None or self.mlstm is not None:
            family = "RWKV" if self.rwkv is not None else "RecurrentGemma" if self.rg_lru is not None else "xLSTM"
            raise ValueError(
                f"quantization={self.quant.name!r} is not supported for {family} (its recurrent blocks' projections "
                "have no quantized form yet); leave quantization unset"
            )
        if self.short_conv is not None:
            raise ValueError(
                f"quantization={self.quant.name!r} is not supported for LFM2's short-conv hybrids (not yet checked "
                "against float's logits); leave quantization unset"
            )
        if self.loop is not None or self.ngpt is not None or self.dynamic_mask_window:
            family = "Doge" if self.dynamic_mask_window else "Dory" if self.ngpt is not None else "HRM-Text"
            raise ValueError(
                f"quantization={self.quant.name!r} is not supported for {family} (not yet checked against float's "
                "logits); leave quantization unset"
            )
        if self.v_norm:
            family = "Gemma 3n" if self.altup_streams else "Gemma 4"
            raise ValueError(
                f"quantization={self.quant.name!r} is not supported for {family} (not yet checked against float's "
                "logits); leave quantization unset"
            )

    def make_mlp(self, spec: LayerSpec) -> nnx.Module:
        if self.num_experts and spec.dense_mlp_size is None:  # (a mixture beside the MLP: ``make_moe_beside``)
            return self.make_moe(spec)
        width, sparsity = spec.dense_mlp_size or self.intermediate_size, spec.activation_sparsity
        return MLP(
            self.hidden_size,
            width,
            self.dtype,
            self.mlp_act,
            self.mlp_gated,
            self.mlp_bias,
            self.quant,
            sparsity,
            self.mlp_multipliers,
            spec.mlp_glu,
            sub_norm=self.make_norm(width) if self.sub_norms else None,
            decode_kernel_rows=self.decode_gemv_max_tokens,
        )

    def make_moe(self, spec: LayerSpec) -> SparseMoE:
        """Layer ``spec``'s routed mixture of experts: in place of its MLP, or on LongCat-Flash's shortcut."""
        return SparseMoE(
            self.hidden_size,
            self.intermediate_size,
            self.num_experts,
            self.experts_per_token,
            self.dtype,
            self.mlp_act,
            self.experts_renormalize,
            self.shared_expert_size,
            self.expert_routing,
            self.shared_expert_gated,
            self.router_eps,
            self.moe_routing,
            bias=self.experts_bias,
            glu=spec.experts_glu,
            out_bias=self.moe_out_bias,
            shared_mean=self.shared_expert_mean,
            router_float32=self.router_float32,
            gated=self.mlp_gated,
            zero_experts=self.zero_experts,
            shared_glu=spec.shared_expert_glu,
            out_norm_eps=self.norm_eps if self.expert_out_norms else None,
            hash_vocab=self.vocab_size if spec.hash_routed else 0,
        )

    def make_moe_beside(self) -> MoEBesideMLP | None:
        """Gemma 4's mixture beside the dense MLP (``moe_beside_mlp``), or None."""
        if not self.moe_beside_mlp:
            return None
        experts, top_k = self.num_experts, self.experts_per_token
        hidden, dt = self.intermediate_size, self.dtype
        return MoEBesideMLP(self.hidden_size, hidden, experts, top_k, dt, self.mlp_act, self.norm_eps, self.make_norm)

    def make_mixer(self, spec: LayerSpec) -> nnx.Module:
        """A recurrent layer's mixer (``spec.mixer`` other than "attention"): the attention's call shape, its
        cache entry a state pool."""
        if spec.mixer not in _MIXER_MODULES:
            raise ValueError(
                f"mixer {spec.mixer!r} has no recurrent module (recurrent mixers: {', '.join(RECURRENT_MIXERS)})"
            )
        field, module, sizes = _MIXER_MODULES[spec.mixer]
        if getattr(self, field) is None:
            raise ValueError(f"a {spec.mixer} layer needs ModelArgs.{field} ({sizes})")
        if spec.mixer == "mamba" and self.mamba.heads > 1:  # Zamba v1's, its parameters per head
            return MultiHeadMambaMixer(self, spec)
        return module(self, spec)

    def state_spec(self, spec: LayerSpec) -> StateSpec | None:
        """A layer's per-sequence recurrent state; None for an attention layer (it has pages)."""
        if spec.mixer == "gated_deltanet":
            return self.deltanet.state_spec(self.dtype)
        if spec.mixer == "mamba2":
            return self.mamba2.state_spec(self.dtype)
        if spec.mixer == "short_conv":
            return self.short_conv.state_spec(self.hidden_size, self.dtype)
        if spec.mixer == "lightning":
            return self.lightning.state_spec()
        if spec.mixer == "mamba":
            return self.mamba.state_spec(self.dtype)
        if spec.mixer == "rwkv":
            return self.rwkv.state_spec(self.hidden_size, self.dtype)
        if spec.mixer == "rg_lru":
            return self.rg_lru.state_spec(self.dtype)
        if spec.mixer == "mlstm":
            return self.mlstm.state_spec()
        if spec.mixer == "none":  # nothing kept per sequence, and no pages
            return StateSpec((), ())
        return None

    @property
    def long_rope_from(self) -> int | None:
        """Longrope's original context, past which tokens take its long factors (``Rope.long_factors_from``): the host
        marks them (``rope.long_rope_positions``) and the prefix cache keeps long prompts' pages apart."""
        found = {spec.rope.long_factors_from() for spec in self.layers if spec.rope is not None} - {None}
        if len(found) > 1:
            raise ValueError(f"longrope layers with different original contexts {sorted(found)} are not supported")
        return found.pop() if found else None

    @property
    def is_hybrid(self) -> bool:
        """Some layers are recurrent: the engine keeps a state slot per running sequence."""
        return any(spec.mixer != "attention" for spec in self.layers)

    @property
    def attends(self) -> bool:
        """Some layer attends over the paged pool; an attention-free model (Mamba) keeps no token's K/V: its pages
        are bookkeeping only (``kv_cache.attention_free_pages``) and its heads count nothing."""
        return any(self.has_pages(spec) for spec in self.layers)

    @staticmethod
    def has_pages(spec: LayerSpec) -> bool:
        """The layer keeps KV pages: an attention layer, or a Zamba2 or Falcon-H1 hybrid layer (beside its mixer's
        state)."""
        return spec.mixer == "attention" or spec.shared_block is not None or spec.attention_beside is not None

    def make_norm(
        self,
        dim: int | None = None,
        kind: str | None = None,
        heads: tuple[int, str] | None = None,
        gated: bool = False,
    ) -> nnx.Module:
        """A norm of ``kind`` (the model's ``norm`` by default) over ``dim`` channels (``hidden_size`` by default);
        ``heads``: (count, logical axis) for one weight per head (``LayerNorm``'s); ``gated``: a norm the family gates
        where it has ``gated_norm_rank`` (A.X-K2's)."""
        dim, kind = dim or self.hidden_size, kind or self.norm
        if gated and self.gated_norm_rank:
            return GatedRMSNorm(dim, self.norm_eps, self.gated_norm_rank, self.dtype)
        if kind.startswith("layer"):
            affine, offset = kind != "layer_no_affine", kind == "layer_unit_offset"
            bias = kind in ("layer", "layer_unit_offset")
            return LayerNorm(dim, self.norm_eps, self.dtype, affine, bias, heads, unit_offset=offset)
        return RMSNorm(
            dim,
            self.norm_eps,
            self.dtype,
            kind == "rms_unit_offset",
            weight=kind != "rms_no_affine",
            float32_weight=kind == "rms_float32",
        )

    def make_qk_norms(self, spec: LayerSpec) -> tuple[nnx.Module, nnx.Module] | tuple[None, None]:
        """The q and k norms of a layer: over each head's channels with one weight for all heads (Qwen3, Gemma 3)
        or each head its own (``qk_norm_per_head``), or over all heads' channels at once (``qk_norm_all_heads``); a
        layer reading another's K/V (``kv_source``) has no k norm."""
        if not self.qk_norm:
            return None, None
        (kv, hd), kind = self.layer_heads(spec), self.qk_norm_kind
        if self.qk_norm_all_heads:
            return self.make_norm(self.num_heads * hd, kind), self.make_norm(kv * hd, kind)
        if self.qk_norm_per_head:
            q_heads, kv_heads = (self.num_heads, "q_heads"), (kv, KV_HEADS)
            return self.make_norm(hd, kind, q_heads), self.make_norm(hd, kind, kv_heads)
        return self.make_norm(hd, kind), None if spec.kv_source is not None else self.make_norm(hd, kind)

    @property
    def layer_kv_heads(self) -> set[int]:
        """The KV head counts of the layers that have K/V (the model's, and any layer's own: Gemma 4's)."""
        return {self.layer_heads(spec)[0] for spec in self.layers if spec.mixer == "attention"} or {self.num_kv_heads}

    @property
    def kv_pool_head_dim(self) -> int:
        """The width of a KV pool head: ``head_dim``, twice it for differential attention (its value pairs), one more
        with Doge's key bias, or the latent's (``MLASpec.latent_dim``)."""
        if self.mla is not None:
            return self.mla.latent_dim
        pairs = 2 if any(spec.diff_lambda_init is not None for spec in self.layers) else 1
        return self.head_dim * pairs + bool(self.dynamic_mask_window)

    @property
    def sliding_windows(self) -> list[int | None]:
        return [spec.sliding_window for spec in self.layers]

    @property
    def max_context(self) -> int:
        """The longest context the model is served with: its positions, or a shorter attention chunk, sparse
        attention's budget or Doge's mask window."""
        limits = (n for n in (self.attention_chunk_size, self.indexer_budget, self.dynamic_mask_window) if n)
        return min(self.max_position_embeddings, *limits, self.max_position_embeddings)

    @property
    def context_limit(self) -> str:
        """Why ``max_context`` is below the positions (``build``'s error for a longer ``max_model_len``)."""
        if self.dynamic_mask_window and self.dynamic_mask_window == self.max_context:
            return (
                f"the model's keep_window_size={self.dynamic_mask_window}: jllm keeps no top keep_window_size keys of "
                "Doge's dynamic mask, so it serves contexts up to the window, where every key is kept"
            )
        if self.indexer_budget and self.indexer_budget == self.max_context:
            kind, keys = self.sparse_attention
            return (
                f"the model's {keys}={self.indexer_budget}: jllm has no {kind} block-sparse attention, so it serves "
                f"contexts up to the budget, where every query keeps every token and {kind} is causal attention"
            )
        return (
            f"the model's attention_chunk_size={self.attention_chunk_size}: jllm has no chunked attention, so it "
            "serves contexts up to one chunk, where chunked attention is causal attention"
        )

    @property
    def dense_mlp_sizes(self) -> set[int]:
        """The widths of the dense MLPs among a mixture of experts' layers (none in most)."""
        return {spec.dense_mlp_size for spec in self.layers if spec.dense_mlp_size is not None}
