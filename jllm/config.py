"""Typed engine settings: one flat namespace of keys (vLLM's long option names), grouped into sections.

Precedence is vLLM's: command line > YAML file > defaults. Every key is validated where it is defined, and a bad
key or value fails with a message naming the key, the value and what is allowed (the checking itself, and the YAML
reader, are ``jllm.config_base``'s).

Where this module sits: docs/architecture.md.
"""

from __future__ import annotations

import dataclasses
import json
import typing
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Literal

from jllm.config_base import ConfigError, Section, allowed_values, load_yaml, unknown_key_error
from jllm.reasoning_parsers import REASONING_PARSERS
from jllm.speculative import NgramSpec
from jllm.tool_calls import PARSERS as TOOL_CALL_PARSERS

# The most rows decode_gemv_max_tokens may ask for: pallas_kernels.decode_gemv.TILE_ROWS (a test keeps them equal;
# importing the kernel here would bring Pallas into every config load)
DECODE_GEMV_MAX_ROWS = 16

Dtype = Literal["auto", "bfloat16", "float16", "float32", "half", "float"]  # vLLM's names too: half, float
LoadFormat = Literal["auto", "safetensors", "dummy", "orbax"]
AttentionBackend = Literal["auto", "reference", "pallas", "triton-prefill"]
KVCacheDtype = Literal["auto", "fp8", "fp8_e4m3"]  # vLLM's names: auto = the model's dtype, fp8 = fp8_e4m3
Pooling = Literal["last", "mean"]
SchedulingPolicy = Literal["fcfs", "priority"]  # vLLM's --scheduling-policy (jllm.scheduler.SCHEDULING_POLICIES)
Quantization = Literal["int8", "fp8"]  # vLLM's names (jllm.quantization)
Fp8KernelCompute = Literal["fma", "dot_f16", "dot_fp8"]  # pallas_kernels.fp8_gemv_spec.COMPUTE (tested equal)
Fp8KernelBackend = Literal["triton", "pallas"]  # jllm.quantization.QuantScheme.fp8_kernel_backend
ChatTemplateContentFormat = Literal["auto", "string", "openai"]  # vLLM's (jllm.chat_content)


