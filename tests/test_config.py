"""Engine settings: YAML loading, precedence (command line > file > defaults) and errors that name the key."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from jllm.config import (
    ENGINE_SECTIONS,
    OFFLINE_SECTIONS,
    CacheConfig,
    ConfigError,
    EngineConfig,
    ServerConfig,
    engine_keys,
    given_options,
    load_config,
    merge_config,
)

CONFIGS = Path(__file__).parents[1] / "configs"


def write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def test_defaults_without_file_or_overrides() -> None:
    config = load_config()
    assert config == EngineConfig()
    assert (config.model.model, config.model.dtype, config.cache.page_size) == (None, "auto", 16)
    assert (config.scheduler.max_num_seqs, config.server.port) == (64, 8000)


def test_yaml_keys_land_in_their_sections(tmp_path: Path) -> None:
    path = write(
        tmp_path / "c.yaml",
        "model: /models/x\ndtype: bfloat16\nmax-model-len: 2048\npage_size: 32\nmax_num_seqs: 8\n"
        "tensor_parallel_size: 2\nport: 9000\nenable_prefix_caching: false\nkv_cache_memory_bytes: null\n",
    )
    config = load_config(path)
    assert (config.model.model, config.model.dtype, config.model.max_model_len) == ("/models/x", "bfloat16", 2048)
    assert (config.cache.page_size, config.cache.enable_prefix_caching) == (32, False)
    assert config.cache.kv_cache_memory_bytes is None
    assert (config.scheduler.max_num_seqs, config.parallel.tensor_parallel_size, config.server.port) == (8, 2, 9000)


def test_empty_yaml_file_means_defaults(tmp_path: Path) -> None:
    assert load_config(write(tmp_path / "c.yaml", "# only a comment\n")) == EngineConfig()


def test_override_beats_file_beats_default(tmp_path: Path) -> None:
    path = write(tmp_path / "c.yaml", "max_num_seqs: 8\nmax-model-len: 1024\n")
    config = load_config(path, max_num_seqs=4)
    assert config.scheduler.max_num_seqs == 4  # keyword over file
    assert config.model.max_model_len == 1024  # file over default
    assert config.cache.page_size == 16  # default
    # An override spelt with underscores replaces the file's dashed spelling of the same key.
    assert load_config(path, max_model_len=512).model.max_model_len == 512


def test_options_not_given_on_the_command_line_keep_the_file_value(tmp_path: Path) -> None:
    path = write(tmp_path / "c.yaml", "max_model_len: 1024\nenable_prefix_caching: false\n")
    options = {"max_model_len": None, "enable_prefix_caching": None, "model": None, "max_num_seqs": 4}
    config = load_config(path, **given_options(options))
    assert config.model.max_model_len == 1024 and config.cache.enable_prefix_caching is False
    assert config.scheduler.max_num_seqs == 4


def test_an_explicit_none_override_is_honoured(tmp_path: Path) -> None:
    """``LLM(..., fp8_kernel_max_tokens=None)`` turns the kernel off rather than being dropped as "not given"."""
    path = write(tmp_path / "c.yaml", "fp8_kernel_max_tokens: 4\nfp8_dot_min_tokens: 256\n")
    assert load_config(path).model.fp8_kernel_max_tokens == 4
    config = load_config(path, fp8_kernel_max_tokens=None, fp8_dot_min_tokens=None)
    assert config.model.fp8_kernel_max_tokens is None and config.model.fp8_dot_min_tokens is None


def test_false_override_is_given_not_missing(tmp_path: Path) -> None:
    path = write(tmp_path / "c.yaml", "enable_prefix_caching: true\nseed: 5\n")
    config = load_config(path, enable_prefix_caching=False, seed=0)
    assert config.cache.enable_prefix_caching is False and config.model.seed == 0


def test_unknown_yaml_key_names_it_and_suggests_the_close_one(tmp_path: Path) -> None:
    path = write(tmp_path / "c.yaml", "max_model_lenght: 2048\n")
    with pytest.raises(ConfigError, match=r"unknown key 'max_model_lenght' \(did you mean 'max_model_len'\?\)"):
        load_config(path)


def test_unknown_override_names_it_and_suggests_the_close_one() -> None:
    with pytest.raises(ConfigError, match=r"unknown key 'max_num_seq' \(did you mean 'max_num_seqs'\?\)"):
        load_config(max_num_seq=4)


def test_unknown_key_far_from_any_lists_the_allowed_keys() -> None:
    with pytest.raises(ConfigError) as err:
        load_config(zzz=1)
    message = str(err.value)
    assert "'zzz'" in message and "did you mean" not in message
    assert "max_model_len" in message and "page_size" in message


@pytest.mark.parametrize(
    ("key", "value", "allowed"),
    [
        ("max_num_seqs", "8", "expected int"),
        ("max_num_seqs", True, "expected int"),
        ("max_num_seqs", 2.5, "expected int"),
        ("enable_prefix_caching", "yes", "expected bool"),
        ("compile_at_start", "no", "expected bool"),
        ("executable_cache", 1, "expected bool or null"),
        ("dtype", "bf16", "expected 'auto' or 'bfloat16' or 'float16' or 'float32'"),
        ("load_format", "pickle", "'safetensors'"),
        ("max_model_len", "long", "expected int or null"),
        ("gpu_memory_utilization", "high", "expected int or float"),
        ("model", 7, "expected str or null"),
        ("page_size", None, "expected int"),
    ],
)
def test_bad_type_names_key_value_and_allowed(key: str, value: object, allowed: str) -> None:
    with pytest.raises(ConfigError) as err:
        EngineConfig.from_flat({key: value})
    message = str(err.value)
    assert f"{key}={value!r}" in message and allowed in message


@pytest.mark.parametrize(
    ("key", "value", "allowed"),
    [
        ("max_model_len", 0, "must be >= 1"),
        ("page_size", 24, "must be one of 8, 16, 32, 64, 128"),
        ("num_pages", 1, "must be >= 2"),
        ("gpu_memory_utilization", 1.5, "must be in (0, 1]"),
        ("gpu_memory_utilization", 0, "must be in (0, 1]"),
        ("kv_cache_memory_bytes", 0, "must be > 0"),
        ("max_num_seqs", 0, "must be >= 1"),
        ("max_num_batched_tokens", 4, "must be >= 8"),
        ("tensor_parallel_size", 0, "must be >= 1"),
        ("port", 70000, "must be in 0..65535"),
        ("grpc_port", -1, "must be in 0..65535"),
        ("grpc_port", 8000, "must differ from port=8000"),
        ("max_queued_requests", 0, "must be >= 1"),
        ("shutdown_timeout", -1.0, "must be >= 0"),
        ("seed", -1, "must be in 0..2**63 - 1"),
        ("seed", 2**63, "must be in 0..2**63 - 1"),
    ],
)
def test_out_of_range_names_key_value_and_allowed(key: str, value: object, allowed: str) -> None:
    with pytest.raises(ConfigError) as err:
        load_config(**{key: value})
    assert f"{key}={value!r}" in str(err.value) and allowed in str(err.value)


def test_bad_value_in_yaml_names_the_key(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"page_size=17 is not allowed"):
        load_config(write(tmp_path / "c.yaml", "page_size: 17\n"))


def test_integer_for_a_float_key_becomes_float() -> None:
    config = load_config(gpu_memory_utilization=1, shutdown_timeout=5)
    assert config.cache.gpu_memory_utilization == 1.0 and isinstance(config.cache.gpu_memory_utilization, float)
    assert isinstance(config.server.shutdown_timeout, float)


def test_the_same_key_twice_in_one_file_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="'max_model_len' is given twice"):
        load_config(write(tmp_path / "c.yaml", "max_model_len: 10\nmax-model-len: 20\n"))


def test_a_key_repeated_verbatim_in_yaml_is_an_error_not_the_last_value(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="key 'max_num_seqs' is given twice"):
        load_config(write(tmp_path / "c.yaml", "max_num_seqs: 4\nmax_num_seqs: 8\n"))


def test_empty_api_key_is_refused_instead_of_turning_auth_off() -> None:
    with pytest.raises(ConfigError, match="api_key='' is not allowed: must be non-empty"):
        load_config(api_key="")


def test_empty_host_is_refused_instead_of_listening_everywhere() -> None:
    with pytest.raises(ConfigError, match="host='' is not allowed: must be non-empty"):
        load_config(host="")


def test_config_path_that_is_a_directory_says_so(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="is a directory, not a file"):
        load_config(tmp_path)


def test_missing_yaml_file_is_a_config_error(tmp_path: Path) -> None:
    path = tmp_path / "nope.yaml"
    with pytest.raises(ConfigError, match=f"config file '{path}' does not exist"):
        load_config(path)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("max_model_len: [1, 2\n", "is not readable YAML"),
        ("a: b: c\n", "is not readable YAML"),
        ("- max_model_len\n- 10\n", "must hold a mapping of keys to values, got list"),
        ("just a string\n", "must hold a mapping of keys to values, got str"),
    ],
)
def test_malformed_yaml_is_a_config_error_naming_the_file(tmp_path: Path, text: str, expected: str) -> None:
    path = write(tmp_path / "bad.yaml", text)
    with pytest.raises(ConfigError) as err:
        load_config(path)
    assert str(path) in str(err.value) and expected in str(err.value)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("max_num_seqs: 4\nmax_num_seqs: 8\n", "line 2, column 1: key 'max_num_seqs' is given twice"),
        ("a:\n\tb: 1\n", "line 2, column 1: while scanning for the next token found character '\\t'"),
        ("max_model_len: [1, 2\n", "line 2, column 1: while parsing a flow sequence expected ',' or ']'"),
    ],
)
def test_yaml_errors_are_one_line_placed_in_the_file(tmp_path: Path, text: str, expected: str) -> None:
    """PyYAML's messages span several lines, quote the text under a caret and call the file "<unicode string>"."""
    path = write(tmp_path / "bad.yaml", text)
    with pytest.raises(ConfigError) as err:
        load_config(path)
    assert str(err.value).startswith(f"config file '{path}' is not readable YAML: {expected}")
    assert "\n" not in str(err.value) and "<unicode string>" not in str(err.value)


