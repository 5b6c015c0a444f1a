//! The whole request path (text tower, 3 guided UniPC steps, VAE and audio decode) against
//! diffusers' Cosmos3OmniPipeline on the tiny checkpoint, from the same initial noise and
//! token ids, in f32 on CPU. Also CPU tensor/CFG parallelism against the single-rank run.

use std::collections::HashMap;

use candle_core::Tensor;
use phyai::engine::{
    Cosmos3Args, Engine, EngineArgs, EngineConfig, GenerationOutput, GenerationRequest, InitNoise,
    LatentShape, ParallelConfig, PluginArgs, RuntimeConfig,
};
use phyai::models::cosmos3::sampler::SigmaStyle;

mod support;
use support::{engine_on, fixtures, ids, load_ref, rel_err};

struct Case {
    name: &'static str,
    fps: f64,
    sound: bool,
    image: bool,
}

fn request(case: &Case, r: &HashMap<String, Tensor>) -> GenerationRequest {
    let init = &r["init_video"];
    let (_, _, t, h, w) = init.dims5().unwrap();
    GenerationRequest {
        pos_ids: ids(&r["pos_ids"]),
        neg_ids: ids(&r["neg_ids"]),
        latent: LatentShape { t, h, w },
        fps: case.fps,
        steps: 3,
        guidance_scale: 6.0,
        seed: 0,
        sound_frames: r.get("init_sound").map(|s| s.dim(2).unwrap()),
        conditioning: None,
        init_noise: Some(InitNoise {
            video: init.clone(),
            sound: r.get("init_sound").cloned(),
        }),
    }
}

fn run(
    case: &Case,
    parallel: ParallelConfig,
    vae_tiles: Option<usize>,
) -> (GenerationOutput, HashMap<String, Tensor>) {
    let r = load_ref(&format!("trajectory_{}.safetensors", case.name));
    let mut e = engine_on(&fixtures().join("tiny"), case.sound, parallel, vae_tiles);
    let mut req = request(case, &r);
    if case.image {
        // The pipeline's [0, 1] 8-bit image → [−1, 1], encoded as the clean frame 0.
        let px = ((&r["image"] * 2.0).unwrap() - 1.0).unwrap();
        let c = e.encode_image(&px).unwrap();
        assert!(
            rel_err(&c.latents, &r["image_latent"]) < 1e-4,
            "{}: image latent",
            case.name
        );
        req.conditioning = Some(c.clone());
        let out = e.step(&req).unwrap();
        // The conditioning frame comes out exactly as it went in.
        let f0 = out.latents.narrow(2, 0, 1).unwrap();
        let d = (&f0 - &c.latents)
            .unwrap()
            .abs()
            .unwrap()
            .max_all()
            .unwrap();
        assert_eq!(d.to_scalar::<f32>().unwrap(), 0.0, "frame 0 drifted");
        return (out, r);
    }
    (e.step(&req).unwrap(), r)
}

fn check(case: Case) {
    let (out, r) = run(&case, ParallelConfig::default(), None);
    let lat = rel_err(&out.latents, &r["latents"]);
    let vid = rel_err(&out.video, &r["video"]);
    println!("{}: latents {lat:.2e}, video {vid:.2e}", case.name);
    assert!(lat <= 1e-4, "{}: latents rel err {lat:e}", case.name);
    assert!(vid <= 1e-4, "{}: video rel err {vid:e}", case.name);
    if case.sound {
        let s = rel_err(out.sound_latents.as_ref().unwrap(), &r["sound_latents"]);
        let (wave, rate) = out.audio.as_ref().unwrap();
        assert_eq!(*rate, 48_000);
        let a = rel_err(wave, &r["audio"]);
        println!("{}: sound latents {s:.2e}, audio {a:.2e}", case.name);
        assert!(s <= 1e-4, "{}: sound latents rel err {s:e}", case.name);
        assert!(a <= 1e-3, "{}: audio rel err {a:e}", case.name);
    }
    if case.image {
        // The conditioning frame is kept exactly.
        let f0 = out.latents.narrow(2, 0, 1).unwrap();
        let d = (&f0 - &r["image_latent"])
            .unwrap()
            .abs()
            .unwrap()
            .max_all()
            .unwrap();
        let enc = rel_err(&f0, &r["image_latent"]);
        assert!(enc < 1e-4, "frame 0 drifted: {enc:e} (max {d})");
    }
}

#[test]
fn t2v_trajectory_matches_diffusers() {
    check(Case {
        name: "t2v",
        fps: 24.0,
        sound: false,
        image: false,
    });
}

#[test]
fn t2av_trajectory_matches_diffusers() {
    check(Case {
        name: "t2av",
        fps: 24.0,
        sound: true,
        image: false,
    });
}

