"""The kernels of an optimized XLA:GPU program, read from the text of its HLO module (``compiled.as_text()``).

An optimized module is scheduled: its ENTRY computation's instructions are in execution order, and each fusion,
custom call or copy among them is one launch-level op. This module lists them with their kind (a Triton GEMM fusion,
a cuBLAS(Lt) custom call, a loop / input fusion, a Pallas-Triton or jax-triton call, a copy), output shape and the
ops fused inside, and groups them by the ``layer<i>`` named scope that ``scripts/compile_for_gpu.py`` puts around
each decoder layer. Text only, no JAX: the tests read a canned module on any machine. jllm's step programs have no
``while`` or ``conditional``; one would be listed as a kernel of its own kind.

A kernel's layer comes from its own instruction's ``op_name``, never from the instructions fused inside it: XLA
deduplicates identical fused computations across layers, so their metadata names whichever layer's copy was kept.
A kernel without an ``op_name`` (the GEMM rewriter's split-K dots, some K/V concatenations) takes the layer of the
kernel that consumes its output (``Kernel.inferred``, marked ``*``).

XLA's dump of the runtime's launches (``*.thunk_sequence_after_thunk_passes.txt`` and ``*.thunk_metadata.txt``) adds
each kernel's compiled name after deduplication, grid, block and shared memory (``read_launches``).
"""

from __future__ import annotations

import collections
import dataclasses
import re
from pathlib import Path

_HEADER = re.compile(r"^(ENTRY\s+)?%?([\w.\-]+)\s+\(.*\)\s*->\s*.*\{\s*$")
_INSTRUCTION = re.compile(r"^\s*(ROOT\s+)?%?([\w.\-]+)\s*=\s*(.*)$")
_LAYER = re.compile(r"(?:^|/)layer(\d+)(?:/|$)")
# no kernel of their own: buffer plumbing that the runtime resolves to addresses
_NO_KERNEL = {"parameter", "constant", "get-tuple-element", "tuple", "bitcast", "after-all", "add-dependency",
              "opt-barrier", "domain"}  # fmt: skip
# fused ops left out of a kernel's contents: they move or name data rather than compute
_PLUMBING = {"parameter", "constant", "bitcast", "broadcast", "convert", "reshape", "tuple", "get-tuple-element",
             "copy", "transpose", "slice", "iota", "fusion"}  # fmt: skip
_DOTS = ("dot", "convolution", "ragged-dot", "scaled-dot")
_MAX_CONTENTS = 8

KINDS = {
    "triton-gemm": "XLA's Triton GEMM fusion (a kCustom fusion of a dot)",
    "triton": "XLA's Triton fusion of other ops (a softmax)",
    "cublas": "cuBLAS GEMM custom call",
    "cublasLt": "cuBLASLt matmul custom call (beta=1: the residual added as C)",
    "cublasLt-fp8": "cuBLASLt FP8 matmul custom call",
    "pallas": "Pallas-Triton kernel (custom call __gpu$xla.gpu.triton), named by its op_name",
    "jax-triton": "jax-triton kernel (FFI call triton_kernel_call*, alone or in a dynamic-slice fusion)",
    "loop": "loop fusion (elementwise work, gathers, slices)",
    "loop-dus": "loop fusion writing a dynamic-update-slice in place",
    "reduce": "input fusion with a reduction",
    "concat": "input fusion with a concatenate",
    "scatter": "input fusion with a scatter",
    "sort": "fusion with a sort",
    "input": "other input fusion",
    "copy": "device copy",
}
_CUBLAS = {"__cublas$gemm": "cublas", "__cublas$lt$matmul": "cublasLt", "__cublas$lt$matmul$f8": "cublasLt-fp8"}
_INPUT_HEROES = {"scatter": "scatter", "reduce": "reduce", "concatenate": "concat", "sort": "sort"}


