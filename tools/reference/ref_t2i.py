"""Text-to-image references: `Cosmos3OmniPipeline` with `num_frames=1` (CPU, f32).

`make(out_dir, seed)` writes `refs/t2i_<case>.safetensors` from the tiny checkpoint:
  pos_ids, neg_ids   int64 token ids of the two branches (diffusers' one-frame templates:
                     image system prompt, "This image is of HxW resolution.", no duration)
  init_video         [1,48,1,h,w] the initial noise (torch.randn, given as `latents=`;
                     the same for every case)
  sigmas [4] f32, timesteps [3] int64
  guided             [3] int64: 1 where the step ran classifier-free guidance
  step{0,1,2}        [1,1,48,1,h,w] latents after each UniPC step; latents = step2
  image              [1,3,1,H,W] in [0,1] (the pipeline's output frame)
metadata: prompt, num_frames, height, width, fps, steps, guidance_scale, guidance_interval.

Cases:
  plain     guidance 6 on every step (diffusers' behaviour).
  interval  guidance 6 only where the step's timestep lies in [400, 1000] (vLLM-Omni's T2I
            default). diffusers 0.42.1 has no guidance interval, so this reference is the
            same pipeline with its `do_classifier_free_guidance` switch evaluated per step
            from the current timestep: outside the interval the step uses the conditional
            velocity alone, exactly as the pipeline does for guidance 1. With the 3-step
            Karras schedule (995, 929, 128) the last step is unguided.

Run: python ref_t2i.py <fixtures dir> [--seed S]   (needs tiny/)
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch
from safetensors.torch import save_file

PROMPT = "A small drone flies over a green field at sunset, casting a long shadow."
CASE = dict(num_frames=1, height=32, width=48, fps=24.0)
STEPS = 3
GUIDANCE = 6.0
INTERVAL = (400.0, 1000.0)


def run_case(pipe, name: str, interval, seed: int, refs: Path) -> None:
    from diffusers import Cosmos3OmniPipeline, UniPCMultistepScheduler

    gen = torch.Generator().manual_seed(seed + 3000)  # same noise for every case
    lh, lw = CASE["height"] // 16, CASE["width"] // 16
    noise = torch.randn(1, 48, 1, lh, lw, generator=gen)
    pos_ids, neg_ids = pipe.tokenize_prompt(
        PROMPT, None, num_frames=CASE["num_frames"], height=CASE["height"], width=CASE["width"], fps=CASE["fps"]
    )

    steps, guided = [], []
    original_step = UniPCMultistepScheduler.step
    original_cfg = Cosmos3OmniPipeline.do_classifier_free_guidance

    def step(self, *a, **k):
        out = original_step(self, *a, **k)
        steps.append(out[0].detach().clone())
        return out

    def do_cfg(self):
        on = self._guidance_scale != 1.0
        t = self._current_timestep
        if on and interval is not None and t is not None:
            on = interval[0] <= float(t) <= interval[1]
        return on

    calls = []
    hook = pipe.transformer.register_forward_hook(lambda *_: calls.append(1))
    UniPCMultistepScheduler.step = step
    Cosmos3OmniPipeline.do_classifier_free_guidance = property(do_cfg)
    try:
        with torch.no_grad():
            out = pipe(
                prompt=PROMPT,
                **CASE,
                num_inference_steps=STEPS,
                guidance_scale=GUIDANCE,
                latents=noise.clone(),
                output_type="pt",
                enable_safety_check=False,
            )
    finally:
        UniPCMultistepScheduler.step = original_step
        Cosmos3OmniPipeline.do_classifier_free_guidance = original_cfg
        hook.remove()

    timesteps = pipe.scheduler.timesteps.to(torch.int64)
    for t in timesteps.tolist():
        guided.append(int(interval is None or interval[0] <= t <= interval[1]))
    assert len(calls) == STEPS + sum(guided), f"{name}: {len(calls)} transformer calls"
    video = out.video[0] if isinstance(out.video, list) else out.video
    tensors = {
        "pos_ids": torch.tensor(pos_ids, dtype=torch.int64),
        "neg_ids": torch.tensor(neg_ids, dtype=torch.int64),
        "init_video": noise,
        "sigmas": pipe.scheduler.sigmas.float(),
        "timesteps": timesteps,
        "guided": torch.tensor(guided, dtype=torch.int64),
        "image": video.float().permute(1, 0, 2, 3).unsqueeze(0),
    }
    for i in range(STEPS):
        tensors[f"step{i}"] = steps[i].float()
    tensors["latents"] = tensors[f"step{STEPS - 1}"].clone()
    meta = dict(
        CASE,
        prompt=PROMPT,
        steps=STEPS,
        guidance_scale=GUIDANCE,
        guidance_interval="none" if interval is None else f"{interval[0]:g},{interval[1]:g}",
    )
    save_file(
        {k: v.detach().contiguous().clone() for k, v in tensors.items()},
        str(refs / f"t2i_{name}.safetensors"),
        metadata={k: str(v) for k, v in meta.items()},
    )


def make(out_dir: Path, seed: int) -> None:
    from diffusers import Cosmos3OmniPipeline

    out_dir = Path(out_dir)
    refs = out_dir / "refs"
    refs.mkdir(parents=True, exist_ok=True)
    torch.set_grad_enabled(False)
    pipe = Cosmos3OmniPipeline.from_pretrained(out_dir / "tiny", torch_dtype=torch.float32)
    pipe.set_progress_bar_config(disable=True)
    run_case(pipe, "plain", None, seed, refs)
    run_case(pipe, "interval", INTERVAL, seed, refs)


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
