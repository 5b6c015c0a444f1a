"""Tiny Cosmos3 checkpoint and pipeline-level references (diffusers 0.42.1, CPU, float32).

`make(out_dir, seed)` writes
  tiny/                         a random-weight Cosmos3OmniPipeline in the published layout
                                (weights stored as bf16, like the real checkpoint; the
                                references below run on exactly those values in f32)
  refs/transformer_<case>.safetensors   inputs and velocities of single transformer calls
  refs/trajectory_<case>.safetensors    3-step guided runs from given initial noise
  refs/pipeline_cases.json              the call arguments of every case
"""

from __future__ import annotations

import copy
import json
import shutil
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import save_file

from diffusers import (
    AutoencoderKLWan,
    Cosmos3OmniPipeline,
    Cosmos3OmniTransformer,
    UniPCMultistepScheduler,
)
from diffusers.models.autoencoders.autoencoder_cosmos3_audio import Cosmos3AVAEAudioTokenizer

# Text the tiny BPE tokenizer is trained on (fixed, so the vocabulary is reproducible).
CORPUS = [
    "A robot arm stacks three red cubes on a wooden table in a bright workshop.",
    "The camera slowly pans across a busy warehouse where forklifts move pallets.",
    "A small drone flies over a green field at sunset, casting a long shadow.",
    "This video is of 720x1280 resolution. The video is 7.9 seconds long and is of 24 FPS.",
    "This video is not of 64x96 resolution. The video is not 0.4 seconds long and is not of 24 FPS.",
    "You are a helpful assistant who will generate videos from a give prompt.",
    "blurry, low quality, distorted, static, jittery motion, watermark, text overlay",
    '{"subject": "robot", "action": "grasping", "scene": "kitchen", "duration": "8s"}',
    "0123456789 .,:;!?'\"()[]{}-_/ abcdefghijklmnopqrstuvwxyz ABCDEFGHIJKLMNOPQRSTUVWXYZ",
]

SPECIAL_TOKENS = [
    "<|endoftext|>",
    "<|im_start|>",
    "<|im_end|>",
    "<|vision_start|>",
    "<|vision_end|>",
    "<|vision_pad|>",
    "<|image_pad|>",
    "<|video_pad|>",
]

# Qwen's chat template, reduced to what a text-only conversation uses.
CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)

SCHEDULER_CONFIG = dict(
    num_train_timesteps=1000,
    flow_shift=1.0,
    prediction_type="flow_prediction",
    use_flow_sigmas=True,
    use_karras_sigmas=True,
    sigma_max=200.0,
    sigma_min=0.147,
    solver_order=2,
    solver_type="bh2",
    final_sigmas_type="zero",
    timestep_spacing="linspace",
    lower_order_final=True,
)


def build_tokenizer(out: Path):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=600,
        special_tokens=[],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(CORPUS, trainer=trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        additional_special_tokens=[t for t in SPECIAL_TOKENS if t not in ("<|im_end|>", "<|endoftext|>")],
    )
    fast.chat_template = CHAT_TEMPLATE
    fast.save_pretrained(out)
    return fast


def randomize_(module: torch.nn.Module, gen: torch.Generator) -> None:
    """Every parameter random (no zero or identity init that could hide a missing term)."""
    with torch.no_grad():
        for name, p in module.named_parameters():
            if p.ndim >= 2:
                fan_in = int(np.prod(p.shape[1:]))
                p.copy_(torch.randn(p.shape, generator=gen) / fan_in**0.5)
            elif "norm" in name or name.endswith("gamma") or name.endswith("alpha") or name.endswith("beta"):
                p.copy_(1.0 + 0.1 * torch.randn(p.shape, generator=gen))
            else:
                p.copy_(0.1 * torch.randn(p.shape, generator=gen))


def round_to_bf16_(module: torch.nn.Module) -> None:
    """The checkpoint is stored in bf16; make the f32 model hold exactly those values."""
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(p.to(torch.bfloat16).to(torch.float32))


