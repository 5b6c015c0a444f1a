//! Action-conditioned generation against diffusers 0.42.1's modular action workflows
//! (`refs/action_<case>.safetensors`, checkpoint `tiny_action/`, inputs `refs/action_small.png`
//! and `refs/action_frames/`, see the fixtures README): the JSON caption and its token ids,
//! the padded canvas and its clean latents, the joint video/action loop (f32, CPU), the
//! decoded video and the predicted actions; and the one-line errors of bad action requests.

use std::collections::HashMap;
use std::path::PathBuf;

use candle_core::{Device, Tensor};
use phyai::io::frames::load_native_16;
use phyai::models::cosmos3::action::{canvas, content_size};
use phyai::models::cosmos3::continuation::VideoCondition;
use phyai::models::cosmos3::processor::{Processor, PromptStyle};
use phyai::models::cosmos3::{
    ActionMode, ActionRequest, Cosmos3Request, InitNoise, Prompt, VaeDecode, VideoInput,
};
use phyai::parallel::MeshShape;

mod support;
use support::{engine_on, fixtures, ids, rel_err};

/// As the pipeline and continuation parity tests.
const TOL: f64 = 1e-4;

fn load(case: &str) -> (HashMap<String, Tensor>, HashMap<String, String>) {
    let path = fixtures()
        .join("refs")
        .join(format!("action_{case}.safetensors"));
    let tensors = candle_core::safetensors::load(&path, &Device::Cpu).unwrap();
    let bytes = std::fs::read(&path).unwrap();
    let (_, meta) = safetensors::SafeTensors::read_metadata(&bytes).unwrap();
    (tensors, meta.metadata().clone().unwrap_or_default())
}

fn checkpoint() -> PathBuf {
    fixtures().join("tiny_action")
}

/// The request a reference case was made with (its prompt as text, its initial noise).
fn request(r: &HashMap<String, Tensor>, meta: &HashMap<String, String>) -> Cosmos3Request {
    let n = |k: &str| meta[k].parse::<f64>().unwrap();
    let mut action = ActionRequest::new(
        ActionMode::parse(&meta["mode"], "mode").unwrap(),
        meta["domain"].clone(),
        n("chunk") as usize,
    );
    action.resolution_tier = n("tier") as usize;
    action.actions = r.get("raw_actions").cloned();
    action.init_noise = Some(r["init_action"].clone());
    let mut req = Cosmos3Request::new(
        Prompt::Text {
            prompt: meta["prompt"].clone(),
            negative_prompt: None,
            style: PromptStyle::Diffusers,
        },
        0,
        0,
        0,
    );
    // As `phyai generate` reads action inputs (sides rounded down to multiples of 16).
    let pixels = load_native_16(&fixtures().join("refs").join(&meta["input"]), "input").unwrap();
    if action.mode == ActionMode::InverseDynamics {
        req.video = Some(VideoInput {
            frames: pixels,
            condition: VideoCondition::default(),
        });
    } else {
        req.image = Some(pixels.squeeze(2).unwrap());
    }
    req.fps = n("fps");
    req.steps = n("steps") as usize;
    req.guidance_scale = n("guidance_scale");
    req.seed = 0;
    req.init_noise = Some(InitNoise {
        video: r["init_video"].clone(),
        sound: None,
    });
    req.action = Some(action);
    req
}

