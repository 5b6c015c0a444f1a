"""Distilled (few-step, SDE) Cosmos3 references (diffusers 0.42.1 modular pipeline, CPU, f32).

`make(out_dir, seed)` writes
  tiny_distilled/               the tiny checkpoint in the distilled layout: the weights of
                                tiny/ (transformer/, vae/, text_tokenizer/ are relative
                                symlinks into ../tiny), a FlowMatchEulerDiscreteScheduler
                                config with `fixed_step_sampler_config` (sample_type "sde"),
                                and a root `modular_model_index.json` that repeats the
                                schedule as `distilled_sigmas` (no model_index.json)
  refs/distilled_<case>.safetensors

Each case runs `Cosmos3DistilledModularPipeline.from_pretrained(tiny_distilled)` exactly as
diffusers does (guidance baked in: cond branch only; stochastic scheduler steps that draw
fresh noise from the request generator; conditioned frames re-anchored after every step).
Every Gaussian draw the pipeline makes (the initial noise, then one per step) is recorded
so that another implementation can replay the run without torch's generator:
  pos_ids       [S] int64    token ids of the (only) branch
  init_noise    [1,48,t,h,w] the pure noise drawn for the initial latents
  step_noise    [steps,1,48,t,h,w] the noise drawn inside scheduler step i
  sigmas        [steps+1] f32 (schedule + final 0), timesteps [steps] f32 (sigma * 1000)
  velocity{i}   [1,48,t,h,w] the transformer velocity of step i (masked)
  step{i}       [1,48,t,h,w] latents after step i (after re-anchoring)
  latents       = the last step
  video         [1,3,T,H,W] in [0,1] (not in the `seeded` case)
  i2v: image [1,3,H,W] in [0,1] (8-bit values, also refs/distilled_i2v_image.png),
       image_latent [1,48,1,h,w] (normalised clean latent of frame 0)
  v2v: cond_latents [1,48,2,h,w] (the clean latent frames 0 and 1 of the video in
       refs/v2v_frames/, written by ref_v2v, which runs first)
metadata: prompt, num_frames, height, width, fps, steps, noise ("torch" or "numpy:<seed>").

The `seeded` case swaps the generator for the engine's own: every draw is the next
`standard_normal(shape)` of one numpy `RandomState(seed)` (f64 rounded to f32), the initial
noise first, then one draw per step, so a request that carries only the seed must
reproduce it.

Run: python ref_distilled.py <fixtures dir> [--seed S]   (needs tiny/ and refs/v2v_frames/)
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import save_file

T_LIST = [1.0, 0.9375, 0.8333333333333334, 0.625]
PROMPT_VIDEO = "A robot arm stacks three red cubes on a wooden table in a bright workshop."
PROMPT_IMAGE = "A small drone flies over a green field at sunset, casting a long shadow."
HUB_NAME = "tiny-cosmos3-distilled"

CASES = {
    "t2v": dict(prompt=PROMPT_VIDEO, num_frames=5, height=32, width=48, fps=24.0),
    "i2v": dict(prompt=PROMPT_VIDEO, num_frames=5, height=32, width=48, fps=24.0, image=True),
    "t2i": dict(prompt=PROMPT_IMAGE, num_frames=1, height=32, width=48, fps=24.0),
    "seeded": dict(prompt=PROMPT_IMAGE, num_frames=5, height=32, width=48, fps=24.0, numpy_seed=42),
    # Video-to-video: the PNG frames ref_v2v writes, latent frames (0, 1) kept (the default).
    "v2v": dict(prompt=PROMPT_VIDEO, num_frames=9, height=32, width=48, fps=24.0, video=True),
}

COMPONENTS = {
    "transformer": ("diffusers", "Cosmos3OmniTransformer"),
    "vae": ("diffusers", "AutoencoderKLWan"),
    "scheduler": ("diffusers", "FlowMatchEulerDiscreteScheduler"),
    "text_tokenizer": ("transformers", "TokenizersBackend"),
}


def write_checkpoint(out_dir: Path) -> Path:
    """tiny_distilled/: tiny/'s weights, the distilled scheduler and pipeline index."""
    from diffusers import FlowMatchEulerDiscreteScheduler

    root = out_dir / "tiny_distilled"
    if root.exists() or root.is_symlink():
        shutil.rmtree(root)
    root.mkdir(parents=True)
    for name in ("transformer", "vae", "text_tokenizer"):
        os.symlink(f"../tiny/{name}", root / name)
    sched = FlowMatchEulerDiscreteScheduler(num_train_timesteps=1000, shift=1.0, stochastic_sampling=True)
    sched.register_to_config(
        fixed_step_sampler_config=dict(num_train_timesteps=1000, sample_type="sde", t_list=T_LIST)
    )
    sched.save_pretrained(root / "scheduler")
    index = {
        "_blocks_class_name": "Cosmos3DistilledBlocks",
        "_class_name": "Cosmos3DistilledModularPipeline",
        "_diffusers_version": "0.42.1",
        "default_use_system_prompt": True,
        "distilled_sigmas": T_LIST,
        "enable_safety_checker": False,
        "is_distilled": True,
    }
    for name, (lib, cls) in COMPONENTS.items():
        # As published: entries point at the Hub repo; a local copy loads its own files.
        index[name] = [
            lib,
            cls,
            {
                "pretrained_model_name_or_path": HUB_NAME,
                "revision": None,
                "subfolder": name,
                "type_hint": [lib, cls],
                "variant": None,
            },
        ]
    (root / "modular_model_index.json").write_text(json.dumps(index, indent=2, sort_keys=True) + "\n")
    return root


