"""Open-time benchmark: `load_gguf` against gguf-py's `GGUFReader` on a Qwen3-4B-shaped text encoder.

The file is generated once and cached outside the repository. It carries what a real llama.cpp
Qwen3-4B GGUF carries at open time: the qwen3.* hyperparameters, the full byte-level BPE
tokenizer (151,936 tokens, their types, 151,387 merges) and the real tensor table (36 blocks,
real shapes, Q4_0/Q8_0/F32). The tensor data is all zeros, left as a sparse hole, because opening a
file never reads it: the file has its real size (about 2.3 GB) but takes almost no disk space.
"""
from __future__ import annotations

import os
import random
import statistics
import time
from pathlib import Path

import numpy as np
from gguf import GGMLQuantizationType, GGUFReader, GGUFValueType, GGUFWriter, LlamaFileType

from ..ops.ggml.quant_types import tensor_bytes
from ..ops.gguf_file.reader import load_gguf

DEFAULT_CACHE_DIR = Path.home() / ".cache" / "comfyui_zimage_gguf" / "bench"
# Bump the suffix whenever the generated content changes, so stale cached files are not reused.
BENCH_FILE_NAME = "qwen3-4b-shaped-q4_0.v1.gguf"

N_VOCAB = 151_936
N_REGULAR_TOKENS = 151_643  # byte-level BPE tokens; the rest are special and padding tokens
N_MERGES = 151_387
N_EMBD = 2560
N_LAYERS = 36
N_FF = 9728
N_HEAD = 32
N_HEAD_KV = 8
HEAD_DIM = 128
BOS_EOS_PAD_IDS = (151_643, 151_645, 151_643)
SPECIAL_TOKENS = [
    "<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|object_ref_start|>", "<|object_ref_end|>",
    "<|box_start|>", "<|box_end|>", "<|quad_start|>", "<|quad_end|>", "<|vision_start|>",
    "<|vision_end|>", "<|vision_pad|>", "<|image_pad|>", "<|video_pad|>", "<tool_call>", "</tool_call>",
    "<|fim_prefix|>", "<|fim_middle|>", "<|fim_suffix|>", "<|fim_pad|>", "<|repo_name|>", "<|file_sep|>",
    "<tool_response>", "</tool_response>", "<think>", "</think>",
]
TOKEN_TYPE_NORMAL, TOKEN_TYPE_CONTROL = 1, 3
CHAT_TEMPLATE = (
    "{%- for message in messages %}\n"
    "    {%- if message.role == 'system' %}{{- '<|im_start|>system\\n' + message.content + '<|im_end|>\\n' }}\n"
    "    {%- elif message.role == 'user' %}{{- '<|im_start|>user\\n' + message.content + '<|im_end|>\\n' }}\n"
    "    {%- elif message.role == 'assistant' %}\n"
    "        {{- '<|im_start|>assistant\\n' }}\n"
    "        {%- if message.reasoning_content %}{{- '<think>\\n' + message.reasoning_content + '\\n</think>\\n\\n' }}"
    "{%- endif %}\n"
    "        {{- message.content + '<|im_end|>\\n' }}\n"
    "    {%- endif %}\n"
    "{%- endfor %}\n"
    "{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}\n"
    "    {%- if enable_thinking is defined and enable_thinking is false %}{{- '<think>\\n\\n</think>\\n\\n' }}{%- endif %}\n"
    "{%- endif %}\n"
)


def _byte_level_alphabet() -> list[str]:
    """GPT-2 byte-level BPE: printable bytes stand for themselves, the others for code points from 256 up."""
    printable = [*range(ord("!"), ord("~") + 1), *range(0xA1, 0xAC + 1), *range(0xAE, 0xFF + 1)]
    alphabet = {}
    next_code = 256
    for byte in range(256):
        if byte in printable:
            alphabet[byte] = chr(byte)
        else:
            alphabet[byte] = chr(next_code)
            next_code += 1
    return [alphabet[byte] for byte in range(256)]