@dataclass
class ModelConfig(Section):
    model: str | None = None  # path, .gguf file or alias; None = the embedded default model
    dtype: Dtype = "auto"  # "auto" = the checkpoint's torch_dtype
    max_model_len: int | None = None  # None = the model's max_position_embeddings
    load_format: LoadFormat = "auto"
    seed: int = 0
    attention_backend: AttentionBackend = "auto"
    # How an embedding is pooled from the final normed hidden states (vLLM's pooler_config pooling_type, for a
    # decoder LM): the last token's state, or the mean over the prompt's tokens
    pooling: Pooling = "last"
    # Linear weights of the decoder layers quantized per output channel: int8 (weight-only) or fp8 (e4m3); None =
    # the model dtype, unless the checkpoint is stored in FP8 (then fp8). jllm.quantization says what each does.
    quantization: Quantization | None = None
    # fp8: steps of at least this many tokens (the shape bucket's) multiply FP8 x FP8 with per-token activation
    # scales; smaller ones (small decode batches) read FP8 weights and multiply in the model dtype; None =
    # weight-only always. 32: FP8 x FP8 measured faster from 32 rows (docs/benchmarks.md, 2026-12-05)
    fp8_dot_min_tokens: int | None = 32
    # fp8 on one NVIDIA GPU with jax-triton (or fp8_kernel_backend pallas): weight-only steps of at most this many
    # tokens (default 1: batch-1 decodes, where it measured faster) multiply in jllm's Triton FP8-weight kernel
    # (pallas_kernels/fp8_gemv.py, or its Pallas port); elsewhere, or None, XLA's dot widens the weights
    fp8_kernel_max_tokens: int | None = 1
    # How that kernel multiplies: None = its default per step size ("fma" for one row, "dot_f16" for more: the
    # weights widened in registers); "dot_fp8" = W8A8, activations quantized per token (absmax / 448) in the kernel
    # and multiplied e4m3 x e4m3 on the FP8 tensor cores, for every weight size
    fp8_kernel_compute: Fp8KernelCompute | None = None
    # Which kernel multiplies in "fma" (one row): "triton", the jax-triton kernel, or "pallas", the same arithmetic
    # as a Pallas kernel (pallas_kernels/fp8_gemv_pallas.py) that XLA lowers itself and that needs no jax-triton;
    # "dot_f16" / "dot_fp8" stay jax-triton. H200, Llama-3-8B batch-1 FP8 step (2026-12-04): 3.11 ms with Triton,
    # 3.39 with Pallas (its kernels 6 % slower; the host's launch cost the same)
    fp8_kernel_backend: Fp8KernelBackend = "triton"
    # Steps of at most this many tokens (the shape bucket's; <= 16) multiply QKV and a gated MLP's gate-up in
    # pallas_kernels.decode_gemv, each with the RMS norm before it folded in, gate-up with its SwiGLU: three small
    # XLA kernels a Llama layer fewer. Unquantized weights on one device (a GPU, or Pallas' interpreter elsewhere);
    # None = XLA's matmuls always (the default until the GPU measures it faster: scripts/bench_decode_gemv.py)
    decode_gemv_max_tokens: int | None = None
    # Requests' default sampling (vLLM's --generation-config): "auto" = the temperature, top_p, top_k, min_p,
    # repetition_penalty and max_new_tokens of the model's generation_config.json where it sets them; "vllm" = the
    # neutral defaults; or a folder holding a generation_config.json. A request's own fields always win.
    generation_config: str = "auto"
    # The chat template in place of the model's (vLLM's --chat-template): a Jinja file's path, or the template itself
    chat_template: str | None = None
    # Template variables every chat renders with unless its request sets them (vLLM's --default-chat-template-kwargs,
    # e.g. {"enable_thinking": false})
    default_chat_template_kwargs: dict[str, Any] | None = None

    def validate(self) -> None:
        self._require(self.max_model_len is None or self.max_model_len >= 1, "max_model_len", "must be >= 1")
        # NumPy's generator (each request's seed) takes no negative seed, JAX's keys (dummy weights) none past int64
        self._require(0 <= self.seed < 2**63, "seed", "must be in 0..2**63 - 1")
        self._require(
            self.chat_template is None or Path(self.chat_template).is_file() or looks_like_template(self.chat_template),
            "chat_template",
            "is neither a file nor a Jinja template ({{ ... }} or {% ... %})",
        )
        template = chat_template_text(self.chat_template)  # a file that cannot be read is refused with the config
        syntax = None if template is None else template_syntax_error(template)
        self._require(syntax is None, "chat_template", f"it is not a Jinja template Jinja can parse: {syntax}")
        self._require(
            self.fp8_dot_min_tokens is None or self.fp8_dot_min_tokens >= 1, "fp8_dot_min_tokens", "must be >= 1"
        )
        self._require(
            self.fp8_kernel_max_tokens is None or self.fp8_kernel_max_tokens >= 1,
            "fp8_kernel_max_tokens",
            "must be >= 1",
        )
        self._require(
            self.decode_gemv_max_tokens is None or 1 <= self.decode_gemv_max_tokens <= DECODE_GEMV_MAX_ROWS,
            "decode_gemv_max_tokens",
            f"must be between 1 and {DECODE_GEMV_MAX_ROWS} (the kernel's tile rows)",
        )
        self._require(
            self.decode_gemv_max_tokens is None or self.quantization is None,
            "decode_gemv_max_tokens",
            "multiplies unquantized weights only; with quantization: fp8 the FP8 kernel is fp8_kernel_max_tokens",
        )


