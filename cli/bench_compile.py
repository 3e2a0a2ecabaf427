"""`python -m comfyui_zimage_gguf bench --compile-check`: every Triton dequantization kernel compiled
ahead of time for real GPUs on a machine without one, and its memory traffic counted.

For each registered type (ops/ggml/triton_kernels) and output dtype (float16, bfloat16, float32), the
kernel goes through Triton's own compiler (`triton.compile` of an `ASTSource`, `enable_fp_fusion`
off, pointers 16-byte aligned as torch allocates them) for each target: CUDA sm_75, sm_80, sm_86,
sm_89, sm_90 (PTX, then the cubin by the ptxas that ships with the triton wheel) and ROCm gfx942
(AMDGCN and its code object), unless `--targets` names others (`sm_NN`, `gfxNNN`). Then, per
program (one launch grid cell, `blocks_per_program` blocks):

- read / written (checked): the bytes of every `tt.load` / `tt.store` in the kernel's TTGIR (tensor
  elements x element size), traced back to the kernel argument the pointer comes from. Loads from
  `src` must total blocks_per_program x type_size (every block byte once), stores to `dst`
  blocks_per_program x block_size x the output's item size (every value once); loads from
  constant tables are listed apart ("tables") and not counted as block traffic; a load or store
  of anything else, or a loop (`scf.for`/`scf.while`), fails the check.
- PTX lanes (reported, CUDA targets): the `ld.global` / `st.global` instructions of the PTX, their
  widths (`.b8`..`.b64`, `.v2`/`.v4`) summed per thread and times the program's threads
  (num_warps x 32), loads traced back through the registers to the `ld.param` of `src` or a
  table. The kernels have no loops (checked in TTGIR), so every instruction runs at most once per
  thread. Where this equals `read`, no two threads load the same byte; where it is larger, some
  small per-block fields (e.g. the fp16 scale of 16 K-quant blocks: 32 bytes for 128 threads) are
  loaded by several threads at the same addresses (one memory transaction, more instructions).
  For ROCm the AMDGCN `global_load*` / `global_store*` lanes (64 per wavefront) are shown the same way.
- no fused multiply-adds (checked): the torch kernels (and gguf-py) round every product before
  the add; a floating-point `fma` in the PTX or AMDGCN (other than a multiply by way of an fma
  with a -0 addend) fails the check, proof that `enable_fp_fusion=False` took effect.

Output: one line per type and dtype, the targets it compiled for, then a summary; exit status 0
when every kernel compiled for every target and its counts matched, 1 otherwise (2: Triton missing).
The compile needs no GPU and no CUDA toolkit, only the triton wheel; about a second per kernel
and target on one core.
"""
from __future__ import annotations

import re
import time

import torch
from gguf import GGML_QUANT_SIZES

DEFAULT_TARGETS = ("sm_75", "sm_80", "sm_86", "sm_89", "sm_90", "gfx942")
DTYPES = {"f16": ("fp16", 2), "bf16": ("bf16", 2), "f32": ("fp32", 4)}
TABLE_TYPES = {"int8": "i8", "uint8": "u8", "int16": "i16", "uint16": "u16", "int32": "i32", "uint32": "u32",
               "int64": "i64", "float16": "fp16", "float32": "fp32"}
_ELEMENT_BYTES = {"i1": 1, "i8": 1, "i16": 2, "i32": 4, "i64": 8, "f16": 2, "bf16": 2, "f32": 4, "f64": 8}


def add_compile_check_arguments(bench) -> None:
    group = bench.add_argument_group("compile check (--compile-check)")
    group.add_argument("--compile-check", action="store_true",
                       help="compile every Triton kernel for CUDA sm_75..sm_90 and ROCm gfx942 (no GPU needed) "
                            "and check its bytes per program")
    group.add_argument("--targets", nargs="+", default=list(DEFAULT_TARGETS),
                       help=f"compile targets, sm_NN or gfxNNN (default: {' '.join(DEFAULT_TARGETS)})")
    group.add_argument("--dtypes", nargs="+", default=list(DTYPES), choices=list(DTYPES),
                       help="output dtypes (default: f16 bf16 f32)")


def gpu_target(name: str):
    from triton.backends.compiler import GPUTarget

    if re.fullmatch(r"sm_\d+", name):
        return GPUTarget("cuda", int(name[3:]), 32)
    if re.fullmatch(r"gfx[0-9a-f]+", name):
        return GPUTarget("hip", name, 64)
    raise ValueError(f"unknown target {name!r}: expected sm_NN (CUDA) or gfxNNN (ROCm)")


