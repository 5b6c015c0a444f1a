//! The whole request path (text tower, 3 guided UniPC steps, VAE and audio decode) against
//! diffusers' Cosmos3OmniPipeline on the tiny checkpoint, from the same initial noise and
//! token ids, in f32 on CPU. Also CPU tensor/CFG parallelism against the single-rank run.

use std::collections::HashMap;

use candle_core::{DType, Tensor};
use phyai::engine::{DeviceConfig, Engine, EngineArgs, EngineConfig, Plugin, Target};
use phyai::models::cosmos3::{
    CfgPair, Cosmos3Args, Cosmos3Output, Cosmos3Plugin, Cosmos3Request, Prompt, VaeDecode,
};
use phyai::parallel::MeshShape;

mod support;
use support::{engine_on, fixtures, load_ref, ref_request, rel_err, tiled_decode};

struct Case {
    name: &'static str,
    fps: f64,
    sound: bool,
    image: bool,
}

fn request(case: &Case, r: &HashMap<String, Tensor>) -> Cosmos3Request {
    ref_request(r, case.fps, case.sound, true)
}

fn run(
    case: &Case,
    parallel: MeshShape,
    vae_decode: VaeDecode,
) -> (Cosmos3Output, HashMap<String, Tensor>) {
    run_with(
        case,
        engine_on(&fixtures().join("tiny"), case.sound, parallel, vae_decode),
    )
}