def _vocabulary(rng: random.Random) -> tuple[list[str], list[int], list[str]]:
    """Tokens, token types and merges shaped like Qwen's: English pieces with and without a leading
    space (Ġ), CJK text as byte-level characters, digits and punctuation runs."""
    alphabet = _byte_level_alphabet()
    letters = "etaoinshrdlcumwfgypbvkjxqz"
    seen: set[str] = set()
    tokens = list(alphabet)
    seen.update(tokens)
    while len(tokens) < N_REGULAR_TOKENS:
        kind = rng.random()
        if kind < 0.7:
            raw = ("" if rng.random() < 0.4 else " ") + "".join(rng.choices(letters, k=rng.randint(2, 10)))
            raw_bytes = raw.encode()
        elif kind < 0.9:
            raw_bytes = "".join(chr(rng.randint(0x4E00, 0x9FFF)) for _ in range(rng.randint(1, 3))).encode()
        else:
            raw_bytes = "".join(rng.choices("0123456789.,;:!?()[]{}<>-_=+*/\\'\"#", k=rng.randint(2, 6))).encode()
        token = "".join(alphabet[b] for b in raw_bytes)
        if token not in seen:
            seen.add(token)
            tokens.append(token)
    merges = []
    for token in tokens[256 : 256 + N_MERGES]:
        split = rng.randint(1, len(token) - 1)
        merges.append(f"{token[:split]} {token[split:]}")
    specials = SPECIAL_TOKENS + [f"[PAD{i}]" for i in range(N_VOCAB - N_REGULAR_TOKENS - len(SPECIAL_TOKENS))]
    token_types = [TOKEN_TYPE_NORMAL] * N_REGULAR_TOKENS + [TOKEN_TYPE_CONTROL] * len(specials)
    return tokens + specials, token_types, merges


def _tensor_table() -> list[tuple[str, tuple[int, ...], GGMLQuantizationType]]:
    """(name, numpy-order shape, type) of every tensor of a llama.cpp Qwen3-4B GGUF (tied embeddings)."""
    q_width, kv_width = N_HEAD * HEAD_DIM, N_HEAD_KV * HEAD_DIM
    table = [("token_embd.weight", (N_VOCAB, N_EMBD), GGMLQuantizationType.Q8_0)]
    for block in range(N_LAYERS):
        prefix = f"blk.{block}"
        table += [
            (f"{prefix}.attn_norm.weight", (N_EMBD,), GGMLQuantizationType.F32),
            (f"{prefix}.attn_q.weight", (q_width, N_EMBD), GGMLQuantizationType.Q4_0),
            (f"{prefix}.attn_k.weight", (kv_width, N_EMBD), GGMLQuantizationType.Q4_0),
            (f"{prefix}.attn_v.weight", (kv_width, N_EMBD), GGMLQuantizationType.Q4_0),
            (f"{prefix}.attn_output.weight", (N_EMBD, q_width), GGMLQuantizationType.Q4_0),
            (f"{prefix}.attn_q_norm.weight", (HEAD_DIM,), GGMLQuantizationType.F32),
            (f"{prefix}.attn_k_norm.weight", (HEAD_DIM,), GGMLQuantizationType.F32),
            (f"{prefix}.ffn_norm.weight", (N_EMBD,), GGMLQuantizationType.F32),
            (f"{prefix}.ffn_gate.weight", (N_FF, N_EMBD), GGMLQuantizationType.Q4_0),
            (f"{prefix}.ffn_up.weight", (N_FF, N_EMBD), GGMLQuantizationType.Q4_0),
            (f"{prefix}.ffn_down.weight", (N_EMBD, N_FF), GGMLQuantizationType.Q4_0),
        ]
    table.append(("output_norm.weight", (N_EMBD,), GGMLQuantizationType.F32))
    return table