@dataclasses.dataclass(frozen=True)
class Instruction:
    name: str
    shape: str  # with layouts: 'bf16[1,4096]{1,0}', or a tuple '(f32[], bf16[1,4096]{1,0})'
    opcode: str
    body: str  # the text after the shape: opcode, operands, attributes
    root: bool
    operands: tuple[str, ...]

    def attr(self, key: str) -> str | None:
        """An attribute naming an instruction or computation (``calls=%fused_add``) or a word (``kind=kLoop``)."""
        m = re.search(r"\b" + re.escape(key) + r"=%?([\w.\-]+)", self.body)
        return m.group(1) if m else None

    def quoted(self, key: str) -> str | None:
        """A string attribute: ``custom_call_target="..."``, the metadata's ``op_name="..."``."""
        m = re.search(r"\b" + re.escape(key) + r'="([^"]*)"', self.body)
        return m.group(1) if m else None

    def called(self) -> list[str]:
        """The computations this instruction calls (a fusion's, a reduce's ``to_apply``, a sort's comparator)."""
        return [c for c in map(self.attr, ("calls", "to_apply")) if c]


@dataclasses.dataclass(frozen=True)
class Module:
    name: str
    computations: dict[str, list[Instruction]]
    entry: str

    def reachable(self, computation: str | None) -> list[str]:
        """``computation`` and every computation it calls, recursively, in the order met."""
        order: list[str] = []
        todo = [computation]
        while todo:
            name = todo.pop(0)
            if name is None or name in order or name not in self.computations:
                continue
            order.append(name)
            todo += [c for ins in self.computations[name] for c in ins.called()]
        return order

    def root_opcodes(self, computation: str | None) -> set[str]:
        """What a computation's root computes: its opcode, seen through a root tuple's elements and bitcasts."""
        by_name = {i.name: i for i in self.computations.get(computation or "", [])}
        todo = [i for i in by_name.values() if i.root]
        found: set[str] = set()
        while todo:
            ins = todo.pop()
            if ins.opcode in ("tuple", "bitcast"):
                todo += [by_name[o] for o in ins.operands if o in by_name]
            else:
                found.add(ins.opcode)
        return found


@dataclasses.dataclass(frozen=True)
class Kernel:
    name: str  # the ENTRY instruction
    kind: str  # a key of KINDS, else 'custom-fusion:<config>', 'custom-call:<target>' or the opcode
    shape: str  # output shape without layouts
    contents: str  # the fused ops (dots with their operand shapes first), a GEMM's operands or a kernel's name
    group: str  # 'layer<i>'; 'pre', 'outside' or 'post' for one in no layer (before / amid / after the layers')
    inferred: bool = False  # no op_name of its own: the layer of the kernel consuming its output

    @property
    def label(self) -> str:
        return self.group + ("*" if self.inferred else "")


def _split_shape(rest: str) -> tuple[str, str]:
    """'bf16[1,2]{1,0} add(%a, %b), ...' -> ('bf16[1,2]{1,0}', 'add(%a, %b), ...')."""
    depth = 0
    for i, ch in enumerate(rest):
        if ch in "([{":
            depth += 1
        elif ch in ")]}":
            depth -= 1
        elif ch == " " and depth == 0:
            return rest[:i], rest[i + 1 :]
    return rest, ""


def _operands(body: str, opcode: str) -> tuple[str, ...]:
    start = len(opcode) + 1
    depth, end = 1, start
    while end < len(body) and depth:
        depth += {"(": 1, ")": -1}.get(body[end], 0)
        end += 1
    return tuple(re.findall(r"%([\w.\-]+)", body[start : end - 1]))


def _instruction(line: str) -> Instruction | None:
    m = _INSTRUCTION.match(line)
    if not m:
        return None
    shape, body = _split_shape(m.group(3))
    opcode = op.group(1) if (op := re.match(r"([\w\-]+)\(", body)) else body.split("(")[0]
    return Instruction(m.group(2), shape, opcode, body, bool(m.group(1)), _operands(body, opcode))


