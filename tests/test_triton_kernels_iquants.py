"""The Triton kernels of the I-quants (IQ1_S..IQ3_S), TQ1_0/TQ2_0, MXFP4/NVFP4 and Q1_0 on the
edges that their random test blocks do not reach, in Triton's interpreter, bit for bit against
the torch kernels in float16, bfloat16 and float32 (and, in float32, against gguf-py itself):
every E8M0 exponent (subnormal, infinite scales), every UE4M3 scale byte (subnormal, 0x7F, bit 7),
IQ1_M's block scale spread over four nibbles, every TQ1_0 byte (those past 242 wrap mod 256), and
programs whose last one is partly masked. tests/test_triton_kernels.py covers the random blocks
of every registered type, with extreme fp16 scales in the fields each kernel names. The last test
compiles four of these kernels for real targets (`bench --compile-check`) and checks their bytes.
"""
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from gguf import GGMLQuantizationType as T

from helpers.kernel_checks import reference
from test_triton_kernels import (  # the module's interpreter fixture and exact comparison
    DTYPES, EXTREME_SCALES, _assert_same_bits, _blocks, _torch_values, _triton_values, interpreted,  # noqa: F401
)

pytest.importorskip("triton", reason="triton is not installed: the Triton kernels cannot be checked")
# float16 overflows to inf on purpose, as do MXFP4's largest scales in float32 (as in gguf-py)
pytestmark = [pytest.mark.filterwarnings("ignore:overflow encountered in cast:RuntimeWarning"),
              pytest.mark.filterwarnings("ignore:overflow encountered in multiply:RuntimeWarning")]

REPO_ROOT = Path(__file__).resolve().parents[1]
TYPES = (T.IQ1_S, T.IQ1_M, T.IQ2_XXS, T.IQ2_XS, T.IQ2_S, T.IQ3_XXS, T.IQ3_S, T.TQ1_0, T.TQ2_0, T.MXFP4, T.NVFP4,
         T.Q1_0)


def _check(kernel, raw: np.ndarray, blocks_per_program=None) -> None:
    """The kernel equals the torch kernel in every dtype, and gguf-py in float32."""
    blocks = torch.from_numpy(np.ascontiguousarray(raw))
    for dtype in DTYPES:
        got = _triton_values(kernel, blocks, dtype, blocks_per_program)
        _assert_same_bits(got, _torch_values(kernel.ggml_type, blocks, dtype), f"{kernel.name} -> {dtype}")
    _assert_same_bits(_triton_values(kernel, blocks, torch.float32, blocks_per_program),
                      reference(raw, kernel.ggml_type), f"{kernel.name} vs gguf-py")


def test_every_type_here_has_a_kernel(interpreted):
    assert set(TYPES) <= set(interpreted)


@pytest.mark.parametrize("ggml_type", TYPES, ids=lambda t: t.name)
def test_small_programs_with_a_partly_masked_last_one(interpreted, ggml_type):
    blocks = _blocks(ggml_type, 11, seed=7).numpy()  # programs of 4: 4 + 4 + 3
    _check(interpreted[ggml_type], blocks, blocks_per_program=4)


def test_iq1_m_block_scale_from_four_nibbles(interpreted):
    # the fp16 d is bits 12-15 of the four uint16 scale words (bytes 49, 51, 53, 55, high nibbles)
    kernel = interpreted[T.IQ1_M]
    n = len(EXTREME_SCALES) + 3
    raw = _blocks(T.IQ1_M, n, seed=11).numpy().copy()
    d = np.concatenate([EXTREME_SCALES, np.array([np.inf, -np.inf, np.nan], dtype=np.float16)])
    d_bytes = d.astype("<f2").view(np.uint8).reshape(n, 2)
    nibbles = np.stack((d_bytes & 15, d_bytes >> 4), axis=-1).reshape(n, 4)
    raw[:, 49:56:2] = (raw[:, 49:56:2] & 0x0F) | (nibbles << 4)
    _check(kernel, raw)


def test_mxfp4_every_exponent_and_code(interpreted):
    # e = 0, 1: subnormal float32 scales; e = 255: 2^127, infinite for codes past 1
    raw = np.zeros((256, 17), dtype=np.uint8)
    raw[:, 0] = np.arange(256)
    codes = np.arange(32, dtype=np.uint8) % 16
    raw[:, 1:17] = codes[:16] | (codes[16:][::-1] << 4)
    _check(interpreted[T.MXFP4], raw)


def test_nvfp4_every_scale_byte(interpreted):
    # UE4M3: subnormals (exponent 0), 0x7F read as zero, bit 7 ignored (0xFF is 480 / 2)
    rng = np.random.default_rng(5)
    raw = rng.integers(0, 256, (64, 36), dtype=np.uint8)
    raw[:, 0:4] = np.arange(256, dtype=np.uint8).reshape(64, 4)
    _check(interpreted[T.NVFP4], raw)


def test_tq1_0_every_byte_value(interpreted):
    # each byte value in every position of qs and qh, 243-255 included (not written by a
    # quantizer; their digits wrap mod 256 as gguf-py's uint8 products do)
    raw = np.zeros((256, 54), dtype=np.uint8)
    raw[:, :52] = (np.arange(256)[:, None] + np.arange(52)[None, :] * 37) % 256
    raw[:, 52:54] = np.float16(0.5).reshape(1).view(np.uint8)
    raw[1::2, 52:54] = np.resize(EXTREME_SCALES, 128).astype("<f2").view(np.uint8).reshape(128, 2)
    _check(interpreted[T.TQ1_0], raw)


def test_compile_check_reads_each_block_byte_once_and_counts_codebooks_apart():
    """The real compiler (sm_90, gfx942) accepts the kernels; per program the block bytes are read
    once, the values written once, and the I-quants' codebook rows are listed as table traffic."""
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    types = ("IQ2_XS", "IQ1_M", "TQ1_0", "MXFP4")
    result = subprocess.run([sys.executable, "-m", "comfyui_zimage_gguf", "bench", "--compile-check", "--types", *types,
                             "--targets", "sm_90", "gfx942", "--dtypes", "bf16"],
                            capture_output=True, text=True, timeout=600, cwd=REPO_ROOT.parent, env=env)
    assert result.returncode == 0, result.stdout + result.stderr
    rows = {line.split()[0]: line.split() for line in result.stdout.splitlines()
            if line.split()[:1] and line.split()[0] in types and len(line.split()) > 8}
    # type, out, blocks, read, expected, written, expected, tables, lanes, targets..., result
    assert rows["IQ2_XS"][2:8] == ["16", "1184", "1184", "8192", "8192", "4096"]  # one int8 grid value per weight
    assert rows["IQ1_M"][2:8] == ["16", "896", "896", "8192", "8192", "4096"]
    assert rows["TQ1_0"][2:8] == ["16", "864", "864", "8192", "8192", "0"]
    assert rows["MXFP4"][2:8] == ["128", "2176", "2176", "8192", "8192", "0"]
    for row in rows.values():
        assert row[-3:] == ["sm_90", "gfx942", "ok"]