def _write_bench_file(path: Path) -> None:
    rng = random.Random(0)
    tokens, token_types, merges = _vocabulary(rng)
    writer = GGUFWriter(path, "qwen3")
    writer.add_type("model")
    writer.add_name("Qwen3 4B (benchmark stand-in)")
    writer.add_basename("Qwen3")
    writer.add_size_label("4B")
    writer.add_license("apache-2.0")
    writer.add_context_length(40960)
    writer.add_embedding_length(N_EMBD)
    writer.add_block_count(N_LAYERS)
    writer.add_feed_forward_length(N_FF)
    writer.add_head_count(N_HEAD)
    writer.add_head_count_kv(N_HEAD_KV)
    writer.add_key_length(HEAD_DIM)
    writer.add_value_length(HEAD_DIM)
    writer.add_rope_freq_base(1_000_000.0)
    writer.add_layer_norm_rms_eps(1e-6)
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre("qwen2")
    writer.add_token_list(tokens)
    writer.add_key_value("tokenizer.ggml.token_type", token_types, GGUFValueType.ARRAY, sub_type=GGUFValueType.INT32)
    writer.add_token_merges(merges)
    bos, eos, pad = BOS_EOS_PAD_IDS
    writer.add_eos_token_id(eos)
    writer.add_pad_token_id(pad)
    writer.add_bos_token_id(bos)
    writer.add_add_bos_token(False)
    writer.add_chat_template(CHAT_TEMPLATE)
    writer.add_quantization_version(2)
    writer.add_file_type(LlamaFileType.MOSTLY_Q4_0)
    data_bytes = 0
    for name, shape, ggml_type in _tensor_table():
        n_bytes = tensor_bytes(ggml_type, shape)
        writer.add_tensor_info(name, shape, np.dtype(np.float32), n_bytes, raw_dtype=ggml_type)
        data_bytes += -(-n_bytes // writer.data_alignment) * writer.data_alignment
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_ti_data_to_file()
    writer.close()
    # Zero-filled tensor data without writing it: growing the file leaves a sparse hole that reads as zeros.
    header_bytes = path.stat().st_size
    data_start = -(-header_bytes // writer.data_alignment) * writer.data_alignment
    with open(path, "r+b") as handle:
        handle.truncate(data_start + data_bytes)


def bench_file(cache_dir: str | os.PathLike | None = None) -> Path:
    """The cached benchmark file, generated on first use."""
    directory = Path(cache_dir) if cache_dir else DEFAULT_CACHE_DIR
    path = directory / BENCH_FILE_NAME
    if not path.exists():
        directory.mkdir(parents=True, exist_ok=True)
        partial = path.with_name(path.name + ".partial")
        print(f"generating {path} (once) ...", flush=True)
        start = time.perf_counter()
        _write_bench_file(partial)
        os.replace(partial, path)
        print(f"  written in {time.perf_counter() - start:.1f} s", flush=True)
    return path


def _median_seconds(fn, repeat: int) -> tuple[float, object]:
    """Median time of `repeat` calls, and what the last call returned."""
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times), result


def _open_ours(path: Path) -> tuple:
    f = load_gguf(path)
    meta = f.metadata
    return f.architecture, meta["qwen3.block_count"], meta["qwen3.embedding_length"], meta["tokenizer.ggml.model"]


def _open_gguf_py(path: Path) -> tuple:
    reader = GGUFReader(path)
    return tuple(
        reader.fields[key].contents()
        for key in ("general.architecture", "qwen3.block_count", "qwen3.embedding_length", "tokenizer.ggml.model")
    )


def _decode_tokens(path: Path) -> int:
    return len(load_gguf(path).metadata["tokenizer.ggml.tokens"])


def run_open_bench(cache_dir: str | os.PathLike | None = None, repeat: int = 7, gguf_py_repeat: int = 3) -> dict:
    """Median open times of both readers on the cached file; prints them and returns them (seconds)."""
    path = bench_file(cache_dir)
    gguf_file = load_gguf(path)  # also the warm-up: the metadata pages are now in the page cache for both readers
    print(
        f"\nopening {path.name}: {path.stat().st_size / 1e9:.2f} GB, {len(gguf_file.tensors)} tensors, "
        f"{len(gguf_file.metadata)} metadata entries, "
        f"{gguf_file.metadata.array_length('tokenizer.ggml.tokens')} tokens, "
        f"{gguf_file.metadata.array_length('tokenizer.ggml.merges')} merges"
    )
    ours_s, ours_fields = _median_seconds(lambda: _open_ours(path), repeat)
    gguf_py_s, gguf_py_fields = _median_seconds(lambda: _open_gguf_py(path), gguf_py_repeat)
    if ours_fields != gguf_py_fields:
        raise RuntimeError(f"the two readers disagree on {path}: {ours_fields} vs {gguf_py_fields}")
    open_and_tokens_s, _ = _median_seconds(lambda: _decode_tokens(path), repeat)
    state_dict_s, _ = _median_seconds(lambda: load_gguf(path).state_dict(), repeat)
    result = {
        "load_gguf_s": ours_s,
        "gguf_reader_s": gguf_py_s,
        "speedup": gguf_py_s / ours_s,
        "decode_tokens_s": open_and_tokens_s - ours_s,
        "open_and_state_dict_s": state_dict_s,
    }
    print(f"load_gguf + architecture + 3 scalars:     {ours_s * 1e3:8.1f} ms (median of {repeat})")
    print(f"gguf.GGUFReader + the same 4 fields:      {gguf_py_s * 1e3:8.1f} ms (median of {gguf_py_repeat})")
    print(f"speed-up:                                 {result['speedup']:8.1f}x")
    print(f"first read of tokenizer.ggml.tokens:      {result['decode_tokens_s'] * 1e3:8.1f} ms (lazy, on top of opening)")
    print(f"load_gguf + state_dict() of every tensor: {state_dict_s * 1e3:8.1f} ms (zero-copy views)")
    return result
