"""Video-to-video continuation references: `Cosmos3OmniPipeline(video=…)` (CPU, f32).

`make(out_dir, seed)` writes, from the tiny checkpoint,
  refs/v2v_frames/NNN.png            7 seeded random 8-bit RGB frames, 32x48 (the input
                                     video as a PNG folder)
  refs/v2v_<case>.safetensors        one 3-step guided run (guidance 6) per case:
    pos_ids, neg_ids   int64 token ids
    cond_latents       [1,48,k,2,3] the normalised clean latents of the conditioned frames
                       (the pipeline encodes the conditioning frames, repeat-padded to
                       num_frames with the last one, as one clip and keeps frames `indexes`)
    init_video         [1,48,t,2,3] the initial latents given as `latents=` (torch noise with
                       the conditioned frames replaced by cond_latents, as the pipeline's
                       own prepare step blends them when it draws the noise itself)
    step{0,1,2}        [1,1,48,t,2,3] latents after each UniPC step; latents = step2
    video              [1,3,T,32,48] in [0,1]
metadata: prompt, num_frames, height, width, fps, steps, guidance_scale, indexes, keep.

Cases (`condition_frame_indexes_vision` → the first max(indexes)·4 + 1 frames are used,
from the start (`keep` "first") or the end ("last") of the input):
  first   9 frames, indexes (0, 1), keep first: input frames 0..4
  last    9 frames, indexes (0, 1), keep last:  input frames 2..6
  single  9 frames, indexes (0,),   keep first: input frame 0
  resized 9 frames, indexes (0, 1), keep first, from refs/v2v_frames_44x56/ (7 frames of
          44x56, resized to 32x48 by the video processor)

Run: python ref_v2v.py <fixtures dir> [--seed S]   (needs tiny/)
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch
from PIL import Image
from safetensors.torch import save_file

PROMPT = "The camera slowly pans across a busy warehouse where forklifts move pallets."
SIZE = dict(height=32, width=48)
IN_FRAMES = 7
CASES = {
    "first": dict(num_frames=9, indexes=(0, 1), keep="first"),
    "last": dict(num_frames=9, indexes=(0, 1), keep="last"),
    "single": dict(num_frames=9, indexes=(0,), keep="first"),
    # Frames of another size (and aspect ratio): the video processor resizes them.
    "resized": dict(num_frames=9, indexes=(0, 1), keep="first", frames="v2v_frames_44x56"),
}
# Folder name → frame size of the input videos.
FRAME_SIZES = {"v2v_frames": (SIZE["height"], SIZE["width"]), "v2v_frames_44x56": (44, 56)}
STEPS = 3
GUIDANCE = 6.0
FPS = 24.0


def write_frames(refs: Path, seed: int, name: str = "v2v_frames") -> None:
    """The input video: seeded 8-bit frames, written as a PNG folder."""
    h, w = FRAME_SIZES[name]
    offset = 4000 if name == "v2v_frames" else 4001
    gen = torch.Generator().manual_seed(seed + offset)
    frames = (torch.rand(IN_FRAMES, 3, h, w, generator=gen) * 255).round() / 255
    folder = refs / name
    folder.mkdir(parents=True, exist_ok=True)
    for old in folder.glob("*.png"):
        old.unlink()
    for i, f in enumerate(frames):
        png = (f.permute(1, 2, 0) * 255).round().to(torch.uint8).numpy()
        Image.fromarray(png).save(folder / f"{i:03d}.png")


def run_case(pipe, name: str, case: dict, seed: int, refs: Path) -> None:
    from diffusers import UniPCMultistepScheduler

    num_frames, indexes, keep = case["num_frames"], case["indexes"], case["keep"]
    folder = case.get("frames", "v2v_frames")
    pil = [Image.open(refs / folder / f"{i:03d}.png").convert("RGB") for i in range(IN_FRAMES)]
    gen = torch.Generator().manual_seed(seed + 4100)  # the same noise for every case
    lt = (num_frames - 1) // 4 + 1
    noise = torch.randn(1, 48, lt, SIZE["height"] // 16, SIZE["width"] // 16, generator=gen)

    # The clean latents exactly as the pipeline's prepare step computes them.
    with torch.no_grad():
        clip = pipe.video_processor.preprocess_video(pil, **SIZE).float()
        n_cond = max(indexes) * 4 + 1
        clip = clip[:, :, :n_cond] if keep == "first" else clip[:, :, -n_cond:]
        vision = torch.zeros(1, 3, num_frames, SIZE["height"], SIZE["width"])
        t_fill = min(clip.shape[2], num_frames)
        vision[:, :, :t_fill] = clip[:, :, :t_fill]
        vision[:, :, t_fill:] = vision[:, :, t_fill - 1 : t_fill]
        x0 = pipe._encode_video(vision).float()
    init = noise.clone()
    for i in indexes:
        init[:, :, i] = x0[:, :, i]

    steps = []
    original = UniPCMultistepScheduler.step

    def step(self, *a, **k):
        out = original(self, *a, **k)
        steps.append(out[0].detach().clone())
        return out

    UniPCMultistepScheduler.step = step
    try:
        with torch.no_grad():
            out = pipe(
                prompt=PROMPT,
                video=pil,
                condition_frame_indexes_vision=indexes,
                condition_video_keep=keep,
                num_frames=num_frames,
                fps=FPS,
                **SIZE,
                num_inference_steps=STEPS,
                guidance_scale=GUIDANCE,
                latents=init.clone(),
                output_type="pt",
                enable_safety_check=False,
            )
    finally:
        UniPCMultistepScheduler.step = original
    pos_ids, neg_ids = pipe.tokenize_prompt(PROMPT, None, num_frames=num_frames, fps=FPS, **SIZE)
    video = out.video[0] if isinstance(out.video, list) else out.video
    tensors = {
        "pos_ids": torch.tensor(pos_ids, dtype=torch.int64),
        "neg_ids": torch.tensor(neg_ids, dtype=torch.int64),
        "cond_latents": torch.cat([x0[:, :, i : i + 1] for i in indexes], dim=2),
        "init_video": init,
        "video": video.float().permute(1, 0, 2, 3).unsqueeze(0),
    }
    for i in range(STEPS):
        tensors[f"step{i}"] = steps[i].float()
    tensors["latents"] = tensors[f"step{STEPS - 1}"].clone()
    # The conditioned frames stay clean through the run (to the last bits: UniPC's arithmetic
    # with a zero velocity moves them by an ulp or two, measured 2.4e-7).
    for k, i in enumerate(indexes):
        d = (tensors["latents"].reshape(init.shape)[:, :, i] - tensors["cond_latents"][:, :, k]).abs().max()
        assert d <= 1e-6, f"{name}: conditioned frame {i} drifted by {d}"
    meta = dict(
        SIZE,
        prompt=PROMPT,
        num_frames=num_frames,
        fps=FPS,
        steps=STEPS,
        guidance_scale=GUIDANCE,
        indexes=",".join(str(i) for i in indexes),
        keep=keep,
        frames=folder,
    )
    save_file(
        {k: v.detach().contiguous().clone() for k, v in tensors.items()},
        str(refs / f"v2v_{name}.safetensors"),
        metadata={k: str(v) for k, v in meta.items()},
    )


def make(out_dir: Path, seed: int, only: str | None = None) -> None:
    from diffusers import Cosmos3OmniPipeline

    out_dir = Path(out_dir)
    refs = out_dir / "refs"
    refs.mkdir(parents=True, exist_ok=True)
    torch.set_grad_enabled(False)
    cases = {k: v for k, v in CASES.items() if only is None or k == only}
    for folder in {c.get("frames", "v2v_frames") for c in cases.values()}:
        write_frames(refs, seed, folder)
    pipe = Cosmos3OmniPipeline.from_pretrained(out_dir / "tiny", torch_dtype=torch.float32)
    pipe.set_progress_bar_config(disable=True)
    for name, case in cases.items():
        run_case(pipe, name, case, seed, refs)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("out", type=Path, help="fixtures folder (reads tiny/, writes refs/)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--only", choices=sorted(CASES), help="write this case (and its frames) only")
    args = ap.parse_args()
    torch.set_num_threads(1)
    torch.use_deterministic_algorithms(True)
    make(args.out, args.seed, args.only)


if __name__ == "__main__":
    main()
