"""Competitor benchmark: HuggingFace diffusers 0.42.1 running Cosmos3 on the same workloads
as `phyai bench` (crates/phyai/src/bench.rs), with random weights (no checkpoint download).

Measured, each a median after warm-up, with CUDA events (torch.cuda.Event) on a GPU:

GEN  One denoising call of `diffusers.Cosmos3OmniTransformer` (models/transformers/
     transformer_cosmos3.py) at the Nano config (hidden 4096, 36 layers, 32 query / 8 KV
     heads of 128, MLP 12288, SiLU, mRoPE [24, 20, 20], rope theta 5e6, latent 48 channels,
     2x2 patches, vocab 151936; the constructor defaults) in bf16, for a text-to-video
     request: all latent frames noisy, no sound, no action. The inputs are packed with the
     pipeline's own helpers (`Cosmos3OmniPipeline._prepare_text_segment` and
     `_prepare_vision_segment`) and the call is made exactly as the denoising loop of
     `Cosmos3OmniPipeline.__call__` makes it (inside `transformer.cache_context("cond")`).
       W480: 832x480, 93 frames -> latent 24x30x52 -> 24x15x26 =  9,360 video tokens
       W720: 1280x720, 189 frames -> latent 48x45x80 -> 48x23x40 = 44,160 video tokens
                                                   (45 rows are padded to 46 by diffusers)
     Text: 512 token ids (i * 7919 mod 150000), as the engine's `gen_bench` uses.
     diffusers runs the text (understanding) tower and the generation tower together in
     every call; the engine runs the text tower once per request. The two are interleaved
     layer by layer in diffusers, so the text-tower share is estimated by a second call with
     the same text and a single video token ("text-only call"); "gen est" = full call -
     text-only call is the figure to set beside the engine's generation forward.
     `--layers N` builds N of the 36 layers and scales times linearly to 36, as the engine
     bench does; by default all 36 are built (about 30 GB of bf16 weights).

VAE  `diffusers.AutoencoderKLWan` with the Wan2.2 TI2V-5B VAE config of the Cosmos3
     checkpoints (base_dim 160, decoder_base_dim 256, z_dim 48, dim_mult [1,2,4,4],
     2 res blocks, no attention, temporal downsample [F,T,T], is_residual, 12 in/out
     channels, patch 2) in bf16, `vae.decode(z)` of a [1,48,24,30,52] (W480) or
     [1,48,48,45,80] (W720) latent with diffusers' defaults as the Cosmos3 pipeline uses
     them: no tiling, no slicing (the pipeline enables neither). The encoder is dropped
     after construction (decode never touches it; the engine builds only the decoder);
     `--vae-keep-encoder` keeps it resident.

AUDIO `diffusers.Cosmos3AVAEAudioTokenizer` with its default config (the shipped sound
     tokenizer: Oobleck decoder, 320 base channels, strides (2,4,5,6,8), 64 latent channels,
     48 kHz stereo), built without the encoder, `decode(z)` of the sound latent the pipeline
     makes for the preset's frame count at --fps (W720: 189 frames -> 197 steps).

Peak memory is torch.cuda.max_memory_allocated() over the timed calls (weights included).
One JSON object per measurement goes to stdout as it finishes, then a table.

    python3 tools/bench/diffusers_gpu.py                         # gen + vae + audio, W480 + W720
    python3 tools/bench/diffusers_gpu.py --part gen --preset w480 --layers 4 --runs 5
    python3 tools/bench/diffusers_gpu.py --device cpu --tiny     # dry run of every code path

`--tiny` swaps in small configs and grids (f32 by default) that go through exactly the same
code; it exists to check the script without a GPU. tools/bench/diffusers_gpu.sh runs this on
the GPU machine after installing diffusers from the wheels of tools/bench/fetch_wheels.sh.
"""

import argparse
import json
import math
import os
import platform
import sys
import time
import types

import torch

import diffusers
from diffusers import AutoencoderKLWan, Cosmos3AVAEAudioTokenizer, Cosmos3OmniTransformer
from diffusers.pipelines.cosmos.pipeline_cosmos3_omni import Cosmos3OmniPipeline