def parse_hlo(text: str) -> Module:
    """The computations of an HLO module's text, each a list of instructions in the text's order."""
    computations: dict[str, list[Instruction]] = {}
    entry, current = None, None
    for line in text.splitlines():
        if current is None:
            if m := _HEADER.match(line):
                current = m.group(2)
                computations[current] = []
                entry = current if m.group(1) else entry
        elif line.strip() == "}":
            current = None
        elif ins := _instruction(line):
            computations[current].append(ins)
    if entry is None:
        raise ValueError("no ENTRY computation in the text: is it an HLO module's (compiled.as_text())?")
    name = m.group(1) if (m := re.match(r"HloModule ([\w.\-]+)", text)) else ""
    return Module(name, computations, entry)


def _strip_layout(shape: str) -> str:
    """'bf16[1,4096]{1,0}' -> 'bf16[1,4096]' (a tiled layout's nested braces too)."""
    return re.sub(r"\{[^{}]*\}", "", re.sub(r"\{[^{}]*\{[^{}]*\}[^{}]*\}", "", shape))


def _operand_shapes(computation: list[Instruction], ins: Instruction) -> list[str]:
    shapes = {i.name: i.shape for i in computation}
    return [_strip_layout(shapes.get(o, "?")) for o in ins.operands]


def _contents(module: Module, computation: str | None) -> str:
    """A fusion's dots with their operand shapes, then its other ops' opcodes (custom calls by target), in order."""
    dots, ops = [], []
    for name in module.reachable(computation):
        instructions = module.computations[name]
        for ins in instructions:
            if ins.opcode in _DOTS:
                dots.append(f"{ins.opcode}({' x '.join(_operand_shapes(instructions, ins)[:2])})")
            elif ins.opcode == "custom-call":
                ops.append(ins.quoted("custom_call_target") or "custom-call")
            elif ins.opcode not in _PLUMBING:
                ops.append(ins.opcode)
    ops = list(dict.fromkeys(ops))
    text = ",".join(ops[:_MAX_CONTENTS]) + (",..." if len(ops) > _MAX_CONTENTS else "")
    return "; ".join(dots) + (" + " + text if dots and text else text)


def _hero(module: Module, computation: str | None) -> str:
    """An input fusion's kind from its hero, the op nearest its root (breadth-first through the operands) that XLA's
    input emitters tile by: a concatenate under a select is still a concatenate fusion. Never behind a broadcast: a
    scalar reduced there (a predicate) is recomputed by every thread, not the fusion's hero."""
    by_name = {i.name: i for i in module.computations.get(computation or "", [])}
    todo, seen = collections.deque(i for i in by_name.values() if i.root), set()
    while todo:
        ins = todo.popleft()
        if ins.opcode in _INPUT_HEROES:
            return _INPUT_HEROES[ins.opcode]
        seen.add(ins.name)
        if ins.opcode != "broadcast":
            todo += [by_name[o] for o in ins.operands if o in by_name and o not in seen]
    return "input"


def _fusion_kind(module: Module, ins: Instruction) -> str:
    called = ins.attr("calls")
    kind = ins.attr("kind")
    if kind == "kLoop":
        return "loop-dus" if "dynamic-update-slice" in module.root_opcodes(called) else "loop"
    if kind == "kInput":
        return _hero(module, called)
    if kind != "kCustom":
        return f"fusion:{kind}"
    inner = [i for c in module.reachable(called) for i in module.computations[c]]
    config = m.group(1) if (m := re.search(r'"fusion_backend_config":\{"kind":"([^"]+)"', ins.body)) else "none"
    if any((i.quoted("custom_call_target") or "").startswith("triton_kernel_call") for i in inner):
        return "jax-triton"
    if any(i.opcode == "sort" for i in inner):  # XLA's sort, or the fallback where CUB's is not taken
        return "sort"
    if "gemm" in config:
        return "triton-gemm"
    return "triton" if config == "__triton" else f"custom-fusion:{config}"