@dataclass
class CacheConfig(Section):
    page_size: int = 16
    num_pages: int | None = None  # None = size the pool from memory
    gpu_memory_utilization: float = 0.9
    kv_cache_memory_bytes: int | None = None  # explicit pool budget; CPUs default to 1 GiB
    enable_prefix_caching: bool = True
    kv_cache_dtype: KVCacheDtype = "auto"  # fp8 / fp8_e4m3: pages in float8_e4m3fn, half the bytes (jllm.kv_cache)

    def validate(self) -> None:
        self._require(self.page_size in (8, 16, 32, 64, 128), "page_size", "must be one of 8, 16, 32, 64, 128")
        self._require(self.num_pages is None or self.num_pages >= 2, "num_pages", "must be >= 2 (page 0 is reserved)")
        self._require(0 < self.gpu_memory_utilization <= 1, "gpu_memory_utilization", "must be in (0, 1]")
        self._require(
            self.kv_cache_memory_bytes is None or self.kv_cache_memory_bytes > 0, "kv_cache_memory_bytes", "must be > 0"
        )


OFFLINE_MAX_NUM_BATCHED_TOKENS = 2048  # max_num_batched_tokens: null outside a server (vLLM's default)


@dataclass
class SchedulerConfig(Section):
    max_num_seqs: int = 64
    # Tokens in one step (prefill chunks and decodes), also the largest compiled step size. None = 2048 here (offline
    # runs: LLM, jllm generate / run) and 512 under `jllm serve` (jllm.serve_config says why)
    max_num_batched_tokens: int | None = None
    # A prefill takes at most this many tokens a step (vLLM's --long-prefill-token-threshold): a long prompt's chunks
    # then leave room in every step for the decodes and the other prompts beside it; 0 = only the step's budget caps
    long_prefill_token_threshold: int = 0
    # A step of at least this many tokens that passes a compiled step size (the buckets: 256, 512, ... the budget) by
    # at most half the way to the next has its newest prefill chunks shortened to end on it, rather than padded: once a
    # step is compute-bound a padded token costs what a real one does (jllm.scheduler); 0 = off
    prefill_alignment_min_tokens: int = 256
    # vLLM's --scheduling-policy: fcfs (first come, first served) or priority (a request's priority, lower first, then
    # its arrival; the least urgent running sequence is preempted first); requests may send a priority only with this
    scheduling_policy: SchedulingPolicy = "fcfs"
    # Schedule and launch each step while the device still runs the one before (vLLM's --async-scheduling)
    async_scheduling: bool = True
    # Compile every step program a request can pick at start-up (warm-up), so no request waits on the compiler;
    # False compiles each on its first use (tests whose engines run a few shapes start in a fraction of the time)
    compile_at_start: bool = True
    # Warm-up loads the step programs an earlier start compiled from jllm's executable cache (a folder in JAX's
    # compilation cache) instead of tracing them; null = on wherever that cache is, except on a CPU (XLA:CPU's stored
    # programs can miss kernels: jllm.executable_cache says when true is safe there); false = off
    executable_cache: bool | None = None
    # vLLM's speculative decoding settings: {"method": "ngram", "num_speculative_tokens": k, "prompt_lookup_min": m,
    # "prompt_lookup_max": M} (prompt lookup, the one method served: jllm.speculative); null = off
    speculative_config: dict[str, Any] | None = None
    # A file to append a JSON line to per engine step: its wall time split into scheduling, launching, waiting for the
    # device and processing tokens, beside its decode rows and prefill tokens (jllm.step_timeline); null = off
    step_timeline_path: str | None = None

    def __post_init__(self) -> None:
        if self.max_num_batched_tokens is None:
            self.max_num_batched_tokens = OFFLINE_MAX_NUM_BATCHED_TOKENS
        super().__post_init__()

    def validate(self) -> None:
        self._require(self.max_num_seqs >= 1, "max_num_seqs", "must be >= 1")
        self._require(self.max_num_batched_tokens >= 8, "max_num_batched_tokens", "must be >= 8")
        self._require(self.long_prefill_token_threshold >= 0, "long_prefill_token_threshold", "must be >= 0 (0 = off)")
        self._require(self.prefill_alignment_min_tokens >= 0, "prefill_alignment_min_tokens", "must be >= 0 (0 = off)")
        try:
            self.ngram  # noqa: B018 (parsed for its checks)
        except ValueError as e:
            raise ConfigError(str(e), key="speculative_config") from e

    @property
    def ngram(self) -> NgramSpec | None:
        """``speculative_config`` read (vLLM's defaults filled in), or None when off."""
        return None if self.speculative_config is None else NgramSpec.parse(self.speculative_config)


