"""The pieces of the 720p sound decode timed with torch (what diffusers' Cosmos3 audio
decoder runs), beside `phyai bench --part audio-ops`: each up-block of
Cosmos3AudioDecoder at its input shape, then Snake1d, the k7 convs (dilation 1 and 9),
the k1 conv and the x2 transposed conv at the last block's shape. bf16, CUDA events,
median of --runs after one warm-up. Needs diffusers (tools/bench/diffusers_gpu.sh installs it).

    python3 tools/bench/torch_audio_ops.py --runs 5
"""
import argparse

import torch
from diffusers.models.autoencoders.autoencoder_cosmos3_audio import (
    Cosmos3AudioDecoderBlock, Snake1d)


def median_ms(fn, runs):
    fn()
    torch.cuda.synchronize()
    ms = []
    for _ in range(runs):
        a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        a.record()
        fn()
        b.record()
        b.synchronize()
        ms.append(a.elapsed_time(b))
    return sorted(ms)[len(ms) // 2]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=5)
    a = ap.parse_args()
    dt, dev = torch.bfloat16, "cuda"
    torch.set_default_dtype(dt)
    c, t = 320 * 16, 197
    with torch.no_grad(), torch.device(dev):
        for i, s in enumerate([8, 6, 5, 4, 2]):
            o = c if i == 4 else c // 2
            blk = Cosmos3AudioDecoderBlock(c, o, stride=s, output_padding=s % 2).eval()
            x = torch.randn(1, c, t)
            print(f"torch audio-ops: up-block {i}: {c}->{o} ch, x{s}, {t} -> {t * s} samples: "
                  f"median {median_ms(lambda: blk(x), a.runs):.3f} ms", flush=True)
            c, t = o, t * s
            del blk, x
        x = torch.randn(1, c, t)
        snake = Snake1d(c)
        print(f"torch audio-ops: snake {c} ch x {t}: median {median_ms(lambda: snake(x), a.runs):.3f} ms")
        for d in (1, 9):
            conv = torch.nn.Conv1d(c, c, 7, dilation=d, padding=3 * d)
            print(f"torch audio-ops: conv1d k7 dilation {d}, {c} ch x {t}: "
                  f"median {median_ms(lambda: conv(x), a.runs):.3f} ms")
        conv = torch.nn.Conv1d(c, c, 1)
        print(f"torch audio-ops: conv1d k1, {c} ch x {t}: median {median_ms(lambda: conv(x), a.runs):.3f} ms")
        half = torch.randn(1, c, t // 2)
        ct = torch.nn.ConvTranspose1d(c, c, 4, stride=2, padding=1)
        print(f"torch audio-ops: conv_transpose1d x2 k4, {c} ch x {t // 2}: "
              f"median {median_ms(lambda: ct(half), a.runs):.3f} ms")


if __name__ == "__main__":
    main()