def _custom_call(entry: list[Instruction], ins: Instruction) -> tuple[str, str]:
    """A custom call's kind and contents: a GEMM's operand shapes (and beta, epilogue), a Pallas kernel's name."""
    target = ins.quoted("custom_call_target") or "?"
    if target in _CUBLAS:
        a, b, *c = _operand_shapes(entry, ins)
        text = f"dot({a} x {b})" + (f" + C:{c[0]}" if c else "")
        beta = re.search(r'"beta":([\d.eE+-]+)', ins.body)
        epilogue = re.search(r'"epilogue":"([A-Z_]+)"', ins.body)
        text += f" beta={beta.group(1)}" if beta and float(beta.group(1)) else ""
        text += f" epilogue={epilogue.group(1)}" if epilogue and epilogue.group(1) != "DEFAULT" else ""
        return _CUBLAS[target], text
    if target == "__gpu$xla.gpu.triton":  # op_name '.../<kernel name>/pallas_call'
        parts = (ins.quoted("op_name") or "").split("/")
        return "pallas", parts[-2] if len(parts) > 1 else target
    if target.startswith("triton_kernel_call"):
        return "jax-triton", target
    return f"custom-call:{target}", target


def _kind(module: Module, ins: Instruction) -> tuple[str, str] | None:
    """(kind, contents) of an ENTRY instruction, or None where it launches nothing."""
    if ins.opcode == "fusion":
        return _fusion_kind(module, ins), _contents(module, ins.attr("calls"))
    if ins.opcode == "custom-call":
        return _custom_call(module.computations[module.entry], ins)
    if ins.opcode in ("copy", "copy-start"):
        return "copy", "of " + ",".join("%" + o for o in ins.operands)
    return None if ins.opcode in _NO_KERNEL or ins.opcode.endswith("-done") else (ins.opcode, "")


def _own_layer(ins: Instruction) -> int | str | None:
    """The last ``layer<i>`` scope of the instruction's op_name; 'none' for an op_name outside the layers."""
    op_name = ins.quoted("op_name")
    if op_name is None:
        return None
    layers = [int(x) for x in _LAYER.findall(op_name)]
    return layers[-1] if layers else "none"


def _infer_layers(entry: list[Instruction], layers: dict[str, int | str | None]) -> set[str]:
    """Gives each kernel without an op_name the layer of its first consumer kernel that has one, looking through the
    non-kernel instructions between them (bitcasts, tuples); the names of the kernels given one."""
    users = collections.defaultdict(list)
    for ins in entry:
        for o in ins.operands:
            users[o].append(ins.name)
    inferred: set[str] = set()
    changed = True
    while changed:
        changed = False
        for name in [n for n, layer in layers.items() if layer is None]:
            todo, seen = list(users[name]), set()
            while todo and layers[name] is None:
                user = todo.pop(0)
                if user in seen:
                    continue
                seen.add(user)
                if user not in layers:
                    todo += users[user]
                elif layers[user] is not None:
                    layers[name], changed = layers[user], True
                    inferred.add(name)
    return inferred


def kernels(module: Module) -> list[Kernel]:
    """ENTRY's launch-level ops in execution order, each with its kind, contents and group."""
    entry = module.computations[module.entry]
    found = [(ins, kind) for ins in entry if (kind := _kind(module, ins)) is not None]
    layers = {ins.name: _own_layer(ins) for ins, _ in found}
    inferred = _infer_layers(entry, layers)
    numbered = [k for k, (ins, _) in enumerate(found) if isinstance(layers[ins.name], int)]
    first, last = (numbered[0], numbered[-1]) if numbered else (0, len(found))  # no layers: every one 'outside'
    out = []
    for k, (ins, (kind, contents)) in enumerate(found):
        layer = layers[ins.name]
        group = f"layer{layer}" if isinstance(layer, int) else "pre" if k < first else "post" if k > last else "outside"
        out.append(Kernel(ins.name, kind, _strip_layout(ins.shape), contents, group, ins.name in inferred))
    return out