class NoiseTape:
    """Records (or, with a numpy seed, supplies) every Gaussian draw of a pipeline run.

    Patches `randn_tensor` where the distilled pipeline draws: the initial latents
    (`before_denoise`) and the SDE step (`scheduling_flow_match_euler_discrete`)."""

    def __init__(self, numpy_seed: int | None):
        import diffusers.modular_pipelines.cosmos.before_denoise as prep
        import diffusers.schedulers.scheduling_flow_match_euler_discrete as sched

        self.modules = [prep, sched]
        self.originals = [m.randn_tensor for m in self.modules]
        self.draws: list[torch.Tensor] = []
        self.rs = np.random.RandomState(numpy_seed) if numpy_seed is not None else None
        original = self.originals[0]

        def draw(shape, generator=None, device=None, dtype=None, layout=None):
            if self.rs is not None:
                x = torch.from_numpy(self.rs.standard_normal(tuple(shape)).astype(np.float32))
                x = x.to(dtype=dtype or torch.float32)
            else:
                x = original(shape, generator=generator, device=device, dtype=dtype, layout=layout)
            self.draws.append(x.detach().clone())
            return x

        for m in self.modules:
            m.randn_tensor = draw

    def close(self):
        for m, f in zip(self.modules, self.originals):
            m.randn_tensor = f


