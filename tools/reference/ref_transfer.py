"""Transfer references: diffusers' modular `Cosmos3OmniBlocks` with `control_videos` (CPU, f32).

`make(out_dir, seed)` builds a modular pipeline over tiny/'s components (a temporary folder
with a `modular_model_index.json` and links to tiny/; transfer needs no extra weights: the
control maps are further clean vision items of the same transformer) and writes
  refs/transfer_<hint>/NNN.png        seeded random 8-bit RGB control frames, 32x48
  refs/transfer_resize/{down,up}/NNN.png   2 frames each at 45x70 and 20x30, and
  refs/transfer_resize.safetensors    `down`, `up`: [1,3,2,32,48] what diffusers' video
                                      processor makes of them (Pillow bilinear, [-1, 1])
  refs/transfer_<case>.safetensors    one run per case:
    pos_ids, neg_ids       int64 token ids of the transfer prompt template (as the transformer
                           received them)
    chunk_noise            [chunks,1,48,t,2,3] the Gaussian draws of the chunk loop, in order
    control{k}_latents     [hints,1,48,t,2,3] the clean control latents of chunk k (canonical
                           hint order, the chunk's window reflect-padded to a full chunk)
    cond{k}_latents        [1,48,t,2,3] chunk k's clean target latents (chunk 0: encoded zeros)
    latents{k}             [1,48,t,2,3] chunk k's final latents
    forwards               [steps·chunks] transformer calls per step (1, 2 or 3 branches)
    video                  [1,3,T,32,48] in [0,1], the stitched clip
metadata: prompt, hints (in the order given), height, width, fps, steps, guidance_scale,
control_guidance, control_guidance_interval, chunk_frames (as requested), conditional_frames,
num_frames (cap or "none"), and the resolved total_frames, chunk_frames_resolved, num_chunks.

Cases:
  two_chunks   edge (11 frames) + depth (7 frames, reflect-padded), given as {depth, edge};
               chunks of 6 → 9 frames, 5 conditional frames (2 latent frames), guidance 3,
               control guidance 1.5 only for timesteps in [500, 1000] (3, 3, then 2 forwards)
  control_only edge alone, one chunk capped at 5 frames, guidance 1, control guidance 2
               (two forwards: cond with and without the control)

Run: python ref_transfer.py <fixtures dir> [--seed S]   (needs tiny/)
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
from pathlib import Path

import torch
from PIL import Image
from safetensors.torch import save_file

PROMPT = '{"subject": "a red forklift", "action": "carries pallets across a warehouse floor"}'
SIZE = dict(height=32, width=48)
HINT_FRAMES = {"edge": 11, "depth": 7}
FPS = 24.0
STEPS = 3
CASES = {
    "two_chunks": dict(
        hints=("depth", "edge"),
        chunk_frames=6,
        conditional_frames=5,
        guidance_scale=3.0,
        control_guidance=1.5,
        control_guidance_interval=(500.0, 1000.0),
        num_frames=None,
    ),
    "control_only": dict(
        hints=("edge",),
        chunk_frames=None,
        conditional_frames=1,
        guidance_scale=1.0,
        control_guidance=2.0,
        control_guidance_interval=None,
        num_frames=5,
    ),
}
COMPONENTS = {
    "transformer": ("diffusers", "Cosmos3OmniTransformer"),
    "vae": ("diffusers", "AutoencoderKLWan"),
    "scheduler": ("diffusers", "UniPCMultistepScheduler"),
    "text_tokenizer": ("transformers", "TokenizersBackend"),
}


def write_controls(refs: Path, seed: int) -> None:
    """Control clips: seeded 8-bit frames per hint, written as PNG folders."""
    for k, (hint, frames) in enumerate(HINT_FRAMES.items()):
        gen = torch.Generator().manual_seed(seed + 5000 + k)
        clip = (torch.rand(frames, 3, SIZE["height"], SIZE["width"], generator=gen) * 255).round()
        folder = refs / f"transfer_{hint}"
        folder.mkdir(parents=True, exist_ok=True)
        for old in folder.glob("*.png"):
            old.unlink()
        for i, f in enumerate(clip):
            Image.fromarray(f.permute(1, 2, 0).to(torch.uint8).numpy()).save(folder / f"{i:03d}.png")


RESIZE = {"down": (45, 70), "up": (20, 30)}


def write_resize(refs: Path, seed: int) -> None:
    """Control frames of other sizes and what diffusers' video processor makes of them
    (Pillow's bilinear resize to 32x48, then [-1, 1])."""
    from diffusers.video_processor import VideoProcessor

    processor = VideoProcessor(vae_scale_factor=16, resample="bilinear")
    out = {}
    for k, (name, (h, w)) in enumerate(RESIZE.items()):
        gen = torch.Generator().manual_seed(seed + 5200 + k)
        clip = (torch.rand(2, 3, h, w, generator=gen) * 255).round()
        folder = refs / "transfer_resize" / name
        folder.mkdir(parents=True, exist_ok=True)
        for old in folder.glob("*.png"):
            old.unlink()
        for i, f in enumerate(clip):
            Image.fromarray(f.permute(1, 2, 0).to(torch.uint8).numpy()).save(folder / f"{i:03d}.png")
        pil = [Image.open(p).convert("RGB") for p in sorted(folder.glob("*.png"))]
        out[name] = processor.preprocess_video(pil, **SIZE).float().contiguous()
    save_file(out, str(refs / "transfer_resize.safetensors"))


def modular_checkpoint(tiny: Path, root: Path) -> Path:
    """A modular layout over tiny/'s components (links, no copies)."""
    for name in COMPONENTS:
        os.symlink(tiny.resolve() / name, root / name)
    index = {
        "_blocks_class_name": "Cosmos3OmniBlocks",
        "_class_name": "Cosmos3OmniModularPipeline",
        "_diffusers_version": "0.42.1",
        "default_use_system_prompt": True,
        "enable_safety_checker": False,
        "use_native_flow_schedule": False,
    }
    for name, (lib, cls) in COMPONENTS.items():
        index[name] = [
            lib,
            cls,
            {
                "pretrained_model_name_or_path": "tiny-cosmos3",
                "revision": None,
                "subfolder": name,
                "type_hint": [lib, cls],
                "variant": None,
            },
        ]
    (root / "modular_model_index.json").write_text(json.dumps(index, indent=2, sort_keys=True) + "\n")
    return root


class Recorder:
    """Wraps the transfer blocks to read back what each chunk used and produced."""

    def __init__(self):
        import diffusers.modular_pipelines.cosmos.before_denoise as prep
        from diffusers.modular_pipelines.cosmos.decoders import Cosmos3TransferDecodeChunkStep
        from diffusers.modular_pipelines.cosmos.encoders import Cosmos3TransferChunkVaeEncoderStep

        self.noise: list[torch.Tensor] = []
        self.controls: list[list[torch.Tensor]] = []
        self.targets: list[torch.Tensor] = []
        self.latents: list[torch.Tensor] = []
        self.setup: dict = {}
        self.patches = []

        original_randn = prep.randn_tensor

        def draw(*a, **k):
            x = original_randn(*a, **k)
            self.noise.append(x.detach().float().clone())
            return x

        self._patch(prep, "randn_tensor", draw)

        def wrap(cls, after):
            original = cls.__call__

            def call(block, components, state):
                out = original(block, components, state)
                after(out[1])
                return out

            self._patch(cls, "__call__", call)

        wrap(
            Cosmos3TransferChunkVaeEncoderStep,
            lambda s: (
                self.controls.append([c.detach().float().clone() for c in s.get("control_latents")]),
                self.targets.append(s.get("x0_tokens_vision").detach().float().clone()),
            ),
        )
        wrap(
            Cosmos3TransferDecodeChunkStep,
            lambda s: self.latents.append(s.get("latents").detach().float().clone()),
        )
        from diffusers.modular_pipelines.cosmos.before_encoder import Cosmos3TransferSetupStep

        wrap(
            Cosmos3TransferSetupStep,
            lambda s: self.setup.update(
                {k: s.get(k) for k in ("total_frames", "chunk_frames", "num_chunks", "stride")}
            ),
        )

    def _patch(self, owner, name, value):
        self.patches.append((owner, name, getattr(owner, name)))
        setattr(owner, name, value)

    def close(self):
        for owner, name, value in reversed(self.patches):
            setattr(owner, name, value)


def run_case(pipe, name: str, case: dict, seed: int, refs: Path) -> None:
    controls = {
        hint: [Image.open(p).convert("RGB") for p in sorted((refs / f"transfer_{hint}").glob("*.png"))]
        for hint in case["hints"]
    }
    forwards: list[str] = []
    ids: dict[str, torch.Tensor] = {}

    def hook(_m, _a, kw):
        n_items = len(kw["vision_tokens"])
        branch = "full" if n_items > 1 else "target"
        forwards.append(branch)
        ids.setdefault(str(kw["input_ids"].tolist()), kw["input_ids"].clone())

    handle = pipe.transformer.register_forward_pre_hook(hook, with_kwargs=True)
    rec = Recorder()
    call = dict(
        prompt=PROMPT,
        control_videos=controls,
        **SIZE,
        fps=FPS,
        num_inference_steps=STEPS,
        guidance_scale=case["guidance_scale"],
        control_guidance=case["control_guidance"],
        num_conditional_frames=case["conditional_frames"],
        generator=torch.Generator().manual_seed(seed + 5100 + len(name)),
        output="videos",
        output_type="pt",
    )
    if case["chunk_frames"] is not None:
        call["num_video_frames_per_chunk"] = case["chunk_frames"]
    if case["control_guidance_interval"] is not None:
        call["control_guidance_interval"] = case["control_guidance_interval"]
    if case["num_frames"] is not None:
        call["num_frames"] = case["num_frames"]
    try:
        with torch.no_grad():
            video = pipe(**call)
    finally:
        rec.close()
        handle.remove()
    if isinstance(video, list):
        video = video[0]

    # Token ids: the branches' prompts (the conditional one is the first call's).
    tok = pipe.text_tokenizer
    from diffusers.modular_pipelines.cosmos.encoders import _SYSTEM_PROMPT_TRANSFER

    def tokenize(text: str) -> torch.Tensor:
        enc = tok.apply_chat_template(
            [{"role": "system", "content": _SYSTEM_PROMPT_TRANSFER}, {"role": "user", "content": text}],
            tokenize=True,
            add_generation_prompt=True,
            add_vision_id=False,
            return_dict=True,
        )
        special = pipe.llm_special_tokens
        return torch.tensor(
            list(enc.input_ids) + [special["eos_token_id"], special["start_of_generation"]], dtype=torch.int64
        )

    pos_ids, neg_ids = tokenize(PROMPT), tokenize("")
    used = {tuple(v.tolist()) for v in ids.values()}
    assert tuple(pos_ids.tolist()) in used, f"{name}: the conditional ids differ from the template's"
    if case["guidance_scale"] > 1.0:
        assert tuple(neg_ids.tolist()) in used, f"{name}: the unconditional ids differ from the template's"

    chunks = rec.setup["num_chunks"]
    assert len(rec.noise) == chunks and len(rec.latents) == chunks, f"{name}: {len(rec.noise)} draws"
    per_step = count_forwards(forwards, STEPS * chunks, case)

    tensors = {
        "pos_ids": pos_ids,
        "neg_ids": neg_ids,
        "chunk_noise": torch.stack(rec.noise),
        "forwards": torch.tensor(per_step, dtype=torch.int64),
        "video": video.float().permute(1, 0, 2, 3).unsqueeze(0),
    }
    for k in range(chunks):
        tensors[f"control{k}_latents"] = torch.stack(rec.controls[k])
        tensors[f"cond{k}_latents"] = rec.targets[k]
        tensors[f"latents{k}"] = rec.latents[k]
    interval = case["control_guidance_interval"]
    meta = dict(
        SIZE,
        prompt=PROMPT,
        hints=",".join(case["hints"]),
        fps=FPS,
        steps=STEPS,
        guidance_scale=case["guidance_scale"],
        control_guidance=case["control_guidance"],
        control_guidance_interval="none" if interval is None else f"{interval[0]},{interval[1]}",
        chunk_frames="none" if case["chunk_frames"] is None else case["chunk_frames"],
        conditional_frames=case["conditional_frames"],
        num_frames="none" if case["num_frames"] is None else case["num_frames"],
        total_frames=rec.setup["total_frames"],
        chunk_frames_resolved=rec.setup["chunk_frames"],
        num_chunks=chunks,
    )
    save_file(
        {k: v.detach().contiguous().clone() for k, v in tensors.items()},
        str(refs / f"transfer_{name}.safetensors"),
        metadata={k: str(v) for k, v in meta.items()},
    )


def count_forwards(forwards: list[str], steps: int, case: dict) -> list[int]:
    """Transformer calls per step: the conditional pass ("full") opens every step; the
    no-control pass ("target") and the unconditional one ("full" again) follow when run."""
    counts: list[int] = []
    text_cfg = case["guidance_scale"] > 1.0
    i = 0
    while i < len(forwards):
        n = 1
        if i + 1 < len(forwards) and forwards[i + 1] == "target":
            n += 1
        if text_cfg and i + n < len(forwards) and forwards[i + n] == "full":
            n += 1
        counts.append(n)
        i += n
    assert len(counts) == steps, f"{len(counts)} steps counted, expected {steps}"
    return counts


def make(out_dir: Path, seed: int) -> None:
    from diffusers import Cosmos3OmniModularPipeline

    out_dir = Path(out_dir)
    refs = out_dir / "refs"
    refs.mkdir(parents=True, exist_ok=True)
    torch.set_grad_enabled(False)
    write_controls(refs, seed)
    write_resize(refs, seed)
    with tempfile.TemporaryDirectory() as tmp:
        root = modular_checkpoint(out_dir / "tiny", Path(tmp))
        pipe = Cosmos3OmniModularPipeline.from_pretrained(str(root))
        pipe.load_components(torch_dtype=torch.float32)
        pipe.set_progress_bar_config(disable=True)
        for name, case in CASES.items():
            run_case(pipe, name, case, seed, refs)


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