def layer_counts(found: list[Kernel]) -> str:
    """'5 outside the layers; layers: 1 x 15, 31 x 14' (N layers of K kernels)."""
    per_group = collections.Counter(k.group for k in found)
    layers = collections.Counter(n for g, n in per_group.items() if g.startswith("layer"))
    outside = sum(n for g, n in per_group.items() if not g.startswith("layer"))
    return f"{outside} outside the layers; layers: " + ", ".join(f"{c} x {n}" for n, c in sorted(layers.items()))


def _runs(found: list[Kernel]) -> list[tuple[str, collections.Counter]]:
    """Per group in order of first appearance its kinds' counts; consecutive layers of equal counts merged."""
    per_group: dict[str, collections.Counter] = {}
    for k in found:
        per_group.setdefault(k.group, collections.Counter())[k.kind] += 1
    runs: list[tuple[list[str], collections.Counter]] = []
    for group, counts in per_group.items():
        last = runs[-1][0][-1] if runs else ""
        consecutive = last.startswith("layer") and group.startswith("layer") and int(group[5:]) == int(last[5:]) + 1
        if consecutive and runs[-1][1] == counts:
            runs[-1][0].append(group)
        else:
            runs.append(([group], counts))
    return [(g[0] if len(g) == 1 else f"{g[0]}-{g[-1][5:]}", counts) for g, counts in runs]


def count_table(found: list[Kernel]) -> str:
    """Kernels per group (per layer) and kind, one row per run of consecutive layers with equal counts."""
    kinds = list(dict.fromkeys(k.kind for k in found))
    rows = [["group", "layers", "kernels", *kinds]]
    for group, counts in _runs(found):
        span = group[5:].split("-") if group.startswith("layer") else []
        layers = str(int(span[-1]) - int(span[0]) + 1) if span else ""
        rows.append([group, layers, str(sum(counts.values())), *(str(counts[kind] or "") for kind in kinds)])
    rows.append(["total", "", str(len(found)), *(str(sum(k.kind == kind for k in found)) for kind in kinds)])
    return format_rows(rows)


def format_rows(rows: list[list[str]], max_width: int = 60) -> str:
    """Columns padded to their widest cell (at most ``max_width``; the last column never padded)."""
    widths = [min(max_width, max(len(r[c]) for r in rows)) for c in range(len(rows[0]))]
    return "\n".join("  ".join(v.ljust(w) for v, w in zip(r, widths, strict=True)).rstrip() for r in rows)


def kernel_table(found: list[Kernel], launches: dict[str, str] | None = None, groups: set[str] | None = None) -> str:
    """One line per kernel (of ``groups`` only, if given), numbered in execution order among all of them."""
    rows = [["#", "group", "hlo", "kind", "output shape", *(["launch"] if launches else []), "contents"]]
    for i, k in enumerate(found):
        if groups is None or k.group in groups:
            launch = [launches.get(k.name, "")] if launches else []
            rows.append([str(i), k.label, k.name, k.kind, k.shape, *launch, k.contents])
    return format_rows(rows)


def fused_text(text: str, module: Module, name: str) -> str:
    """A kernel instruction's line and the text of every computation it calls: what the kernel computes, in full."""
    ins = next(i for i in module.computations[module.entry] if i.name == name)
    blocks = {m.group(1): m.group(0) for m in re.finditer(r"^%?([\w.\-]+) \(.*?^\}", text, re.M | re.S)}
    line = next(line for line in text.splitlines() if re.match(rf"\s*(ROOT )?%?{re.escape(name)} = ", line))
    return "\n".join([line.strip(), *(blocks[c] for c in module.reachable(ins.attr("calls")) if c in blocks)])