# Cosmos3 Nano transformer: every field at the Cosmos3OmniTransformer constructor default,
# spelled out (crates/phyai/src/models/cosmos3/transformer/config.rs has the same defaults).
NANO = dict(
    attention_bias=False, head_dim=128, hidden_size=4096, intermediate_size=12288,
    base_fps=24, enable_fps_modulation=True, latent_channel=48,
    unified_3d_mrope_reset_spatial_ids=True, unified_3d_mrope_temporal_modality_margin=15000,
    latent_patch_size=2, num_attention_heads=32, num_hidden_layers=36, num_key_value_heads=8,
    patch_latent_dim=192, rms_norm_eps=1e-6, rope_scaling={"mrope_section": [24, 20, 20]},
    rope_theta=5000000.0, action_gen=False, sound_gen=False, timestep_scale=0.001,
    vocab_size=151936, hidden_act="silu", qk_norm_for_text=True, use_und_k_norm_for_gen=False,
)
TINY = dict(NANO, head_dim=16, hidden_size=64, intermediate_size=128, num_attention_heads=4,
            num_hidden_layers=2, num_key_value_heads=2, rope_scaling={"mrope_section": [4, 2, 2]},
            vocab_size=1000)

# Wan2.2 TI2V-5B VAE (vae/config.json of the Cosmos3 checkpoints; the latent statistics do
# not enter vae.decode and are left neutral).
WAN22_VAE = dict(
    base_dim=160, decoder_base_dim=256, z_dim=48, dim_mult=[1, 2, 4, 4], num_res_blocks=2,
    attn_scales=[], temperal_downsample=[False, True, True], dropout=0.0,
    latents_mean=[0.0] * 48, latents_std=[1.0] * 48, is_residual=True, in_channels=12,
    out_channels=12, patch_size=2, scale_factor_temporal=4, scale_factor_spatial=16,
)
TINY_VAE = dict(WAN22_VAE, base_dim=8, decoder_base_dim=12)
# The shipped sound tokenizer is the class defaults; only its decoder is needed.
AVAE = dict(encoder_enabled=False)
TINY_AVAE = dict(AVAE, dec_dim=8)

# name, (width, height, frames), latent grid (t, h, w); --tiny grids keep W720's odd height.
PRESETS = {
    "w480": ("W480", (832, 480, 93), (24, 30, 52)),
    "w720": ("W720", (1280, 720, 189), (48, 45, 80)),
}
TINY_GRIDS = {"w480": (3, 4, 6), "w720": (4, 5, 6)}


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_runs(device, warmup, runs, fn):
    """`warmup` untimed calls, then `runs` timed ones (CUDA events on a GPU, wall clock plus
    a final sync on CPU). Median as the engine takes it: sorted[len // 2]."""
    for _ in range(warmup):
        fn()
    sync(device)
    ms = []
    for _ in range(max(runs, 1)):
        if device.type == "cuda":
            start = torch.cuda.Event(enable_timing=True)
            end = torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            end.synchronize()
            ms.append(start.elapsed_time(end))
        else:
            t0 = time.perf_counter()
            fn()
            ms.append((time.perf_counter() - t0) * 1e3)
    ms.sort()
    return {"median_ms": ms[len(ms) // 2], "min_ms": ms[0], "max_ms": ms[-1], "runs": len(ms)}


def reset_peak(device):
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)


def peak(device):
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device)
    return None


def nbytes(module):
    return sum(t.numel() * t.element_size() for t in [*module.parameters(), *module.buffers()])


def build(cls, cfg, device, dtype, seed):
    """Random-weight model made directly on `device` in `dtype` (each module's own init)."""
    torch.manual_seed(seed)
    prev = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        with torch.device(device):
            model = cls(**cfg)
    finally:
        torch.set_default_dtype(prev)
    # from_pretrained(torch_dtype=...) keeps these in f32; do the same.
    for name in getattr(model, "_keep_in_fp32_modules", None) or []:
        getattr(model, name).to(torch.float32)
    return model.eval().requires_grad_(False)