def build_pipeline(tiny: Path, seed: int) -> Cosmos3OmniPipeline:
    gen = torch.Generator().manual_seed(seed)
    if tiny.exists():
        shutil.rmtree(tiny)
    tiny.mkdir(parents=True)
    tokenizer = build_tokenizer(tiny / "text_tokenizer")

    transformer = Cosmos3OmniTransformer(
        hidden_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=16,
        intermediate_size=128,
        vocab_size=len(tokenizer),
        rope_scaling={"mrope_section": [4, 2, 2], "rope_type": "default"},
        sound_gen=True,
        sound_dim=64,
    )
    randomize_(transformer, gen)
    vae = AutoencoderKLWan(
        base_dim=8,
        decoder_base_dim=12,
        z_dim=48,
        dim_mult=[1, 2, 4, 4],
        num_res_blocks=2,
        temperal_downsample=[False, True, True],
        is_residual=True,
        in_channels=12,
        out_channels=12,
        patch_size=2,
        scale_factor_temporal=4,
        scale_factor_spatial=16,
        latents_mean=(0.5 * torch.randn(48, generator=gen)).tolist(),
        latents_std=(1.0 + 0.5 * torch.rand(48, generator=gen)).tolist(),
    )
    randomize_(vae, gen)
    audio = Cosmos3AVAEAudioTokenizer(dec_dim=2, encoder_enabled=False)
    randomize_(audio, gen)
    with torch.no_grad():
        # Weight-norm gains of N(0, 1) make the random decoder chaotic (f32 and f64 runs of
        # the reference itself disagree by 5e-4); a tenth keeps it well conditioned.
        for name, p in audio.named_parameters():
            if name.endswith("weight_g"):
                p.mul_(0.1)
    scheduler = UniPCMultistepScheduler(**SCHEDULER_CONFIG)
    for m in (transformer, vae, audio):
        round_to_bf16_(m)
        m.eval()

    pipe = Cosmos3OmniPipeline(
        transformer=transformer,
        text_tokenizer=tokenizer,
        vae=vae,
        scheduler=scheduler,
        sound_tokenizer=audio,
        enable_safety_checker=False,
    )
    # Save bf16 copies (published dtype), the transformer sharded to exercise the index. The
    # f32 models stay untouched: casting them would also round non-persistent buffers (the
    # rotary inv_freq) that from_pretrained recomputes in f32.
    copy.deepcopy(transformer).to(torch.bfloat16).save_pretrained(tiny / "transformer", max_shard_size="400KB")
    copy.deepcopy(vae).to(torch.bfloat16).save_pretrained(tiny / "vae")
    # (weight_norm modules cannot be deep-copied; the audio decoder has no buffers to spoil.)
    assert not list(audio.buffers())
    audio.to(torch.bfloat16).save_pretrained(tiny / "sound_tokenizer")
    audio.to(torch.float32)
    scheduler.save_pretrained(tiny / "scheduler")
    # model_index.json as save_pretrained writes it, without re-saving the weights.
    index = {"_class_name": "Cosmos3OmniPipeline", "_diffusers_version": "0.42.1"}
    index.update({k: v for k, v in pipe.config.items() if not k.startswith("_")})
    (tiny / "model_index.json").write_text(json.dumps(index, indent=2, sort_keys=True) + "\n")
    return pipe


CASES = {
    # name: call arguments (prompt style is diffusers': its system prompt, empty negative)
    "t2v": dict(prompt=CORPUS[0], num_frames=9, height=64, width=96, fps=24.0),
    "t2av": dict(prompt=CORPUS[2], num_frames=9, height=64, width=96, fps=24.0, enable_sound=True),
    "padded": dict(prompt=CORPUS[1], num_frames=5, height=48, width=80, fps=16.0),
    "i2v": dict(prompt=CORPUS[0], num_frames=9, height=64, width=96, fps=24.0, image=True),
}


class Recorder:
    """Captures transformer calls and every scheduler step of one pipeline run."""

    def __init__(self, pipe: Cosmos3OmniPipeline):
        self.calls: list[dict] = []
        self.steps: list[torch.Tensor] = []
        t = pipe.transformer
        self.h1 = t.register_forward_pre_hook(self._pre, with_kwargs=True)
        self.h2 = t.register_forward_hook(self._post, with_kwargs=True)
        self.orig_step = UniPCMultistepScheduler.step
        rec = self

        def step(sched, model_output, timestep, sample, *a, **k):
            out = rec.orig_step(sched, model_output, timestep, sample, *a, **k)
            rec.steps.append(out[0].detach().clone())
            return out

        UniPCMultistepScheduler.step = step

    def _pre(self, module, args, kwargs):
        self.calls.append({"in": dict(kwargs)})

    def _post(self, module, args, kwargs, output):
        self.calls[-1]["out"] = output

    def close(self):
        self.h1.remove()
        self.h2.remove()
        UniPCMultistepScheduler.step = self.orig_step


def _f32(x: torch.Tensor) -> torch.Tensor:
    return x.detach().to(torch.float32).contiguous()


def transformer_tensors(call: dict) -> dict[str, torch.Tensor]:
    i = call["in"]
    vision, sound, _ = call["out"]
    d = {
        "input_ids": i["input_ids"].to(torch.int64),
        "position_ids": _f32(i["position_ids"]),
        "video_latent": _f32(i["vision_tokens"][0]),
        "video_timestep": _f32(i["vision_timesteps"][:1]),
        "noisy_frame_indexes": i["vision_noisy_frame_indexes"][0].to(torch.int64),
        "velocity_video": _f32(vision[0]),
    }
    if i.get("sound_tokens") is not None:
        d["sound_latent"] = _f32(i["sound_tokens"][0]).unsqueeze(0)
        d["sound_timestep"] = _f32(i["sound_timesteps"][:1])
        d["velocity_sound"] = _f32(sound[0]).unsqueeze(0)
    return d


