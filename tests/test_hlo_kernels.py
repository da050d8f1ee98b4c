"""scripts/hlo_kernels.py on canned optimized HLO: the kernels of jllm's forward in execution order, their kinds,
layers (one inferred from its consumer) and counts, and the launches read from XLA's thunk dump. No GPU, no plugin.

``tests/data/hlo_kernels_sample.hlo`` holds two modules from ``scripts/compile_for_gpu.py --layers 2`` (Llama-3-8B's
shapes, H200, autotuning off), trimmed: the stack-frame tables, the Pallas / jax-triton calls' binary backend configs,
the fused computations' metadata and the non-kernel instructions' metadata left out, identical fused computations
shared. The first is the 1-token forward, whole: Triton GEMMs, Pallas calls, the in-place KV write, a copy. The second
is the 2048-token forward with only its cuBLASLt calls, scatters, jax-triton calls and Triton fusion kept (the other
kernels cut, so a GEMM reading one of them shows its operand's shape as '?').
"""

from __future__ import annotations

import importlib
import re
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "scripts"))  # as when run as `python scripts/compile_for_gpu.py`: its siblings import
hlo_kernels = importlib.import_module("hlo_kernels")

SAMPLE = ROOT / "tests" / "data" / "hlo_kernels_sample.hlo"
# the 1-token forward's kernels per layer, in execution order
LAYER0 = ["reduce", "triton-gemm", "loop", "loop-dus", "concat", "loop", "pallas", "pallas", "triton-gemm", "loop",
          "reduce", "triton-gemm", "loop", "triton-gemm", "loop"]  # fmt: skip
LAYER1 = ["reduce", "triton-gemm", "concat", "loop-dus", "concat", "pallas", "pallas", "triton-gemm", "loop", "reduce",
          "triton-gemm", "loop", "triton-gemm", "loop"]  # fmt: skip


@pytest.fixture(scope="module")
def modules() -> list[str]:
    return re.split(r"(?m)^(?=HloModule )", SAMPLE.read_text())[1:]


@pytest.fixture(scope="module")
def decode(modules: list[str]) -> list:
    return hlo_kernels.kernels(hlo_kernels.parse_hlo(modules[0]))


@pytest.fixture(scope="module")
def prefill(modules: list[str]) -> list:
    return hlo_kernels.kernels(hlo_kernels.parse_hlo(modules[1]))


def test_module_is_read_with_its_entry(modules: list[str]) -> None:
    module = hlo_kernels.parse_hlo(modules[0])
    assert (module.name, module.entry, len(module.computations)) == ("jit__lambda", "main.16", 20)
    with pytest.raises(ValueError, match="no ENTRY computation"):
        hlo_kernels.parse_hlo("HloModule empty\n")


def test_decode_kernels_in_execution_order_grouped_by_layer(decode: list) -> None:
    groups = [k.group for k in decode]
    assert groups == ["pre", *["layer0"] * 6, "outside", *["layer0"] * 9, *["layer1"] * 14, "post", "post", "post"]
    assert [k.kind for k in decode if k.group == "layer0"] == LAYER0
    assert [k.kind for k in decode if k.group == "layer1"] == LAYER1
    assert [(k.name, k.kind, k.shape) for k in decode[:1] + decode[7:10] + decode[-1:]] == [
        ("loop_select_fusion", "loop", "bf16[1,4096]"),  # the embedding, before the layers
        ("wrapped_slice", "loop", "u32[128]"),  # the block table's slice, amid layer 0's kernels
        ("pallas_call.10", "pallas", "(f32[16,1,8,16,128], f32[16,1,8,16], f32[16,1,8,16])"),
        ("pallas_call.14", "pallas", "bf16[32,128]"),
        ("copy.11", "copy", "bf16[1,4096]"),
    ]


def test_kernels_without_op_name_take_their_consumers_layer(decode: list) -> None:
    inferred = [(k.name, k.label) for k in decode if k.inferred]
    assert inferred == [
        ("gemm_fusion_dot.20", "layer0*"),  # the split-K QKV projection, read by the KV write's kernels
        ("loop_dynamic_slice_fusion", "layer0*"),
        ("gemm_fusion_dot.21", "layer0*"),
        ("gemm_fusion_dot.22", "layer0*"),
        ("gemm_fusion_dot.23", "layer1*"),
        ("input_concatenate_fusion", "layer1*"),
        ("gemm_fusion_dot.24", "layer1*"),
        ("gemm_fusion_dot.25", "layer1*"),
    ]


def test_contents_name_the_fused_ops_the_dots_and_the_pallas_kernel(decode: list) -> None:
    contents = {k.name: k.contents for k in decode}
    assert contents["gemm_fusion_dot.20"] == "dot(bf16[4,1024,6144] x bf16[4,1024,1])"  # split-K 4
    assert contents["input_convert_reduce_fusion.3"] == "multiply,reduce,add"  # RMSNorm's sum of squares
    assert contents["pallas_call.10"] == "ragged_paged_attention_q1_kv128_s16"
    assert contents["copy.11"] == "of %get-tuple-element.109"


