"""`bench --compile-check` on a machine without a GPU: Triton's compiler builds the kernels for a
CUDA and a ROCm target, and the byte counts per program match the blocks read and values written."""
import os
import subprocess
import sys
from pathlib import Path

import pytest

from comfyui_zimage_gguf.cli import bench_compile

pytest.importorskip("triton", reason="triton is not installed: nothing to compile")

REPO_ROOT = Path(__file__).resolve().parents[1]


def _run(*argv, cache_dir=None):
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    if cache_dir is not None:
        env["TRITON_CACHE_DIR"] = str(cache_dir)  # compile for real, not from an earlier run's cache
    return subprocess.run([sys.executable, "-m", "comfyui_zimage_gguf", "bench", "--compile-check", *argv],
                          capture_output=True, text=True, timeout=600, cwd=REPO_ROOT.parent, env=env)


def test_compile_check_passes_for_a_legacy_a_k_quant_and_an_i_quant(tmp_path):
    result = _run("--types", "Q8_0", "Q4_K", "IQ4_XS", "--targets", "sm_90", "gfx942", "--dtypes", "bf16", "f32",
                  cache_dir=tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    rows = {tuple(line.split()[:2]): line.split() for line in result.stdout.splitlines()
            if line.split()[:1] in (["Q8_0"], ["Q4_K"], ["IQ4_XS"]) and len(line.split()) > 8}
    # type, out, blocks, read, expected, written, expected, tables, lanes, targets..., result
    assert rows[("Q8_0", "bf16")][2:8] == ["128", "4352", "4352", "8192", "8192", "0"]
    assert rows[("Q4_K", "f32")][2:8] == ["16", "2304", "2304", "16384", "16384", "0"]
    assert rows[("IQ4_XS", "bf16")][2:8] == ["16", "2176", "2176", "8192", "8192", "0"]
    assert rows[("Q8_0", "bf16")][8] == "4352/8192"  # no replicated lanes: every byte loaded by one thread
    for row in rows.values():
        assert row[-3:] == ["sm_90", "gfx942", "ok"]
    assert "6 kernels x dtypes, 12 compiles" in result.stdout and "6 ok, 0 failed" in result.stdout


def test_unknown_target_or_type_is_named():
    result = _run("--types", "Q8_0", "--targets", "sm_90", "rtx4090")
    assert result.returncode == 2
    assert "unknown target 'rtx4090': expected sm_NN (CUDA) or gfxNNN (ROCm)" in result.stdout
    result = _run("--types", "Q8_0", "Q9_9", "--targets", "sm_90")
    assert result.returncode == 2
    assert "no Triton kernel for Q9_9" in result.stdout


PTX = """
.visible .entry k(
	.param .u64 k_param_0,
	.param .u64 k_param_1,
	.param .u64 k_param_2,
	.param .u32 k_param_3
)
{
	ld.param.b64 	%rd1, [k_param_0];
	ld.param.b64 	%rd2, [k_param_1];
	ld.param.b64 	%rd9, [k_param_2];
	mov.u32 	%r1, %tid.x;
	mul.wide.s32 	%rd3, %r1, 18;
	add.s64 	%rd4, %rd1, %rd3;
	@%p1 ld.global.b16 { %rs1 }, [ %rd4 + 0 ];
	ld.global.nc.v4.b32 { %r2, %r3, %r4, %r5 }, [ %rd4 + 2 ];
	cvt.u64.u16 	%rd5, %rs1;
	add.s64 	%rd6, %rd9, %rd5;
	ld.global.b8 { %rs2 }, [ %rd6 + 0 ];
	add.s64 	%rd7, %rd2, %rd3;
	@%p1 st.global.v2.b32 [ %rd7 + 0 ], { %r2, %r3 };
	ret;
}
"""


def test_ptx_traffic_traces_each_access_to_its_parameter():
    # a table load whose index came from a block load counts for the table only
    assert bench_compile.ptx_traffic(PTX) == {"loads": {0: 2 + 16, 2: 1}, "stores": {1: 8}}


TTGIR = """
  tt.func public @k(%src: !tt.ptr<i8> {tt.divisibility = 16 : i32} loc("src"(#loc)), %dst: !tt.ptr<f16> loc("dst"(#loc)), %n_blocks: i32 loc("n_blocks"(#loc))) attributes {noinline = false} {
    %a = tt.splat %src : !tt.ptr<i8> -> tensor<16x2x!tt.ptr<i8>, #blocked> loc(#loc1)
    %b = tt.addptr %a, %off : tensor<16x2x!tt.ptr<i8>, #blocked>, tensor<16x2xi64, #blocked> loc(#loc1)
    %c = tt.load %b, %mask : tensor<16x2x!tt.ptr<i8>, #blocked> loc(#loc1)
    %w = tt.bitcast %src : !tt.ptr<i8> -> !tt.ptr<i16> loc(#loc2)
    %x = tt.splat %w : !tt.ptr<i16> -> tensor<64x!tt.ptr<i16>, #blocked1> loc(#loc2)
    %y = tt.load %x : tensor<64x!tt.ptr<i16>, #blocked1> loc(#loc2)
    %d = tt.splat %dst : !tt.ptr<f16> -> tensor<16x32x!tt.ptr<f16>, #blocked> loc(#loc3)
    tt.store %d, %v, %m : tensor<16x32x!tt.ptr<f16>, #blocked> loc(#loc3)
    tt.return loc(#loc4)
  } loc(#loc)
"""


def test_ttgir_traffic_counts_tensor_bytes_per_argument():
    assert bench_compile.ttgir_traffic(TTGIR) == {"loads": {"src": 32 + 128}, "stores": {"dst": 1024}, "loops": 0}


def test_fused_multiply_adds_are_found_except_exact_multiplies():
    ptx = "\tfma.rn.f32 \t%r95, %r81, %r93, %r94;\n\tmad.lo.s32 \t%r1, %r2, %r3, %r4;\n\tmul.rn.f32 %r5, %r6, %r7;\n"
    assert bench_compile.fused_multiply_adds(ptx) == 1
    amdgcn = ("\tv_pk_fma_f32 v[0:1], v[2:3], v[4:5], v[6:7]\n"
              "\tv_fma_mix_f32 v4, v4, v1, neg(0) op_sel_hi:[1,0,0]\n"  # fp16 widening times v1, plus -0: exact
              "\tv_mad_u64_u32 v[0:1], s[0:1], v2, 18, v[0:1]\n")  # integer address arithmetic
    assert bench_compile.fused_multiply_adds(amdgcn) == 1


def test_the_fused_multiply_add_check_sees_fusion_when_it_is_left_on():
    # the check can fail: d * q + m compiled with fusion on becomes fma instructions (the kernels'
    # own compiles, with fusion off, are checked by the CLI run above)
    import triton
    import triton.language as tl
    from triton.compiler import ASTSource

    def scale_and_shift(src, dst, BLOCK: tl.constexpr):
        i = tl.arange(0, BLOCK)
        tl.store(dst + i, tl.load(src + i) * 0.5 + 0.25)

    kernel = triton.jit(scale_and_shift)
    fused = {}
    for fusion in (True, False):
        source = ASTSource(fn=kernel, signature={"src": "*fp32", "dst": "*fp32", "BLOCK": "constexpr"},
                           constexprs={"BLOCK": 128})
        compiled = triton.compile(source, target=bench_compile.gpu_target("sm_90"),
                                  options={"num_warps": 4, "enable_fp_fusion": fusion})
        fused[fusion] = bench_compile.fused_multiply_adds(compiled.asm["ptx"])
    assert fused[True] > 0 and fused[False] == 0
