//! Distilled (few-step, SDE) sampling against diffusers 0.42.1's modular distilled pipeline
//! on `tests/fixtures/tiny_distilled` (`refs/distilled_<case>.safetensors`, see the fixtures
//! README): the schedule read from the checkpoint, the SDE step replayed from the recorded
//! velocities and noise, the seeded noise stream, the prompt ids, and whole runs (the
//! transformer, the fixed-step loop, the VAE decode) in f32 on CPU for t2v, i2v (clean frame
//! re-anchored) and t2i (one frame).

use std::collections::HashMap;
use std::sync::Arc;

use candle_core::{DType, Device, Tensor};
use phyai::engine::Silent;
use phyai::io::frames::load_video;
use phyai::io::json::read_json;
use phyai::io::weights::{WeightStore, Weights};
use phyai::models::cosmos3::continuation::VideoCondition;
use phyai::models::cosmos3::denoise::Conditioning;
use phyai::models::cosmos3::distilled::{denoise_fixed_step, reanchor};
use phyai::models::cosmos3::processor::{Processor, PromptInputs, PromptStyle};
use phyai::models::cosmos3::sampler::noise::RandomState;
use phyai::models::cosmos3::sampler::{FixedStepSchedule, SdeSampler, StepNoise};
use phyai::models::cosmos3::transformer::{Cosmos3Transformer, GenInputs, TransformerConfig};
use phyai::models::cosmos3::vae::WanVae;
use phyai::models::cosmos3::{Cosmos3Request, InitNoise, Prompt, VideoInput};

mod support;
use support::{fixtures, ids, rel_err};

/// Whole-run tolerance, as the guided pipeline parity tests use.
const TOL: f64 = 1e-5;
const CASES: [&str; 5] = ["t2v", "i2v", "t2i", "seeded", "v2v"];

fn load(case: &str) -> (HashMap<String, Tensor>, HashMap<String, String>) {
    let path = fixtures()
        .join("refs")
        .join(format!("distilled_{case}.safetensors"));
    let tensors = candle_core::safetensors::load(&path, &Device::Cpu).unwrap();
    let bytes = std::fs::read(&path).unwrap();
    let (_, meta) = safetensors::SafeTensors::read_metadata(&bytes).unwrap();
    (tensors, meta.metadata().clone().unwrap_or_default())
}

fn schedule() -> FixedStepSchedule {
    FixedStepSchedule::from_checkpoint(&fixtures().join("tiny_distilled"))
        .unwrap()
        .expect("tiny_distilled has a fixed-step schedule")
}

fn f32s(t: &Tensor) -> Vec<f32> {
    t.to_dtype(DType::F32)
        .unwrap()
        .flatten_all()
        .unwrap()
        .to_vec1()
        .unwrap()
}

/// The initial latents of a case: the recorded noise with the clean frames of i2v (frame
/// 0) and v2v (frames 0 and 1).
fn start(r: &HashMap<String, Tensor>) -> (Tensor, Option<Conditioning>) {
    let cond = match (r.get("image_latent"), r.get("cond_latents")) {
        (Some(l), _) => Some(Conditioning {
            latents: l.clone(),
            frame_indexes: vec![0],
        }),
        (None, Some(l)) => Some(Conditioning {
            latents: l.clone(),
            frame_indexes: vec![0, 1],
        }),
        (None, None) => None,
    };
    let x = match &cond {
        Some(c) => reanchor(&r["init_noise"], c).unwrap(),
        None => r["init_noise"].clone(),
    };
    (x, cond)
}

#[test]
fn schedule_is_read_as_diffusers_reads_it() {
    let s = schedule();
    let (r, _) = load("t2v");
    assert_eq!(s.sigmas(), f32s(&r["sigmas"]).as_slice());
    let want: Vec<f64> = f32s(&r["timesteps"]).iter().map(|&t| t as f64).collect();
    assert_eq!(s.timesteps(), want.as_slice());
}

#[test]
fn sde_steps_replay_the_reference_exactly() {
    let s = schedule();
    for case in CASES {
        let (r, _) = load(case);
        let (mut x, cond) = start(&r);
        let noise = StepNoise::given(r["step_noise"].clone(), s.steps(), x.dims()).unwrap();
        let mut sampler = SdeSampler::new(&s, noise);
        for i in 0..s.steps() {
            x = sampler.step(&r[&format!("velocity{i}")], &x).unwrap();
            if let Some(c) = &cond {
                x = reanchor(&x, c).unwrap();
            }
            let want = &r[&format!("step{i}")];
            assert_eq!(f32s(&x), f32s(want), "{case}: step {i} differs");
        }
    }
}