def test_non_utf8_yaml_is_a_config_error(tmp_path: Path) -> None:
    path = tmp_path / "latin1.yaml"
    path.write_bytes("model: caf\xe9\n".encode("latin-1"))
    with pytest.raises(ConfigError, match="is not readable YAML"):
        load_config(path)


def test_merge_config_takes_already_read_values() -> None:
    config = merge_config({"max_num_seqs": 8, "page-size": 32}, page_size=64, max_model_len=None)
    assert (config.scheduler.max_num_seqs, config.cache.page_size, config.model.max_model_len) == (8, 64, None)


def test_replace_validates_and_round_trips_to_flat() -> None:
    config = load_config(max_num_seqs=8)
    assert EngineConfig.from_flat(config.to_flat()) == config
    assert config.replace(port=1234).server.port == 1234 and config.server.port == 8000
    assert config.replace(**{"max-num-seqs": 2}).scheduler.max_num_seqs == 2
    with pytest.raises(ConfigError, match="port=-1"):
        config.replace(port=-1)


def test_llm_kwargs_are_every_key_but_the_server_s() -> None:
    """The one place jllm generate / run and the tests build LLM(...)'s keywords from a config (LLM refuses a server
    setting); ``to_flat`` of named sections keeps the sections' order (a run's config.yaml)."""
    config = load_config(max_model_len=64, port=7000, api_key="k")
    kwargs = config.llm_kwargs()
    assert kwargs["max_model_len"] == 64 and "enable_lora" in kwargs and not {"port", "api_key"} & kwargs.keys()
    assert list(kwargs) == list(engine_keys(*ENGINE_SECTIONS))
    assert list(config.to_flat(*OFFLINE_SECTIONS)) == list(engine_keys(*OFFLINE_SECTIONS))
    with pytest.raises(ConfigError, match="servr"):
        config.to_flat("servr")