def test_custom_calls_and_their_fusions(prefill: list) -> None:
    layer0 = [(k.name, k.kind, k.contents) for k in prefill if k.group == "layer0"]
    assert layer0 == [
        ("custom-call.8", "cublasLt", "dot(bf16[2048,4096] x bf16[4096,6144])"),
        ("input_scatter_fusion", "scatter", "sign,compare,negate,select,and,shift-right-logical,add,concatenate,..."),
        ("dynamic_slice_fusion", "jax-triton", "triton_kernel_call_ffi"),
        ("cublas-lt-matmul.8", "cublasLt", "dot(bf16[2048,4096] x bf16[4096,4096]) + C:bf16[2048,4096] beta=1"),
        ("custom-call.9", "cublasLt", "dot(bf16[2048,4096] x bf16[4096,28672])"),
        ("cublas-lt-matmul.9", "cublasLt", "dot(? x bf16[14336,4096]) + C:bf16[2048,4096] beta=1"),
    ]
    assert (prefill[-1].name, prefill[-1].kind, prefill[-1].group) == ("fusion.101", "triton", "post")


def test_counts_per_layer_and_kind(decode: list, prefill: list) -> None:
    assert hlo_kernels.layer_counts(decode) == "5 outside the layers; layers: 1 x 14, 1 x 15"
    rows = [line.split() for line in hlo_kernels.count_table(decode).splitlines()]
    assert rows[0] == ["group", "layers", "kernels", "loop", "reduce", "triton-gemm", "loop-dus", "concat", "pallas",
                       "copy"]  # fmt: skip
    assert rows[2] == ["layer0", "1", "15", "5", "2", "4", "1", "1", "2"]
    assert rows[-1] == ["total", "34", "11", "5", "8", "2", "3", "4", "1"]
    prefill_rows = hlo_kernels.count_table(prefill).splitlines()
    assert prefill_rows[1].split() == ["layer0-1", "2", "6", "4", "1", "1"]  # equal layers in one row


def test_kernel_table_shows_the_chosen_groups_numbered_among_all(decode: list) -> None:
    lines = hlo_kernels.kernel_table(decode, {"copy.11": "kCopy"}, {"post"}).splitlines()
    assert lines[0].split() == ["#", "group", "hlo", "kind", "output", "shape", "launch", "contents"]
    assert [line.split()[:3] for line in lines[1:]] == [
        ["31", "post", "input_reduce_fusion"], ["32", "post", "loop_multiply_fusion.2"], ["33", "post", "copy.11"],
    ]  # fmt: skip
    assert "kCopy" in lines[-1]


def test_fused_text_holds_the_kernel_and_its_computations(modules: list[str]) -> None:
    module = hlo_kernels.parse_hlo(modules[0])
    text = hlo_kernels.fused_text(modules[0], module, "loop_add_fusion")
    assert text.startswith("%loop_add_fusion = bf16[1,4096]{1,0} fusion(")
    assert "\n%fused_add (" in text and "\n%region_1.5 (" in text  # the fusion, and the adder its reduce applies


# the 2048-token forward's dump, cut to its first launches (XLA_FLAGS=--xla_dump_to)
SEQUENCE = """\
000: kCommandBuffer      [source       | next=014 (1)]
    007: kCustomKernel   [prev=006 (1) | next=008 (1)] input_convert_reduce_select_fusion grid: [2048, 1, 1] threads: [256, 1, 1]  shared_memory: 0 bytes
    008: kCublasLtMatmul [prev=007 (1) | next=009 (1)] kCublasLtMatmul
    012: kCopy           [source       | sink        ] kCopy
014: kDynamicSliceFusion [prev=000 (1) | next=000 (1)] params=8, results=1
    015: kCustomCall [source | sink] kCustomCall
"""  # noqa: E501
METADATA = "".join(
    f'thunk_metadata {{\n  thunk_info {{\n    profile_annotation: "{name}"\n    thunk_id: {tid}\n  }}\n'
    f'  thunk_kind: "{kind}"\n}}\n'
    for tid, name, kind in [(7, "input_convert_reduce_select_fusion", "kCustomKernel"),
                            (8, "custom-call.8", "kCublasLtMatmul"), (12, "wrapped_slice", "kCopy"),
                            (14, "dynamic_slice_fusion", "kDynamicSliceFusion"), (15, "", "kCustomCall")]
)  # fmt: skip


def test_launches_read_from_the_thunk_dump(tmp_path: Path) -> None:
    (tmp_path / "module_0042.jit__lambda.thunk_sequence_after_thunk_passes.txt").write_text(SEQUENCE)
    (tmp_path / "module_0042.jit__lambda.thunk_metadata.txt").write_text(METADATA)
    launches, summary = hlo_kernels.read_launches(tmp_path, "jit__lambda")
    assert launches["input_convert_reduce_select_fusion"] == (
        "input_convert_reduce_select_fusion grid=2048 block=256 smem=0"
    )
    assert launches["custom-call.8"] == "kCublasLtMatmul"
    assert launches["wrapped_slice"] == "kCopy"
    assert launches["dynamic_slice_fusion"] == "kDynamicSliceFusion{kCustomCall}"
    assert summary == (
        "4 leaf thunks (1 kCustomKernel, 1 kCublasLtMatmul, 1 kCopy, 1 kCustomCall): 1 kernel launches of 1 distinct "
        "kernels, 1 command buffer(s) (CUDA graphs)"
    )
    assert hlo_kernels.read_launches(tmp_path, "jit_other") is None