@dataclass
class LimitsConfig(Section):
    """Bounds on the work one request may ask of the engine's shared thread; beyond them a request is refused (a
    400 naming the limit) rather than slowing every other stream."""

    # Stop strings (vLLM sets no limit, OpenAI allows 4): each token's text is checked against every one.
    max_stop_strings: int = 64
    max_stop_string_chars: int = 512
    # stop_token_ids per request: their count (with EOS) is a width of the compiled sampler, so it is capped
    max_stop_token_ids: int = 32

    # Characters of prompt text (prompts, or every string of the messages) in one request, checked before any
    # tokenization; None = 32 per token of the model's context.
    max_prompt_chars: int | None = None

    def validate(self) -> None:
        for key in ("max_stop_strings", "max_stop_string_chars", "max_stop_token_ids"):
            self._require(getattr(self, key) >= 1, key, "must be >= 1")
        self._require(self.max_prompt_chars is None or self.max_prompt_chars >= 1, "max_prompt_chars", "must be >= 1")


@dataclass
class ParallelConfig(Section):
    tensor_parallel_size: int = 1
    # jax.distributed: "host:port" of process 0's coordinator, "auto" for JAX's cluster detection, None = one process
    distributed_coordinator: str | None = None
    num_processes: int | None = None  # None = detected (auto only)
    process_id: int | None = None  # this process's rank, 0 = the lead; None = detected (auto only)

    def validate(self) -> None:
        self._require(self.tensor_parallel_size >= 1, "tensor_parallel_size", "must be >= 1")
        coordinator = self.distributed_coordinator
        if coordinator is None:
            for key in ("num_processes", "process_id"):
                self._require(getattr(self, key) is None, key, "needs distributed_coordinator (host:port of process 0)")
            return
        detected = coordinator == "auto"  # JAX's cluster detection fills in what is not given
        host, _, port = coordinator.rpartition(":")
        self._require(
            detected or (host != "" and port.isdigit() and 0 < int(port) < 65536),
            "distributed_coordinator",
            "expected host:port of process 0 (e.g. 10.0.0.1:1234), auto or null",
        )
        for key in ("num_processes", "process_id"):
            needs = f"distributed_coordinator={coordinator!r} needs it (only auto detects it)"
            self._require(detected or getattr(self, key) is not None, key, needs)
        n, rank = self.num_processes, self.process_id
        self._require(n is None or n >= 1, "num_processes", "must be >= 1")
        self._require(
            rank is None or (rank >= 0 and (n is None or rank < n)),
            "process_id",
            f"must be in 0..{n - 1} for num_processes={n}" if n else "must be >= 0",
        )


@dataclass
class LoRAConfig(Section):
    """Multi-LoRA serving (vLLM's keys): PEFT adapters applied per request beside the base weights (``jllm.lora``)."""

    enable_lora: bool = False
    max_loras: int = 1  # adapters resident on the device at once (their slots); a request for another waits
    max_lora_rank: int = 16  # the slots' rank: an adapter of a higher r is refused, lower ones padded with zeros
    # adapters served by name, each "name=path" to a PEFT folder (vLLM's --lora-modules): a request's `model`
    lora_modules: list[str] | None = None
    # POST /v1/load_lora_adapter and /v1/unload_lora_adapter (vLLM's, behind VLLM_ALLOW_RUNTIME_LORA_UPDATING)
    allow_runtime_lora_updating: bool = False

    def validate(self) -> None:
        self._require(self.max_loras >= 1, "max_loras", "must be >= 1")
        self._require(self.max_lora_rank >= 1, "max_lora_rank", "must be >= 1")
        modules = self.lora_modules or []
        self._require(not modules or self.enable_lora, "lora_modules", "needs enable_lora: true")
        self._require(
            not self.allow_runtime_lora_updating or self.enable_lora,
            "allow_runtime_lora_updating",
            "needs enable_lora: true",
        )
        pairs = [_lora_module(m) for m in modules]
        self._require(
            all(pair is not None for pair in pairs),
            "lora_modules",
            'each entry must be "name=path" (a PEFT adapter folder) or vLLM\'s JSON {"name": ..., "path": ...}',
        )
        names = [pair[0] for pair in pairs if pair is not None]
        self._require(len(set(names)) == len(names), "lora_modules", "names must be distinct")

    @property
    def modules(self) -> dict[str, str]:
        """``lora_modules`` as name -> path."""
        return dict(pair for pair in map(_lora_module, self.lora_modules or []) if pair is not None)


