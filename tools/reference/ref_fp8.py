"""FP8 (ModelOpt static W8A8, per-tensor scales) tiny checkpoint and its references.

`make(out_dir, seed)` reads the bf16 tiny checkpoint `tiny/` (written by ref_pipeline) and writes

  tiny_fp8/transformer/      the tiny transformer in the published FP8 layout: every linear
                             layer of the decoder layers (both towers) as F8_E4M3 `weight` with
                             `weight_scale` and `input_scale` (f32, shape []), the ModelOpt
                             quantizer state the engine must ignore (`*.weight_quantizer._amax`,
                             `*.input_quantizer._amax`, two `*._scale`), everything else bf16;
                             sharded safetensors + index, config.json with quantization_config,
                             hf_quant_config.json, quantization_metadata.json, modelopt_state.pth
  refs/fp8_e4m3.safetensors          torch's float8_e4m3fn: all 256 codes and rounding cases
  refs/fp8_velocity.safetensors      velocities of the FP8 model (and of online quantization
                                     of the bf16 model) on the inputs of transformer_t2av_cond
  refs/fp8_trajectory_t2av.safetensors   3 guided steps of the FP8 pipeline under its step policy

The torch reference is diffusers' Cosmos3OmniTransformer in float32 with every quantized
nn.Linear swapped for a fake-quantized one (same weights, the W8A8/W8A16 formulas below).
W8A8:  y = (e4m3(clamp(x / s_x, -448, 448)) * s_x) @ (w_fp8 * s_w)^T + b
W8A16: y = x @ (w_fp8 * s_w)^T + b
Online (`--quantize fp8`): s_w = max|w| / 448, s_x = max|x| / 448 of each call's input.
"""

from __future__ import annotations

import copy
import json
import re
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

E4M3_MAX = 448.0
FP8 = torch.float8_e4m3fn

# Linear layers of the decoder layers, both towers: text (und) and generation (gen).
UND_LINEAR = re.compile(r"^layers\.\d+\.(self_attn\.(to_q|to_k|to_v|to_out)|mlp\.(gate|up|down)_proj)$")
GEN_LINEAR = re.compile(
    r"^layers\.\d+\.(self_attn\.(add_q_proj|add_k_proj|add_v_proj|to_add_out)|mlp_moe_gen\.(gate|up|down)_proj)$"
)
IGNORE = ["proj_in", "proj_out", "time_embedder*", "audio_proj_in", "audio_proj_out",
          "action_proj_in", "action_proj_out", "lm_head", "visual*"]
# 3 steps: the first and the last run W8A16, the middle one W8A8 (the published policy has
# 3 and 3, which would leave no W8A8 step in a 3-step run).
POLICY = {
    "schema_version": 1,
    "type": "first_last_n",
    "index_space": "denoising_loop_iteration",
    "scope": ["transformer"],
    "default_mode": "native",
    "first_steps": {"count": 1, "mode": "a16"},
    "last_steps": {"count": 1, "mode": "a16"},
    "overlap": "a16",
    "reasoner": "a16",
}


def tower_of(name: str) -> str | None:
    if UND_LINEAR.match(name):
        return "und"
    if GEN_LINEAR.match(name):
        return "gen"
    return None


class Modes:
    """Activation precision per tower ("a8" or "a16"), read by every fake-quantized layer."""

    def __init__(self):
        self.und = "a16"
        self.gen = "a8"


class FakeQuantLinear(torch.nn.Module):
    """An nn.Linear whose weight is w_fp8 * s_w and whose input is fake-quantized in A8 mode
    with a static scale (`input_scale`) or, when None, a dynamic one (max|x| / 448)."""

    def __init__(self, lin: torch.nn.Linear, codes: torch.Tensor, weight_scale: torch.Tensor,
                 input_scale: torch.Tensor | None, tower: str, modes: Modes):
        super().__init__()
        self.weight = torch.nn.Parameter(codes.to(torch.float32) * weight_scale, requires_grad=False)
        self.bias = lin.bias
        self.input_scale = input_scale
        self.tower = tower
        self.modes = modes

    def forward(self, x):
        if getattr(self.modes, self.tower) == "a8":
            s = self.input_scale
            if s is None:
                amax = x.abs().amax()
                s = amax / E4M3_MAX if amax > 0 else None
            if s is not None:
                x = (x / s).clamp(-E4M3_MAX, E4M3_MAX).to(FP8).to(torch.float32) * s
        return torch.nn.functional.linear(x, self.weight, self.bias)


