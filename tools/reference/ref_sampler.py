"""Reference data for the sampler: seeded noise, sigma/timestep schedules, UniPC trajectories.

Writes into the refs folder:
  noise.safetensors     numpy `RandomState(seed).standard_normal(shape)` as float64 for seeds
                        0, 42 and 2**32-1: `video_<seed>` [1,48,2,3,5] and `sound_<seed>`
                        [64,7] (each from a fresh generator, the sound one in [C,T] order)
  schedules.json        the scheduler config used, then one case per (style, steps,
                        flow_shift, karras, native flow schedule): float32 sigmas (n+1, last
                        0) and integer timesteps (n). `checkpoint` cases come from diffusers'
                        UniPCMultistepScheduler set up exactly as Cosmos3OmniPipeline does it;
                        `phyai` cases re-implement PhyAI's UniPC sampler schedule.
  unipc_<case>.safetensors
                        `video_init` / `sound_init`, per-step velocities `video_v` / `sound_v`
                        [N,...] and the sample after every step `video_out` / `sound_out`
                        [N,...], produced by two independent diffusers schedulers (the sound
                        one a deep copy after set_timesteps, as in the pipeline).

Run: python ref_sampler.py <fixtures dir> [--seed S]
"""

from __future__ import annotations

import argparse
import copy
import json
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import save_file

from diffusers import UniPCMultistepScheduler

# The scheduler config the Cosmos3 (Nano) checkpoint ships, keys as diffusers writes them.
COSMOS3_SCHEDULER_CONFIG = {
    "_class_name": "UniPCMultistepScheduler",
    "num_train_timesteps": 1000,
    "flow_shift": 1.0,
    "prediction_type": "flow_prediction",
    "use_flow_sigmas": True,
    "use_karras_sigmas": True,
    "sigma_max": 200.0,
    "sigma_min": 0.147,
    "solver_order": 2,
    "solver_type": "bh2",
    "final_sigmas_type": "zero",
    "timestep_spacing": "linspace",
    "lower_order_final": True,
}

NOISE_SEEDS = [0, 42, 2**32 - 1]
STEPS = [1, 2, 35, 50]
SHIFTS = [1.0, 5.0, 10.0]

# (name, steps, overrides of the checkpoint config, native flow schedule)
UNIPC_CASES = [
    ("karras_3", 3, {}, False),
    ("karras_35", 35, {}, False),
    ("flow10_5", 5, {"use_karras_sigmas": False, "flow_shift": 10.0}, False),
    ("flow10_35", 35, {"use_karras_sigmas": False, "flow_shift": 10.0}, False),
    ("native5_35", 35, {"use_karras_sigmas": False, "flow_shift": 5.0}, True),
]
VIDEO_SHAPE = (1, 48, 1, 2, 4)
SOUND_SHAPE = (1, 64, 5)


def _dirs(out_dir: Path) -> tuple[Path, Path]:
    """(refs folder to write, tiny checkpoint folder to read)."""
    out_dir = Path(out_dir)
    if out_dir.name == "refs":
        return out_dir, out_dir.parent / "tiny"
    return out_dir / "refs", out_dir / "tiny"


def scheduler_for(config: dict, flow_shift: float | None, karras: bool | None):
    """The scheduler a user gets from the checkpoint with the two usual overrides."""
    overrides = {}
    if flow_shift is not None:
        overrides["flow_shift"] = flow_shift
    if karras is not None:
        overrides["use_karras_sigmas"] = karras
    return UniPCMultistepScheduler.from_config(config, **overrides)


def pipeline_set_timesteps(sched, steps: int, native: bool) -> None:
    """Cosmos3OmniPipeline step 6: optional native linear sigmas, then set_timesteps."""
    if native:
        sigmas = np.linspace(1.0 - 1.0 / sched.config.num_train_timesteps, 0.0, steps + 1)[:-1]
        sched.set_timesteps(steps, device="cpu", sigmas=sigmas)
    else:
        sched.set_timesteps(steps, device="cpu")


def phyai_schedule(steps: int, flow_shift: float, karras: bool, num_train: int = 1000):
    """PhyAI's UniPC sampler schedule (Karras between fixed bounds, or a doubly warped
    linear flow grid), final sigma 0, timesteps truncated from sigma * num_train."""
    n = steps
    if karras:
        rho, smin, smax = 7.0, 0.147, 200.0
        ramp = np.linspace(0, 1, n)
        lo, hi = smin ** (1.0 / rho), smax ** (1.0 / rho)
        sig = (hi + ramp * (lo - hi)) ** rho
        sig = sig / (sig + 1.0)
    else:
        s = flow_shift
        base = 1.0 - np.linspace(1.0, 1.0 / num_train, num_train)[::-1]
        base = s * base / (1.0 + (s - 1.0) * base)
        smax, smin = float(base[0]), float(base[-1])
        sig = np.linspace(smax, smin, n + 1)[:-1]
        sig = s * sig / (1.0 + (s - 1.0) * sig)
    ts = torch.from_numpy((sig * num_train).copy()).to(torch.int64)
    sig = np.concatenate([sig, [0.0]]).astype(np.float32)
    return sig, ts


