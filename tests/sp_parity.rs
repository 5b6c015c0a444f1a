//! Ulysses sequence parallelism on CPU ranks: the generation tokens split over the sp axis
//! (alone, and composed with CFG and tensor parallelism) give the single-rank result.
//! Transformer level: one step on the tiny checkpoint with sp = 2, against the diffusers
//! fixture and against one rank with a token count that needs padding. Pipeline level: the
//! final latents of a 3-step guided run (tiny, 2 key/value heads: sp = 2, cfg 2 × sp 2) and a
//! 2-step run on the demo checkpoint (4 key/value heads: sp = 4, sp 2 × tp 2) match one rank
//! within 1e-5 relative (f32).

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use candle_core::{DType, Device, Tensor};
use phyai::io::json::read_json;
use phyai::io::weights::{WeightStore, Weights};
use phyai::models::cosmos3::transformer::{
    Cosmos3Transformer, GenInputs, GenOutput, TransformerConfig,
};
use phyai::models::cosmos3::{Cosmos3Output, Cosmos3Request, Prompt, VaeDecode};
use phyai::parallel::local::run_ranks;
use phyai::parallel::MeshShape;

mod support;
use support::{engine_on, fixtures, ids, load_ref as load, ref_request, rel_err, tiled_decode};

const TOL: f64 = 1e-5;

fn ints(t: &Tensor) -> Vec<i64> {
    t.to_dtype(DType::I64)
        .unwrap()
        .flatten_all()
        .unwrap()
        .to_vec1()
        .unwrap()
}

fn scalar(t: &Tensor) -> f64 {
    t.to_dtype(DType::F64)
        .unwrap()
        .flatten_all()
        .unwrap()
        .get(0)
        .unwrap()
        .to_scalar::<f64>()
        .unwrap()
}

fn tiny_transformer() -> (PathBuf, TransformerConfig) {
    let dir = fixtures().join("tiny/transformer");
    let cfg: TransformerConfig = read_json(&dir.join("config.json")).unwrap();
    (dir, cfg)
}

/// Per-step inputs of a transformer call.
struct Step {
    text: Vec<u32>,
    video: Tensor,
    sound: Option<Tensor>,
    timestep: f64,
    noisy: Vec<bool>,
    fps: f64,
}

fn velocity(m: &Cosmos3Transformer, s: &Step) -> phyai::Result<GenOutput> {
    let und = m.und(&s.text)?;
    m.velocity(
        &und,
        &GenInputs {
            video: &s.video,
            sound: s.sound.as_ref(),
            timestep: s.timestep,
            noisy_frames: &s.noisy,
            fps: s.fps,
        },
    )
}

/// The same step on every rank of a `cfg × sp × tp` mesh of the tiny transformer.
fn ranks_velocity(shape: MeshShape, s: &Step) -> Vec<GenOutput> {
    let (dir, cfg) = tiny_transformer();
    run_ranks(shape, Duration::from_secs(120), |mesh| {
        let m = Cosmos3Transformer::load(&dir, &cfg, DType::F32, &Device::Cpu, &mesh)?;
        velocity(&m, s)
    })
    .unwrap()
}

/// The reference's first guided t2av step (28 generation tokens: 18 video, 10 sound), with
/// the generation tokens split over 2 ranks, against diffusers.
#[test]
fn sp2_step_matches_diffusers() {
    let r = load("transformer_t2av_cond.safetensors");
    let cases: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(fixtures().join("refs/pipeline_cases.json")).unwrap(),
    )
    .unwrap();
    let t = r["video_latent"].dim(2).unwrap();
    let idx = ints(&r["noisy_frame_indexes"]);
    let s = Step {
        text: ids(&r["input_ids"]),
        video: r["video_latent"].clone(),
        sound: Some(r["sound_latent"].clone()),
        timestep: scalar(&r["video_timestep"]),
        noisy: (0..t).map(|f| idx.contains(&(f as i64))).collect(),
        fps: cases["t2av"]["fps"].as_f64().unwrap(),
    };
    for out in ranks_velocity(MeshShape::new(1, 2, 1), &s) {
        let ev = rel_err(&out.video, &r["velocity_video"]);
        let es = rel_err(out.sound.as_ref().unwrap(), &r["velocity_sound"]);
        println!("sp 2 vs diffusers: video {ev:.2e}, sound {es:.2e}");
        assert!(ev <= TOL && es <= TOL, "video {ev:e} sound {es:e}");
    }
}