def quantize_weight(w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-tensor: s_w = max|w| / 448 (f32; 1 for an all-zero tensor), codes e4m3(w / s_w)."""
    amax = w.abs().amax().to(torch.float32)
    scale = amax / E4M3_MAX if amax > 0 else torch.tensor(1.0)
    codes = (w / scale).clamp(-E4M3_MAX, E4M3_MAX).to(FP8)
    return codes, scale.reshape(())


def swap_linears(transformer, scales: dict | None, modes: Modes) -> dict:
    """Replaces the quantized linears; `scales` {name: input_scale} or None (online,
    dynamic). Returns {name: (codes, weight_scale)}."""
    made = {}
    for name, mod in list(transformer.named_modules()):
        tower = tower_of(name)
        if tower is None:
            continue
        assert isinstance(mod, torch.nn.Linear), name
        codes, ws = quantize_weight(mod.weight.detach())
        made[name] = (codes, ws)
        parent, leaf = name.rsplit(".", 1)
        s_x = None if scales is None else scales[name]
        setattr(transformer.get_submodule(parent), leaf,
                FakeQuantLinear(mod, codes, ws, s_x, tower, modes))
    return made


def calibrate(transformer, call_kwargs: dict) -> dict:
    """input_scale = max|x| / 448 of each quantized linear's input over one forward."""
    amax, hooks = {}, []
    for name, mod in transformer.named_modules():
        if tower_of(name) is None:
            continue

        def pre(_m, args, name=name):
            amax[name] = torch.maximum(amax.get(name, torch.tensor(0.0)), args[0].detach().abs().amax())

        hooks.append(mod.register_forward_pre_hook(pre))
    with torch.no_grad():
        transformer(**call_kwargs)
    for h in hooks:
        h.remove()
    return {k: (v.to(torch.float32) / E4M3_MAX).reshape(()) for k, v in amax.items()}


def record_calls(pipe, case: dict, traj: dict, on_call=None):
    """Runs the pipeline from a stored trajectory's start; returns (transformer kwargs per
    call, sampler outputs). `on_call(kwargs)` runs before each transformer call."""
    from diffusers import UniPCMultistepScheduler

    args = {k: case[k] for k in ("prompt", "num_frames", "height", "width", "fps")}
    args.update(enable_sound=bool(case.get("enable_sound", False)), num_inference_steps=case["steps"],
                guidance_scale=case["guidance_scale"], output_type="pt", enable_safety_check=False,
                latents=traj["init_video"].clone())
    if args["enable_sound"]:
        args["sound_latents"] = traj["init_sound"][0].clone()
    calls, steps = [], []

    def pre(_m, _a, kw):
        calls.append(dict(kw))
        if on_call is not None:
            on_call(kw)

    hook = pipe.transformer.register_forward_pre_hook(pre, with_kwargs=True)
    original = UniPCMultistepScheduler.step

    def step(self, *a, **k):
        out = original(self, *a, **k)
        steps.append(out[0].detach().clone())
        return out

    UniPCMultistepScheduler.step = step
    try:
        with torch.no_grad():
            pipe(**args)
    finally:
        UniPCMultistepScheduler.step = original
        hook.remove()
    return calls, steps


def e4m3_cases() -> dict[str, torch.Tensor]:
    """Every code's value, and inputs at and around every rounding boundary."""
    codes = torch.arange(256, dtype=torch.uint8)
    values = codes.view(FP8).to(torch.float32)
    finite = values[torch.isfinite(values) & (values >= 0)].unique().sort().values
    mids = (finite[:-1] + finite[1:]) / 2  # exact ties (representable in f32)
    inputs = [finite, mids, torch.nextafter(mids, torch.tensor(0.0)), torch.nextafter(mids, torch.tensor(1e9)),
              torch.tensor([2.0**-10, 2.0**-11, 1e-30, 449.0, 463.9, 464.0, 0.0])]
    x = torch.cat(inputs)
    x = torch.cat([x, -x, torch.randn(512, generator=torch.Generator().manual_seed(5)) * 50])
    x = x[x.abs() <= 464.0].to(torch.float32)
    return {"code_values": values, "inputs": x.contiguous(), "input_codes": x.to(FP8).view(torch.uint8)}


def write_checkpoint(src: Path, dst: Path, made: dict, scales: dict) -> None:
    """The published layout: quantized linears as F8_E4M3 + scales + quantizer state, the
    rest as stored in the bf16 checkpoint; two shards and an index."""
    index = json.loads((src / "diffusion_pytorch_model.safetensors.index.json").read_text())
    tensors = {}
    for shard in sorted(set(index["weight_map"].values())):
        tensors.update(load_file(str(src / shard)))
    for name, (codes, ws) in made.items():
        tensors[f"{name}.weight"] = codes.contiguous()
        tensors[f"{name}.weight_scale"] = ws.clone()
        tensors[f"{name}.input_scale"] = scales[name].clone()
        tensors[f"{name}.weight_quantizer._amax"] = (ws * E4M3_MAX).reshape(())
        tensors[f"{name}.input_quantizer._amax"] = (scales[name] * E4M3_MAX).reshape(())
    tensors["layers.0.self_attn.add_q_proj.weight_quantizer._scale"] = made["layers.0.self_attn.add_q_proj"][1].clone()
    tensors["layers.0.mlp.down_proj.input_quantizer._scale"] = scales["layers.0.mlp.down_proj"].clone()
    if dst.exists():
        import shutil

        shutil.rmtree(dst)
    dst.mkdir(parents=True)
    keys = sorted(tensors)
    halves = [keys[: len(keys) // 2], keys[len(keys) // 2:]]
    weight_map, total = {}, 0
    for i, part in enumerate(halves):
        fname = f"diffusion_pytorch_model-0000{i + 1}-of-00002.safetensors"
        save_file({k: tensors[k].contiguous() for k in part}, str(dst / fname), metadata={"format": "pt"})
        for k in part:
            weight_map[k] = fname
            total += tensors[k].numel() * tensors[k].element_size()
    (dst / "diffusion_pytorch_model.safetensors.index.json").write_text(
        json.dumps({"metadata": {"total_size": total}, "weight_map": weight_map}, indent=2, sort_keys=True) + "\n")
    config = json.loads((src / "config.json").read_text())
    config["quantization_config"] = {
        "quant_method": "modelopt",
        "quant_algo": "FP8",
        "kv_cache_quant_algo": None,
        "producer": {"name": "modelopt", "version": "0.37.0"},
        "ignore": IGNORE,
        "runtime": {"diffusion_step_policy": POLICY},
    }
    (dst / "config.json").write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
    (dst / "hf_quant_config.json").write_text(json.dumps({
        "producer": {"name": "modelopt", "version": "0.37.0"},
        "quantization": {"quant_algo": "FP8", "kv_cache_quant_algo": None, "exclude_modules": IGNORE},
    }, indent=2, sort_keys=True) + "\n")
    (dst / "quantization_metadata.json").write_text(json.dumps({
        "format": "modelopt_fp8_per_tensor_static",
        "calibration": "one transformer call (refs/transformer_t2v_cond inputs), max calibration",
        "quantized_modules": sorted(made),
    }, indent=2, sort_keys=True) + "\n")
    # Stands in for ModelOpt's pickled restore state; engines never read it.
    (dst / "modelopt_state.pth").write_bytes(b"modelopt restore state placeholder (not a pickle)\n")


def velocities(transformer, kwargs: dict) -> tuple[torch.Tensor, torch.Tensor]:
    with torch.no_grad():
        vision, sound, _ = transformer(**kwargs)
    return vision[0].detach().float().contiguous(), sound[0].detach().float().unsqueeze(0).contiguous()


def rel_err(a, b) -> float:
    return float((a.double() - b.double()).norm() / b.double().norm())


def make(out_dir: Path, seed: int) -> None:
    from diffusers import Cosmos3OmniPipeline

    out_dir = Path(out_dir)
    refs = out_dir / "refs"
    torch.manual_seed(seed)
    save_file(e4m3_cases(), str(refs / "fp8_e4m3.safetensors"))

    pipe = Cosmos3OmniPipeline.from_pretrained(out_dir / "tiny", torch_dtype=torch.float32)
    pipe.set_progress_bar_config(disable=True)
    cases = json.loads((refs / "pipeline_cases.json").read_text())
    pristine = copy.deepcopy(pipe.transformer)

    # Calibration: the first (conditional) transformer call of the t2v case, bf16 model.
    t2v = load_file(str(refs / "trajectory_t2v.safetensors"))
    calls, _ = record_calls(pipe, cases["t2v"], t2v)
    scales = calibrate(pipe.transformer, calls[0])

    # Inputs of every velocity reference: the first conditional call of t2av (= the inputs
    # stored in transformer_t2av_cond.safetensors).
    t2av = load_file(str(refs / "trajectory_t2av.safetensors"))
    calls, _ = record_calls(pipe, cases["t2av"], t2av)
    probe = calls[0]
    stored = load_file(str(refs / "transformer_t2av_cond.safetensors"))
    assert torch.equal(probe["vision_tokens"][0].float(), stored["video_latent"]), "t2av inputs moved"

    out = {}
    # Online quantization of the bf16 model (dynamic activation scales), text tower A16 as
    # under the published policy.
    modes = Modes()
    online = copy.deepcopy(pristine)
    swap_linears(online, None, modes)
    modes.und, modes.gen = "a16", "a8"
    out["online_video_w8a8"], out["online_sound_w8a8"] = velocities(online, probe)

    # The checkpoint's quantization (static scales).
    modes = Modes()
    quant = copy.deepcopy(pristine)
    made = swap_linears(quant, scales, modes)
    write_checkpoint(out_dir / "tiny" / "transformer", out_dir / "tiny_fp8" / "transformer", made, scales)
    for label, und, gen in (("w8a8", "a16", "a8"), ("w8a16", "a16", "a16"), ("all_w8a8", "a8", "a8")):
        modes.und, modes.gen = und, gen
        out[f"video_{label}"], out[f"sound_{label}"] = velocities(quant, probe)
    save_file(out, str(refs / "fp8_velocity.safetensors"),
              metadata={"inputs": "transformer_t2av_cond.safetensors"})
    bf16 = stored["velocity_video"]
    for k in ("video_w8a8", "video_w8a16", "video_all_w8a8", "online_video_w8a8"):
        print(f"  {k}: rel. distance from the bf16 model's velocity {rel_err(out[k], bf16):.2e}")

    # The FP8 pipeline: the step policy picks the generation tower's mode per step (by the
    # step's timestep); the text tower stays A16.
    pipe.transformer = quant
    timesteps = [int(t) for t in t2av["timesteps"]]
    n = len(timesteps)
    first, last = POLICY["first_steps"]["count"], POLICY["last_steps"]["count"]
    modes_per_step = ["a16" if (n > 1 and (i < first or i + last >= n)) else "a8" for i in range(n)]

    def on_call(kw):
        i = timesteps.index(int(kw["vision_timesteps"].flatten()[0]))
        modes.und, modes.gen = "a16", modes_per_step[i]

    calls, steps = record_calls(pipe, cases["t2av"], t2av, on_call)
    assert len(calls) == 2 * n
    traj = {"step_is_w8a8": torch.tensor([m == "a8" for m in modes_per_step], dtype=torch.int64)}
    for s in range(n):
        traj[f"video_step{s}"] = steps[2 * s].float().contiguous()
        traj[f"sound_step{s}"] = steps[2 * s + 1].float().contiguous()
    traj["latents"] = traj[f"video_step{n - 1}"].clone()
    traj["sound_latents"] = traj[f"sound_step{n - 1}"].clone()
    save_file(traj, str(refs / "fp8_trajectory_t2av.safetensors"), metadata={"case": "t2av"})
    print(f"  trajectory: modes {modes_per_step}, latents rel. distance from bf16 "
          f"{rel_err(traj['latents'], t2av['latents']):.2e}")


if __name__ == "__main__":
    import sys

    torch.use_deterministic_algorithms(True)
    torch.set_num_threads(1)
    make(Path(sys.argv[1] if len(sys.argv) > 1 else "tests/fixtures"), 0)