def _lora_module(entry: object) -> tuple[str, str] | None:
    """A ``lora_modules`` entry as (name, path): "name=path", or vLLM's JSON form with those two keys alone (its
    ``base_model_name`` names a parent in /v1/models that jllm does not report: refused, as any other key)."""
    if not isinstance(entry, str):
        return None
    if entry.lstrip().startswith("{"):
        try:
            value = json.loads(entry)
        except json.JSONDecodeError:
            return None
        if not isinstance(value, dict) or set(value) != {"name", "path"}:
            return None
        name, path = value["name"], value["path"]
    else:
        name, _, path = entry.partition("=")
    if not isinstance(name, str) or not isinstance(path, str) or not name.strip() or not path.strip():
        return None
    return name.strip(), path.strip()


@dataclass
class ServerConfig(Section):
    host: str = "127.0.0.1"
    port: int = 8000
    grpc_port: int | None = None  # also serve the gRPC API (proto/jllm/v1/generate.proto) here; None = off, 0 = any
    api_key: str | None = None
    served_model_name: str | list[str] | None = None  # the `model` clients send; a list: the first and its aliases
    max_queued_requests: int = 1024  # sequences (prompts x n) waiting per model; beyond: 429, or 400 for one request
    shutdown_timeout: float = 30.0
    # Unloading a model at run time (the admin API): seconds its running requests get before they are failed.
    drain_timeout_s: float = 30.0
    # The memory models are planned against on a CPU (weights + KV pools of every served model); None = the host's
    # physical memory, with each KV pool of 1 GiB unless sized by num_pages or kv_cache_memory_bytes.
    host_memory_budget_bytes: int | None = None
    # Connections: every one must send its first request's headers within header_timeout_s; an idle keep-alive one
    # is closed after keepalive_timeout_s; at max_connections the oldest idle one makes room, else a newcomer gets 503.
    header_timeout_s: float = 10.0
    # A request's body must arrive whole within body_timeout_s of its headers (a stalled chunked or cut-off body
    # would hold its connection, counted as busy, for ever): else a 408 and the connection is closed.
    body_timeout_s: float = 30.0
    keepalive_timeout_s: float = 15.0
    max_connections: int = 2048
    # Backpressure: a stream whose client leaves more than stream_buffer_outputs outputs untaken for
    # stream_stall_timeout_s (or four times as many at once) is aborted; a blocked write is given up after as long.
    stream_buffer_outputs: int = 256
    stream_stall_timeout_s: float = 30.0
    tokenizer_workers: int = 2  # threads that tokenize and render long prompts (short ones are done inline)
    tool_call_parser: str | None = None  # the served family's tool-call format (vLLM's names: jllm.tool_parsers)
    enable_auto_tool_choice: bool = False  # tool_choice "auto": parse calls from free text (needs tool_call_parser)
    # the served family's reasoning format (vLLM's names: jllm.reasoning_parsers); a models: entry may set its own
    reasoning_parser: str | None = None
    # a request's own chat_template renders its messages (vLLM's --trust-request-chat-template); false: a 400
    trust_request_chat_template: bool = False
    # how a message's content reaches the chat template (vLLM's --chat-template-content-format): "string" (text
    # parts joined), "openai" (a list of text parts), "auto": the one the template reads (jllm.chat_content)
    chat_template_content_format: ChatTemplateContentFormat = "auto"
    # the Responses API's stored responses (previous_response_id, GET /v1/responses/{id}): at most this many MiB of
    # request bodies and responses in memory, least recently used dropped first; 0: none stored (store: true a 400)
    responses_store_mb: int = 256
    # Cross-origin requests from browsers (vLLM's flags and defaults: any origin, method and header; no credentials)
    allowed_origins: list[str] = field(default_factory=lambda: ["*"])
    allowed_methods: list[str] = field(default_factory=lambda: ["*"])
    allowed_headers: list[str] = field(default_factory=lambda: ["*"])
    allow_credentials: bool = False
    # TLS (vLLM's flags): the server's certificate and key; ssl_ca_certs with ssl_cert_reqs 1 (optional) or 2
    # (required) asks clients for certificates those CAs signed
    ssl_certfile: str | None = None
    ssl_keyfile: str | None = None
    ssl_ca_certs: str | None = None
    ssl_cert_reqs: int = 0

    def validate(self) -> None:
        self._require(0 <= self.port <= 65535, "port", "must be in 0..65535")
        self._require(self.grpc_port is None or 0 <= self.grpc_port <= 65535, "grpc_port", "must be in 0..65535")
        self._require(
            self.grpc_port is None or self.grpc_port == 0 or self.grpc_port != self.port,
            "grpc_port",
            f"must differ from port={self.port} (the HTTP API's)",
        )
        # aiohttp reads an empty host as every interface: say 0.0.0.0 for that, so it is never an accident.
        self._require(self.host.strip() != "", "host", "must be non-empty (0.0.0.0 listens on every interface)")
        # An empty key (often an unset environment variable) would otherwise switch authentication off unnoticed.
        self._require(self.api_key != "", "api_key", "must be non-empty; leave it out to serve without a key")
        self._require(self.max_queued_requests >= 1, "max_queued_requests", "must be >= 1")
        self._require(self.shutdown_timeout >= 0, "shutdown_timeout", "must be >= 0")
        self._require(self.drain_timeout_s >= 0, "drain_timeout_s", "must be >= 0")
        self._require(self.tokenizer_workers >= 1, "tokenizer_workers", "must be >= 1")
        self._require(self.header_timeout_s > 0, "header_timeout_s", "must be > 0")
        self._require(self.body_timeout_s > 0, "body_timeout_s", "must be > 0")
        self._require(self.keepalive_timeout_s > 0, "keepalive_timeout_s", "must be > 0")
        self._require(self.max_connections >= 1, "max_connections", "must be >= 1")
        self._require(self.stream_buffer_outputs >= 1, "stream_buffer_outputs", "must be >= 1")
        self._require(self.stream_stall_timeout_s > 0, "stream_stall_timeout_s", "must be > 0")
        self._require(self.responses_store_mb >= 0, "responses_store_mb", "must be >= 0 (0: no response is stored)")
        self._require(
            (self.ssl_certfile is None) == (self.ssl_keyfile is None), "ssl_keyfile", "comes with ssl_certfile"
        )
        self._require(
            self.ssl_cert_reqs in (0, 1, 2), "ssl_cert_reqs", "must be 0 (none), 1 (optional) or 2 (required)"
        )
        self._require(
            self.ssl_cert_reqs == 0 or (self.ssl_ca_certs is not None and self.ssl_certfile is not None),
            "ssl_cert_reqs",
            "needs ssl_ca_certs and ssl_certfile (the CAs client certificates are checked against, over TLS)",
        )
        for key in ("allowed_origins", "allowed_methods", "allowed_headers"):
            values = getattr(self, key)
            self._require(
                all(isinstance(v, str) and v.strip() and not v.startswith("[") for v in values),
                key,
                "must be non-empty strings, one per argument (--allowed-origins https://a.example https://b.example), "
                "not a JSON list",
            )
        budget = self.host_memory_budget_bytes
        self._require(budget is None or budget > 0, "host_memory_budget_bytes", "must be > 0")
        self._require(
            self.tool_call_parser in (None, *TOOL_CALL_PARSERS),
            "tool_call_parser",
            f"must be one of {', '.join(TOOL_CALL_PARSERS)}",
        )
        self._require(
            self.reasoning_parser in (None, *REASONING_PARSERS),
            "reasoning_parser",
            f"must be one of {', '.join(REASONING_PARSERS)}",
        )
        self._require(
            self.tool_call_parser != "openai" or self.reasoning_parser == "openai_gptoss",
            "tool_call_parser",
            "'openai' reads the harmony messages that reasoning_parser 'openai_gptoss' leaves: set both (gpt-oss)",
        )
        self._require(
            not self.enable_auto_tool_choice or self.tool_call_parser is not None,
            "enable_auto_tool_choice",
            "needs tool_call_parser (the format to read calls in)",
        )
        self._validate_names()

    def _validate_names(self) -> None:
        names = self.served_model_name
        self._require(
            names is None
            or (isinstance(names, str) and names.strip() != "")
            or (
                isinstance(names, list)
                and names != []
                and all(isinstance(n, str) and n.strip() != "" for n in names)
                and len(set(names)) == len(names)
            ),
            "served_model_name",
            "must be a non-empty name or a non-empty list of distinct non-empty names",
        )

    @property
    def served_names(self) -> tuple[str, ...]:
        """The names clients may send as ``model`` (empty: derive it from the model)."""
        names = self.served_model_name
        return () if names is None else (names,) if isinstance(names, str) else tuple(names)