fn run_with(case: &Case, mut e: Engine<Cosmos3Plugin>) -> (Cosmos3Output, HashMap<String, Tensor>) {
    let r = load_ref(&format!("trajectory_{}.safetensors", case.name));
    let mut req = request(case, &r);
    if case.image {
        // The pipeline's [0, 1] 8-bit image → [−1, 1], encoded as the clean frame 0.
        let px = ((&r["image"] * 2.0).unwrap() - 1.0).unwrap();
        let c = e.plugin().encode_image(&px).unwrap();
        assert!(
            rel_err(&c.latents, &r["image_latent"]) < 1e-4,
            "{}: image latent",
            case.name
        );
        req.image = Some(px);
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
    let (out, r) = run(&case, MeshShape::single(), VaeDecode::Full);
    check_output(&case, &out, &r);
}

fn check_output(case: &Case, out: &Cosmos3Output, r: &HashMap<String, Tensor>) {
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

/// Both CFG branches in one pass of the generation tower (`CfgPair::On`, what CUDA runs
/// on small clips) against diffusers and against the branches run one after the other.
#[test]
fn paired_cfg_branches_match_diffusers() {
    for case in [
        Case {
            name: "t2av",
            fps: 24.0,
            sound: true,
            image: false,
        },
        Case {
            name: "i2v",
            fps: 24.0,
            sound: false,
            image: true,
        },
    ] {
        let paired_on = |parallel: MeshShape| {
            Engine::new(EngineArgs {
                plugin: Cosmos3Plugin::NAME.into(),
                plugin_args: Cosmos3Args {
                    load_sound: case.sound,
                    cfg_pair: CfgPair::On,
                    ..Cosmos3Args::new(fixtures().join("tiny"))
                },
                config: EngineConfig {
                    device: DeviceConfig {
                        target: Target::Cpu,
                        dtype: DType::F32,
                    },
                    parallel,
                },
            })
            .unwrap()
        };
        let (paired, r) = run_with(&case, paired_on(MeshShape::single()));
        check_output(&case, &paired, &r);
        let (one_by_one, _) = run(&case, MeshShape::single(), VaeDecode::Full);
        let d = rel_err(&paired.latents, &one_by_one.latents);
        println!("{}: paired vs one by one {d:.2e}", case.name);
        assert!(d <= 1e-5, "{}: paired branches differ by {d:e}", case.name);
        // Tensor parallelism shards the heads; the pair keeps each branch's attention.
        let (tp2, _) = run_with(&case, paired_on(MeshShape::new(1, 1, 2)));
        let d = rel_err(&tp2.latents, &one_by_one.latents);
        println!("{}: paired at tp 2 vs one rank {d:.2e}", case.name);
        assert!(d <= 1e-5, "{}: paired tp 2 differs by {d:e}", case.name);
    }
}

#[test]
fn cpu_parallel_topologies_match_one_rank() {
    let case = Case {
        name: "t2av",
        fps: 24.0,
        sound: true,
        image: false,
    };
    let (one, _) = run(&case, MeshShape::single(), VaeDecode::Full);
    let tiny = fixtures().join("tiny");
    for (cfg, tp) in [(1, 2), (2, 1), (2, 2)] {
        let shape = MeshShape::new(cfg, 1, tp);
        let (many, _) = run(&case, shape, VaeDecode::Full);
        let (tiled, _) = run(&case, shape, VaeDecode::Tiled);
        let lat = rel_err(&many.latents, &one.latents);
        let snd = rel_err(
            many.sound_latents.as_ref().unwrap(),
            one.sound_latents.as_ref().unwrap(),
        );
        // Full: rank 0 decodes the whole clip, as one rank does.
        let full = rel_err(&many.video, &one.video);
        // Tiled: one tile per rank, the same video as those tiles decoded on one device.
        let tiles = rel_err(&tiled.video, &tiled_decode(&tiny, &one.latents, cfg * tp));
        println!(
            "cfg {cfg} × tp {tp}: latents {lat:.2e}, sound {snd:.2e}, full video {full:.2e}, \
             tiled video {tiles:.2e}"
        );
        assert!(
            lat <= 1e-5 && snd <= 1e-5,
            "cfg {cfg} × tp {tp}: {lat:e} {snd:e}"
        );
        assert!(full <= 1e-5, "cfg {cfg} × tp {tp}: full video {full:e}");
        assert!(tiles <= 1e-5, "cfg {cfg} × tp {tp}: tiled video {tiles:e}");
    }
}

#[test]
fn cpu_tp4_matches_one_rank_on_the_demo_checkpoint() {
    // The demo model has 4 key/value heads, so tp = 4 is possible there.
    let dir = tempfile::tempdir().unwrap();
    let ckpt = dir.path().join("demo");
    phyai::models::cosmos3::demo::write_demo_checkpoint(&ckpt).unwrap();
    let run = |parallel: MeshShape, vae_decode: VaeDecode| {
        let mut e = engine_on(&ckpt, true, parallel, vae_decode);
        let mut req = Cosmos3Request::new(
            Prompt::Tokens {
                pos: vec![
                    151644, 872, 198, 32, 12305, 151645, 198, 151644, 77091, 198, 151645, 151652,
                ],
                neg: vec![
                    151644, 872, 198, 151645, 198, 151644, 77091, 198, 151645, 151652,
                ],
            },
            5,
            64,
            64,
        );
        req.steps = 2;
        req.seed = 7;
        req.sound = true;
        e.step(&req).unwrap()
    };
    let one = run(MeshShape::single(), VaeDecode::Full);
    for (cfg, tp) in [(1, 4), (2, 2)] {
        let many = run(MeshShape::new(cfg, 1, tp), VaeDecode::Tiled);
        let tiled = tiled_decode(&ckpt, &one.latents, cfg * tp);
        let lat = rel_err(&many.latents, &one.latents);
        let snd = rel_err(
            many.sound_latents.as_ref().unwrap(),
            one.sound_latents.as_ref().unwrap(),
        );
        let vid = rel_err(&many.video, &tiled);
        println!("demo cfg {cfg} × tp {tp}: latents {lat:.2e}, sound {snd:.2e}, video {vid:.2e}");
        assert!(
            lat <= 1e-5 && snd <= 1e-5 && vid <= 1e-5,
            "cfg {cfg} × tp {tp}"
        );
    }
    let refused = |config: EngineConfig| -> String {
        let e = Engine::<Cosmos3Plugin>::new(EngineArgs {
            plugin: Cosmos3Plugin::NAME.into(),
            plugin_args: Cosmos3Args::new(&ckpt),
            config,
        });
        e.err().unwrap().to_string()
    };
    let msg = refused(EngineConfig {
        parallel: MeshShape::new(1, 1, 8),
        ..EngineConfig::default()
    });
    assert!(
        msg.starts_with("tp: ") && msg.contains("key/value heads"),
        "{msg}"
    );
    let msg = refused(EngineConfig {
        parallel: MeshShape::new(3, 1, 1),
        ..EngineConfig::default()
    });
    assert!(msg.starts_with("cfg: must be 1 or 2"), "{msg}");
}
