//! Transfer against diffusers 0.42.1's modular `Cosmos3OmniBlocks` with `control_videos`
//! (`refs/transfer_<case>.safetensors`, control clips `refs/transfer_<hint>/*.png`, see
//! `tools/reference/ref_transfer.py`): the transfer prompt template, the control clips read
//! exactly, ordered canonically and reflect-padded in time, encoded per chunk, the chunk loop
//! with the previous chunk's tail re-encoded, three-branch guidance, and the stitched clip
//! (f32, CPU).

use std::collections::HashMap;

use candle_core::{DType, Device, Tensor};
use phyai::io::frames::load_png_frames;
use phyai::models::cosmos3::control::{canonical, chunk_window, reflect_pad};
use phyai::models::cosmos3::processor::Processor;
use phyai::models::cosmos3::sampler::GuidanceInterval;
use phyai::models::cosmos3::vae::WanVae;
use phyai::models::cosmos3::{Control, Cosmos3Request, Hint, Prompt, TransferInput, VaeDecode};
use phyai::parallel::MeshShape;

mod support;
use support::{engine_on, fixtures, ids, rel_err};

/// As the pipeline, VAE and continuation parity tests.
const TOL: f64 = 1e-4;

fn load(case: &str) -> (HashMap<String, Tensor>, HashMap<String, String>) {
    let path = fixtures()
        .join("refs")
        .join(format!("transfer_{case}.safetensors"));
    let tensors = candle_core::safetensors::load(&path, &Device::Cpu).unwrap();
    let bytes = std::fs::read(&path).unwrap();
    let (_, meta) = safetensors::SafeTensors::read_metadata(&bytes).unwrap();
    (tensors, meta.metadata().clone().unwrap_or_default())
}

fn optional(meta: &HashMap<String, String>, key: &str) -> Option<usize> {
    (meta[key] != "none").then(|| meta[key].parse().unwrap())
}

/// The case's request with its controls in the order the reference was given them.
fn request(
    meta: &HashMap<String, String>,
    r: &HashMap<String, Tensor>,
    text: bool,
) -> Cosmos3Request {
    let n = |k: &str| meta[k].parse::<f64>().unwrap();
    let (h, w) = (n("height") as usize, n("width") as usize);
    let controls = meta["hints"]
        .split(',')
        .map(|name| Control {
            hint: Hint::parse(name, "controls").unwrap(),
            frames: load_png_frames(
                &fixtures().join(format!("refs/transfer_{name}")),
                h,
                w,
                "controls",
            )
            .unwrap(),
        })
        .collect();
    let mut t = TransferInput::new(controls);
    t.chunk_frames = optional(meta, "chunk_frames");
    t.conditional_frames = n("conditional_frames") as usize;
    t.control_guidance = n("control_guidance");
    t.control_guidance_interval = match meta["control_guidance_interval"].as_str() {
        "none" => None,
        s => Some(GuidanceInterval::parse(s, "control_guidance_interval").unwrap()),
    };
    t.chunk_noise = Some(r["chunk_noise"].clone());
    let prompt = if text {
        Prompt::text(meta["prompt"].clone())
    } else {
        Prompt::Tokens {
            pos: ids(&r["pos_ids"]),
            neg: ids(&r["neg_ids"]),
        }
    };
    // No cap: the output is the first control's length.
    let frames = optional(meta, "num_frames").unwrap_or(usize::MAX);
    let mut req = Cosmos3Request::new(prompt, frames, h, w);
    req.fps = n("fps");
    req.steps = n("steps") as usize;
    req.guidance_scale = n("guidance_scale");
    req.transfer = Some(t);
    req
}

#[test]
fn transfer_prompt_template_matches_diffusers() {
    let processor = Processor::from_dir(&fixtures().join("tiny/text_tokenizer")).unwrap();
    let (r, meta) = load("two_chunks");
    let (pos, neg) = processor
        .encode_transfer_pair(&meta["prompt"], None)
        .unwrap();
    assert_eq!(pos, ids(&r["pos_ids"]));
    assert_eq!(neg, ids(&r["neg_ids"]));
}