def test_engine_keys_cover_every_section_field() -> None:
    keys = engine_keys()
    assert {"model", "dtype", "max_model_len", "page_size", "max_num_seqs", "tensor_parallel_size", "port"} <= set(keys)
    assert len(keys) == len(EngineConfig().to_flat())
    assert keys["page_size"].default == CacheConfig().page_size


def test_engine_keys_of_chosen_sections() -> None:
    server_keys = engine_keys("server")
    assert set(server_keys) == set(ServerConfig().__dict__)
    assert "port" not in engine_keys("model", "cache", "scheduler", "parallel")
    with pytest.raises(ConfigError, match=r"unknown section 'servr' \(did you mean 'server'\?\)"):
        engine_keys("servr")


def test_default_yaml_lists_every_key_with_its_default() -> None:
    assert set(yaml.safe_load((CONFIGS / "default.yaml").read_text())) == set(engine_keys())
    assert load_config(CONFIGS / "default.yaml") == EngineConfig()


def test_cpu_yaml_is_a_small_valid_config() -> None:
    config = load_config(CONFIGS / "smollm2-cpu.yaml")
    assert (config.model.dtype, config.model.max_model_len, config.scheduler.max_num_seqs) == ("float32", 2048, 4)
    assert (config.cache.num_pages - 1) * config.cache.page_size >= config.model.max_model_len