def gen_inputs(model, grid, text_tokens, fps, device, dtype, seed, timestep=999):
    """The transformer's keyword arguments for the conditional pass of one denoising step of
    a text-to-video request, packed by the pipeline's own helpers."""
    cfg = model.config
    pipe = types.SimpleNamespace(transformer=model, vae_scale_factor_temporal=4)
    ids = [(i * 7919) % 150000 % cfg.vocab_size for i in range(text_tokens)]
    text = Cosmos3OmniPipeline._prepare_text_segment(pipe, ids, device=device)
    g = torch.Generator(device=device).manual_seed(seed)
    latents = torch.randn((1, cfg.latent_channel, *grid), generator=g, device=device)
    vision = Cosmos3OmniPipeline._prepare_vision_segment(
        pipe, input_vision_tokens=latents, has_image_condition=False,
        mrope_offset=text["vision_start_temporal_offset"], vision_fps=fps,
        curr=text["und_len"], device=device, condition_frame_indexes=[],
    )
    kwargs = dict(
        input_ids=text["input_ids"], text_indexes=text["text_indexes"],
        position_ids=torch.cat([text["text_mrope_ids"], vision["vision_mrope_ids"]], dim=1),
        und_len=text["und_len"], sequence_length=text["und_len"] + vision["num_vision_tokens"],
        vision_tokens=[latents.to(dtype)], vision_token_shapes=vision["vision_token_shapes"],
        vision_sequence_indexes=vision["vision_sequence_indexes"],
        vision_mse_loss_indexes=vision["vision_mse_loss_indexes"],
        vision_timesteps=torch.full((vision["num_noisy_vision_tokens"],), timestep, device=device),
        vision_noisy_frame_indexes=vision["vision_noisy_frame_indexes"],
        sound_tokens=None, sound_token_shapes=None, sound_sequence_indexes=None,
        sound_mse_loss_indexes=None, sound_timesteps=None, sound_noisy_frame_indexes=None,
        action_tokens=None, action_token_shapes=None, action_sequence_indexes=None,
        action_mse_loss_indexes=None, action_timesteps=None, action_noisy_frame_indexes=None,
        action_domain_ids=None, return_dict=False,
    )
    return kwargs, vision["num_vision_tokens"]


def gen_flops(cfg, tokens, text):
    """The engine's `gen_flops`: Q/K/V, output and MLP products plus attention of the video
    tokens over text + video keys, per generation layer."""
    n, hid = float(tokens), float(cfg["hidden_size"])
    q = cfg["num_attention_heads"] * cfg["head_dim"]
    kv = cfg["num_key_value_heads"] * cfg["head_dim"]
    mlp = cfg["intermediate_size"]
    per_layer = 2 * n * (hid * (q + 2 * kv) + q * hid + 3 * hid * mlp) + 4 * n * (n + text) * q
    return per_layer * cfg["num_hidden_layers"]


def sdpa_context(name):
    if name == "auto":
        import contextlib

        return contextlib.nullcontext()
    from torch.nn.attention import SDPBackend, sdpa_kernel

    backend = {"flash": SDPBackend.FLASH_ATTENTION, "efficient": SDPBackend.EFFICIENT_ATTENTION,
               "cudnn": SDPBackend.CUDNN_ATTENTION, "math": SDPBackend.MATH}[name]
    return sdpa_kernel(backend)


def finite(x):
    return bool(torch.isfinite(x).all().item())


