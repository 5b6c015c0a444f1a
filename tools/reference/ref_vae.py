"""Reference outputs of the Wan2.2 video VAE and the Cosmos3 audio VAE (diffusers, CPU, f32).

Writes into the refs folder:
  vae_decode.safetensors   latent [1,48,3,4,6] (normalised) -> pixels [1,3,9,64,96] in [0,1]
  vae_encode.safetensors   video [1,3,5,64,96] and image [1,3,1,64,96] in [-1,1]
                           -> normalised latents (posterior mode), as the I2V path encodes
  audio_decode.safetensors latent [1,64,4] -> waveform [1,2,7680] in [-1,1] (f32 and f64)

The weights come from the tiny checkpoint (`tiny/vae`, `tiny/sound_tokenizer`). With `--dev`
and no tiny checkpoint, a small random model is made here instead (development only).
"""

from __future__ import annotations

import argparse
import copy
import json
from pathlib import Path

import torch
from safetensors.torch import save_file

from diffusers import AutoencoderKLWan
from diffusers.models.autoencoders.autoencoder_cosmos3_audio import Cosmos3AVAEAudioTokenizer


def _dev_vae(seed: int) -> AutoencoderKLWan:
    torch.manual_seed(seed)
    g = torch.Generator().manual_seed(seed + 1)
    vae = AutoencoderKLWan(
        base_dim=8,
        decoder_base_dim=12,
        z_dim=48,
        is_residual=True,
        in_channels=12,
        out_channels=12,
        patch_size=2,
        scale_factor_spatial=16,
        scale_factor_temporal=4,
        temperal_downsample=[False, True, True],
        latents_mean=(torch.randn(48, generator=g) * 0.5).tolist(),
        latents_std=(torch.rand(48, generator=g) * 2 + 0.5).tolist(),
    )
    with torch.no_grad():
        for name, p in vae.named_parameters():
            if name.endswith("gamma"):
                p.copy_(1.0 + 0.2 * torch.randn(p.shape, generator=g))
    return vae.eval()


def _dev_audio(seed: int) -> Cosmos3AVAEAudioTokenizer:
    torch.manual_seed(seed + 2)
    g = torch.Generator().manual_seed(seed + 3)
    tok = Cosmos3AVAEAudioTokenizer(dec_dim=2, encoder_enabled=False)
    with torch.no_grad():
        for name, p in tok.named_parameters():
            if name.endswith("alpha") or name.endswith("beta"):
                p.copy_(0.3 * torch.randn(p.shape, generator=g))
    return tok.eval()


def _dirs(out_dir: Path) -> tuple[Path, Path]:
    """(refs folder to write, tiny checkpoint folder to read)."""
    out_dir = Path(out_dir)
    if out_dir.name == "refs":
        return out_dir, out_dir.parent / "tiny"
    return out_dir / "refs", out_dir / "tiny"


def make(out_dir: Path, seed: int, dev: bool = False) -> None:
    refs, tiny = _dirs(out_dir)
    refs.mkdir(parents=True, exist_ok=True)
    torch.set_grad_enabled(False)

    if (tiny / "vae" / "config.json").exists():
        vae = AutoencoderKLWan.from_pretrained(tiny / "vae", torch_dtype=torch.float32).eval()
        vae_src = "tiny/vae"
    elif dev:
        vae = _dev_vae(seed)
        vae_src = "dev"
    else:
        raise FileNotFoundError(f"{tiny / 'vae'} missing (make the tiny checkpoint first)")

    if (tiny / "sound_tokenizer" / "config.json").exists():
        tok = Cosmos3AVAEAudioTokenizer.from_pretrained(
            tiny / "sound_tokenizer", torch_dtype=torch.float32
        ).eval()
        audio_src = "tiny/sound_tokenizer"
    elif dev:
        tok = _dev_audio(seed)
        audio_src = "dev"
    else:
        raise FileNotFoundError(f"{tiny / 'sound_tokenizer'} missing")

    g = torch.Generator().manual_seed(seed)
    z_dim = vae.config.z_dim
    mean = torch.tensor(vae.config.latents_mean, dtype=torch.float32)
    inv_std = 1.0 / torch.tensor(vae.config.latents_std, dtype=torch.float32)

    # Decode: normalised latent -> de-normalise exactly as the pipeline -> decode -> [0,1].
    latent = torch.randn(1, z_dim, 3, 4, 6, generator=g)
    z_raw = latent / inv_std.view(1, -1, 1, 1, 1) + mean.view(1, -1, 1, 1, 1)
    decoded = vae.decode(z_raw).sample
    pixels = (decoded + 1.0) / 2.0
    save_file(
        {"latent": latent.contiguous(), "pixels": pixels.contiguous()},
        refs / "vae_decode.safetensors",
        metadata={"source": vae_src, "seed": str(seed)},
    )

    # Encode: posterior mode, normalised with (mu - mean) * inv_std, as the I2V path does.
    def encode(x: torch.Tensor) -> torch.Tensor:
        mu = vae.encode(x).latent_dist.mode()
        return (mu - mean.view(1, -1, 1, 1, 1)) * inv_std.view(1, -1, 1, 1, 1)

    video = torch.rand(1, 3, 5, 64, 96, generator=g) * 2.0 - 1.0
    image = torch.rand(1, 3, 1, 64, 96, generator=g) * 2.0 - 1.0
    save_file(
        {
            "video": video.contiguous(),
            "video_latent": encode(video).contiguous(),
            "image": image.contiguous(),
            "image_latent": encode(image).contiguous(),
        },
        refs / "vae_encode.safetensors",
        metadata={"source": vae_src, "seed": str(seed)},
    )

    # Audio: the pipeline's decode_sound calls sound_tokenizer.decode (decoder, clamp [-1,1]).
    # The random tiny decoder is ill-conditioned (snake of large activations): diffusers'
    # own f32 result is ~4e-4 away from its f64 result. The f64 waveform is the exact
    # reference; the f32 one is what diffusers computes in f32.
    a_latent = torch.randn(1, tok.config.vocoder_input_dim, 4, generator=g)
    wave = tok.decode(a_latent)
    wave64 = copy.deepcopy(tok).double().decode(a_latent.double())
    save_file(
        {
            "latent": a_latent.contiguous(),
            "waveform": wave.contiguous(),
            "waveform_f64": wave64.contiguous(),
        },
        refs / "audio_decode.safetensors",
        metadata={"source": audio_src, "seed": str(seed)},
    )

    if vae_src == "dev":
        dev_dir = refs.parent / "dev_vae"
        vae.save_pretrained(dev_dir / "vae", safe_serialization=True)
        tok.save_pretrained(dev_dir / "sound_tokenizer", safe_serialization=True)
        (dev_dir / "NOTE.json").write_text(json.dumps({"dev_only": True}))


if __name__ == "__main__":
    ap = argparse.ArgumentParser()
    ap.add_argument("out_dir", type=Path)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--dev", action="store_true")
    a = ap.parse_args()
    make(a.out_dir, a.seed, dev=a.dev)
