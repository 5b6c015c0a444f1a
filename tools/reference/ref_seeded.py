"""Seeded end-to-end reference: the pipeline started from the engine's own seeded noise.

The other trajectories hand the engine their initial noise. This one starts from the noise
the engine draws itself for a seed (numpy `RandomState(seed).standard_normal`, f64 rounded
once to f32; video [1,48,t,h,w], sound [64,T] from a second, fresh generator, used as is in
a [1,64,T] layout), so a request that carries only the seed must reproduce it.

Writes `refs/trajectory_seeded_t2av.safetensors` (small: 5 frames, 32x48, sound on):
  pos_ids, neg_ids        int64 token ids the pipeline fed to the two branches
  init_video, init_sound  the seeded noise [1,48,2,2,3] / [1,64,T]
  latents, sound_latents  final latents after 3 guided steps
  video                   [1,3,5,32,48] in [0,1]
  audio                   [1,2,T*1920]
metadata: prompt, seed, num_frames, height, width, fps, steps, guidance_scale.

Run: python ref_seeded.py <fixtures dir> [--seed S]   (needs tiny/)
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import save_file

PROMPT = "A small drone flies over a green field at sunset, casting a long shadow."
SEED = 42
CASE = dict(num_frames=5, height=32, width=48, fps=24.0)
STEPS = 3
GUIDANCE = 6.0


def seeded_normal(seed: int, shape: tuple[int, ...]) -> torch.Tensor:
    """The engine's noise: a fresh `RandomState(seed)` standard-normal draw, rounded to f32."""
    return torch.from_numpy(np.random.RandomState(seed).standard_normal(shape).astype(np.float32))


def make(out_dir: Path, seed: int) -> None:
    from diffusers import Cosmos3OmniPipeline, UniPCMultistepScheduler

    out_dir = Path(out_dir)
    refs, tiny = out_dir / "refs", out_dir / "tiny"
    torch.set_grad_enabled(False)
    pipe = Cosmos3OmniPipeline.from_pretrained(tiny, torch_dtype=torch.float32)
    pipe.set_progress_bar_config(disable=True)

    noise_seed = SEED + seed
    lt = (CASE["num_frames"] - 1) // pipe.vae_scale_factor_temporal + 1
    s = pipe.vae_scale_factor_spatial
    video_noise = seeded_normal(noise_seed, (1, 48, lt, CASE["height"] // s, CASE["width"] // s))
    samples = int(CASE["num_frames"] / CASE["fps"] * pipe.sound_tokenizer.config.sampling_rate)
    hop = pipe.sound_tokenizer._hop_size
    sound_noise = seeded_normal(noise_seed, (pipe.transformer.config.sound_dim, (samples + hop - 1) // hop))

    ids = []
    hook = pipe.transformer.register_forward_hook(
        lambda _m, _a, kw, _out: ids.append(kw["input_ids"].clone()), with_kwargs=True
    )
    steps = []
    original = UniPCMultistepScheduler.step

    def step(self, *a, **k):
        out = original(self, *a, **k)
        steps.append(out[0].detach().clone())
        return out

    UniPCMultistepScheduler.step = step
    try:
        out = pipe(
            prompt=PROMPT,
            **CASE,
            num_inference_steps=STEPS,
            guidance_scale=GUIDANCE,
            enable_sound=True,
            latents=video_noise.clone(),
            sound_latents=sound_noise.clone(),
            output_type="pt",
            enable_safety_check=False,
        )
    finally:
        UniPCMultistepScheduler.step = original
        hook.remove()

    tensors = {
        "pos_ids": ids[0].to(torch.int64),
        "neg_ids": ids[1].to(torch.int64),
        "init_video": video_noise,
        "init_sound": sound_noise.unsqueeze(0),
        # Video and sound samplers step alternately; the last two entries are the final ones.
        "latents": steps[-2].reshape(video_noise.shape),
        "sound_latents": steps[-1].reshape(1, *sound_noise.shape),
        "video": out.video.permute(1, 0, 2, 3).unsqueeze(0),
        "audio": out.sound.unsqueeze(0),
    }
    meta = dict(CASE, prompt=PROMPT, seed=noise_seed, steps=STEPS, guidance_scale=GUIDANCE)
    refs.mkdir(parents=True, exist_ok=True)
    save_file(
        {k: v.detach().contiguous().clone() for k, v in tensors.items()},
        str(refs / "trajectory_seeded_t2av.safetensors"),
        metadata={k: str(v) for k, v in meta.items()},
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("out", type=Path, help="fixtures folder (reads tiny/, writes refs/)")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    torch.set_num_threads(1)
    torch.use_deterministic_algorithms(True)
    make(args.out, args.seed)


if __name__ == "__main__":
    main()
