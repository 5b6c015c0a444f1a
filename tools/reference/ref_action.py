"""Action-conditioned Cosmos3 references (diffusers 0.42.1 modular pipeline, CPU, f32).

`make(out_dir, seed)` writes
  tiny_action/                  the tiny checkpoint with an action-trained transformer:
                                vae/, text_tokenizer/, scheduler/ are relative symlinks into
                                ../tiny; transformer/ is its own (the tiny architecture plus
                                `action_gen` true, `action_dim` 12, 32 embodiment domains,
                                no sound stream), random weights stored as bf16
  refs/action_frames/NNN.png    5 seeded random 8-bit RGB frames, 176x304, blocks of 16x16
                                pixels (the input video of inverse dynamics; its canvas is
                                padded by reflection)
  refs/action_small.png         one 32x48 frame, the image of policy and forward dynamics
                                (padded by replication into its canvas)
  refs/action_large.png         one 210x380 frame, larger than its canvas: the policy case
                                `large` (shrunk with torch's antialiased bicubic, then padded)
  refs/action_<case>.safetensors

Each case runs `Cosmos3OmniBlocks` (the modular pipeline, workflow chosen by `action=`)
with `CosmosActionCondition`, 3 UniPC steps, guidance 6, `latents=` and `action_latents=`
given, and checks that `Cosmos3OmniPipeline` (the classic pipeline) gives the same result.
Tensors:
  pos_ids, neg_ids  int64      token ids of both branches (the JSON action caption; the
                               negative prompt "" without templates)
  cond_latents      [1,48,k,h,w] the clean latent frames (content crop of the encoded canvas)
  init_video        [1,48,t,h,w] the initial latents given (noise, clean frames written in)
  init_action       [chunk,12] the initial action latents given (noise with the clean
                               action rows written in and the channels beyond the domain's
                               width zeroed, as the pipeline prepares them itself)
  step{i}           [1,48,t,h,w] video latents after UniPC step i (not for inverse
                               dynamics, whose frames are all clean); latents = the last
  action_step{i}    [chunk,12] action latents after step i; action_latents = the last
  actions           [chunk,raw_dim] the predicted actions (policy, inverse dynamics)
  video             [1,3,T,H,W] in [0,1] (small-image cases); video_crop its top-left
                    32x48 (inverse dynamics and `large`, whose outputs are large)
  raw_actions       [n,raw_dim] the forward-dynamics input (n < chunk: last row repeated)
metadata: prompt, mode, domain, chunk, tier, fps, steps, guidance_scale, input (the PNGs),
canvas "HxW", content "HxW".

Run: python ref_action.py <fixtures dir> [--seed S]   (needs tiny/)
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import shutil
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from safetensors.torch import save_file

PROMPT = "A robot arm stacks three red cubes on a wooden table"
ACTION_DIM = 12
CHUNK = 4
STEPS = 3
GUIDANCE = 6.0
FPS = 24.0
FRAME_SIZE = (176, 304)  # -> tier 256, canvas 192x320, padded by reflection
SMALL_SIZE = (32, 48)  # -> tier 256, canvas 192x320, padded by replication
LARGE_SIZE = (210, 380)  # -> tier 256: larger than its canvas, shrunk (bicubic) and padded

CASES = {
    "policy": dict(mode="policy", domain="bridge_orig_lerobot", input="small"),
    "forward": dict(mode="forward_dynamics", domain="fractal", input="small", actions=3),
    "inverse": dict(mode="inverse_dynamics", domain="pusht", input="video"),
    "large": dict(mode="policy", domain="bridge_orig_lerobot", input="large"),
}
# The large input's decoded video is stored as its top-left crop (fixture size).
CROP = (32, 48)


def write_checkpoint(out_dir: Path, seed: int) -> Path:
    """tiny_action/: tiny/'s VAE, tokenizer and scheduler, an action transformer."""
    from diffusers import Cosmos3OmniTransformer
    from ref_pipeline import randomize_, round_to_bf16_

    tiny = out_dir / "tiny"
    root = out_dir / "tiny_action"
    if root.exists() or root.is_symlink():
        shutil.rmtree(root)
    root.mkdir(parents=True)
    for name in ("vae", "text_tokenizer", "scheduler"):
        os.symlink(f"../tiny/{name}", root / name)
    base = json.loads((tiny / "transformer" / "config.json").read_text())
    keep = {k: v for k, v in base.items() if not k.startswith("_") and k not in ("rope_axes_dim",)}
    keep.update(action_gen=True, action_dim=ACTION_DIM, sound_gen=False, sound_dim=None)
    gen = torch.Generator().manual_seed(seed + 6000)
    transformer = Cosmos3OmniTransformer(**keep)
    randomize_(transformer, gen)
    round_to_bf16_(transformer)
    copy.deepcopy(transformer).to(torch.bfloat16).save_pretrained(root / "transformer")
    index = json.loads((tiny / "model_index.json").read_text())
    index["sound_tokenizer"] = [None, None]
    (root / "model_index.json").write_text(json.dumps(index, indent=2, sort_keys=True) + "\n")
    return root