def signature(kernel, out: str) -> tuple[dict, dict]:
    """The ASTSource signature and constexprs of a kernel writing `out` (fp16, bf16, fp32)."""
    arg_names = kernel.fn.arg_names
    types = {"src": "*u8", "dst": f"*{out}", "n_blocks": "i32"}
    tables = [name for name in arg_names if name not in (*types, "BLOCKS")]
    if len(tables) != len(kernel.tables):
        raise ValueError(f"{kernel.name}: {len(tables)} table arguments, {len(kernel.tables)} tables registered")
    for name, build in zip(tables, kernel.tables):
        types[name] = "*" + TABLE_TYPES[str(build().dtype)]
    types["BLOCKS"] = "constexpr"
    return {name: types[name] for name in arg_names}, {"BLOCKS": kernel.blocks_per_program}


# --- TTGIR: logical bytes per program, by the argument each pointer comes from -----------------

_DEF = re.compile(r"^\s*(%[\w.$-]+)(?::\d+)?(?:,\s*%[\w.$-]+)*\s*=\s*([\w.]+)\s*(.*)$")


def _tensor_bytes(type_text: str) -> int:
    match = re.search(r"tensor<([\dx]+)x!tt\.ptr<(\w+)>", type_text)
    if match:
        shape, element = match.groups()
        count = 1
        for size in shape.split("x"):
            count *= int(size)
        return count * _ELEMENT_BYTES[element]
    match = re.search(r"!tt\.ptr<(\w+)>", type_text)
    return _ELEMENT_BYTES[match.group(1)]


def ttgir_traffic(ttgir: str) -> dict:
    """{"loads": {arg: bytes}, "stores": {arg: bytes}, "loops": n} per program, from TTGIR text."""
    header = re.search(r"tt\.func public @\w+\((.*?)\)\s*attributes", ttgir, re.S)
    args = re.findall(r"(%[\w.$-]+):", header.group(1))
    defined = {}
    for line in ttgir.splitlines():
        match = _DEF.match(line)
        if match:
            defined[match.group(1)] = re.findall(r"%[\w.$-]+", match.group(3))

    def origin(value: str) -> str:
        seen = set()
        while value not in args:
            if value in seen or value not in defined or not defined[value]:
                return "?"
            seen.add(value)
            value = defined[value][0]
        return value[1:]

    traffic = {"loads": {}, "stores": {}, "loops": len(re.findall(r"\bscf\.(?:for|while)\b", ttgir))}
    for line in ttgir.splitlines():
        load = re.search(r"= tt\.load (%[\w.$-]+)", line)
        store = re.search(r"^\s*tt\.store (%[\w.$-]+)", line)
        op = load or store
        if op:
            kind = "loads" if load else "stores"
            arg = origin(op.group(1))
            type_text = line.rsplit(" : ", 1)[1]
            traffic[kind][arg] = traffic[kind].get(arg, 0) + _tensor_bytes(type_text)
    return traffic


# --- PTX: lane bytes per thread, loads traced to their parameter -------------------------------

_PTX_INSTRUCTION = re.compile(r"^\s*(?:@!?%p\d+\s+)?([a-z][\w.:]*)\s+(.*?);")


def _width(opcode: str) -> int:
    vector = re.search(r"\.v(\d)\b", opcode)
    size = re.search(r"\.[bsuf](\d+)$", opcode)
    return (int(vector.group(1)) if vector else 1) * int(size.group(1)) // 8


def ptx_traffic(ptx: str) -> dict:
    """{"loads": {param index: bytes per thread}, "stores": {...}}; "?" for an address of unclear origin."""
    defined, params = {}, {}
    instructions = []
    for number, line in enumerate(ptx.splitlines()):
        match = _PTX_INSTRUCTION.match(line)
        if not match:
            continue
        opcode, operands = match.groups()
        instructions.append((number, opcode, operands))
        if opcode.startswith("st.") or opcode.startswith("bra") or opcode.startswith("ret"):
            continue
        head, _, rest = operands.partition(",") if not operands.lstrip().startswith("{") else \
            (operands[:operands.index("}") + 1], "", operands[operands.index("}") + 1:])
        param = re.search(r"\[\w+_param_(\d+)\]", rest)
        for register in re.findall(r"%\w+", head):
            defined[register] = (opcode, re.findall(r"%\w+", rest))
            if opcode.startswith("ld.param") and param:
                params[register] = int(param.group(1))

    def origin(register: str) -> frozenset:
        found, stack, seen = set(), [register], set()
        while stack:
            current = stack.pop()
            if current in seen:
                continue
            seen.add(current)
            if current in params:
                found.add(params[current])
                continue
            opcode, sources = defined.get(current, ("", []))
            if opcode.startswith("ld.") or opcode.startswith("mov.u32") and not sources:
                continue  # a loaded value or a special register: not a pointer base
            stack.extend(sources)
        return frozenset(found)

    traffic = {"loads": {}, "stores": {}}
    for number, opcode, operands in instructions:
        if not (opcode.startswith("ld.global") or opcode.startswith("st.global")):
            continue
        address = re.search(r"\[\s*(%\w+)", operands)
        kind = "loads" if opcode.startswith("ld.") else "stores"
        sources = origin(address.group(1)) if address else frozenset()
        key = next(iter(sources)) if len(sources) == 1 else "?"
        traffic[kind][key] = traffic[kind].get(key, 0) + _width(opcode)
    return traffic