def run_case(pipe, name: str, args: dict, seed: int, refs: Path) -> dict:
    gen = torch.Generator().manual_seed(seed + 1000 + len(name))
    args = dict(args)
    with_image = args.pop("image", False)
    lt = (args["num_frames"] - 1) // 4 + 1
    lh, lw = args["height"] // 16, args["width"] // 16
    noise = torch.randn(1, 48, lt, lh, lw, generator=gen)
    call = dict(args, latents=noise.clone(), num_inference_steps=3, guidance_scale=6.0, output_type="pt",
                enable_safety_check=False)
    image = None
    if with_image:
        # An 8-bit RGB image (what a PNG holds), also written next to the refs for the CLI.
        image = (torch.rand(1, 3, args["height"], args["width"], generator=gen) * 255).round() / 255
        call["image"] = image * 2 - 1  # tensors are taken as [-1, 1]
        from PIL import Image

        png = (image[0].permute(1, 2, 0) * 255).round().to(torch.uint8).numpy()
        Image.fromarray(png).save(refs / f"{name}_image.png")
        # With `latents=` given, the pipeline does not blend the clean image latent into
        # frame 0 itself (it only does so for noise it draws), so blend it here exactly as
        # its prepare_latents would: frame 0 = encoded image, the rest = noise.
        with torch.no_grad():
            frames = (image * 2 - 1).unsqueeze(2).expand(-1, -1, args["num_frames"], -1, -1)
            x0 = pipe._encode_video(frames.contiguous()).float()
        call["latents"] = noise.clone()
        call["latents"][:, :, 0] = x0[:, :, 0]
    sound_noise = None
    if args.get("enable_sound"):
        n_samples = int(args["num_frames"] / args["fps"] * 48000)
        t_sound = (n_samples + 1919) // 1920
        sound_noise = torch.randn(64, t_sound, generator=gen)
        call["sound_latents"] = sound_noise.clone()
    pos_ids, neg_ids = pipe.tokenize_prompt(
        args["prompt"], None, num_frames=args["num_frames"], height=args["height"],
        width=args["width"], fps=args["fps"],
    )
    rec = Recorder(pipe)
    try:
        with torch.no_grad():
            out = pipe(**call)
    finally:
        rec.close()

    # First call is the conditional branch of step 0, second the unconditional one.
    for branch, idx in (("cond", 0), ("uncond", 1)):
        t = transformer_tensors(rec.calls[idx])
        save_file(t, str(refs / f"transformer_{name}_{branch}.safetensors"))

    video = out.video  # [T, C, H, W] in [0, 1]
    if isinstance(video, list):
        video = video[0]
    traj = {
        "pos_ids": torch.tensor(pos_ids, dtype=torch.int64),
        "neg_ids": torch.tensor(neg_ids, dtype=torch.int64),
        "init_video": _f32(noise),
        "sigmas": _f32(pipe.scheduler.sigmas),
        "timesteps": pipe.scheduler.timesteps.to(torch.int64),
        "video": _f32(video).permute(1, 0, 2, 3).unsqueeze(0).contiguous(),
    }
    per_step = 2 if sound_noise is not None else 1
    for s in range(3):
        traj[f"video_step{s}"] = _f32(rec.steps[s * per_step])
        if sound_noise is not None:
            traj[f"sound_step{s}"] = _f32(rec.steps[s * per_step + 1]).contiguous()
    traj["latents"] = traj["video_step2"].clone()
    if sound_noise is not None:
        traj["init_sound"] = _f32(sound_noise).unsqueeze(0)
        traj["sound_latents"] = traj["sound_step2"].clone()
        traj["audio"] = _f32(out.sound).unsqueeze(0)
    if image is not None:
        traj["image"] = _f32(image)  # [1, 3, H, W] in [0, 1]
        traj["image_latent"] = _f32(call["latents"][:, :, :1])  # normalised latent of frame 0
    save_file(traj, str(refs / f"trajectory_{name}.safetensors"))
    return {k: v for k, v in args.items()} | {"steps": 3, "guidance_scale": 6.0, "image": with_image,
                                               "pos_len": len(pos_ids), "neg_len": len(neg_ids)}


def make(out_dir: Path, seed: int) -> None:
    out_dir = Path(out_dir)
    torch.manual_seed(seed)
    refs = out_dir / "refs"
    refs.mkdir(parents=True, exist_ok=True)
    pipe = build_pipeline(out_dir / "tiny", seed)
    cases = {}
    for name, args in CASES.items():
        cases[name] = run_case(pipe, name, args, seed, refs)
    (refs / "pipeline_cases.json").write_text(json.dumps(cases, indent=2, sort_keys=True) + "\n")


if __name__ == "__main__":
    import sys

    make(Path(sys.argv[1] if len(sys.argv) > 1 else "tests/fixtures"), 0)