def bench_gen(a, device, dtype, presets, emit):
    base = TINY if a.tiny else NANO
    full_layers = base["num_hidden_layers"]
    layers = max(1, min(a.layers or full_layers, full_layers))
    cfg = dict(base, num_hidden_layers=layers)
    t0 = time.perf_counter()
    model = build(Cosmos3OmniTransformer, cfg, device, dtype, a.seed)
    sync(device)
    build_s = time.perf_counter() - t0
    weights = nbytes(model)
    print(f"# built Cosmos3OmniTransformer: {layers}/{full_layers} layers, "
          f"{sum(p.numel() for p in model.parameters()) / 1e9:.2f} B parameters, "
          f"{weights / 2**30:.1f} GiB, {build_s:.1f} s", file=sys.stderr, flush=True)
    for key in presets:
        name, video, grid = PRESETS[key]
        if a.tiny:
            grid = TINY_GRIDS[key]
        row = {"impl": "diffusers", "part": "gen", "preset": name, "latent": list(grid),
               "video_whf": list(video), "layers": layers, "full_layers": full_layers,
               "text_tokens": a.text_tokens, "dtype": str(dtype).removeprefix("torch."),
               "sdpa": a.sdpa, "weights_bytes": weights}
        try:
            kw, tokens = gen_inputs(model, grid, a.text_tokens, a.fps, device, dtype, a.seed)
            kw_text, _ = gen_inputs(model, (1, 2, 2), a.text_tokens, a.fps, device, dtype, a.seed)
            out = {}

            def call(kwargs):
                def run():
                    with torch.no_grad(), sdpa_context(a.sdpa), model.cache_context(
                        "cond", step_index=0, sigma=1.0, num_inference_steps=35
                    ):
                        out["v"] = model(**kwargs)
                return run

            reset_peak(device)
            full = time_runs(device, a.warmup, a.runs, call(kw))
            row["peak_bytes"] = peak(device)
            preds = out["v"][0][0]
            row["out_shape"] = list(preds.shape)
            row["finite"] = finite(preds)
            text_only = time_runs(device, a.warmup, a.runs, call(kw_text))
            scale = full_layers / layers
            gen_est = full["median_ms"] - text_only["median_ms"]
            row.update(
                tokens=tokens, sequence=a.text_tokens + tokens,
                call_median_ms=full["median_ms"], call_min_ms=full["min_ms"],
                call_max_ms=full["max_ms"], runs=full["runs"], warmup=a.warmup,
                text_only_call_ms=text_only["median_ms"], gen_est_ms=gen_est,
                call_full_depth_ms=full["median_ms"] * scale,
                gen_est_full_depth_ms=gen_est * scale,
                tflops=gen_flops(cfg, tokens, a.text_tokens) / (gen_est * 1e-3) / 1e12
                if gen_est > 0 else None,
            )
            del out
        except torch.cuda.OutOfMemoryError as e:
            row["error"] = f"out of memory: {str(e).splitlines()[0]}"
        emit(row)
    del model
    reset_peak(device)


def bench_vae(a, device, dtype, presets, emit):
    cfg = TINY_VAE if a.tiny else WAN22_VAE
    vae = build(AutoencoderKLWan, cfg, device, dtype, a.seed)
    if not a.vae_keep_encoder:
        vae.encoder = None
        vae.quant_conv = None
    weights = nbytes(vae)
    print(f"# built AutoencoderKLWan (Wan2.2): {sum(p.numel() for p in vae.parameters()) / 1e6:.0f} M "
          f"parameters resident{' (with encoder)' if a.vae_keep_encoder else ' (decoder)'}, "
          f"use_tiling={vae.use_tiling}, use_slicing={vae.use_slicing}", file=sys.stderr, flush=True)
    runs = a.vae_runs or a.runs
    for key in presets:
        name, video, grid = PRESETS[key]
        if a.tiny:
            grid = TINY_GRIDS[key]
        row = {"impl": "diffusers", "part": "vae", "preset": name,
               "latent": [cfg["z_dim"], *grid], "dtype": str(dtype).removeprefix("torch."),
               "tiling": vae.use_tiling, "slicing": vae.use_slicing,
               "encoder_resident": a.vae_keep_encoder, "weights_bytes": weights}
        try:
            g = torch.Generator(device=device).manual_seed(a.seed)
            z = torch.randn((1, cfg["z_dim"], *grid), generator=g, device=device).to(dtype)
            out = {}

            def run():
                with torch.no_grad():
                    out["x"] = vae.decode(z).sample

            reset_peak(device)
            t = time_runs(device, a.warmup, runs, run)
            row["peak_bytes"] = peak(device)
            row["out_shape"] = list(out["x"].shape)
            row["finite"] = finite(out["x"])
            row.update(decode_median_ms=t["median_ms"], decode_min_ms=t["min_ms"],
                       decode_max_ms=t["max_ms"], runs=t["runs"], warmup=a.warmup)
            del out, z
        except torch.cuda.OutOfMemoryError as e:
            row["error"] = f"out of memory: {str(e).splitlines()[0]}"
        emit(row)
    del vae
    reset_peak(device)


