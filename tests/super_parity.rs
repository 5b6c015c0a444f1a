//! Cosmos3-Super's shape (see the fixtures README): a tiny Super-shaped transformer
//! (`tiny_super/`, attention width 8 × 16 = 128 unlike its hidden size 40, one key/value
//! head for eight query heads) loads and reproduces diffusers 0.42.1's velocities
//! (`refs/super_velocity.safetensors`, f32, CPU); the full-size Super config parses,
//! validates and has the parameter count diffusers' module has (`refs/super_shape.json`).

use std::path::Path;
use std::sync::Arc;

use candle_core::{DType, Device};
use phyai::io::weights::{WeightStore, Weights};
use phyai::models::cosmos3::transformer::{Cosmos3Transformer, GenInputs, TransformerConfig};

mod support;
use support::{fixtures, ids, load_ref, rel_err};

/// As the transformer parity test.
const TOL: f64 = 1e-4;

#[test]
fn super_config_has_the_reference_parameter_count() {
    let text = std::fs::read_to_string(fixtures().join("refs/super_shape.json")).unwrap();
    let shape: serde_json::Value = serde_json::from_str(&text).unwrap();
    let cfg: TransformerConfig = serde_json::from_value(shape["super_config"].clone()).unwrap();
    cfg.validate(Path::new("super_shape.json")).unwrap();
    assert_eq!(
        cfg.parameter_count(),
        shape["super_parameters"].as_u64().unwrap()
    );
    // Nano differs only in the four size keys.
    let mut nano = cfg.clone();
    nano.hidden_size = 4096;
    nano.intermediate_size = 12288;
    nano.num_hidden_layers = 36;
    nano.num_attention_heads = 32;
    assert_eq!(
        nano.parameter_count(),
        shape["nano_parameters"].as_u64().unwrap()
    );
}

#[test]
fn super_shaped_transformer_matches_diffusers() {
    let dir = fixtures().join("tiny_super/transformer");
    let cfg: TransformerConfig = phyai::io::json::read_json(&dir.join("config.json")).unwrap();
    assert_ne!(cfg.num_attention_heads * cfg.head_dim, cfg.hidden_size);
    let store = Arc::new(WeightStore::open_dir(&dir).unwrap());
    let m = Cosmos3Transformer::new(&cfg, Weights::new(store, DType::F32, &Device::Cpu)).unwrap();
    let r = load_ref("super_velocity.safetensors");
    let und = m.und(&ids(&r["input_ids"])).unwrap();
    let video = &r["video_latent"];
    let t = video.dim(2).unwrap();
    let noisy_idx = ids(&r["noisy_frame_indexes"]);
    let noisy: Vec<bool> = (0..t).map(|f| noisy_idx.contains(&(f as u32))).collect();
    let timestep = r["video_timestep"]
        .flatten_all()
        .unwrap()
        .to_vec1::<f32>()
        .unwrap()[0] as f64;
    let out = m
        .velocity(
            &und,
            &GenInputs {
                video,
                sound: Some(&r["sound_latent"]),
                timestep,
                noisy_frames: &noisy,
                fps: 24.0,
            },
        )
        .unwrap();
    let ev = rel_err(&out.video, &r["velocity_video"]);
    let es = rel_err(out.sound.as_ref().unwrap(), &r["velocity_sound"]);
    println!("super-shaped: video {ev:.2e}, sound {es:.2e}");
    assert!(ev <= TOL, "video velocity rel err {ev:e}");
    assert!(es <= TOL, "sound velocity rel err {es:e}");
}