def write_inputs(refs: Path, seed: int) -> None:
    gen = torch.Generator().manual_seed(seed + 6100)
    # Blocks of 16x16 pixels of one random colour: compresses well as PNG.
    h, w = FRAME_SIZE
    blocks = (torch.rand(CHUNK + 1, h // 16, w // 16, 3, generator=gen) * 255).round().to(torch.uint8)
    frames = blocks.repeat_interleave(16, dim=1).repeat_interleave(16, dim=2)
    folder = refs / "action_frames"
    folder.mkdir(parents=True, exist_ok=True)
    for old in folder.glob("*.png"):
        old.unlink()
    for i, f in enumerate(frames):
        Image.fromarray(f.numpy()).save(folder / f"{i:03d}.png")
    h, w = SMALL_SIZE
    small = (torch.rand(h, w, 3, generator=gen) * 255).round().to(torch.uint8)
    Image.fromarray(small.numpy()).save(refs / "action_small.png")


def write_large(refs: Path, seed: int) -> None:
    """refs/action_large.png: one frame larger than its tier's canvas, in 10x10 blocks."""
    gen = torch.Generator().manual_seed(seed + 6300)
    h, w = LARGE_SIZE
    blocks = (torch.rand(h // 10, w // 10, 3, generator=gen) * 255).round().to(torch.uint8)
    img = blocks.repeat_interleave(10, dim=0).repeat_interleave(10, dim=1)
    Image.fromarray(img.numpy()).save(refs / "action_large.png")


def inputs_of(refs: Path, case: dict):
    frames = [Image.open(p).convert("RGB") for p in sorted((refs / "action_frames").glob("*.png"))]
    if case["input"] == "video":
        return dict(video=frames), "action_frames"
    if case["input"] in ("small", "large"):
        name = f"action_{case['input']}.png"
        return dict(image=Image.open(refs / name).convert("RGB")), name
    return dict(image=frames[0]), "action_frames/000.png"


class Steps:
    """Records every UniPC step (video and action schedulers alike, in call order)."""

    def __init__(self):
        from diffusers import UniPCMultistepScheduler

        self.cls = UniPCMultistepScheduler
        self.original = UniPCMultistepScheduler.step
        self.out: list[torch.Tensor] = []
        rec = self

        def step(sched, *a, **k):
            out = rec.original(sched, *a, **k)
            rec.out.append(out[0].detach().float().clone())
            return out

        UniPCMultistepScheduler.step = step

    def close(self):
        self.cls.step = self.original


def run_case(modular, classic, name: str, case: dict, seed: int, refs: Path) -> None:
    from diffusers.pipelines.cosmos.pipeline_cosmos3_omni import (
        _EMBODIMENT_TO_RAW_ACTION_DIM,
        CosmosActionCondition,
    )

    visual, source = inputs_of(refs, case)
    raw_dim = _EMBODIMENT_TO_RAW_ACTION_DIM[case["domain"]]
    gen = torch.Generator().manual_seed(seed + 6200 + len(name))
    raw_actions = None
    if "actions" in case:
        raw_actions = torch.randn(case["actions"], raw_dim, generator=gen)
    cond = CosmosActionCondition(
        mode=case["mode"],
        chunk_size=CHUNK,
        domain_name=case["domain"],
        resolution_tier=256,
        raw_actions=raw_actions,
        **visual,
    )

    # The clean latents and canvas exactly as the pipeline prepares them.
    clip = [cond.image] if cond.image is not None else cond.video
    canvas, image_size, ch, cw = classic._prepare_action_video_conditioning(
        clip, 256, CHUNK + 1, device="cpu", dtype=torch.float32
    )
    x0 = classic._encode_video(canvas).float()
    x0 = classic._remove_action_video_padding_from_latent(x0, image_size)
    lt = x0.shape[2]
    clean_frames = list(range(lt)) if case["mode"] == "inverse_dynamics" else [0]
    init = torch.randn(x0.shape, generator=gen)
    for f in clean_frames:
        init[:, :, f] = x0[:, :, f]
    action = torch.randn(CHUNK, ACTION_DIM, generator=gen)
    if case["mode"] == "forward_dynamics":
        rows = torch.cat([raw_actions, raw_actions[-1:].expand(CHUNK - raw_actions.shape[0], -1)])
        action = torch.cat([rows, torch.zeros(CHUNK, ACTION_DIM - raw_dim)], dim=1)
    action[:, raw_dim:] = 0

    results = {}
    for label, pipe in (("modular", modular), ("classic", classic)):
        rec = Steps()
        try:
            with torch.no_grad():
                if label == "modular":
                    state = pipe(
                        prompt=PROMPT,
                        action=cond,
                        fps=FPS,
                        num_inference_steps=STEPS,
                        guidance_scale=GUIDANCE,
                        latents=init.clone(),
                        action_latents=action.clone(),
                        output_type="pt",
                        output=["videos", "action"],
                    )
                    video, actions = state["videos"], state["action"]
                else:
                    out = pipe(
                        prompt=PROMPT,
                        action=cond,
                        fps=FPS,
                        num_inference_steps=STEPS,
                        guidance_scale=GUIDANCE,
                        latents=init.clone(),
                        action_latents=action.clone(),
                        output_type="pt",
                        enable_safety_check=False,
                    )
                    video, actions = out.video, out.action
        finally:
            rec.close()
        if isinstance(video, list):
            video = video[0]
        results[label] = (video.float(), actions, rec.out)

    video, actions, steps = results["modular"]
    c_video, c_actions, c_steps = results["classic"]
    assert len(steps) == len(c_steps), f"{name}: {len(steps)} vs {len(c_steps)} scheduler steps"
    for a, b in zip(steps, c_steps):
        assert torch.equal(a, b), f"{name}: modular and classic pipelines disagree"
    assert torch.equal(video, c_video), f"{name}: videos disagree"

    noisy_action = case["mode"] != "forward_dynamics"
    per_step = 2 if noisy_action else 1
    assert len(steps) == per_step * STEPS, f"{name}: {len(steps)} scheduler steps"
    video_steps = steps[0::per_step]
    action_steps = steps[1::per_step] if noisy_action else [action.clone() for _ in range(STEPS)]
    pos_ids, neg_ids = classic.tokenize_prompt(
        PROMPT,
        None,
        num_frames=CHUNK + 1,
        height=ch,
        width=cw,
        fps=FPS,
        action_mode=case["mode"],
        action_view_point="ego_view",
    )
    tensors = {
        "pos_ids": torch.tensor(pos_ids, dtype=torch.int64),
        "neg_ids": torch.tensor(neg_ids, dtype=torch.int64),
        "cond_latents": torch.cat([x0[:, :, f : f + 1] for f in clean_frames], dim=2),
        "init_video": init,
        "init_action": action,
    }
    video = video.permute(1, 0, 2, 3).unsqueeze(0)
    if case["input"] in ("video", "large"):
        tensors["video_crop"] = video[..., : CROP[0], : CROP[1]]
    else:
        tensors["video"] = video
    for i in range(STEPS):
        if case["input"] != "video":  # inverse dynamics: every video frame is clean
            tensors[f"step{i}"] = video_steps[i].reshape(init.shape)
        tensors[f"action_step{i}"] = action_steps[i].reshape(action.shape)
    tensors["latents"] = video_steps[-1].reshape(init.shape).clone()
    tensors["action_latents"] = tensors[f"action_step{STEPS - 1}"].clone()
    if actions is not None:
        assert c_actions is not None and torch.equal(actions[0], c_actions[0])
        tensors["actions"] = actions[0].float()
        assert tensors["actions"].shape == (CHUNK, raw_dim)
    if raw_actions is not None:
        tensors["raw_actions"] = raw_actions
    th, tw = int(image_size[2]), int(image_size[3])
    meta = dict(
        prompt=PROMPT,
        mode=case["mode"],
        domain=case["domain"],
        chunk=CHUNK,
        tier=256,
        fps=FPS,
        steps=STEPS,
        guidance_scale=GUIDANCE,
        input=source,
        canvas=f"{ch}x{cw}",
        content=f"{th}x{tw}",
    )
    save_file(
        {k: v.detach().contiguous().clone() for k, v in tensors.items()},
        str(refs / f"action_{name}.safetensors"),
        metadata={k: str(v) for k, v in meta.items()},
    )


def make(out_dir: Path, seed: int, only: str | None = None) -> None:
    from diffusers import Cosmos3OmniPipeline
    from diffusers.modular_pipelines.cosmos.modular_blocks_cosmos3 import Cosmos3OmniBlocks

    out_dir = Path(out_dir)
    refs = out_dir / "refs"
    refs.mkdir(parents=True, exist_ok=True)
    torch.set_grad_enabled(False)
    if only is None:
        root = write_checkpoint(out_dir, seed)
        write_inputs(refs, seed)
    else:  # one case against the committed checkpoint and inputs
        root = out_dir / "tiny_action"
    if only in (None, "large"):
        write_large(refs, seed)
    classic = Cosmos3OmniPipeline.from_pretrained(root, torch_dtype=torch.float32)
    classic.set_progress_bar_config(disable=True)
    modular = Cosmos3OmniBlocks().init_pipeline()
    modular.update_components(
        transformer=classic.transformer,
        vae=classic.vae,
        text_tokenizer=classic.text_tokenizer,
        scheduler=copy.deepcopy(classic.scheduler),
        video_processor=classic.video_processor,
    )
    modular.register_to_config(enable_safety_checker=False)
    modular.set_progress_bar_config(disable=True)
    for name, case in CASES.items():
        if only in (None, name):
            run_case(modular, classic, name, case, seed, refs)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("out", type=Path, help="fixtures folder (reads tiny/, writes tiny_action/ and refs/)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--only", choices=sorted(CASES), help="write this case only (keeps tiny_action/)")
    args = ap.parse_args()
    torch.set_num_threads(1)
    torch.use_deterministic_algorithms(True)
    import sys

    sys.path.insert(0, str(Path(__file__).parent))
    make(args.out, args.seed, args.only)


if __name__ == "__main__":
    main()
