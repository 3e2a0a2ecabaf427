"""End-to-end benchmark on the path users take: a real ComfyUI server, prompts queued with POST /prompt.

Every variant runs in a fresh `main.py --cpu` server of its own, one after another (never two at
once), on the same Z-Image Turbo graph (benchmarks/comfy_server.py: `zimage_workflow`):
- native bf16: ComfyUI's UNETLoader and CLIPLoader on bf16 safetensors;
- this pack: its GGUF loaders on Q8_0 and Q4_0 files (the DiT and the Qwen3-4B encoder both);
- city96's ComfyUI-GGUF (`--city96 CHECKOUT`): its UnetLoaderGGUF on the same DiT files (the encoder
  through this pack's loader: city96's CLIPLoaderGGUF fails on these encoders, see comfy_server.py).
Models: Z-Image one transformer layer deep at full width (3840), Qwen3-4B three layers deep at full
width with the full vocabulary; a small Flux VAE. Each server runs the prompt --runs times (each
later time with another seed, so only the sampler and what follows run again). With --rounds N the
whole list of variants runs N times over, alternating, and the step times are pooled: this 2-core
machine has slow spells of tens of seconds (measured in-process: the same products 15-45% slower),
and one server per variant can fall entirely into one.

Figures, all from the server: per-node times from its websocket `executing` messages (text-encoder
load = the loader node, encode = CLIPTextEncode, which also moves the encoder in with
load_models_gpu), the sampling step from its `progress` ticks (the first step of each run, which
loads the model, left out), and memory from /proc/<server pid>/status: VmHWM (peak resident set
of the whole server process) and the peak of RssAnon (anonymous memory) sampled during the runs.

Run (ComfyUI's Python, source checkout; files are generated once into ~/.cache):
  COMFYUI_PATH=/tmp/ComfyUI /tmp/comfy-venv/bin/python benchmarks/bench_e2e.py [--city96 /path/ComfyUI-GGUF]
      [--before /path/to/an/earlier/export/of/this/pack]
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
import comfy_inprocess  # noqa: E402
import comfy_server  # noqa: E402

REPO_ROOT = HERE.parent
PACK_FOLDER = "comfyui_zimage_gguf"
TARGETS = {"Q8_0": 1.15, "Q4_0": 1.25}  # s/it vs native bf16


def model_files(types: list[str], encoder_type: str | None = None) -> dict:
    """{(kind, variant): path}, generated once; the encoder of each type in that type, or in
    `encoder_type` for all (gguf-py cannot quantize K-quants: the GPU check pairs a Q4_K DiT with
    the Q8_0 encoder)."""
    import torch

    factory = comfy_inprocess.factory_module("zimage_factory")
    files = {
        ("unet", "native"): factory.cached_model("zimage_safetensors", n_layers=1, seed=0, dtype=torch.bfloat16),
        ("clip", "native"): comfy_inprocess.qwen3_encoder_files("qwen3_4b", 3, "Q8_0",
                                                                safetensors_dtype=torch.bfloat16)[1],
        ("vae", "all"): factory.cached_model("flux_vae"),
    }
    for ggml_type in types:
        files[("unet", ggml_type)] = factory.cached_model("zimage_gguf", n_layers=1, style="city96",
                                                          type_rule={"matrix": ggml_type}, seed=0)
        files[("clip", ggml_type)] = comfy_inprocess.qwen3_encoder_files("qwen3_4b", 3, encoder_type or ggml_type,
                                                                         with_safetensors=False)[0]
    return files


def link_models(root: Path, files: dict) -> dict:
    """Symlink every file into root/<folder>/ under a readable name; return {(kind, variant): name}."""
    folders = {"unet": "diffusion_models", "clip": "text_encoders", "vae": "vae"}
    names = {}
    for (kind, variant), path in files.items():
        folder = root / folders[kind]
        folder.mkdir(parents=True, exist_ok=True)
        name = f"bench-{kind}-{variant}{Path(path).suffix}"
        (folder / name).symlink_to(path)
        names[(kind, variant)] = name
    return names


def run_variant(args, label: str, loaders: str, ggml_type: str, names: dict, model_root: Path,
                custom_nodes: dict) -> dict:
    base_dir = Path(tempfile.mkdtemp(prefix=f"bench-{loaders}-{ggml_type}-"))
    server = comfy_server.start_server(args.comfyui_path, sys.executable, base_dir, model_root, custom_nodes,
                                       env={"ZIMAGE_GGUF_STRICT": "1"} if loaders == "pack" else None)
    try:
        variant = "native" if loaders == "native" else ggml_type
        traces = []
        for run in range(args.runs):
            workflow = comfy_server.zimage_workflow(loaders, names[("unet", variant)], names[("clip", variant)],
                                                    names[("vae", "all")], size=args.size, steps=args.steps,
                                                    seed=run)
            trace = server.run_traced(workflow, timeout_s=args.timeout)
            if trace.status != "success":
                raise RuntimeError(f"{label}: the run failed: {trace.error}\n{server.log_tail()}")
            traces.append(trace)
        first = traces[0]
        span = lambda node: (lambda s: s[1] - s[0])(first.node_span(node))  # noqa: E731
        return {
            "label": label,
            "clip_load_s": span(comfy_server.CLIP_NODE),
            "encode_s": span(comfy_server.ENCODE_NODE),
            "unet_load_s": span(comfy_server.UNET_NODE),
            "steps": [s for trace in traces for s in trace.step_times(comfy_server.SAMPLER_NODE)],
            "minflt": sum(t.sampling_faults(comfy_server.SAMPLER_NODE)[0] for t in traces),
            "majflt": sum(t.sampling_faults(comfy_server.SAMPLER_NODE)[1] for t in traces),
            "vmhwm_kib": max(t.vmhwm_kib for t in traces),
            "anon_peak_kib": max(t.anon_peak_kib for t in traces),
        }
    finally:
        comfy_server.stop_server(server.process)


def prefixed(workflow: dict, prefix: str) -> dict:
    """`workflow` with every node id (and every link to one) prefixed, so several graphs share a server."""
    def relink(value):
        if isinstance(value, list) and len(value) == 2 and isinstance(value[0], str) and value[0] in workflow:
            return [prefix + value[0], value[1]]
        return value

    return {prefix + node_id: {**node, "inputs": {k: relink(v) for k, v in node["inputs"].items()}}
            for node_id, node in workflow.items()}


def run_interleaved(args, variants: list, names: dict, model_root: Path) -> dict:
    """Every variant in ONE server, their prompts alternating (native, Q8_0, Q4_0, native, ...) for
    --interleaved rounds: a slow spell of the machine then falls on all of them alike. Each variant's
    graph has its own node ids and the server keeps node outputs (--cache-lru), so models stay loaded
    and only the sampler and what follows run again. Returns {label: [step seconds]} (the first
    round, which loads the models, left out)."""
    custom_nodes = {}
    for *_, nodes in variants:
        custom_nodes.update(nodes)
    base_dir = Path(tempfile.mkdtemp(prefix="bench-interleaved-"))
    server = comfy_server.start_server(args.comfyui_path, sys.executable, base_dir, model_root, custom_nodes,
                                       env={"ZIMAGE_GGUF_STRICT": "1"}, extra_args=("--cache-lru", "64"))
    steps = {label: [] for label, *_ in variants}
    try:
        for round_ in range(args.interleaved + 1):
            for index, (label, loaders, ggml_type, _) in enumerate(variants):
                variant = "native" if loaders == "native" else ggml_type
                prefix = f"v{index}_"
                workflow = comfy_server.zimage_workflow(loaders, names[("unet", variant)], names[("clip", variant)],
                                                        names[("vae", "all")], size=args.size, steps=args.steps,
                                                        seed=round_)
                trace = server.run_traced(prefixed(workflow, prefix), timeout_s=args.timeout)
                if trace.status != "success":
                    raise RuntimeError(f"{label} (interleaved): the run failed: {trace.error}\n{server.log_tail()}")
                times = trace.step_times(prefix + comfy_server.SAMPLER_NODE)
                minor, major = trace.sampling_faults(prefix + comfy_server.SAMPLER_NODE)
                print(f"  round {round_}{' (untimed: loads)' if not round_ else ''}: {label}: s/it "
                      + " ".join(f"{t:.2f}" for t in times) + f"; page faults {minor} minor, {major} major",
                      flush=True)
                if round_:
                    steps[label] += times
    finally:
        comfy_server.stop_server(server.process)
    return steps


def combine(label: str, results: list[dict]) -> dict:
    """One variant's servers (one per round) as one row."""
    steps = [s for result in results for s in result["steps"]]
    median = lambda key: statistics.median(result[key] for result in results)  # noqa: E731
    return {
        "label": label,
        "clip_load_s": median("clip_load_s"),
        "encode_s": median("encode_s"),
        "unet_load_s": median("unet_load_s"),
        "step_s": statistics.median(steps),
        "round_step_s": [statistics.median(result["steps"]) for result in results],
        "majflt_per_step": sum(result["majflt"] for result in results) / max(len(steps), 1),
        "minflt_per_step": sum(result["minflt"] for result in results) / max(len(steps), 1),
        "vmhwm_kib": max(result["vmhwm_kib"] for result in results),
        "anon_peak_kib": max(result["anon_peak_kib"] for result in results),
    }


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--comfyui-path", default=os.environ.get("COMFYUI_PATH"),
                        help="ComfyUI checkout (default: $COMFYUI_PATH)")
    parser.add_argument("--city96", default=None, help="a checkout of city96's ComfyUI-GGUF, to compare against")
    parser.add_argument("--before", default=None,
                        help="a checkout (or export) of an earlier version of this pack: its GGUF rows run in the "
                             "same job, for a before/after table")
    parser.add_argument("--types", nargs="*", default=["Q8_0", "Q4_0"])
    parser.add_argument("--size", type=int, default=128, help="image side in pixels (default 128)")
    parser.add_argument("--steps", type=int, default=4, help="sampler steps per run (default 4)")
    parser.add_argument("--runs", type=int, default=2, help="runs per server (default 2)")
    parser.add_argument("--rounds", type=int, default=1,
                        help="rounds of servers: every variant runs once per round, variants alternating, so a "
                             "slow spell of a shared machine falls on all of them (default 1)")
    parser.add_argument("--interleaved", type=int, default=0,
                        help="then N timed rounds with every variant (--before's aside) in one server, prompts "
                             "alternating: the speed ratios least touched by the machine's slow spells (default 0)")
    parser.add_argument("--timeout", type=float, default=1800, help="seconds one run may take")
    args = parser.parse_args(argv)
    if not args.comfyui_path:
        parser.error("set COMFYUI_PATH or --comfyui-path to a ComfyUI checkout")

    print("generating/reusing model files ...", flush=True)
    files = model_files(args.types)
    model_root = Path(tempfile.mkdtemp(prefix="bench-models-"))
    names = link_models(model_root, files)
    variants = [("native bf16", "native", "bf16", {})]
    for ggml_type in args.types:
        if args.before:
            variants.append((f"before {ggml_type}", "pack", ggml_type, {PACK_FOLDER: Path(args.before)}))
        variants.append((f"pack {ggml_type}", "pack", ggml_type, {PACK_FOLDER: REPO_ROOT}))
        if args.city96:
            variants.append((f"city96 {ggml_type}", "city96", ggml_type,
                             {"ComfyUI-GGUF": Path(args.city96), PACK_FOLDER: REPO_ROOT}))

    servers = {label: [] for label, *_ in variants}
    for round_ in range(args.rounds):
        for label, loaders, ggml_type, custom_nodes in variants:
            print(f"round {round_ + 1}/{args.rounds}: running {label} ...", flush=True)
            servers[label].append(run_variant(args, label, loaders, ggml_type, names, model_root, custom_nodes))
    rows = [combine(label, results) for label, results in servers.items()]
    if args.interleaved:
        same_server = [v for v in variants if not v[0].startswith("before")]  # one pack of a name per server
        print(f"interleaved: {', '.join(v[0] for v in same_server)} in one server ...", flush=True)
        interleaved = run_interleaved(args, same_server, names, model_root)
        for row in rows:
            row["interleaved_s"] = statistics.median(interleaved[row["label"]]) if row["label"] in interleaved else None

    native = rows[0]
    print(f"\nZ-Image Turbo graph on a real ComfyUI server (CPU, --cpu), {args.size}x{args.size}, {args.steps} "
          f"steps x {args.runs} runs per server, {args.rounds} round(s) of servers; Z-Image 1 layer x 3840 wide, "
          f"Qwen3-4B 3 layers x 2560 wide")
    header = (f"{'variant':14} {'TE load s':>9} {'encode s':>9} {'DiT load s':>10} {'s/it':>7} {'x native':>8} "
              f"{'target':>7} {'VmHWM GiB':>9} {'x native':>8} {'RssAnon pk GiB':>14} {'majflt/step':>11} {'minflt/step':>11}")
    print(header)
    print("-" * len(header))
    for row in rows:
        ratio = row["step_s"] / native["step_s"]
        ggml_type = row["label"].split()[-1]
        target = TARGETS.get(ggml_type) if row["label"].startswith("pack") else None
        verdict = "-" if target is None else ("met" if ratio <= target else "MISSED")
        print(f"{row['label']:14} {row['clip_load_s']:9.2f} {row['encode_s']:9.2f} {row['unet_load_s']:10.2f} "
              f"{row['step_s']:7.3f} {ratio:8.2f} {verdict:>7} {row['vmhwm_kib'] / 2**20:9.2f} "
              f"{row['vmhwm_kib'] / native['vmhwm_kib']:8.2f} {row['anon_peak_kib'] / 2**20:14.2f} "
              f"{row['majflt_per_step']:11.0f} {row['minflt_per_step']:11.0f}")
    if args.interleaved:
        base = native["interleaved_s"]
        print(f"\none server, prompts alternating, {args.interleaved} timed rounds (s/it, x native): " + "; ".join(
            f"{row['label']} {row['interleaved_s']:.3f} {row['interleaved_s'] / base:.2f}x"
            for row in rows if row.get("interleaved_s")))
        for row in rows[1:]:
            target = TARGETS.get(row["label"].split()[-1]) if row["label"].startswith("pack") else None
            if target and row.get("interleaved_s"):
                ratio = row["interleaved_s"] / base
                print(f"  {row['label']}: {ratio:.2f}x native, target {target}: {'met' if ratio <= target else 'MISSED'}")
    if args.rounds > 1:
        print("s/it x native per round: " + "; ".join(
            f"{row['label']} " + " ".join(f"{r / n:.2f}" for r, n in zip(row["round_step_s"], native["round_step_s"]))
            for row in rows[1:]))
    print("s/it: median of the servers' step-to-step progress times, all rounds pooled (first step of each run "
          "left out); load and encode times: medians over the rounds of each server's first run; "
          "VmHWM: the server process's peak RSS; RssAnon pk: its peak anonymous memory during the runs; "
          "majflt/minflt per step: the server's major/minor page faults per timed step (major: mapped model pages "
          "read back from disk)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
