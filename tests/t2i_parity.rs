//! Text-to-image (`num_frames = 1`) against diffusers 0.42.1's `Cosmos3OmniPipeline`
//! (`refs/t2i_<case>.safetensors`, see the fixtures README): the one-frame prompt templates
//! (image system prompt, "This image is of HxW resolution.", no duration), the guided
//! 3-step run from the recorded noise on the tiny checkpoint (f32, CPU), and the PNG the
//! frame is written as.

use std::collections::HashMap;

use candle_core::{Device, Tensor};
use phyai::io::still::write_still;
use phyai::models::cosmos3::postprocess::video_to_rgb8;
use phyai::models::cosmos3::processor::{Processor, PromptInputs, PromptStyle};
use phyai::models::cosmos3::sampler::GuidanceInterval;
use phyai::models::cosmos3::{Cosmos3Request, InitNoise, Prompt, VaeDecode};
use phyai::parallel::MeshShape;

mod support;
use support::{engine_on, fixtures, ids, rel_err};

/// As the pipeline parity tests.
const TOL: f64 = 1e-4;

fn load(case: &str) -> (HashMap<String, Tensor>, HashMap<String, String>) {
    let path = fixtures()
        .join("refs")
        .join(format!("t2i_{case}.safetensors"));
    let tensors = candle_core::safetensors::load(&path, &Device::Cpu).unwrap();
    let bytes = std::fs::read(&path).unwrap();
    let (_, meta) = safetensors::SafeTensors::read_metadata(&bytes).unwrap();
    (tensors, meta.metadata().clone().unwrap_or_default())
}

fn num(meta: &HashMap<String, String>, key: &str) -> f64 {
    meta[key].parse().unwrap()
}

#[test]
fn one_frame_prompts_use_the_image_templates() {
    let p = Processor::from_dir(&fixtures().join("tiny/text_tokenizer")).unwrap();
    for case in ["plain", "interval"] {
        let (r, meta) = load(case);
        let inputs = PromptInputs {
            prompt: meta["prompt"].clone(),
            negative_prompt: None,
            num_frames: 1,
            height: num(&meta, "height") as usize,
            width: num(&meta, "width") as usize,
            fps: num(&meta, "fps"),
            style: PromptStyle::Diffusers,
        };
        let (pos, neg) = p.encode_pair(&inputs).unwrap();
        assert_eq!(pos, ids(&r["pos_ids"]), "{case}: positive ids");
        assert_eq!(neg, ids(&r["neg_ids"]), "{case}: negative ids");
        let (pos_text, neg_text) = p.captions(&inputs).unwrap();
        assert!(pos_text.ends_with("This image is of 32x48 resolution."));
        assert!(neg_text.starts_with("This image is not of 32x48 resolution."));
        assert!(!pos_text.contains("seconds long"));
    }
}

#[test]
fn guidance_interval_matches_the_per_step_reference() {
    let (r, meta) = load("interval");
    assert_eq!(meta["guidance_interval"], "400,1000");
    let mut req = Cosmos3Request::new(
        Prompt::Tokens {
            pos: ids(&r["pos_ids"]),
            neg: ids(&r["neg_ids"]),
        },
        1,
        32,
        48,
    );
    req.steps = 3;
    req.guidance_interval = Some(GuidanceInterval::parse("400,1000", "guidance_interval").unwrap());
    req.init_noise = Some(InitNoise {
        video: r["init_video"].clone(),
        sound: None,
    });
    let out = engine_on(
        &fixtures().join("tiny"),
        false,
        MeshShape::single(),
        VaeDecode::Full,
    )
    .step(&req)
    .unwrap();
    let lat = rel_err(&out.latents, &r["latents"]);
    let img = rel_err(&out.video, &r["image"]);
    println!("t2i interval: latents {lat:.2e}, image {img:.2e}");
    assert!(lat <= TOL && img <= TOL, "latents {lat:e}, image {img:e}");
    // The unguided last step makes a different image than guiding everywhere.
    let (plain, _) = load("plain");
    assert!(rel_err(&out.latents, &plain["latents"]) > 1e-2);
}

#[test]
fn text_to_image_matches_diffusers_and_writes_a_png() {
    let (r, meta) = load("plain");
    let init = r["init_video"].clone();
    let (_, _, t, h, w) = init.dims5().unwrap();
    assert_eq!(t, 1);
    let mut req = Cosmos3Request::new(
        Prompt::Tokens {
            pos: ids(&r["pos_ids"]),
            neg: ids(&r["neg_ids"]),
        },
        1,
        h * 16,
        w * 16,
    );
    req.fps = num(&meta, "fps");
    req.steps = num(&meta, "steps") as usize;
    req.guidance_scale = num(&meta, "guidance_scale");
    req.seed = 0;
    req.init_noise = Some(InitNoise {
        video: init,
        sound: None,
    });
    let out = engine_on(
        &fixtures().join("tiny"),
        false,
        MeshShape::single(),
        VaeDecode::Full,
    )
    .step(&req)
    .unwrap();
    let lat = rel_err(&out.latents, &r["latents"]);
    let img = rel_err(&out.video, &r["image"]);
    println!("t2i: latents {lat:.2e}, image {img:.2e}");
    assert!(lat <= TOL, "latents rel err {lat:e}");
    assert!(img <= TOL, "image rel err {img:e}");

    // The PNG holds the frame's 8-bit levels; the reference's own levels differ by at most
    // one where a value sits at a rounding boundary.
    let ours = video_to_rgb8(&out.video).unwrap();
    let want = video_to_rgb8(&r["image"]).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let png = dir.path().join("t2i.png");
    write_still(&png, &ours.data, ours.height, ours.width).unwrap();
    let back = image::open(&png).unwrap().to_rgb8();
    assert_eq!(back.as_raw(), &ours.data);
    let worst = ours
        .data
        .iter()
        .zip(&want.data)
        .map(|(a, b)| a.abs_diff(*b))
        .max()
        .unwrap();
    assert!(worst <= 1, "8-bit levels differ by {worst}");
}
