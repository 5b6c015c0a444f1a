"""Model-level references from the real Cosmos3OmniPipeline running the tiny checkpoint.

Writes into the refs folder:
  transformer_<case>.safetensors  the transformer's inputs and outputs at the pipeline's first
                                  (conditional) call, captured with a forward hook, for the
                                  cases t2v, t2av, padded (odd latent h/w), mask (I2V).
  trajectory_<case>.safetensors   a full 3-step CFG run (t2v, t2av, i2v): token ids, initial
                                  noise, every step's latents and velocities, sigmas,
                                  timesteps and the decoded video (and audio).

Run: python ref_pipeline.py <fixtures dir> [--seed S]   (needs tiny/ from tiny_checkpoint.py)
"""

from __future__ import annotations

import argparse
import contextlib
from pathlib import Path

import numpy as np
import torch

from common import deterministic, fixture_dirs, numpy_normal, save_tensors

PROMPT = "A red fox runs through a snowy forest at dawn."
NEGATIVE_PROMPT = "Blurry, low quality, flickering."
FPS = 24.0
GUIDANCE = 6.0
STEPS = 3

# name -> (num_frames, height, width, enable_sound, image conditioning)
TRANSFORMER_CASES = {
    "t2v": (9, 64, 96, False, False),
    "t2av": (9, 64, 96, True, False),
    "padded": (5, 48, 80, False, False),
    "mask": (9, 64, 96, False, True),
}
TRAJECTORY_CASES = {
    "t2v": (9, 64, 96, False, False),
    "t2av": (9, 64, 96, True, False),
    "i2v": (9, 64, 96, False, True),
}


def load_pipeline(tiny: Path):
    from diffusers import Cosmos3OmniPipeline

    pipe = Cosmos3OmniPipeline.from_pretrained(tiny, torch_dtype=torch.float32)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def condition_image(seed: int, height: int, width: int) -> torch.Tensor:
    """A fixed uint8 RGB image [3,H,W] (integer input: the pipeline only rescales it)."""
    rs = np.random.RandomState(seed + 7)
    return torch.from_numpy(rs.randint(0, 256, size=(3, height, width)).astype(np.uint8))