#[test]
fn seeded_stream_is_the_reference_noise() {
    let (r, meta) = load("seeded");
    assert_eq!(meta["noise"], "numpy:42");
    let mut rs = RandomState::new(42);
    let mut draw = |n: usize| -> Vec<f32> { (0..n).map(|_| rs.gauss() as f32).collect() };
    let init = f32s(&r["init_noise"]);
    assert_eq!(draw(init.len()), init, "initial noise");
    let steps = r["step_noise"].dim(0).unwrap();
    for i in 0..steps {
        let want = f32s(&r["step_noise"].get(i).unwrap());
        assert_eq!(draw(want.len()), want, "step {i} noise");
    }
}

#[test]
fn seed_alone_reproduces_the_seeded_run() {
    // The seeded case's draws are the engine's: replaying from the seed (no recorded noise)
    // through the recorded velocities must give the reference's steps exactly.
    let s = schedule();
    let (r, _) = load("seeded");
    let (x, noise) = StepNoise::seeded(42, r["init_noise"].dims(), &Device::Cpu).unwrap();
    assert_eq!(f32s(&x), f32s(&r["init_noise"]));
    let mut sampler = SdeSampler::new(&s, noise);
    let mut x = x;
    for i in 0..s.steps() {
        x = sampler.step(&r[&format!("velocity{i}")], &x).unwrap();
        assert_eq!(f32s(&x), f32s(&r[&format!("step{i}")]), "step {i}");
    }
}

#[test]
fn prompt_ids_use_the_distilled_checkpoint_templates() {
    let p = Processor::from_dir(&fixtures().join("tiny_distilled/text_tokenizer")).unwrap();
    for case in CASES {
        let (r, meta) = load(case);
        let n = |k: &str| meta[k].parse::<usize>().unwrap();
        let (pos, _neg) = p
            .encode_pair(&PromptInputs {
                prompt: meta["prompt"].clone(),
                negative_prompt: None,
                num_frames: n("num_frames"),
                height: n("height"),
                width: n("width"),
                fps: meta["fps"].parse().unwrap(),
                style: PromptStyle::Diffusers,
            })
            .unwrap();
        assert_eq!(pos, ids(&r["pos_ids"]), "{case}");
    }
}

fn transformer() -> Cosmos3Transformer {
    let dir = fixtures().join("tiny_distilled/transformer");
    let file = dir.join("config.json");
    let cfg: TransformerConfig = read_json(&file).unwrap();
    cfg.validate(&file).unwrap();
    let store = Arc::new(WeightStore::open_dir(&dir).unwrap());
    Cosmos3Transformer::new(&cfg, Weights::new(store, DType::F32, &Device::Cpu)).unwrap()
}

/// Runs a case through the transformer and the fixed-step loop from its recorded noise;
/// returns the per-step latents and the final latents.
fn run(m: &Cosmos3Transformer, case: &str) -> (Vec<Tensor>, Tensor) {
    let s = schedule();
    let (r, meta) = load(case);
    let fps: f64 = meta["fps"].parse().unwrap();
    let und = m.und(&ids(&r["pos_ids"])).unwrap();
    let (x, cond) = start(&r);
    let noisy: Vec<bool> = (0..x.dim(2).unwrap())
        .map(|f| cond.as_ref().is_none_or(|c| !c.frame_indexes.contains(&f)))
        .collect();
    let noise = StepNoise::given(r["step_noise"].clone(), s.steps(), x.dims()).unwrap();
    let mut inputs = Vec::new();
    let mut velocity = |x: &Tensor, timestep: f64, _i: usize| {
        inputs.push(x.clone());
        let out = m.velocity(
            &und,
            &GenInputs {
                video: x,
                sound: None,
                timestep,
                noisy_frames: &noisy,
                fps,
            },
        )?;
        Ok(out.video)
    };
    let last = denoise_fixed_step(&s, x, cond.as_ref(), noise, &mut velocity, &Silent).unwrap();
    // The latents entering step i + 1 are the output of step i.
    let mut outs: Vec<Tensor> = inputs.into_iter().skip(1).collect();
    outs.push(last.clone());
    (outs, last)
}