def run_case(pipe, name: str, args: dict, seed: int, refs: Path) -> None:
    from diffusers import FlowMatchEulerDiscreteScheduler

    args = dict(args)
    with_image = args.pop("image", False)
    with_video = args.pop("video", False)
    numpy_seed = args.pop("numpy_seed", None)
    gen = torch.Generator().manual_seed(seed + 2000 + len(name))
    call = dict(args, generator=gen, output="videos", output_type="pt")
    tensors: dict[str, torch.Tensor] = {}
    if with_image:
        from PIL import Image

        image = (torch.rand(1, 3, args["height"], args["width"], generator=gen) * 255).round() / 255
        png = (image[0].permute(1, 2, 0) * 255).round().to(torch.uint8).numpy()
        Image.fromarray(png).save(refs / f"distilled_{name}_image.png")
        call["image"] = image * 2 - 1  # tensors are taken as [-1, 1]
        tensors["image"] = image

    if with_video:
        from PIL import Image

        folder = refs / "v2v_frames"
        call["video"] = [Image.open(p).convert("RGB") for p in sorted(folder.glob("*.png"))]

    ids = []
    hook = pipe.transformer.register_forward_hook(
        lambda _m, _a, kw, out: ids.append((kw["input_ids"].clone(), out[0][0].detach().float().clone())),
        with_kwargs=True,
    )
    steps = []
    original_step = FlowMatchEulerDiscreteScheduler.step

    def step(self, *a, **k):
        out = original_step(self, *a, **k)
        steps.append(out[0].detach().clone())
        return out

    # Latents after re-anchoring: read back by wrapping the loop's scheduler block.
    from diffusers.modular_pipelines.cosmos.denoise import Cosmos3DistilledVisionLoopSchedulerStep

    anchored = []
    original_block = Cosmos3DistilledVisionLoopSchedulerStep.__call__

    def block(self, components, block_state, i, t):
        out = original_block(self, components, block_state, i, t)
        anchored.append(out[1].latents.detach().float().clone())
        return out

    tape = NoiseTape(numpy_seed)
    FlowMatchEulerDiscreteScheduler.step = step
    Cosmos3DistilledVisionLoopSchedulerStep.__call__ = block
    try:
        with torch.no_grad():
            video = pipe(**call)
    finally:
        FlowMatchEulerDiscreteScheduler.step = original_step
        Cosmos3DistilledVisionLoopSchedulerStep.__call__ = original_block
        tape.close()
        hook.remove()

    n = len(T_LIST)
    assert len(ids) == n, f"{name}: expected one transformer call per step, got {len(ids)}"
    assert len(tape.draws) == n + 1, f"{name}: expected {n + 1} draws, got {len(tape.draws)}"
    if isinstance(video, list):
        video = video[0]
    tensors.update(
        {
            "pos_ids": ids[0][0].to(torch.int64),
            "init_noise": tape.draws[0].float(),
            # The scheduler steps a [1, 1, C, t, h, w] view; the draw is stored as [1, C, t, h, w].
            "step_noise": torch.stack([d.float().reshape(tape.draws[0].shape) for d in tape.draws[1:]]),
            "sigmas": pipe.scheduler.sigmas.float(),
            "timesteps": pipe.scheduler.timesteps.float(),
            "latents": anchored[-1],
            "video": video.float().permute(1, 0, 2, 3).unsqueeze(0),
        }
    )
    if numpy_seed is not None:
        del tensors["video"]  # the seeded case checks the sampler's draws; decoding is covered above
    for i in range(n):
        tensors[f"velocity{i}"] = ids[i][1].unsqueeze(0) if ids[i][1].dim() == 4 else ids[i][1]
        tensors[f"step{i}"] = anchored[i]
    if with_image:
        # The clean latent the loop re-anchors frame 0 to (frame 0 of the initial latents).
        tensors["image_latent"] = anchored[0][:, :, :1].clone()
    if with_video:
        tensors["cond_latents"] = anchored[0][:, :, :2].clone()
    meta = dict(args, steps=n, noise="torch" if numpy_seed is None else f"numpy:{numpy_seed}")
    save_file(
        {k: v.detach().contiguous().clone() for k, v in tensors.items()},
        str(refs / f"distilled_{name}.safetensors"),
        metadata={k: str(v) for k, v in meta.items()},
    )


def make(out_dir: Path, seed: int) -> None:
    from diffusers import Cosmos3DistilledModularPipeline

    out_dir = Path(out_dir)
    refs = out_dir / "refs"
    refs.mkdir(parents=True, exist_ok=True)
    root = write_checkpoint(out_dir)
    torch.set_grad_enabled(False)
    pipe = Cosmos3DistilledModularPipeline.from_pretrained(str(root))
    pipe.load_components(torch_dtype=torch.float32)
    pipe.set_progress_bar_config(disable=True)
    for name, args in CASES.items():
        run_case(pipe, name, args, seed, refs)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("out", type=Path, help="fixtures folder (reads tiny/, writes tiny_distilled/ and refs/)")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    torch.set_num_threads(1)
    torch.use_deterministic_algorithms(True)
    make(args.out, args.seed)


if __name__ == "__main__":
    main()