@dataclass
class EngineConfig:
    model: ModelConfig = field(default_factory=ModelConfig)
    cache: CacheConfig = field(default_factory=CacheConfig)
    scheduler: SchedulerConfig = field(default_factory=SchedulerConfig)
    parallel: ParallelConfig = field(default_factory=ParallelConfig)
    limits: LimitsConfig = field(default_factory=LimitsConfig)
    lora: LoRAConfig = field(default_factory=LoRAConfig)
    server: ServerConfig = field(default_factory=ServerConfig)

    @classmethod
    def from_flat(cls, values: dict[str, Any]) -> EngineConfig:
        """Builds the sections from flat keys; dashes and underscores are the same key."""
        owner = {f.name: name for name, section in _SECTIONS.items() for f in fields(section)}
        per_section: dict[str, dict[str, Any]] = {name: {} for name in _SECTIONS}
        for raw_key, value in values.items():
            key = str(raw_key).replace("-", "_")
            if key not in owner:
                raise unknown_key_error(raw_key, owner)
            if key in per_section[owner[key]]:
                raise ConfigError(f"key {key!r} is given twice (dashes and underscores name the same key)", key=key)
            per_section[owner[key]][key] = value
        return cls(**{name: _SECTIONS[name](**kw) for name, kw in per_section.items()})

    def to_flat(self, *sections: str) -> dict[str, Any]:
        """The flat keys of the named sections (all of them by default) with their values, in the sections' order."""
        chosen = _chosen_sections(sections)
        return {
            k: v for s in fields(self) if s.name in chosen for k, v in dataclasses.asdict(getattr(self, s.name)).items()
        }

    def llm_kwargs(self) -> dict[str, Any]:
        """What ``LLM(**config.llm_kwargs())`` builds this engine from: every flat key but the server section's,
        which the offline LLM refuses (a config file shared with ``jllm serve`` may set them; nothing offline
        reads them)."""
        return self.to_flat(*ENGINE_SECTIONS)

    def replace(self, **overrides: Any) -> EngineConfig:
        """A copy with some flat keys changed (validated like any other value)."""
        return EngineConfig.from_flat({**self.to_flat(), **{k.replace("-", "_"): v for k, v in overrides.items()}})


