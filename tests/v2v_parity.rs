//! Video-to-video continuation against diffusers 0.42.1's `Cosmos3OmniPipeline(video=…)`
//! (`refs/v2v_<case>.safetensors`, input frames `refs/v2v_frames/*.png`, see the fixtures
//! README): the PNG folder read exactly (or resized as the reference's video processor does,
//! for frames of another size), the conditioning clip chosen by
//! `condition_frame_indexes_vision` / `condition_video_keep`, its clean latents from the VAE
//! encoder, and the guided run with those frames held clean (f32, CPU).

use std::collections::HashMap;

use candle_core::{DType, Device, Tensor};
use phyai::io::frames::load_video_resized;
use phyai::models::cosmos3::continuation::{VideoCondition, VideoKeep};
use phyai::models::cosmos3::vae::WanVae;
use phyai::models::cosmos3::{Cosmos3Request, InitNoise, Prompt, VaeDecode, VideoInput};
use phyai::parallel::MeshShape;

mod support;
use support::{engine_on, fixtures, ids, rel_err};

/// As the pipeline and VAE parity tests.
const TOL: f64 = 1e-4;

fn load(case: &str) -> (HashMap<String, Tensor>, HashMap<String, String>) {
    let path = fixtures()
        .join("refs")
        .join(format!("v2v_{case}.safetensors"));
    let tensors = candle_core::safetensors::load(&path, &Device::Cpu).unwrap();
    let bytes = std::fs::read(&path).unwrap();
    let (_, meta) = safetensors::SafeTensors::read_metadata(&bytes).unwrap();
    (tensors, meta.metadata().clone().unwrap_or_default())
}

fn condition(meta: &HashMap<String, String>) -> VideoCondition {
    VideoCondition {
        indexes: meta["indexes"]
            .split(',')
            .map(|i| i.parse().unwrap())
            .collect(),
        keep: VideoKeep::parse(&meta["keep"], "keep").unwrap(),
    }
}

#[test]
fn continuation_matches_diffusers() {
    let vae = WanVae::load(&fixtures().join("tiny/vae"), DType::F32, &Device::Cpu, true).unwrap();
    let encoder = vae.encoder.as_ref().unwrap();
    let engine_ckpt = fixtures().join("tiny");
    let mut engine = engine_on(&engine_ckpt, false, MeshShape::single(), VaeDecode::Full);
    for case in ["first", "last", "single", "resized"] {
        let (r, meta) = load(case);
        let n = |k: &str| meta[k].parse::<f64>().unwrap();
        let (h, w) = (n("height") as usize, n("width") as usize);
        // As `phyai generate --video` reads them: frames of another size are resized.
        let folder = meta.get("frames").map_or("v2v_frames", |s| s.as_str());
        let frames =
            load_video_resized(&fixtures().join("refs").join(folder), h, w, "video").unwrap();
        assert_eq!(frames.dims(), [1, 3, 7, h, w]);
        let cond = condition(&meta);
        let init = r["init_video"].clone();
        let t = init.dim(2).unwrap();
        cond.validate(t).unwrap();

        let encoded = encoder.encode(&cond.clip(&frames).unwrap()).unwrap();
        let latents = cond.select(&encoded).unwrap();
        let enc = rel_err(&latents, &r["cond_latents"]);
        assert!(enc <= TOL, "{case}: conditioning latents rel err {enc:e}");

        let mut req = Cosmos3Request::new(
            Prompt::Tokens {
                pos: ids(&r["pos_ids"]),
                neg: ids(&r["neg_ids"]),
            },
            n("num_frames") as usize,
            h,
            w,
        );
        req.fps = n("fps");
        req.steps = n("steps") as usize;
        req.guidance_scale = n("guidance_scale");
        req.seed = 0;
        req.video = Some(VideoInput {
            frames: frames.clone(),
            condition: cond.clone(),
        });
        req.init_noise = Some(InitNoise {
            video: init,
            sound: None,
        });
        // The plugin encodes the same conditioning latents.
        let c = engine
            .plugin()
            .encode_video(req.video.as_ref().unwrap())
            .unwrap();
        assert_eq!(c.frame_indexes, cond.indexes);
        assert!(rel_err(&c.latents, &latents) < 1e-6);
        let out = engine.step(&req).unwrap();
        let lat = rel_err(&out.latents, &r["latents"]);
        let vid = rel_err(&out.video, &r["video"]);
        println!("v2v {case}: conditioning {enc:.2e}, latents {lat:.2e}, video {vid:.2e}");
        assert!(lat <= TOL, "{case}: latents rel err {lat:e}");
        assert!(vid <= TOL, "{case}: video rel err {vid:e}");
    }
}