def latent_shape(pipe, frames: int, height: int, width: int) -> tuple[int, ...]:
    t = (frames - 1) // pipe.vae_scale_factor_temporal + 1
    s = pipe.vae_scale_factor_spatial
    return (1, pipe.transformer.config.latent_channel, t, height // s, width // s)


def sound_frames(pipe, frames: int) -> int:
    """The pipeline's sound latent length: ceil(int(frames/fps*rate) / hop)."""
    samples = int(frames / FPS * pipe.sound_tokenizer.config.sampling_rate)
    hop = pipe.sound_tokenizer._hop_size
    return (samples + hop - 1) // hop


@contextlib.contextmanager
def record_transformer(pipe):
    """Records (kwargs, outputs) of every transformer call."""
    calls = []

    def hook(_module, _args, kwargs, output):
        calls.append((dict(kwargs), output))

    handle = pipe.transformer.register_forward_hook(hook, with_kwargs=True)
    try:
        yield calls
    finally:
        handle.remove()


@contextlib.contextmanager
def record_scheduler_steps():
    """Records (scheduler id, prev_sample) of every UniPC step, video and sound alike."""
    from diffusers import UniPCMultistepScheduler

    original = UniPCMultistepScheduler.step
    steps = []

    def step(self, *args, **kwargs):
        out = original(self, *args, **kwargs)
        sample = out[0] if isinstance(out, tuple) else out.prev_sample
        steps.append((id(self), sample.detach().clone()))
        return out

    UniPCMultistepScheduler.step = step
    try:
        yield steps
    finally:
        UniPCMultistepScheduler.step = original


def call_args(case: tuple, pipe, seed: int, with_noise: bool) -> dict:
    """Pipeline keyword arguments for one case (the noise drawn as the engine draws it)."""
    frames, height, width, sound, image = case
    args = dict(
        prompt=PROMPT,
        negative_prompt=NEGATIVE_PROMPT,
        num_frames=frames,
        height=height,
        width=width,
        fps=FPS,
        guidance_scale=GUIDANCE,
        enable_sound=sound,
        enable_safety_check=False,
    )
    if image:
        # Passing `latents` would skip the clean-frame blend, so I2V draws its own noise.
        args["image"] = condition_image(seed, height, width)
        args["generator"] = torch.Generator().manual_seed(seed)
    elif with_noise:
        args["latents"] = numpy_normal(seed, latent_shape(pipe, frames, height, width))
        if sound:
            args["sound_latents"] = numpy_normal(seed, (pipe.transformer.config.sound_dim, sound_frames(pipe, frames)))
    return args


def transformer_inputs(kwargs: dict) -> dict[str, torch.Tensor]:
    """Flattens one transformer call's keyword arguments into named tensors."""
    out = {
        "input_ids": kwargs["input_ids"],
        "text_indexes": kwargs["text_indexes"],
        "position_ids": kwargs["position_ids"],
        "und_len": torch.tensor([kwargs["und_len"]]),
        "sequence_length": torch.tensor([kwargs["sequence_length"]]),
        "vision_latents": kwargs["vision_tokens"][0],
        "vision_token_shape": torch.tensor(kwargs["vision_token_shapes"][0]),
        "vision_sequence_indexes": kwargs["vision_sequence_indexes"],
        "vision_mse_loss_indexes": kwargs["vision_mse_loss_indexes"],
        "vision_timesteps": kwargs["vision_timesteps"],
        "vision_noisy_frame_indexes": kwargs["vision_noisy_frame_indexes"][0],
    }
    if kwargs.get("sound_tokens") is not None:
        out.update(
            {
                "sound_latents": kwargs["sound_tokens"][0].unsqueeze(0),
                "sound_token_shape": torch.tensor(kwargs["sound_token_shapes"][0]),
                "sound_sequence_indexes": kwargs["sound_sequence_indexes"],
                "sound_mse_loss_indexes": kwargs["sound_mse_loss_indexes"],
                "sound_timesteps": kwargs["sound_timesteps"],
                "sound_noisy_frame_indexes": kwargs["sound_noisy_frame_indexes"][0],
            }
        )
    return out


def make_transformer_case(pipe, refs: Path, name: str, case: tuple, seed: int) -> None:
    """One pipeline step with CFG off; the first transformer call is the reference."""
    args = call_args(case, pipe, seed, with_noise=True)
    args.update(num_inference_steps=1, guidance_scale=1.0, output_type="latent")
    with record_transformer(pipe) as calls:
        pipe(**args)
    kwargs, (preds_vision, preds_sound, _preds_action) = calls[0]
    tensors = transformer_inputs(kwargs)
    tensors["velocity_video"] = preds_vision[0]
    if preds_sound is not None:
        tensors["velocity_sound"] = preds_sound[0].unsqueeze(0)
    meta = {
        "case": name,
        "prompt": PROMPT,
        "num_frames": case[0],
        "height": case[1],
        "width": case[2],
        "fps": FPS,
        "enable_sound": case[3],
        "image_condition": case[4],
        "timestep": float(kwargs["vision_timesteps"][0]),
        "seed": seed,
    }
    save_tensors(refs / f"transformer_{name}.safetensors", tensors, meta)


def make_trajectory(pipe, refs: Path, name: str, case: tuple, seed: int) -> None:
    """Full pipeline run, CFG on, decoded to pixels (and audio)."""
    frames, height, width, sound, _image = case
    args = call_args(case, pipe, seed, with_noise=True)
    args.update(num_inference_steps=STEPS, output_type="pt")
    decoded = []
    vae_hook = pipe.vae.register_forward_hook(lambda *_: None)  # placeholder, replaced below
    vae_hook.remove()
    original_decode = pipe.vae.decode

    def decode(z, *a, **k):
        out = original_decode(z, *a, **k)
        decoded.append((z.detach().clone(), out.sample.detach().clone()))
        return out

    pipe.vae.decode = decode
    try:
        with record_transformer(pipe) as calls, record_scheduler_steps() as steps:
            result = pipe(**args)
    finally:
        del pipe.vae.decode
    video_id = id(pipe.scheduler)
    video_steps = [s for sid, s in steps if sid == video_id]
    sound_steps = [s for sid, s in steps if sid != video_id]
    cond = calls[0::2]
    uncond = calls[1::2]

    tensors = {
        "pos_input_ids": cond[0][0]["input_ids"],
        "neg_input_ids": uncond[0][0]["input_ids"],
        "pos_position_ids": cond[0][0]["position_ids"],
        "neg_position_ids": uncond[0][0]["position_ids"],
        "init_latents": cond[0][0]["vision_tokens"][0],
        "latents_steps": torch.stack([s.reshape(cond[0][0]["vision_tokens"][0].shape) for s in video_steps]),
        "v_cond_video": torch.stack([c[1][0][0] for c in cond]),
        "v_uncond_video": torch.stack([c[1][0][0] for c in uncond]),
        "vision_timesteps": torch.stack([c[0]["vision_timesteps"] for c in cond]),
        "sigmas": pipe.scheduler.sigmas,
        "timesteps": pipe.scheduler.timesteps,
        "final_latents": video_steps[-1].reshape(cond[0][0]["vision_tokens"][0].shape),
        "vae_input": decoded[0][0],
        "vae_output": decoded[0][1],
        # Pipeline output "pt" is [T,3,H,W] in [0,1]; stored as [1,3,T,H,W].
        "video": result.video.permute(1, 0, 2, 3).unsqueeze(0),
    }
    if "image" in args:
        tensors["image"] = args["image"]
    if sound:
        shape = (1,) + tuple(cond[0][0]["sound_tokens"][0].shape)
        tensors.update(
            {
                "init_sound_latents": cond[0][0]["sound_tokens"][0].unsqueeze(0),
                "sound_latents_steps": torch.stack([s.reshape(shape) for s in sound_steps]),
                "v_cond_sound": torch.stack([c[1][1][0].unsqueeze(0) for c in cond]),
                "v_uncond_sound": torch.stack([c[1][1][0].unsqueeze(0) for c in uncond]),
                "final_sound_latents": sound_steps[-1].reshape(shape),
                "audio": result.sound.unsqueeze(0),
            }
        )
    meta = {
        "case": name,
        "prompt": PROMPT,
        "negative_prompt": NEGATIVE_PROMPT,
        "num_frames": frames,
        "height": height,
        "width": width,
        "fps": FPS,
        "guidance_scale": GUIDANCE,
        "num_inference_steps": STEPS,
        "enable_sound": sound,
        "seed": seed,
        "noise": "generator" if "image" in args else "numpy RandomState(seed).standard_normal, f32",
    }
    save_tensors(refs / f"trajectory_{name}.safetensors", tensors, meta)


def make(out_dir: Path, seed: int) -> None:
    deterministic()
    refs, tiny = fixture_dirs(out_dir)
    pipe = load_pipeline(tiny)
    for name, case in TRANSFORMER_CASES.items():
        make_transformer_case(pipe, refs, name, case, seed)
    for name, case in TRAJECTORY_CASES.items():
        make_trajectory(pipe, refs, name, case, seed)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("out", type=Path, help="fixtures folder (reads tiny/, writes refs/)")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    make(args.out, args.seed)


if __name__ == "__main__":
    main()