def _f32_list(a) -> list[float]:
    return [float(x) for x in np.asarray(a, dtype=np.float32)]


def make_noise(refs: Path) -> None:
    tensors = {}
    for seed in NOISE_SEEDS:
        v = np.random.RandomState(seed).standard_normal((1, 48, 2, 3, 5))
        s = np.random.RandomState(seed).standard_normal((64, 7))
        tensors[f"video_{seed}"] = torch.from_numpy(np.ascontiguousarray(v))
        tensors[f"sound_{seed}"] = torch.from_numpy(np.ascontiguousarray(s))
    save_file(tensors, str(refs / "noise.safetensors"), metadata={"seeds": json.dumps(NOISE_SEEDS)})


def make_schedules(refs: Path, config: dict) -> None:
    cases = []
    for steps in STEPS:
        for shift in SHIFTS:
            for karras in (False, True):
                for native in (False, True):
                    sched = scheduler_for(config, shift, karras)
                    pipeline_set_timesteps(sched, steps, native)
                    ts = sched.timesteps.tolist()
                    cases.append(
                        {
                            "style": "checkpoint",
                            "steps": steps,
                            "flow_shift": shift,
                            "karras": karras,
                            "native_flow": native,
                            "sigmas": _f32_list(sched.sigmas.numpy()),
                            "timesteps": [int(t) for t in ts],
                            "first_timestep_repeats": ts.count(ts[0]) > 1,
                        }
                    )
                sig, ts = phyai_schedule(steps, shift, karras)
                cases.append(
                    {
                        "style": "phyai",
                        "steps": steps,
                        "flow_shift": shift,
                        "karras": karras,
                        "native_flow": False,
                        "sigmas": _f32_list(sig),
                        "timesteps": [int(t) for t in ts.tolist()],
                    }
                )
    doc = {"scheduler_config": config, "cases": cases}
    (refs / "schedules.json").write_text(json.dumps(doc, indent=1) + "\n")


def make_unipc(refs: Path, config: dict, seed: int) -> None:
    for idx, (name, steps, overrides, native) in enumerate(UNIPC_CASES):
        g = torch.Generator().manual_seed(seed * 1000 + idx)
        video = torch.randn(VIDEO_SHAPE, generator=g, dtype=torch.float32)
        sound = torch.randn(SOUND_SHAPE, generator=g, dtype=torch.float32)
        video_v = torch.randn((steps,) + VIDEO_SHAPE, generator=g, dtype=torch.float32)
        sound_v = torch.randn((steps,) + SOUND_SHAPE, generator=g, dtype=torch.float32)

        sched = UniPCMultistepScheduler.from_config(config, **overrides)
        pipeline_set_timesteps(sched, steps, native)
        sound_sched = copy.deepcopy(sched)
        video_init, sound_init = video.clone(), sound.clone()
        video_out, sound_out = [], []
        for i, t in enumerate(sched.timesteps):
            video = sched.step(video_v[i], t, video, return_dict=False)[0]
            sound = sound_sched.step(sound_v[i], t, sound, return_dict=False)[0]
            video_out.append(video.clone())
            sound_out.append(sound.clone())
        meta = {
            "steps": str(steps),
            "overrides": json.dumps(overrides),
            "native_flow": json.dumps(native),
            "timesteps": json.dumps(sched.timesteps.tolist()),
        }
        save_file(
            {
                "video_init": video_init.contiguous(),
                "sound_init": sound_init.contiguous(),
                "video_v": video_v.contiguous(),
                "sound_v": sound_v.contiguous(),
                "video_out": torch.stack(video_out).contiguous(),
                "sound_out": torch.stack(sound_out).contiguous(),
            },
            str(refs / f"unipc_{name}.safetensors"),
            metadata=meta,
        )


def make(out_dir: Path, seed: int) -> None:
    refs, _tiny = _dirs(out_dir)
    refs.mkdir(parents=True, exist_ok=True)
    torch.set_grad_enabled(False)
    config = dict(COSMOS3_SCHEDULER_CONFIG)
    make_noise(refs)
    make_schedules(refs, config)
    make_unipc(refs, config, seed)


if __name__ == "__main__":
    ap = argparse.ArgumentParser()
    ap.add_argument("out_dir", type=Path)
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args()
    make(a.out_dir, a.seed)
