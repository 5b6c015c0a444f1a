"""Re-derives the pipeline references from the checkpoint as it is stored on disk.

`make_fixtures.py` records the references while it builds the tiny checkpoint, from the
in-memory models. The engine only ever sees the files. This check loads `tiny/` with
`Cosmos3OmniPipeline.from_pretrained` (float32, exactly what a user of diffusers gets), replays
every case of `refs/pipeline_cases.json` from the stored initial noise, and compares with the
stored references:

  token ids                     pos_ids / neg_ids of the trajectory    exact
  transformer_<case>_{cond,uncond}  velocity_video / velocity_sound     rel. error <= 1e-5
  trajectory_<case>             video_step*, sound_step*, video, audio  rel. error <= 1e-5

A mismatch means the references were computed from values the files do not hold (e.g. a
buffer or weight rounded differently in memory than on disk).

    .ref-venv/bin/python tools/reference/verify_refs.py [fixtures dir]
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch
from safetensors.torch import load_file

ROOT = Path(__file__).resolve().parents[2]
REL_TOLERANCE = 1e-5


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.double().flatten(), b.double().flatten()
    return float((a - b).norm() / b.norm().clamp_min(1e-30))


def replay(pipe, case: dict, traj: dict[str, torch.Tensor]):
    """One pipeline run from the stored start; returns (transformer calls, sampler steps, output)."""
    from diffusers import UniPCMultistepScheduler

    args = {k: case[k] for k in ("prompt", "num_frames", "height", "width", "fps")}
    args.update(
        enable_sound=bool(case.get("enable_sound", False)),
        num_inference_steps=case["steps"],
        guidance_scale=case["guidance_scale"],
        output_type="pt",
        enable_safety_check=False,
        latents=traj["init_video"].clone(),
    )
    if case.get("image"):
        args["image"] = traj["image"] * 2 - 1
        args["latents"][:, :, :1] = traj["image_latent"]
    if args["enable_sound"]:
        args["sound_latents"] = traj["init_sound"][0].clone()

    calls, steps = [], []
    hook = pipe.transformer.register_forward_hook(
        lambda _m, _a, kw, out: calls.append((kw["input_ids"].clone(), out)), with_kwargs=True
    )
    original = UniPCMultistepScheduler.step

    def step(self, *a, **k):
        out = original(self, *a, **k)
        steps.append(out[0].detach().clone())
        return out

    UniPCMultistepScheduler.step = step
    try:
        out = pipe(**args)
    finally:
        UniPCMultistepScheduler.step = original
        hook.remove()
    return calls, steps, out


def check_case(pipe, refs: Path, name: str, case: dict) -> int:
    traj = load_file(str(refs / f"trajectory_{name}.safetensors"))
    calls, steps, out = replay(pipe, case, traj)
    results: list[tuple[str, float]] = []
    bad = 0
    for label, ids, key in (("pos_ids", calls[0][0], "pos_ids"), ("neg_ids", calls[1][0], "neg_ids")):
        if not torch.equal(ids.to(torch.int64), traj[key]):
            print(f"IDS      {name}:{label} differ")
            bad += 1
    for branch, (_ids, (vision, sound, _action)) in zip(("cond", "uncond"), calls[:2]):
        ref = load_file(str(refs / f"transformer_{name}_{branch}.safetensors"))
        results.append((f"transformer_{name}_{branch}:velocity_video", rel_err(vision[0], ref["velocity_video"])))
        if "velocity_sound" in ref:
            results.append((f"transformer_{name}_{branch}:velocity_sound", rel_err(sound[0], ref["velocity_sound"][0])))
    per_step = 2 if case.get("enable_sound") else 1
    for i in range(case["steps"]):
        results.append((f"trajectory_{name}:video_step{i}", rel_err(steps[i * per_step], traj[f"video_step{i}"])))
        if per_step == 2:
            results.append((f"trajectory_{name}:sound_step{i}", rel_err(steps[i * 2 + 1], traj[f"sound_step{i}"])))
    video = out.video.permute(1, 0, 2, 3).unsqueeze(0)
    results.append((f"trajectory_{name}:video", rel_err(video, traj["video"])))
    if "audio" in traj:
        results.append((f"trajectory_{name}:audio", rel_err(out.sound.unsqueeze(0), traj["audio"])))
    for label, err in results:
        ok = err <= REL_TOLERANCE
        bad += 0 if ok else 1
        print(f"{'ok      ' if ok else 'MISMATCH'} {label} rel err {err:.2e}")
    return bad


def main() -> int:
    from diffusers import Cosmos3OmniPipeline

    fixtures = Path(sys.argv[1]) if len(sys.argv) > 1 else ROOT / "tests" / "fixtures"
    torch.set_num_threads(1)
    torch.set_grad_enabled(False)
    pipe = Cosmos3OmniPipeline.from_pretrained(fixtures / "tiny", torch_dtype=torch.float32)
    pipe.set_progress_bar_config(disable=True)
    refs = fixtures / "refs"
    cases = json.loads((refs / "pipeline_cases.json").read_text())
    bad = sum(check_case(pipe, refs, name, case) for name, case in cases.items())
    print("references follow from the stored checkpoint" if bad == 0 else f"{bad} mismatch(es)")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