_AMD_WIDTHS = {"ubyte": 1, "sbyte": 1, "byte": 1, "ushort": 2, "sshort": 2, "short": 2, "dword": 4,
               "dwordx2": 8, "dwordx3": 12, "dwordx4": 16, "b8": 1, "b16": 2, "b32": 4, "b64": 8, "b96": 12,
               "b128": 16, "u8": 1, "i8": 1, "u16": 2, "i16": 2}


def amdgcn_traffic(asm: str) -> dict:
    """{"loads": bytes per lane, "stores": ...} of the AMDGCN global/buffer memory instructions."""
    traffic = {"loads": 0, "stores": 0}
    for line in asm.splitlines():
        stripped = line.strip()
        match = re.match(r"^(?:global|buffer)_(load|store)_(?:lds_)?(\w+)", stripped)
        if match:
            kind = "loads" if match.group(1) == "load" else "stores"
            traffic[kind] += _AMD_WIDTHS[match.group(2).replace("d16_", "").replace("hi_", "")]
    return traffic


_EXACT_ADDEND = {"0", "neg(0)", "-0", "0f80000000", "0x80000000"}


def fused_multiply_adds(asm: str) -> int:
    """Floating-point fused multiply-adds in PTX (`fma.rn...`) or AMDGCN (`v_fma*`, `v_mad_f32`...),
    not counting those whose addend is -0 (an exact multiply: LLVM folds fp16 widening into them)."""
    count = 0
    for line in asm.splitlines():
        match = re.match(r"^\s*(?:@!?%p\d+\s+)?(fma\.rn\S*|v_(?:pk_)?(?:fma|fmac|mad|mac)_(?:f32|f16|mix\w*|legacy\w*)"
                         r"(?:_e\d+)?)\s+(.*?)\s*;?\s*$", line)
        if not match:
            continue
        operands = [operand.strip() for operand in match.group(2).split(",")]
        addend = operands[3].split()[0] if len(operands) > 3 else ""
        count += addend not in _EXACT_ADDEND
    return count


# --- the check ---------------------------------------------------------------------------------

def compile_kernel(kernel, out: str, target_name: str):
    import triton
    from triton.compiler import ASTSource

    types, constexprs = signature(kernel, out)
    pointer_args = [index for index, t in enumerate(types.values()) if t.startswith("*")]
    attrs = {(index,): [["tt.divisibility", 16]] for index in pointer_args}
    source = ASTSource(fn=kernel.fn, signature=types, constexprs=constexprs, attrs=attrs)
    return triton.compile(source, target=gpu_target(target_name),
                          options={"num_warps": kernel.num_warps, "enable_fp_fusion": False})