#[test]
fn distilled_runs_match_diffusers() {
    let m = transformer();
    let vae = WanVae::load(
        &fixtures().join("tiny_distilled/vae"),
        DType::F32,
        &Device::Cpu,
        true,
    )
    .unwrap();
    // v2v: the conditioning latents from the PNG frames, as the distilled video encoder step
    // computes them (default indexes (0, 1), first frames).
    let (r, _) = load("v2v");
    let frames = load_video(&fixtures().join("refs/v2v_frames"), 32, 48, "video").unwrap();
    let cond = VideoCondition::default();
    let enc = vae.encoder.as_ref().unwrap();
    let latents = cond
        .select(&enc.encode(&cond.clip(&frames).unwrap()).unwrap())
        .unwrap();
    let e = rel_err(&latents, &r["cond_latents"]);
    assert!(e <= TOL, "v2v: conditioning latents rel err {e:.3e}");
    eprintln!("v2v: conditioning latents {e:.2e}");
    for case in CASES {
        let (r, _) = load(case);
        let (per_step, latents) = run(&m, case);
        assert_eq!(per_step.len(), 4, "{case}");
        for (i, x) in per_step.iter().enumerate() {
            let e = rel_err(x, &r[&format!("step{i}")]);
            assert!(e <= TOL, "{case}: step {i} rel err {e:.3e}");
        }
        let e = rel_err(&latents, &r["latents"]);
        assert!(e <= TOL, "{case}: latents rel err {e:.3e}");
        if let Some(want) = r.get("video") {
            let video = vae.decoder.decode(&latents).unwrap();
            let e = rel_err(&video, want);
            assert!(e <= TOL, "{case}: video rel err {e:.3e}");
            eprintln!(
                "{case}: latents {:.2e}, video {e:.2e}",
                rel_err(&latents, &r["latents"])
            );
        }
    }
}

fn engine() -> phyai::engine::Engine<phyai::models::cosmos3::Cosmos3Plugin> {
    support::engine_on(
        &fixtures().join("tiny_distilled"),
        false,
        phyai::parallel::MeshShape::single(),
        phyai::models::cosmos3::VaeDecode::Full,
    )
}

/// The request of a case: its ids, size, the recorded noise (or only the seed) and its
/// image or video.
fn request(case: &str, recorded: bool) -> Cosmos3Request {
    let (r, meta) = load(case);
    let n = |k: &str| meta[k].parse::<f64>().unwrap();
    let mut req = Cosmos3Request::new(
        // The negative ids are never used (one branch); a text prompt always has some.
        Prompt::Tokens {
            pos: ids(&r["pos_ids"]),
            neg: ids(&r["pos_ids"]),
        },
        n("num_frames") as usize,
        n("height") as usize,
        n("width") as usize,
    );
    req.fps = n("fps");
    req.steps = 4;
    req.guidance_scale = 1.0;
    req.seed = 42;
    if recorded {
        req.init_noise = Some(InitNoise {
            video: r["init_noise"].clone(),
            sound: None,
        });
        req.step_noise = Some(r["step_noise"].clone());
    }
    if let Some(img) = r.get("image") {
        req.image = Some(((img * 2.0).unwrap() - 1.0).unwrap());
    }
    if r.contains_key("cond_latents") {
        let frames = load_video(&fixtures().join("refs/v2v_frames"), 32, 48, "video").unwrap();
        req.video = Some(VideoInput {
            frames,
            condition: VideoCondition::default(),
        });
    }
    req
}

#[test]
fn engine_requests_on_the_distilled_checkpoint_match_diffusers() {
    let mut e = engine();
    assert_eq!(e.plugin().fixed_step().map(|s| s.steps()), Some(4));
    for (case, recorded) in [
        ("t2v", true),
        ("i2v", true),
        ("t2i", true),
        ("v2v", true),
        ("seeded", false),
    ] {
        let (r, _) = load(case);
        let out = e.step(&request(case, recorded)).unwrap();
        let lat = rel_err(&out.latents, &r["latents"]);
        assert!(lat <= TOL, "{case}: latents rel err {lat:e}");
        if let Some(v) = r.get("video") {
            let vid = rel_err(&out.video, v);
            assert!(vid <= TOL, "{case}: video rel err {vid:e}");
            eprintln!("engine {case}: latents {lat:.2e}, video {vid:.2e}");
        }
    }
}

#[test]
fn distilled_requests_keep_the_fixed_steps_and_guidance() {
    let mut e = engine();
    let base = request("t2v", true);
    for (field, edit) in [
        (
            "steps",
            Box::new(|r: &mut Cosmos3Request| r.steps = 35) as Box<dyn Fn(&mut _)>,
        ),
        (
            "guidance_scale",
            Box::new(|r: &mut Cosmos3Request| r.guidance_scale = 6.0),
        ),
        ("sound", Box::new(|r: &mut Cosmos3Request| r.sound = true)),
    ] {
        let mut req = base.clone();
        edit(&mut req);
        let e = e.step(&req).unwrap_err().to_string();
        assert!(e.starts_with(&format!("{field}: ")), "{e}");
        assert!(!e.contains('\n'));
    }
}