_SECTIONS: dict[str, type[Section]] = {
    "model": ModelConfig,
    "cache": CacheConfig,
    "scheduler": SchedulerConfig,
    "parallel": ParallelConfig,
    "limits": LimitsConfig,
    "lora": LoRAConfig,
    "server": ServerConfig,
}


# The sections an offline engine's settings come from (``jllm generate`` / ``chat``'s options, a ``jllm run`` job file's
# keys); lora and server are ``serve``'s alone.
OFFLINE_SECTIONS = ("model", "cache", "scheduler", "parallel", "limits")
ENGINE_SECTIONS = (*OFFLINE_SECTIONS, "lora")  # every section but the server's: what an engine is built from


def engine_keys(*sections: str) -> dict[str, dataclasses.Field]:
    """Every flat key (or those of the named sections) with its field, for building command-line options."""
    return {f.name: f for name in _chosen_sections(sections) for f in fields(_SECTIONS[name])}


def _chosen_sections(sections: tuple[str, ...]) -> tuple[str, ...]:
    """The named sections, checked (none named: every section)."""
    for name in sections:
        if name not in _SECTIONS:
            raise unknown_key_error(name, _SECTIONS, where="section")
    return sections or tuple(_SECTIONS)


def looks_like_template(text: str) -> bool:
    return "{{" in text or "{%" in text