#[test]
fn padded_trajectory_matches_diffusers() {
    check(Case {
        name: "padded",
        fps: 16.0,
        sound: false,
        image: false,
    });
}

#[test]
fn i2v_trajectory_matches_diffusers() {
    check(Case {
        name: "i2v",
        fps: 24.0,
        sound: false,
        image: true,
    });
}

#[test]
fn cpu_parallel_topologies_match_one_rank() {
    let case = Case {
        name: "t2av",
        fps: 24.0,
        sound: true,
        image: false,
    };
    let (one, _) = run(&case, ParallelConfig::default(), None);
    for (cfg, tp) in [(1, 2), (2, 1), (2, 2)] {
        let (many, _) = run(&case, ParallelConfig::new(cfg, tp, 1), None);
        // The same tiles decoded in sequence on one rank.
        let (tiled, _) = run(&case, ParallelConfig::default(), Some(cfg * tp));
        let lat = rel_err(&many.latents, &one.latents);
        let snd = rel_err(
            many.sound_latents.as_ref().unwrap(),
            one.sound_latents.as_ref().unwrap(),
        );
        let vid = rel_err(&many.video, &tiled.video);
        println!("cfg {cfg} × tp {tp}: latents {lat:.2e}, sound {snd:.2e}, video {vid:.2e}");
        assert!(
            lat <= 1e-5 && snd <= 1e-5,
            "cfg {cfg} × tp {tp}: {lat:e} {snd:e}"
        );
        // A multi-rank run decodes one tile per rank: the same video as the tiled decode.
        assert!(vid <= 1e-5, "cfg {cfg} × tp {tp}: video {vid:e}");
    }
}

#[test]
fn cpu_tp4_matches_one_rank_on_the_demo_checkpoint() {
    // The demo model has 4 key/value heads, so tp = 4 is possible there.
    let dir = tempfile::tempdir().unwrap();
    let ckpt = dir.path().join("demo");
    phyai::models::cosmos3::demo::write_demo_checkpoint(&ckpt).unwrap();
    let run = |parallel: ParallelConfig, tiles: Option<usize>| {
        let mut e = engine_on(&ckpt, true, parallel, tiles);
        e.step(&GenerationRequest {
            pos_ids: vec![
                151644, 872, 198, 32, 12305, 151645, 198, 151644, 77091, 198, 151645, 151652,
            ],
            neg_ids: vec![
                151644, 872, 198, 151645, 198, 151644, 77091, 198, 151645, 151652,
            ],
            latent: LatentShape { t: 2, h: 4, w: 4 },
            fps: 24.0,
            steps: 2,
            guidance_scale: 6.0,
            seed: 7,
            sound_frames: Some(4),
            conditioning: None,
            init_noise: None,
        })
        .unwrap()
    };
    let one = run(ParallelConfig::default(), None);
    for (cfg, tp) in [(1, 4), (2, 2)] {
        let many = run(ParallelConfig::new(cfg, tp, 1), None);
        let tiled = run(ParallelConfig::default(), Some(cfg * tp));
        let lat = rel_err(&many.latents, &one.latents);
        let snd = rel_err(
            many.sound_latents.as_ref().unwrap(),
            one.sound_latents.as_ref().unwrap(),
        );
        let vid = rel_err(&many.video, &tiled.video);
        println!("demo cfg {cfg} × tp {tp}: latents {lat:.2e}, sound {snd:.2e}, video {vid:.2e}");
        assert!(
            lat <= 1e-5 && snd <= 1e-5 && vid <= 1e-5,
            "cfg {cfg} × tp {tp}"
        );
    }
    let refused = |config: EngineConfig| -> String {
        let e = Engine::new(EngineArgs {
            plugin: "cosmos3_wn".into(),
            plugin_args: PluginArgs::Cosmos3(Cosmos3Args {
                checkpoint_dir: ckpt.clone(),
                flow_shift: None,
                use_karras_sigmas: None,
                load_sound: false,
                sigma_schedule: SigmaStyle::Checkpoint,
                quantize: None,
            }),
            config,
        });
        e.err().unwrap().to_string()
    };
    let msg = refused(EngineConfig {
        parallel: ParallelConfig::new(1, 8, 1),
        ..EngineConfig::default()
    });
    assert!(
        msg.contains("--tp") && msg.contains("key/value heads"),
        "{msg}"
    );
    // A runtime option the engine does not implement is refused, not ignored.
    let msg = refused(EngineConfig {
        runtime: RuntimeConfig {
            use_cuda_graph: true,
            ..RuntimeConfig::default()
        },
        ..EngineConfig::default()
    });
    assert!(msg.contains("use_cuda_graph"), "{msg}");
}