def bench_audio(a, device, dtype, presets, emit):
    cfg = TINY_AVAE if a.tiny else AVAE
    avae = build(Cosmos3AVAEAudioTokenizer, cfg, device, dtype, a.seed)
    c = avae.config
    runs = a.vae_runs or a.runs
    for key in presets:
        name, (_, _, frames), _ = PRESETS[key]
        # The pipeline's sound length (Cosmos3OmniPipeline.__call__, enable_sound).
        samples = int(frames / a.fps * c.sampling_rate)
        steps = (samples + avae._hop_size - 1) // avae._hop_size
        row = {"impl": "diffusers", "part": "audio", "preset": name, "steps": steps,
               "dtype": str(dtype).removeprefix("torch."), "weights_bytes": nbytes(avae)}
        g = torch.Generator(device=device).manual_seed(a.seed)
        z = torch.randn((1, c.vocoder_input_dim, steps), generator=g, device=device).to(dtype)
        out = {}

        def run():
            with torch.no_grad():
                out["x"] = avae.decode(z)

        reset_peak(device)
        t = time_runs(device, a.warmup, runs, run)
        row["peak_bytes"] = peak(device)
        row["out_shape"] = list(out["x"].shape)
        row["finite"] = finite(out["x"])
        row.update(decode_median_ms=t["median_ms"], decode_min_ms=t["min_ms"],
                   decode_max_ms=t["max_ms"], runs=t["runs"], warmup=a.warmup)
        emit(row)
    del avae
    reset_peak(device)


def gib(b):
    return "n/a" if b is None else f"{b / 2**30:.1f} GiB"