def parse_chat_template(template: str) -> Any:
    """Jinja's syntax tree of a chat template, read as transformers compiles it (loop controls on); raises
    ``jinja2.TemplateSyntaxError`` where it cannot parse, as for transformers' own ``{% generation %}`` tag, which
    plain Jinja does not know."""
    import jinja2  # here: 0.17 s of every start-up for what only chat templates need

    return jinja2.Environment(extensions=["jinja2.ext.loopcontrols"]).parse(template)


def template_syntax_error(template: str) -> str | None:
    """Jinja's complaint about a chat template's syntax, None if it parses (``{% generation %}`` let through): a
    template that cannot parse would fail every chat request with an error that blames the messages."""
    import jinja2

    try:
        parse_chat_template(template)
    except jinja2.TemplateSyntaxError as e:
        return None if "'generation'" in str(e.message) else f"{e.message} (line {e.lineno})"
    return None


def chat_template_text(value: str | None) -> str | None:
    """``chat_template``'s template: the file's text where it names one, else the value itself."""
    if value is None or looks_like_template(value):
        return value
    try:
        return Path(value).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise ConfigError(f"chat_template={value!r} cannot be read: {e}", key="chat_template") from e


def key_type(key: str) -> tuple[type, tuple[Any, ...] | None]:
    """The type a key's command-line value parses to (int, float, str, bool, or list: one or more strings) and its
    choices, if a fixed set."""
    for section in _SECTIONS.values():
        if key in {f.name for f in fields(section)}:
            kinds, choices, _ = allowed_values(typing.get_type_hints(section)[key])
            return kinds[-1], choices
    raise unknown_key_error(key, engine_keys())


def merge_config(file_values: dict[str, Any], **overrides: Any) -> EngineConfig:
    """File values, then the overrides, None included (``fp8_kernel_max_tokens=None`` turns the kernel off); the
    command line drops the options it was not given first (``given_options``). A file's vLLM spellings (a ``vllm
    serve --config`` file's ``block-size``, ``trust-remote-code`` ...) fold into jllm's keys as the flags do."""
    from jllm.vllm_flags import VLLM_KEYS, apply_vllm_keywords  # here: vllm_flags reads this module's ConfigError

    spelt = {str(k).replace("-", "_"): k for k in file_values}
    if spelt.keys() & set(VLLM_KEYS):
        model = overrides.get("model", file_values.get(spelt.get("model", "model")))
        file_values = apply_vllm_keywords({k: file_values[key] for k, key in spelt.items()}, model)
    given = {k.replace("-", "_"): v for k, v in overrides.items()}
    kept = {k: v for k, v in file_values.items() if str(k).replace("-", "_") not in given}
    return EngineConfig.from_flat({**kept, **given})


class GivenNull:
    """A command-line option given as JSON ``null`` (``--speculative-config null``): argparse's None means "not
    given", so this stands for a None that overrides the config file's value."""


GIVEN_NULL = GivenNull()


def given_options(options: dict[str, Any]) -> dict[str, Any]:
    """The command-line options given: argparse leaves the others None; ``GIVEN_NULL`` is a given None."""
    return {key: None if value is GIVEN_NULL else value for key, value in options.items() if value is not None}


def load_config(path: str | Path | None = None, **overrides: Any) -> EngineConfig:
    """Defaults, then the YAML file, then the overrides (command line > file > defaults)."""
    return merge_config(load_yaml(path) if path is not None else {}, **overrides)
