//! A request that carries only a seed (no initial noise) against diffusers'
//! Cosmos3OmniPipeline started from the engine's seeded noise: numpy `RandomState(seed)`
//! standard normals rounded to f32, video `[1,48,t,h,w]`, sound `[64,T]` from a fresh
//! generator. Checks the seeded draw, then the whole guided T2AV run, in f32 on CPU.

use std::collections::HashMap;

use candle_core::{Device, Tensor};
use phyai::models::cosmos3::sampler::noise;
use phyai::models::cosmos3::VaeDecode;
use phyai::parallel::MeshShape;

mod support;
use support::{engine_on, fixtures, ref_request, rel_err};

const REF: &str = "trajectory_seeded_t2av.safetensors";

fn load() -> (HashMap<String, Tensor>, u32) {
    let path = fixtures().join("refs").join(REF);
    let tensors = candle_core::safetensors::load(&path, &Device::Cpu).unwrap();
    // The seed is in the file's metadata, next to the tensors.
    let bytes = std::fs::read(&path).unwrap();
    let (_, meta) = safetensors::SafeTensors::read_metadata(&bytes).unwrap();
    let seed = meta.metadata().as_ref().unwrap()["seed"].parse().unwrap();
    (tensors, seed)
}

#[test]
fn seeded_noise_is_the_reference_start() {
    let (r, seed) = load();
    for key in ["init_video", "init_sound"] {
        let init = &r[key];
        let shape: Vec<usize> = if key == "init_sound" {
            init.dims()[1..].to_vec() // drawn as [64, T]
        } else {
            init.dims().to_vec()
        };
        let drawn = noise::standard_normal(seed, &shape).unwrap();
        let want = init.flatten_all().unwrap().to_vec1::<f32>().unwrap();
        assert_eq!(drawn, want, "{key}: seeded draw differs");
    }
}

#[test]
fn seeded_t2av_matches_diffusers() {
    let (r, seed) = load();
    let mut req = ref_request(&r, 24.0, true, false);
    req.seed = seed;
    let out = engine_on(
        &fixtures().join("tiny"),
        true,
        MeshShape::single(),
        VaeDecode::Full,
    )
    .step(&req)
    .unwrap();
    assert_eq!(
        out.sound_latents.as_ref().unwrap().dims(),
        r["init_sound"].dims(),
        "sound frames derived from the clip"
    );
    let lat = rel_err(&out.latents, &r["latents"]);
    let snd = rel_err(out.sound_latents.as_ref().unwrap(), &r["sound_latents"]);
    let vid = rel_err(&out.video, &r["video"]);
    let (wave, rate) = out.audio.as_ref().unwrap();
    let aud = rel_err(wave, &r["audio"]);
    println!("seeded t2av: latents {lat:.2e}, sound {snd:.2e}, video {vid:.2e}, audio {aud:.2e}");
    assert_eq!(*rate, 48_000);
    assert!(lat <= 1e-4, "latents rel err {lat:e}");
    assert!(snd <= 1e-4, "sound latents rel err {snd:e}");
    assert!(vid <= 1e-4, "video rel err {vid:e}");
    assert!(aud <= 1e-3, "audio rel err {aud:e}");
}