def check_kernel(kernel, dtype_name: str, targets) -> dict:
    """Compile one kernel for one output dtype and every target; its counts and what failed."""
    out, out_bytes = DTYPES[dtype_name]
    block_size, type_size = GGML_QUANT_SIZES[kernel.ggml_type]
    blocks = kernel.blocks_per_program
    expected_read, expected_written = blocks * type_size, blocks * block_size * out_bytes
    arg_names = list(kernel.fn.arg_names)
    row = {"type": kernel.name, "dtype": dtype_name, "blocks": blocks, "expected_read": expected_read,
           "expected_written": expected_written, "read": None, "written": None, "tables": 0,
           "lanes": {}, "compiled": [], "failures": []}
    for target in targets:
        try:
            compiled = compile_kernel(kernel, out, target)
        except Exception as error:  # noqa: BLE001 - a failure is a result of the check
            cause = error
            while cause.__cause__ is not None:
                cause = cause.__cause__
            first = next((line for line in str(cause).splitlines() if line.strip()), type(cause).__name__)
            row["failures"].append(f"{target}: {type(cause).__name__}: {first.strip()[:160]}")
            continue
        row["compiled"].append(target)
        ttgir = ttgir_traffic(compiled.asm["ttgir"])
        loads, stores = dict(ttgir["loads"]), dict(ttgir["stores"])
        read, written = loads.pop("src", 0), stores.pop("dst", 0)
        tables = {name: loads.pop(name) for name in list(loads) if name in arg_names[3:]}
        if row["read"] is None:
            row["read"], row["written"], row["tables"] = read, written, sum(tables.values())
        problems = []
        if ttgir["loops"]:
            problems.append(f"{ttgir['loops']} loop(s) in TTGIR")
        if read != expected_read:
            problems.append(f"reads {read} B of blocks, expected {expected_read}")
        if written != expected_written:
            problems.append(f"writes {written} B, expected {expected_written}")
        if loads or stores:
            problems.append(f"other memory traffic {loads or ''} {stores or ''}")
        threads = kernel.num_warps * (32 if target.startswith("sm_") else 64)
        fused = fused_multiply_adds(compiled.asm["ptx" if target.startswith("sm_") else "amdgcn"])
        if fused:
            problems.append(f"{fused} fused multiply-add(s): each product must be rounded on its own")
        if target.startswith("sm_"):
            ptx = ptx_traffic(compiled.asm["ptx"])
            ptx_loads = dict(ptx["loads"])
            lane_read = ptx_loads.pop(0, 0) * threads
            lane_tables = sum(ptx_loads.pop(arg_names.index(name), 0) for name in tables) * threads
            lane_written = ptx["stores"].get(1, 0) * threads
            if ptx_loads or set(ptx["stores"]) - {1}:
                problems.append(f"PTX memory traffic from elsewhere {ptx_loads} {ptx['stores']}")
            if lane_read < read or lane_written < written:
                problems.append(f"PTX moves fewer bytes than TTGIR ({lane_read}/{lane_written})")
            row["lanes"][target] = (lane_read, lane_written, lane_tables)
        else:
            amd = amdgcn_traffic(compiled.asm["amdgcn"])
            row["lanes"][target] = (amd["loads"] * threads, amd["stores"] * threads, None)
        row["failures"] += [f"{target}: {problem}" for problem in problems]
    return row


def _lanes_cell(row) -> str:
    cuda = {lanes for target, lanes in row["lanes"].items() if target.startswith("sm_")}
    if not cuda:
        return "-"
    cells = sorted(f"{read}/{written}" for read, written, _ in cuda)
    return " | ".join(cells)


def format_rows(rows) -> list[str]:
    headers = ("type", "out", "blocks", "read B", "expected", "written B", "expected", "tables B",
               "PTX lanes read/written", "compiled for", "result")
    table = [headers]
    for row in rows:
        table.append((row["type"], row["dtype"], str(row["blocks"]), str(row["read"]), str(row["expected_read"]),
                      str(row["written"]), str(row["expected_written"]), str(row["tables"]), _lanes_cell(row),
                      " ".join(row["compiled"]) or "-",
                      "ok" if not row["failures"] else "FAIL: " + "; ".join(row["failures"])))
    widths = [max(len(r[i]) for r in table) for i in range(len(headers))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in table]
    lines.insert(1, "-" * len(lines[0]))
    return lines


def run_compile_check(args) -> int:
    try:
        import triton
    except ImportError:
        print("bench --compile-check needs triton (pip install triton); nothing was compiled")
        return 2
    from ..ops.ggml import triton_kernels

    if triton_kernels.interpreting():
        print("bench --compile-check: TRITON_INTERPRET is set; unset it (the interpreter cannot compile)")
        return 2
    for name in args.targets:
        try:
            gpu_target(name)
        except ValueError as error:
            print(f"bench --compile-check: {error}")
            return 2
    registry = triton_kernels.registry()
    names = args.types or [t.name for t in registry]
    unknown = [name for name in names if name not in {t.name for t in registry}]
    if unknown:
        print(f"bench --compile-check: no Triton kernel for {', '.join(unknown)}; "
              f"kernels: {' '.join(t.name for t in registry)}")
        return 2
    started = time.monotonic()
    print(f"triton {triton.__version__}, torch {torch.__version__}; targets: {' '.join(args.targets)}; "
          "bytes per program (read: block bytes loaded, TTGIR; PTX lanes: per-thread ld/st.global x threads)",
          flush=True)
    rows = []
    for name in names:
        kernel = next(k for t, k in registry.items() if t.name == name)
        for dtype_name in args.dtypes:
            rows.append(check_kernel(kernel, dtype_name, args.targets))
            print(f"  {name} {dtype_name}: {'ok' if not rows[-1]['failures'] else 'FAIL'}", flush=True)
    print()
    print("\n".join(format_rows(rows)))
    failed = [row for row in rows if row["failures"]]
    compiles = sum(len(row["compiled"]) for row in rows)
    print(f"{len(rows)} kernels x dtypes, {compiles} compiles in {time.monotonic() - started:.0f} s "
          f"(Triton's cache serves repeats; TRITON_CACHE_DIR=<empty folder> compiles afresh): "
          f"{len(rows) - len(failed)} ok, {len(failed)} failed")
    return 1 if failed else 0