/// 3 video tokens (one clean frame) + 4 sound tokens = 7: with sp = 2 the second shard
/// holds a dummy token and the first shard ends inside the sound. Every rank returns the
/// single-rank velocity.
#[test]
fn sp2_with_padding_matches_one_rank() {
    let (dir, cfg) = tiny_transformer();
    let dev = Device::Cpu;
    let s = Step {
        text: vec![3, 17, 250, 9, 101],
        video: Tensor::randn(0f32, 1.0, (1, 48, 3, 2, 2), &dev).unwrap(),
        sound: Some(Tensor::randn(0f32, 1.0, (1, 64, 4), &dev).unwrap()),
        timestep: 640.0,
        noisy: vec![false, true, true],
        fps: 24.0,
    };
    let store = Arc::new(WeightStore::open_dir(&dir).unwrap());
    let one = Cosmos3Transformer::new(&cfg, Weights::new(store, DType::F32, &dev)).unwrap();
    let want = velocity(&one, &s).unwrap();
    for shape in [MeshShape::new(1, 2, 1), MeshShape::new(2, 2, 1)] {
        for out in ranks_velocity(shape, &s) {
            let ev = rel_err(&out.video, &want.video);
            let es = rel_err(out.sound.as_ref().unwrap(), want.sound.as_ref().unwrap());
            println!("{shape:?} padded step: video {ev:.2e}, sound {es:.2e}");
            assert!(ev <= 1e-6 && es <= 1e-6, "{shape:?}: {ev:e} {es:e}");
        }
    }
    // More sequence-parallel ranks than key/value heads is refused at load, not at run time.
    let e = run_ranks(MeshShape::new(1, 4, 1), Duration::from_secs(60), |mesh| {
        Cosmos3Transformer::load(&dir, &cfg, DType::F32, &Device::Cpu, &mesh).map(|_| ())
    })
    .unwrap_err()
    .to_string();
    assert!(
        e.contains("num_key_value_heads") && e.contains("4 ranks"),
        "{e}"
    );
}

/// Latents, sound latents and (against the same tiles decoded on one rank) video agree.
fn compare(what: &str, many: &Cosmos3Output, one: &Cosmos3Output, tiled: &Tensor) {
    let lat = rel_err(&many.latents, &one.latents);
    let snd = rel_err(
        many.sound_latents.as_ref().unwrap(),
        one.sound_latents.as_ref().unwrap(),
    );
    let vid = rel_err(&many.video, tiled);
    println!("{what}: latents {lat:.2e}, sound {snd:.2e}, video {vid:.2e}");
    assert!(
        lat <= TOL && snd <= TOL && vid <= TOL,
        "{what}: {lat:e} {snd:e} {vid:e}"
    );
}

#[test]
fn tiny_sp2_and_cfg2_sp2_match_one_rank() {
    let r = load("trajectory_t2av.safetensors");
    let req = ref_request(&r, 24.0, true, true);
    let dir = fixtures().join("tiny");
    let run = |p: MeshShape| {
        engine_on(&dir, true, p, VaeDecode::Tiled)
            .step(&req)
            .unwrap()
    };
    let one = run(MeshShape::single());
    // The single-rank run itself still follows diffusers.
    assert!(rel_err(&one.latents, &r["latents"]) <= 1e-4);
    for (cfg, sp) in [(1, 2), (2, 2)] {
        let many = run(MeshShape::new(cfg, sp, 1));
        let tiled = tiled_decode(&dir, &one.latents, cfg * sp);
        compare(&format!("tiny cfg {cfg} × sp {sp}"), &many, &one, &tiled);
    }
}

#[test]
fn demo_sp4_and_sp2_tp2_match_one_rank() {
    // The demo model has 4 key/value heads, so sp = 4 and sp 2 × tp 2 are possible there.
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("demo");
    phyai::models::cosmos3::demo::write_demo_checkpoint(&dir).unwrap();
    // 8 video tokens + the sound tokens of 5 frames at 24 fps; sp = 4 pads the last shard
    // with dummy tokens unless their sum is a multiple of 4 (checked below).
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
    let run = |p: MeshShape| {
        engine_on(&dir, true, p, VaeDecode::Tiled)
            .step(&req)
            .unwrap()
    };
    let one = run(MeshShape::single());
    let sound_tokens = one.sound_latents.as_ref().unwrap().dim(2).unwrap();
    assert_ne!((8 + sound_tokens) % 4, 0, "the sp = 4 case must pad");
    for (cfg, tp, sp) in [(1, 1, 4), (1, 2, 2)] {
        let many = run(MeshShape::new(cfg, sp, tp));
        let tiled = tiled_decode(&dir, &one.latents, cfg * tp * sp);
        compare(&format!("demo tp {tp} × sp {sp}"), &many, &one, &tiled);
    }
}