def table(rows):
    lines = []
    gens = [r for r in rows if r["part"] == "gen"]
    if gens:
        lines += ["",
                  "GEN  diffusers Cosmos3OmniTransformer, one denoising call (cond pass); "
                  "ms are medians; 'depth' = scaled to all layers",
                  f"{'preset':7} {'tokens':>7} {'text':>5} {'layers':>6} {'call ms':>10} "
                  f"{'text-only':>10} {'gen est':>10} {'call@depth':>11} {'gen@depth':>10} "
                  f"{'TFLOP/s':>8} {'peak':>10}"]
        for r in gens:
            if "error" in r:
                lines.append(f"{r['preset']:7} {r['error']}")
                continue
            tf = f"{r['tflops']:.0f}" if r["tflops"] else "n/a"
            lines.append(
                f"{r['preset']:7} {r['tokens']:>7} {r['text_tokens']:>5} "
                f"{r['layers']:>3}/{r['full_layers']:<2} {r['call_median_ms']:>10.1f} "
                f"{r['text_only_call_ms']:>10.1f} {r['gen_est_ms']:>10.1f} "
                f"{r['call_full_depth_ms']:>11.1f} {r['gen_est_full_depth_ms']:>10.1f} "
                f"{tf:>8} {gib(r['peak_bytes']):>10}")
    vaes = [r for r in rows if r["part"] == "vae"]
    if vaes:
        lines += ["",
                  "VAE  diffusers AutoencoderKLWan (Wan2.2) decode, no tiling/slicing",
                  f"{'preset':7} {'latent':>18} {'output':>22} {'median ms':>10} {'min':>9} "
                  f"{'max':>9} {'runs':>4} {'peak':>10}"]
        for r in vaes:
            if "error" in r:
                lines.append(f"{r['preset']:7} {r['error']}")
                continue
            lat = "x".join(map(str, r["latent"]))
            o = "x".join(map(str, r["out_shape"][1:]))
            lines.append(
                f"{r['preset']:7} {lat:>18} {o:>22} {r['decode_median_ms']:>10.1f} "
                f"{r['decode_min_ms']:>9.1f} {r['decode_max_ms']:>9.1f} {r['runs']:>4} "
                f"{gib(r['peak_bytes']):>10}")
    auds = [r for r in rows if r["part"] == "audio"]
    if auds:
        lines += ["",
                  "AUDIO  diffusers Cosmos3AVAEAudioTokenizer decode",
                  f"{'preset':7} {'steps':>6} {'output':>12} {'median ms':>10} {'min':>9} "
                  f"{'max':>9} {'runs':>4} {'peak':>10}"]
        for r in auds:
            o = "x".join(map(str, r["out_shape"][1:]))
            lines.append(
                f"{r['preset']:7} {r['steps']:>6} {o:>12} {r['decode_median_ms']:>10.1f} "
                f"{r['decode_min_ms']:>9.1f} {r['decode_max_ms']:>9.1f} {r['runs']:>4} "
                f"{gib(r['peak_bytes']):>10}")
    bad = [r for r in rows if r.get("finite") is False]
    if bad:
        lines.append("note: random weights gave non-finite outputs in "
                     + ", ".join(f"{r['part']} {r['preset']}" for r in bad)
                     + " (timing is unaffected)")
    return "\n".join(lines)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--part", choices=["gen", "vae", "audio", "all"], default="all")
    ap.add_argument("--preset", choices=["w480", "w720", "all"], default="all")
    ap.add_argument("--runs", type=int, default=5, help="timed runs per measurement")
    ap.add_argument("--vae-runs", type=int, default=None, help="timed VAE decodes (default: --runs)")
    ap.add_argument("--warmup", type=int, default=1, help="untimed runs before timing")
    ap.add_argument("--layers", type=int, default=None,
                    help="build this many of the 36 layers and scale times to 36 (default: all)")
    ap.add_argument("--text-tokens", type=int, default=None, help="default 512 (24 with --tiny)")
    ap.add_argument("--fps", type=float, default=24.0)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--device", default="cuda", help="cuda, cuda:N or cpu")
    ap.add_argument("--dtype", choices=["bf16", "f32"], default=None,
                    help="default bf16 (f32 with --tiny)")
    ap.add_argument("--sdpa", choices=["auto", "flash", "efficient", "cudnn", "math"],
                    default="auto", help="force one torch SDPA kernel (default: torch's choice)")
    ap.add_argument("--vae-keep-encoder", action="store_true")
    ap.add_argument("--tiny", action="store_true",
                    help="small configs and grids through the same code (checks the script)")
    a = ap.parse_args()

    device = torch.device(a.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        sys.exit("no CUDA device: pass --device cpu (with --tiny) to check the script")
    dtype = {"bf16": torch.bfloat16, "f32": torch.float32}[a.dtype or ("f32" if a.tiny else "bf16")]
    presets = ["w480", "w720"] if a.preset == "all" else [a.preset]
    if a.text_tokens is None:
        a.text_tokens = 24 if a.tiny else 512

    from diffusers.models.attention_dispatch import _AttentionBackendRegistry

    env = {
        "impl": "diffusers", "part": "env", "diffusers": diffusers.__version__,
        "torch": torch.__version__, "cuda": torch.version.cuda, "python": platform.python_version(),
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or "cpu",
        "attention_backend": str(_AttentionBackendRegistry.get_active_backend()[0].value),
        "sdpa": a.sdpa, "cudnn": torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None,
        "cudnn_benchmark": torch.backends.cudnn.benchmark, "tiny": a.tiny,
        "threads": torch.get_num_threads(), "argv": sys.argv[1:],
        "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
    }
    print(json.dumps(env), flush=True)

    rows = []

    def emit(row):
        rows.append(row)
        print(json.dumps({k: round(v, 3) if isinstance(v, float) else v for k, v in row.items()}),
              flush=True)

    if a.part in ("gen", "all"):
        bench_gen(a, device, dtype, presets, emit)
    if a.part in ("vae", "all"):
        bench_vae(a, device, dtype, presets, emit)
    if a.part in ("audio", "all"):
        bench_audio(a, device, dtype, presets, emit)
    print(table(rows), flush=True)
    if any("error" in r for r in rows):
        sys.exit(1)


if __name__ == "__main__":
    main()