def test_tool_call_settings_are_checked_naming_the_key() -> None:
    with pytest.raises(ConfigError, match=r"^tool_call_parser='qwen' is not allowed: must be one of hermes"):
        load_config(None, tool_call_parser="qwen")
    with pytest.raises(ConfigError, match=r"^enable_auto_tool_choice=True is not allowed: needs tool_call_parser"):
        load_config(None, enable_auto_tool_choice=True)
    assert load_config(None, tool_call_parser="mistral", enable_auto_tool_choice=True).server.tool_call_parser


def test_generation_config_setting_reads_the_model_s_a_folder_s_or_none(tmp_path):
    from types import SimpleNamespace

    from jllm.build import _given_generation_config, _sampling_defaults

    loaded = SimpleNamespace(generation_config={"temperature": 0.7, "max_new_tokens": 64, "eos_token_id": 2})
    assert _sampling_defaults("auto", None, loaded) == {"temperature": 0.7, "max_tokens": 64}
    assert _sampling_defaults("vllm", None, loaded) == {}
    (tmp_path / "generation_config.json").write_text('{"top_p": 0.8}')
    folder = _given_generation_config(str(tmp_path))
    assert _sampling_defaults(str(tmp_path), folder, loaded) == {"top_p": 0.8}
    with pytest.raises(ValueError, match=r"generation_config='/nowhere': no /nowhere/generation_config.json"):
        _given_generation_config("/nowhere")


def test_vllm_s_dtype_aliases_half_and_float_are_taken() -> None:
    """vLLM's --dtype half / float (T4 tutorials' habit) had been 'invalid choice'."""
    import jax.numpy as jnp

    from jllm.loader import resolve_dtype

    assert EngineConfig.from_flat({"dtype": "half"}).model.dtype == "half"
    assert resolve_dtype("half", {}) == jnp.float16 and resolve_dtype("float", {}) == jnp.float32


def test_lora_modules_take_vllm_s_json_form_beside_name_equals_path() -> None:
    """vLLM's --lora-modules '{"name": "a", "path": "/p"}' had been refused ('each entry must be "name=path"')."""
    modules = ["a=/adapters/a", '{"name": "b", "path": "/adapters/b=2"}']
    config = EngineConfig.from_flat({"enable_lora": True, "lora_modules": modules})
    assert config.lora.modules == {"a": "/adapters/a", "b": "/adapters/b=2"}
    for bad in ('{"name": "b", "path": "/p", "base_model_name": "m"}', '{"name": "b"}', "{not json", "noequals"):
        with pytest.raises(ConfigError, match='each entry must be "name=path" .* or vLLM\'s JSON'):
            EngineConfig.from_flat({"enable_lora": True, "lora_modules": [bad]})
    with pytest.raises(ConfigError, match="names must be distinct"):
        EngineConfig.from_flat({"enable_lora": True, "lora_modules": ["a=/x", '{"name": "a", "path": "/y"}']})


def test_a_config_file_s_vllm_spellings_fold_as_the_flags_do(tmp_path: Path) -> None:
    """A ``vllm serve --config`` file's keys (block-size, trust-remote-code) had been unknown keys."""
    path = tmp_path / "vllm.yaml"
    path.write_text("block-size: 8\ntrust-remote-code: true\nmax-model-len: 64\n")
    config = load_config(path)
    assert (config.cache.page_size, config.model.max_model_len) == (8, 64)
    assert load_config(path, page_size=32).cache.page_size == 32  # the command line still wins
    path.write_text("enforce-eager: true\n")
    with pytest.raises(ConfigError, match=r"^enforce_eager=True cannot be honoured"):
        load_config(path)
