//! Helpers shared by the integration tests: fixture paths, reference loading, the relative
//! error every parity check uses, and an engine on a checkpoint folder.
#![allow(dead_code)]

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Tensor};
use phyai::engine::{DeviceConfig, Engine, EngineArgs, EngineConfig, Plugin, Target};
use phyai::models::cosmos3::{
    Cosmos3Args, Cosmos3Plugin, Cosmos3Request, InitNoise, Prompt, VaeDecode,
};
use phyai::parallel::MeshShape;

pub fn fixtures() -> PathBuf {
    // A test binary carried to another machine finds them through PHYAI_FIXTURES.
    match std::env::var_os("PHYAI_FIXTURES") {
        Some(dir) => PathBuf::from(dir),
        None => Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures"),
    }
}

/// A reference file of `tests/fixtures/refs`.
pub fn load_ref(name: &str) -> HashMap<String, Tensor> {
    candle_core::safetensors::load(fixtures().join("refs").join(name), &Device::Cpu).unwrap()
}

/// ‖a − b‖ / ‖b‖ in f64. The reference records scheduler samples with the pipeline's extra
/// batch axis; such a `b` is squeezed first.
pub fn rel_err(a: &Tensor, b: &Tensor) -> f64 {
    let b = if b.rank() == a.rank() + 1 {
        b.squeeze(0).unwrap()
    } else {
        b.clone()
    };
    assert_eq!(a.dims(), b.dims());
    let a = a.to_dtype(DType::F64).unwrap();
    let b = b.to_dtype(DType::F64).unwrap();
    let d = (&a - &b).unwrap().sqr().unwrap().sum_all().unwrap();
    let n = b.sqr().unwrap().sum_all().unwrap();
    (d.to_scalar::<f64>().unwrap() / n.to_scalar::<f64>().unwrap()).sqrt()
}

/// Integer tensor (token ids) as `u32`s.
pub fn ids(t: &Tensor) -> Vec<u32> {
    t.to_dtype(DType::I64)
        .unwrap()
        .flatten_all()
        .unwrap()
        .to_vec1::<i64>()
        .unwrap()
        .into_iter()
        .map(|x| x as u32)
        .collect()
}

/// An f32 CPU engine on `checkpoint` with the checkpoint's own schedule.
pub fn engine_on(
    checkpoint: &Path,
    sound: bool,
    parallel: MeshShape,
    vae_decode: VaeDecode,
) -> Engine<Cosmos3Plugin> {
    Engine::new(EngineArgs {
        plugin: Cosmos3Plugin::NAME.into(),
        plugin_args: Cosmos3Args {
            load_sound: sound,
            vae_decode,
            ..Cosmos3Args::new(checkpoint)
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
}

/// The clip `tiles` ranks decode with the tiled decode, made on one device: the tiles of
/// `latents` decoded in sequence and blended.
pub fn tiled_decode(checkpoint: &Path, latents: &Tensor, tiles: usize) -> Tensor {
    let vae = phyai::models::cosmos3::vae::WanVae::load(
        &checkpoint.join("vae"),
        DType::F32,
        &Device::Cpu,
        false,
    )
    .unwrap();
    phyai::models::cosmos3::vae::decode_tiled(&vae.decoder, latents, tiles).unwrap()
}

/// The request a reference trajectory (`refs/trajectory_*`) was made with: its token ids and
/// latent grid, 3 steps, guidance 6, seed 0; started from its stored initial noise when
/// `init` (else from the seed).
pub fn ref_request(
    r: &HashMap<String, Tensor>,
    fps: f64,
    sound: bool,
    init: bool,
) -> Cosmos3Request {
    let video = &r["init_video"];
    let (_, _, t, h, w) = video.dims5().unwrap();
    let mut req = Cosmos3Request::new(
        Prompt::Tokens {
            pos: ids(&r["pos_ids"]),
            neg: ids(&r["neg_ids"]),
        },
        (t - 1) * 4 + 1,
        h * 16,
        w * 16,
    );
    req.fps = fps;
    req.steps = 3;
    req.seed = 0;
    req.sound = sound;
    if init {
        req.init_noise = Some(InitNoise {
            video: video.clone(),
            sound: if sound {
                r.get("init_sound").cloned()
            } else {
                None
            },
        });
    }
    req
}