#[test]
fn action_modes_match_diffusers() {
    let processor = Processor::from_dir(&checkpoint().join("text_tokenizer")).unwrap();
    let mut engine = engine_on(&checkpoint(), false, MeshShape::single(), VaeDecode::Full);
    for case in ["policy", "forward", "inverse", "large"] {
        let (r, meta) = load(case);
        let req = request(&r, &meta);
        let action = req.action.as_ref().unwrap();
        let (pixels, _) = req.action_pixels().unwrap();
        let (ph, pw) = (pixels.dim(3).unwrap(), pixels.dim(4).unwrap());
        let (ch, cw) = canvas(action.resolution_tier, ph, pw).unwrap();
        assert_eq!(format!("{ch}x{cw}"), meta["canvas"], "{case}: canvas");
        // `large` is shrunk into its canvas; the others fit as they are.
        let (h, w) = content_size(ph, pw, (ch, cw));
        assert_eq!((h, w) == (ph, pw), case != "large", "{case}: {ph}x{pw}");
        assert_eq!(format!("{h}x{w}"), meta["content"], "{case}: content");

        // The JSON caption tokenizes to the reference's ids (the negative prompt as is).
        let caption = action.caption(&meta["prompt"], req.fps, ch, cw).unwrap();
        let (pos, neg) = processor
            .encode_raw_pair(&caption, "", action.num_frames())
            .unwrap();
        assert_eq!(pos, ids(&r["pos_ids"]), "{case}: positive ids of {caption}");
        assert_eq!(neg, ids(&r["neg_ids"]), "{case}: negative ids");

        let out = engine.step(&req).unwrap();
        let lat = rel_err(&out.latents, &r["latents"]);
        let (video, want) = match r.get("video") {
            Some(v) => (out.video.clone(), v),
            None => {
                let c = &r["video_crop"];
                let (ch, cw) = (c.dim(3).unwrap(), c.dim(4).unwrap());
                let crop = out
                    .video
                    .narrow(3, 0, ch)
                    .unwrap()
                    .narrow(4, 0, cw)
                    .unwrap();
                (crop, c)
            }
        };
        // The output is the content in whole latent pixels.
        let (oh, ow) = (16 * (h / 16), 16 * (w / 16));
        assert_eq!(
            out.video.dims()[2..],
            [action.num_frames(), oh, ow],
            "{case}"
        );
        let vid = rel_err(&video, want);
        let act = match (r.get("actions"), &out.actions) {
            (Some(want), Some(got)) => rel_err(got, want),
            (None, None) => 0.0,
            (want, got) => panic!(
                "{case}: actions expected {:?}, got {:?}",
                want.map(|t| t.dims().to_vec()),
                got.as_ref().map(|t| t.dims().to_vec())
            ),
        };
        println!("action {case}: latents {lat:.2e}, video {vid:.2e}, actions {act:.2e}");
        assert!(lat <= TOL, "{case}: latents rel err {lat:e}");
        assert!(vid <= TOL, "{case}: video rel err {vid:e}");
        assert!(act <= TOL, "{case}: actions rel err {act:e}");
    }
}

#[test]
fn bad_action_requests_are_one_line_field_errors() {
    let (r, meta) = load("forward");
    let good = request(&r, &meta);
    let mut engine = engine_on(&checkpoint(), false, MeshShape::single(), VaeDecode::Full);
    let mut cases: Vec<(Cosmos3Request, &str)> = Vec::new();
    let mut q = good.clone();
    q.action.as_mut().unwrap().domain = "warehouse_robot".into();
    cases.push((q, "domain: unknown embodiment \"warehouse_robot\""));
    let mut q = good.clone();
    q.action.as_mut().unwrap().actions =
        Some(Tensor::zeros((3, 7), candle_core::DType::F32, &Device::Cpu).unwrap());
    cases.push((q, "actions: shape [3, 7], domain fractal needs [n, 10]"));
    let mut q = good.clone();
    q.action.as_mut().unwrap().actions = None;
    cases.push((q, "actions: forward dynamics needs the actions"));
    let mut q = good.clone();
    q.action.as_mut().unwrap().domain = "hand_pose".into();
    q.action.as_mut().unwrap().actions =
        Some(Tensor::zeros((3, 57), candle_core::DType::F32, &Device::Cpu).unwrap());
    cases.push((
        q,
        "domain: hand_pose actions are 57 wide, the checkpoint's action_dim is 12",
    ));
    let mut q = good.clone();
    q.action.as_mut().unwrap().mode = ActionMode::InverseDynamics;
    q.action.as_mut().unwrap().actions = None;
    cases.push((q, "video: inverse dynamics needs the video"));
    let mut q = good.clone();
    q.action.as_mut().unwrap().init_noise =
        Some(Tensor::zeros((4, 10), candle_core::DType::F32, &Device::Cpu).unwrap());
    cases.push((
        q,
        "init_noise: `action` has shape [4, 10], the request needs [4, 12]",
    ));
    let mut q = good.clone();
    q.sound = true;
    cases.push((q, "sound: action modes generate no sound"));
    for (q, want) in cases {
        let e = engine.step(&q).unwrap_err().to_string();
        assert!(e.starts_with(want), "want {want:?}, got {e:?}");
        assert!(!e.contains('\n'), "{e}");
    }
    // A checkpoint trained without actions says so.
    let mut plain = engine_on(
        &fixtures().join("tiny"),
        false,
        MeshShape::single(),
        VaeDecode::Full,
    );
    let e = plain.step(&good).unwrap_err().to_string();
    assert!(
        e.starts_with("action_mode: ") && e.contains("has no action heads"),
        "{e}"
    );
}
