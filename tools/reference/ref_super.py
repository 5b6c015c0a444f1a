"""Cosmos3-Super shape references (diffusers 0.42.1, CPU, f32).

Super has the Nano architecture with the text model of Qwen3-VL-32B in each tower: hidden
5120, 64 layers, 64 query and 8 key/value heads of 128 (so the attention width, 8192, is
not the hidden size as it is in Nano), SwiGLU intermediate 25600.

`make(out_dir, seed)` writes
  tiny_super/transformer/       a random Super-shaped transformer: hidden 40, 8 query heads
                                and 1 key/value head of 16 (attention width 128 != hidden),
                                intermediate 200, 2 layers, sound stream; bf16 weights
  refs/super_velocity.safetensors   the first transformer call of a guided text-to-audio-video
                                run of Cosmos3OmniPipeline with that transformer (tiny/'s VAE,
                                tokenizer, scheduler, sound decoder): input_ids, video_latent,
                                video_timestep, noisy_frame_indexes, sound_latent,
                                velocity_video, velocity_sound
  refs/super_shape.json         the full-size Super config and its parameter count, counted
                                by instantiating diffusers' Cosmos3OmniTransformer on the meta
                                device (also Nano's, as a check of the counting)

Run: python ref_super.py <fixtures dir> [--seed S]   (needs tiny/)
"""

from __future__ import annotations

import argparse
import copy
import json
import shutil
import sys
from pathlib import Path

import torch
from safetensors.torch import save_file

SUPER = dict(
    hidden_size=5120,
    intermediate_size=25600,
    num_hidden_layers=64,
    num_attention_heads=64,
    num_key_value_heads=8,
    head_dim=128,
    vocab_size=151936,
    rope_theta=5000000.0,
    rope_scaling={"mrope_section": [24, 20, 20], "rope_type": "default"},
    sound_gen=True,
    sound_dim=64,
)
NANO = dict(SUPER, hidden_size=4096, intermediate_size=12288, num_hidden_layers=36, num_attention_heads=32)
TINY = dict(
    hidden_size=40,
    intermediate_size=200,
    num_hidden_layers=2,
    num_attention_heads=8,
    num_key_value_heads=1,
    head_dim=16,
    rope_scaling={"mrope_section": [4, 2, 2], "rope_type": "default"},
    sound_gen=True,
    sound_dim=64,
)
PROMPT = "A small drone flies over a green field at sunset, casting a long shadow."


def count(cfg: dict) -> int:
    from diffusers import Cosmos3OmniTransformer

    with torch.device("meta"):
        m = Cosmos3OmniTransformer(**cfg)
    return sum(p.numel() for p in m.parameters())


def make(out_dir: Path, seed: int) -> None:
    from diffusers import Cosmos3OmniPipeline, Cosmos3OmniTransformer
    from ref_pipeline import Recorder, randomize_, round_to_bf16_, transformer_tensors

    out_dir = Path(out_dir)
    refs = out_dir / "refs"
    refs.mkdir(parents=True, exist_ok=True)
    torch.set_grad_enabled(False)
    shape = {
        "super_config": SUPER,
        "super_parameters": count(SUPER),
        "nano_parameters": count(NANO),
    }
    (refs / "super_shape.json").write_text(json.dumps(shape, indent=2) + "\n")

    root = out_dir / "tiny_super"
    if root.exists():
        shutil.rmtree(root)
    root.mkdir(parents=True)
    gen = torch.Generator().manual_seed(seed + 7000)
    base = Cosmos3OmniPipeline.from_pretrained(out_dir / "tiny", torch_dtype=torch.float32)
    transformer = Cosmos3OmniTransformer(vocab_size=len(base.text_tokenizer), **TINY)
    randomize_(transformer, gen)
    round_to_bf16_(transformer)
    transformer.eval()
    copy.deepcopy(transformer).to(torch.bfloat16).save_pretrained(root / "transformer")

    pipe = Cosmos3OmniPipeline(
        transformer=transformer,
        text_tokenizer=base.text_tokenizer,
        vae=base.vae,
        scheduler=base.scheduler,
        sound_tokenizer=base.sound_tokenizer,
        enable_safety_checker=False,
    )
    pipe.set_progress_bar_config(disable=True)
    latent = torch.randn(1, 48, 3, 2, 3, generator=gen)
    sound = torch.randn(64, 10, generator=gen)
    rec = Recorder(pipe)
    try:
        pipe(
            prompt=PROMPT,
            num_frames=9,
            height=32,
            width=48,
            fps=24.0,
            num_inference_steps=1,
            guidance_scale=6.0,
            enable_sound=True,
            latents=latent,
            sound_latents=sound,
            output_type="latent",
            enable_safety_check=False,
        )
    finally:
        rec.close()
    tensors = transformer_tensors(rec.calls[0])
    save_file(
        {k: v.contiguous() for k, v in tensors.items()},
        str(refs / "super_velocity.safetensors"),
        metadata={"prompt": PROMPT, "fps": "24.0"},
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("out", type=Path, help="fixtures folder (reads tiny/, writes tiny_super/ and refs/)")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    torch.set_num_threads(1)
    torch.use_deterministic_algorithms(True)
    sys.path.insert(0, str(Path(__file__).parent))
    make(args.out, args.seed)


if __name__ == "__main__":
    main()