#[test]
fn control_latents_per_chunk_match_diffusers() {
    let vae = WanVae::load(&fixtures().join("tiny/vae"), DType::F32, &Device::Cpu, true).unwrap();
    let encoder = vae.encoder.as_ref().unwrap();
    let (r, meta) = load("two_chunks");
    let req = request(&meta, &r, false);
    let t = req.transfer.as_ref().unwrap();
    let plan = t.plan(req.num_frames).unwrap();
    assert_eq!(plan.total_frames.to_string(), meta["total_frames"]);
    assert_eq!(plan.chunk_frames.to_string(), meta["chunk_frames_resolved"]);
    assert_eq!(plan.num_chunks.to_string(), meta["num_chunks"]);
    let controls = canonical(t.controls.clone(), "controls").unwrap();
    assert_eq!(
        controls[0].hint,
        Hint::Edge,
        "edge comes first whatever the order given"
    );
    for k in 0..plan.num_chunks {
        let (start, end) = plan.window(k);
        let want = &r[&format!("control{k}_latents")];
        for (i, c) in controls.iter().enumerate() {
            let padded = reflect_pad(&c.frames, plan.padded_frames()).unwrap();
            let clip = chunk_window(&padded, start, end, plan.chunk_frames).unwrap();
            let lat = encoder.encode(&clip).unwrap();
            let e = rel_err(&lat, &want.get(i).unwrap());
            assert!(
                e <= TOL,
                "chunk {k}, {}: control latents rel err {e:e}",
                c.hint
            );
        }
    }
}

#[test]
fn transfer_matches_diffusers() {
    let mut engine = engine_on(
        &fixtures().join("tiny"),
        false,
        MeshShape::single(),
        VaeDecode::Full,
    );
    for (case, text) in [("two_chunks", true), ("control_only", false)] {
        let (r, meta) = load(case);
        let req = request(&meta, &r, text);
        let out = engine.step(&req).unwrap();
        let chunks: usize = meta["num_chunks"].parse().unwrap();
        let lat = rel_err(&out.latents, &r[&format!("latents{}", chunks - 1)]);
        let vid = rel_err(&out.video, &r["video"]);
        println!("transfer {case}: last chunk latents {lat:.2e}, stitched video {vid:.2e}");
        assert!(lat <= TOL, "{case}: latents rel err {lat:e}");
        assert!(vid <= TOL, "{case}: video rel err {vid:e}");
    }
}

#[test]
fn controls_of_other_sizes_are_resized_as_diffusers_does() {
    let r = support::load_ref("transfer_resize.safetensors");
    for name in ["down", "up"] {
        let dir = fixtures().join(format!("refs/transfer_resize/{name}"));
        let got = phyai::io::frames::load_video_resized(&dir, 32, 48, "controls").unwrap();
        let d = (&got - &r[name])
            .unwrap()
            .abs()
            .unwrap()
            .flatten_all()
            .unwrap()
            .max(0)
            .unwrap()
            .to_scalar::<f32>()
            .unwrap();
        // The same 8-bit levels; only the map to [−1, 1] rounds differently (k/127.5 − 1
        // against the reference's k/255·2 − 1).
        assert!(d <= 1e-6, "{name}: max abs diff {d:e}");
    }
}

/// CFG parallelism (conditional branches with and without the controls on group 0, the
/// unconditional one on group 1) and sequence parallelism (the control items split over
/// the ranks with the video) give the single-rank result.
#[test]
fn transfer_on_parallel_ranks_matches_diffusers() {
    for shape in [MeshShape::new(2, 2, 1), MeshShape::new(1, 1, 2)] {
        let mut engine = engine_on(&fixtures().join("tiny"), false, shape, VaeDecode::Full);
        let (r, meta) = load("two_chunks");
        let out = engine.step(&request(&meta, &r, false)).unwrap();
        let vid = rel_err(&out.video, &r["video"]);
        println!("transfer two_chunks on {shape:?}: stitched video {vid:.2e}");
        assert!(vid <= TOL, "{shape:?}: video rel err {vid:e}");
    }
}