@dataclasses.dataclass(frozen=True)
class Thunk:
    kind: str  # kCustomKernel, kCopy, kCommandBuffer, kDynamicSliceFusion, ...
    kernel: str  # the compiled kernel's name (deduplicated: equal kernels share one)
    launch: str  # 'grid=8x16 block=128 smem=74240' for a kernel
    hlo: str  # the instruction it runs (the metadata's profile annotation)
    children: tuple[str, ...]  # the kinds of the thunks nested in it (a command buffer's, a fusion's)


_THUNK = re.compile(
    r"^(\s*)(\d+): (k\w+)\s+\[[^\]]*\]\s*(\S*)"
    r"(?: grid: \[([^\]]*)\] threads: \[([^\]]*)\]\s+shared_memory: (\d+) bytes)?"
)
_CONTAINERS = ("kCommandBuffer", "kSequential", "kWhile", "kConditional")


def _dims(text: str) -> str:
    return "x".join(d.strip() for d in text.split(",") if d.strip() != "1") or "1"


def parse_thunks(sequence: str, metadata: str) -> list[Thunk]:
    """XLA's thunk sequence (the runtime's launches in order, nested by indentation), each named by its instruction
    from the thunk metadata."""
    names = {}
    for m in re.finditer(r"thunk_info \{(.*?)\}\s*thunk_kind: \"(\w+)\"", metadata, re.S):
        tid = re.search(r"thunk_id: (\d+)", m.group(1))
        annotation = re.search(r'profile_annotation: "([^"]*)"', m.group(1))
        names[int(tid.group(1)) if tid else 0] = annotation.group(1) if annotation else ""
    parsed = [m.groups() for line in sequence.splitlines() if (m := _THUNK.match(line))]
    out = []
    for k, (indent, tid, kind, kernel, grid, threads, smem) in enumerate(parsed):
        nested = []
        for deeper, _, child, *_ in parsed[k + 1 :]:
            if len(deeper) <= len(indent):
                break
            nested.append(child)
        launch = f"grid={_dims(grid)} block={_dims(threads)} smem={smem}" if grid is not None else ""
        out.append(Thunk(kind, kernel, launch, names.get(int(tid), ""), tuple(nested)))
    return out


def read_launches(dump_dir: Path, module_name: str) -> tuple[dict[str, str], str] | None:
    """From an XLA dump (``xla_dump_to``): each instruction's launch ('<kernel> grid=.. block=.. smem=..', 'kCopy',
    'kDynamicSliceFusion{kCustomCall}') and a line counting them; None where the dump has no thunk sequence."""
    sequences = sorted(dump_dir.glob(f"module_*.{module_name}.thunk_sequence_after_thunk_passes.txt"))
    if not sequences:
        return None
    metadata = Path(str(sequences[-1]).replace(".thunk_sequence_after_thunk_passes.", ".thunk_metadata."))
    thunks = parse_thunks(sequences[-1].read_text(), metadata.read_text() if metadata.exists() else "")
    launches: dict[str, str] = {}
    for t in thunks:
        text = f"{t.kernel} {t.launch}" if t.launch else t.kind
        nested = "{" + ",".join(t.children) + "}" if t.children and t.kind not in _CONTAINERS else ""
        launches.setdefault(t.hlo, text + nested)
    leaves = [t for t in thunks if not t.children and t.kind not in _CONTAINERS]
    kernels_launched = [t for t in leaves if t.launch]
    kinds = collections.Counter(t.kind for t in leaves)
    summary = (
        f"{len(leaves)} leaf thunks ({', '.join(f'{n} {k}' for k, n in kinds.most_common())}): "
        f"{len(kernels_launched)} kernel launches of {len({t.kernel for t in kernels_launched})} distinct kernels, "
        f"{sum(t.kind == 'kCommandBuffer' for t in thunks)} command buffer(s) (CUDA graphs)"
    )
    return launches, summary
