"""CPU timing of diffusers' Cosmos3 transformer call per denoising step, on the same small
config and shapes as the engine's former `gen_step_benchmark` (the BENCHMARKS.md CPU table):
hidden 512, 4 layers, 8 query / 2 key-value heads of 64, intermediate 1536; 5x16x24 video
latent (480 tokens), 40 sound tokens, ~64 text tokens; f32, random weights.

    .ref-venv/bin/python tools/bench/diffusers_gen_step.py [--threads 2]

diffusers runs the text and generation towers on every call; the engine runs the text
tower once per request, so its per-step cost is the generation tower alone.
"""

import argparse
import statistics
import time
from pathlib import Path

import torch
from diffusers import AutoencoderKLWan, Cosmos3OmniPipeline, Cosmos3OmniTransformer, UniPCMultistepScheduler
from diffusers.models.autoencoders.autoencoder_cosmos3_audio import Cosmos3AVAEAudioTokenizer
from transformers import AutoTokenizer

ROOT = Path(__file__).resolve().parents[2]
TINY = ROOT / "tests" / "fixtures" / "tiny"


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--steps", type=int, default=6)
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    torch.manual_seed(0)
    transformer = Cosmos3OmniTransformer(
        hidden_size=512, num_hidden_layers=4, num_attention_heads=8, num_key_value_heads=2,
        head_dim=64, intermediate_size=1536, vocab_size=1000,
        rope_scaling={"mrope_section": [12, 10, 10]}, sound_gen=True, sound_dim=64,
    ).eval()
    pipe = Cosmos3OmniPipeline(
        transformer=transformer,
        text_tokenizer=AutoTokenizer.from_pretrained(TINY / "text_tokenizer"),
        vae=AutoencoderKLWan.from_pretrained(TINY / "vae"),
        scheduler=UniPCMultistepScheduler.from_pretrained(TINY / "scheduler"),
        sound_tokenizer=Cosmos3AVAEAudioTokenizer.from_pretrained(TINY / "sound_tokenizer"),
        enable_safety_checker=False,
    )
    times, lens = [], []
    start = {}
    transformer.register_forward_pre_hook(lambda m, a, k: start.__setitem__("t", time.perf_counter()), with_kwargs=True)

    def post(m, a, k, out):
        times.append(time.perf_counter() - start["t"])
        lens.append((k["und_len"], k["sequence_length"]))

    transformer.register_forward_hook(post, with_kwargs=True)
    with torch.no_grad():
        pipe(
            prompt="A robot arm stacks three red cubes on a wooden table in a bright workshop.",
            num_frames=17, height=256, width=384, fps=10.625, enable_sound=True,
            num_inference_steps=a.steps, guidance_scale=1.0, output_type="latent",
            enable_safety_check=False, generator=torch.Generator().manual_seed(0),
        )
    steady = times[1:]
    print(f"text tokens {lens[0][0]}, sequence {lens[0][1]}; threads {a.threads}")
    print(f"diffusers transformer call per step: median {statistics.median(steady) * 1e3:.1f} ms "
          f"(min {min(steady) * 1e3:.1f}, max {max(steady) * 1e3:.1f}, n={len(steady)})")


if __name__ == "__main__":
    main()
