//! FP8 (ModelOpt static W8A8, per-tensor scales) against the torch fake-quantization
//! reference (`tools/reference/ref_fp8.py`, f32, CPU):
//! - the E4M3 codec against torch's `float8_e4m3fn` (all 256 codes, rounding ties, edges);
//! - velocities of `tests/fixtures/tiny_fp8/transformer` on the inputs of
//!   `refs/transformer_t2av_cond` in W8A8 and W8A16, with the text tower W8A8 too, and of
//!   `--quantize fp8` (online, dynamic activation scales) on the bf16 tiny checkpoint;
//! - a 3-step guided t2av run whose step policy makes steps 0 and 2 W8A16 and step 1 W8A8;
//! - tensor parallelism equal to one rank; broken FP8 files as one-line errors.
//!
//! Tolerance: relative error ≤ 1e-4 (f32 emulation of the FP8 math).

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use candle_core::{DType, Device, Tensor};
use phyai::io::json::read_json;
use phyai::io::weights::{WeightStore, Weights};
use phyai::layers::fp8::{e4m3, is_quantizer_state, Accumulation, ActivationPrecision, Quantize};
use phyai::models::cosmos3::transformer::{
    Cosmos3Transformer, GenInputs, GenOutput, TransformerConfig,
};
use phyai::models::cosmos3::VaeDecode;
use phyai::parallel::local::run_ranks;
use phyai::parallel::{MeshShape, RankMesh};

mod support;
use support::{engine_on, fixtures, ids, load_ref, ref_request, rel_err};

const TOL: f64 = 1e-4;

fn fp8_dir() -> PathBuf {
    fixtures().join("tiny_fp8/transformer")
}

fn load(dir: &Path, quantize: Option<Quantize>) -> phyai::Result<Cosmos3Transformer> {
    let cfg: TransformerConfig = read_json(&dir.join("config.json"))?;
    Cosmos3Transformer::load_quantized(
        dir,
        &cfg,
        DType::F32,
        &Device::Cpu,
        &RankMesh::single(),
        quantize,
    )
}

/// One generation step on the inputs of `refs/transformer_t2av_cond` (step 0, timestep 995).
fn velocity(m: &Cosmos3Transformer) -> GenOutput {
    let c = load_ref("transformer_t2av_cond.safetensors");
    let und = m.und(&ids(&c["input_ids"])).unwrap();
    let t = c["video_latent"].dim(2).unwrap();
    m.velocity(
        &und,
        &GenInputs {
            video: &c["video_latent"],
            sound: Some(&c["sound_latent"]),
            timestep: 995.0,
            noisy_frames: &vec![true; t],
            fps: 24.0,
        },
    )
    .unwrap()
}

fn check(out: &GenOutput, refs: &HashMap<String, Tensor>, video: &str, sound: &str) {
    let ev = rel_err(&out.video, &refs[video]);
    let es = rel_err(out.sound.as_ref().unwrap(), &refs[sound]);
    println!("{video}: {ev:.2e}, {sound}: {es:.2e}");
    assert!(
        ev <= TOL && es <= TOL,
        "{video} {ev:.2e} / {sound} {es:.2e}"
    );
}

#[test]
fn e4m3_matches_torch_on_every_code_and_rounding_case() {
    let r = load_ref("fp8_e4m3.safetensors");
    let values = r["code_values"].to_vec1::<f32>().unwrap();
    assert_eq!(values.len(), 256);
    for (c, v) in values.iter().enumerate() {
        let ours = e4m3::decode(c as u8);
        assert!(
            ours == *v || (ours.is_nan() && v.is_nan()),
            "code {c:#04x}: {ours} vs torch {v}"
        );
    }
    let inputs = r["inputs"].to_vec1::<f32>().unwrap();
    let codes = r["input_codes"].to_vec1::<u8>().unwrap();
    assert!(inputs.len() > 700);
    for (x, c) in inputs.iter().zip(codes) {
        assert_eq!(e4m3::encode(*x), c, "{x:e} ({:#010x})", x.to_bits());
    }
}

#[test]
fn fp8_checkpoint_velocities_match_reference() {
    let r = load_ref("fp8_velocity.safetensors");
    let m = load(&fp8_dir(), None).unwrap();
    assert!(m.is_fp8());
    let p = m.step_policy().unwrap();
    assert_eq!((p.first_steps, p.last_steps), (1, 1));
    m.set_activation_precision(ActivationPrecision::W8A8);
    check(&velocity(&m), &r, "video_w8a8", "sound_w8a8");
    m.set_activation_precision(ActivationPrecision::W8A16);
    check(&velocity(&m), &r, "video_w8a16", "sound_w8a16");
    // The step policy: the middle of 3 steps is W8A8, the edges W8A16.
    m.begin_step(1, 3);
    check(&velocity(&m), &r, "video_w8a8", "sound_w8a8");
    m.begin_step(2, 3);
    check(&velocity(&m), &r, "video_w8a16", "sound_w8a16");
    // The modes really differ (the test could fail).
    assert!(rel_err(&r["video_w8a8"], &r["video_w8a16"]) > 1e-3);
}

#[test]
fn text_tower_runs_w8a8_when_the_policy_says_native() {
    let r = load_ref("fp8_velocity.safetensors");
    let tmp = tempfile::tempdir().unwrap();
    let dir = copy_fp8(tmp.path());
    edit_config(&dir, |c| {
        c["quantization_config"]["runtime"]["diffusion_step_policy"]["reasoner"] = "native".into()
    });
    let m = load(&dir, None).unwrap();
    m.set_activation_precision(ActivationPrecision::W8A8);
    check(&velocity(&m), &r, "video_all_w8a8", "sound_all_w8a8");
}

#[test]
fn online_quantization_matches_reference() {
    let r = load_ref("fp8_velocity.safetensors");
    let m = load(&fixtures().join("tiny/transformer"), Some(Quantize::Fp8)).unwrap();
    assert!(m.is_fp8());
    m.set_activation_precision(ActivationPrecision::W8A8);
    check(&velocity(&m), &r, "online_video_w8a8", "online_sound_w8a8");
}

/// Shards share the per-tensor scales (static), and the dynamic scale of a row-parallel
/// input is taken over the whole group: tp = 2 gives the one-rank velocity.
#[test]
fn tensor_parallel_fp8_matches_one_rank() {
    for (dir, q) in [
        (fp8_dir(), None),
        (fixtures().join("tiny/transformer"), Some(Quantize::Fp8)),
    ] {
        let cfg: TransformerConfig = read_json(&dir.join("config.json")).unwrap();
        let one = load(&dir, q).unwrap();
        one.set_activation_precision(ActivationPrecision::W8A8);
        let want = velocity(&one);
        let outs = run_ranks(MeshShape::new(1, 1, 2), Duration::from_secs(120), |mesh| {
            let m =
                Cosmos3Transformer::load_quantized(&dir, &cfg, DType::F32, &Device::Cpu, &mesh, q)?;
            m.set_activation_precision(ActivationPrecision::W8A8);
            Ok(velocity(&m))
        })
        .unwrap();
        for o in outs {
            let ev = rel_err(&o.video, &want.video);
            let es = rel_err(o.sound.as_ref().unwrap(), want.sound.as_ref().unwrap());
            assert!(ev < 1e-5 && es < 1e-5, "{q:?}: tp=2 {ev:.2e} {es:.2e}");
        }
    }
}

/// The FP8 checkpoint reads every tensor but the unused text head/norm and ModelOpt's
/// quantizer state.
#[test]
fn quantizer_state_is_the_only_unread_fp8_data() {
    let dir = fp8_dir();
    let cfg: TransformerConfig = read_json(&dir.join("config.json")).unwrap();
    let store = Arc::new(WeightStore::open_dir(&dir).unwrap());
    let _m = Cosmos3Transformer::new(&cfg, Weights::new(store.clone(), DType::F32, &Device::Cpu))
        .unwrap();
    let unused = store.unused_keys();
    let quantizer = unused.iter().filter(|k| is_quantizer_state(k)).count();
    let rest: Vec<&String> = unused.iter().filter(|k| !is_quantizer_state(k)).collect();
    assert_eq!(rest, ["lm_head.weight", "norm.weight"]);
    // 2 layers × 2 towers × 7 linears × 2 `_amax`, plus two `_scale`.
    assert_eq!(quantizer, 2 * 2 * 7 * 2 + 2);
}

/// The one place the pipeline test touches the engine API.
fn generate_latents(checkpoint: &Path, r: &HashMap<String, Tensor>) -> (Tensor, Tensor) {
    let mut engine = engine_on(checkpoint, true, MeshShape::single(), VaeDecode::Full);
    let req = ref_request(r, 24.0, true, true);
    let out = engine.step(&req).unwrap();
    (out.latents, out.sound_latents.unwrap())
}

#[test]
fn fp8_pipeline_follows_the_step_policy() {
    let want = load_ref("fp8_trajectory_t2av.safetensors");
    let steps = want["step_is_w8a8"].to_vec1::<i64>().unwrap();
    assert_eq!(steps, [0, 1, 0], "the policy must mix W8A16 and W8A8 steps");
    // The published layout is a whole checkpoint: the tiny one with the FP8 transformer.
    let tmp = tempfile::tempdir().unwrap();
    let ckpt = tmp.path().join("ckpt");
    copy_dir(&fixtures().join("tiny"), &ckpt);
    std::fs::remove_dir_all(ckpt.join("transformer")).unwrap();
    copy_dir(&fp8_dir(), &ckpt.join("transformer"));
    let r = load_ref("trajectory_t2av.safetensors");
    let (latents, sound) = generate_latents(&ckpt, &r);
    let el = rel_err(&latents, &want["latents"]);
    let es = rel_err(&sound, &want["sound_latents"]);
    println!("fp8 pipeline: latents {el:.2e}, sound latents {es:.2e}");
    assert!(el <= TOL && es <= TOL, "latents {el:.2e} sound {es:.2e}");
}

// ---- broken files --------------------------------------------------------------------

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let p = e.unwrap().path();
        let dst = to.join(p.file_name().unwrap());
        if p.is_dir() {
            copy_dir(&p, &dst);
        } else {
            std::fs::copy(&p, &dst).unwrap();
        }
    }
}

fn copy_fp8(tmp: &Path) -> PathBuf {
    let dir = tmp.join("transformer");
    copy_dir(&fp8_dir(), &dir);
    dir
}

fn edit_config(dir: &Path, f: impl FnOnce(&mut serde_json::Value)) {
    let p = dir.join("config.json");
    let mut v: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&p).unwrap()).unwrap();
    f(&mut v);
    std::fs::write(&p, serde_json::to_string_pretty(&v).unwrap()).unwrap();
}

/// Rewrites the shard holding `key` after `f` edits its tensors (the index follows).
fn edit_tensors(dir: &Path, key: &str, f: impl FnOnce(&mut HashMap<String, Tensor>)) {
    let index_path = dir.join("diffusion_pytorch_model.safetensors.index.json");
    let mut index: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&index_path).unwrap()).unwrap();
    let shard = index["weight_map"][key].as_str().unwrap().to_string();
    let mut t = candle_core::safetensors::load(dir.join(&shard), &Device::Cpu).unwrap();
    f(&mut t);
    candle_core::safetensors::save(&t, dir.join(&shard)).unwrap();
    let map = index["weight_map"].as_object_mut().unwrap();
    map.retain(|_, v| v.as_str() != Some(shard.as_str()));
    for k in t.keys() {
        map.insert(k.clone(), shard.clone().into());
    }
    std::fs::write(&index_path, serde_json::to_string(&index).unwrap()).unwrap();
}

/// A change to a checkpoint copy, and a change to the tensors of one of its shards.
type Edit = Box<dyn Fn(&Path)>;
type TensorEdit = Box<dyn Fn(&mut HashMap<String, Tensor>)>;

fn load_err(dir: &Path) -> String {
    let e = match load(dir, None) {
        Ok(_) => panic!("{} loaded", dir.display()),
        Err(e) => e.to_string(),
    };
    assert_eq!(e.lines().count(), 1, "{e}");
    e
}

#[test]
fn broken_fp8_checkpoints_are_one_line_errors() {
    let q = "layers.0.self_attn.to_q";
    let ws = format!("{q}.weight_scale");
    let scalar = |v: f32| Tensor::new(v, &Device::Cpu).unwrap();
    let tensor_edit = |key: String, f: TensorEdit| -> Edit {
        Box::new(move |d: &Path| edit_tensors(d, &key, &f))
    };
    let cases: Vec<(&str, Edit, Vec<String>)> = vec![
        (
            "missing weight_scale",
            tensor_edit(
                ws.clone(),
                Box::new({
                    let ws = ws.clone();
                    move |t| {
                        t.remove(&ws);
                    }
                }),
            ),
            vec![format!("missing tensor {ws}")],
        ),
        (
            "missing input_scale",
            tensor_edit(
                format!("{q}.input_scale"),
                Box::new(move |t| {
                    t.remove(&format!("{q}.input_scale"));
                }),
            ),
            vec![format!("missing tensor {q}.input_scale")],
        ),
        (
            "per-channel scale",
            tensor_edit(
                ws.clone(),
                Box::new({
                    let ws = ws.clone();
                    move |t| {
                        t.insert(
                            ws.clone(),
                            Tensor::ones(4, DType::F32, &Device::Cpu).unwrap(),
                        );
                    }
                }),
            ),
            vec![ws.clone(), "not a per-tensor scale".into()],
        ),
        (
            "negative scale",
            tensor_edit(
                ws.clone(),
                Box::new({
                    let ws = ws.clone();
                    move |t| {
                        t.insert(ws.clone(), scalar(-0.01));
                    }
                }),
            ),
            vec![ws.clone(), "finite and positive".into()],
        ),
        (
            "NaN scale",
            tensor_edit(
                format!("{q}.input_scale"),
                Box::new(move |t| {
                    t.insert(format!("{q}.input_scale"), scalar(f32::NAN));
                }),
            ),
            vec![format!("{q}.input_scale"), "finite and positive".into()],
        ),
        (
            "integer scale",
            tensor_edit(
                ws.clone(),
                Box::new({
                    let ws = ws.clone();
                    move |t| {
                        t.insert(ws.clone(), Tensor::new(1i64, &Device::Cpu).unwrap());
                    }
                }),
            ),
            vec![ws.clone(), "must be a float tensor".into()],
        ),
        (
            "NaN code",
            tensor_edit(
                format!("{q}.weight"),
                Box::new(move |t| {
                    let w = &t[&format!("{q}.weight")];
                    let mut bytes = vec![0u8; w.elem_count()];
                    bytes[5] = 0x7F;
                    let nan =
                        Tensor::from_raw_buffer(&bytes, DType::F8E4M3, w.dims(), &Device::Cpu)
                            .unwrap();
                    t.insert(format!("{q}.weight"), nan);
                }),
            ),
            vec![format!("{q}.weight"), "E4M3 NaN code".into()],
        ),
        (
            "FP8 norm",
            tensor_edit(
                "layers.0.input_layernorm.weight".into(),
                Box::new(|t| {
                    let k = "layers.0.input_layernorm.weight".to_string();
                    let w = t[&k].to_dtype(DType::F8E4M3).unwrap();
                    t.insert(k, w);
                }),
            ),
            vec![
                "layers.0.input_layernorm.weight".into(),
                "only unquantized weights".into(),
            ],
        ),
        (
            "unknown quant_method",
            Box::new(|d: &Path| {
                edit_config(d, |c| {
                    c["quantization_config"]["quant_method"] = "gptq".into()
                })
            }),
            vec![
                "config.json: quantization_config.quant_method".into(),
                "gptq".into(),
            ],
        ),
        (
            "quant_algo not FP8",
            Box::new(|d: &Path| {
                edit_config(d, |c| {
                    c["quantization_config"]["quant_algo"] = "NVFP4".into()
                })
            }),
            vec!["config.json: quantization_config.quant_algo".into()],
        ),
        (
            "bad policy",
            Box::new(|d: &Path| {
                edit_config(d, |c| {
                    c["quantization_config"]["runtime"]["diffusion_step_policy"]["type"] =
                        "sigmoid".into()
                })
            }),
            vec!["quantization_config.runtime.diffusion_step_policy.type".into()],
        ),
        (
            "no quantization_config",
            Box::new(|d: &Path| {
                edit_config(d, |c| {
                    c.as_object_mut().unwrap().remove("quantization_config");
                })
            }),
            vec![
                "layers.0.".into(),
                "need a ModelOpt FP8 quantization_config".into(),
            ],
        ),
        (
            "FP8 module on the ignore list",
            Box::new(move |d: &Path| {
                edit_config(d, |c| {
                    c["quantization_config"]["ignore"] =
                        serde_json::json!(["layers.0.self_attn.to_*"])
                })
            }),
            vec![format!("{q}.weight"), "keeps".into()],
        ),
    ];
    for (what, edit, wants) in cases {
        let tmp = tempfile::tempdir().unwrap();
        let dir = copy_fp8(tmp.path());
        edit(&dir);
        let e = load_err(&dir);
        println!("{what}: {e}");
        for want in &wants {
            assert!(e.contains(want.as_str()), "{what}: {e:?} lacks {want:?}");
        }
        assert!(
            e.contains(tmp.path().to_str().unwrap()),
            "{what}: no file in {e:?}"
        );
    }
}

/// On a CUDA device the FP8 layers run cuBLASLt GEMMs on the E4M3 codes (bf16 output):
/// the layer against the CPU's f32 math on the same codes, then the tiny FP8 checkpoint's
/// velocities against the f32 reference, no worse than the CPU's own bf16 emulation.
/// Opt-in: CUDA build, PHYAI_GPU_TESTS=1, `--ignored`.
#[test]
#[ignore = "needs a CUDA device: PHYAI_GPU_TESTS=1, --ignored"]
fn cuda_fp8_gemms_match_the_cpu_math() {
    assert!(
        std::env::var_os("PHYAI_GPU_TESTS").is_some(),
        "set PHYAI_GPU_TESTS=1 to run the GPU tests"
    );
    let gpu = Device::new_cuda(0).expect("a CUDA device");
    // One layer: [300, 256] · [384, 256]ᵀ, W8A8 (dynamic scale) and W8A16.
    let x = Tensor::randn(0f32, 1.0, (300, 256), &Device::Cpu)
        .unwrap()
        .to_dtype(DType::BF16)
        .unwrap();
    let w = Tensor::randn(0f32, 0.05, (384, 256), &Device::Cpu)
        .unwrap()
        .to_dtype(DType::BF16)
        .unwrap();
    for p in [ActivationPrecision::W8A8, ActivationPrecision::W8A16] {
        let cpu = phyai::layers::fp8::Fp8Weight::quantize(&w.to_dtype(DType::F32).unwrap(), p)
            .unwrap()
            .matmul_t(&x.to_dtype(DType::F32).unwrap(), None)
            .unwrap();
        let f = phyai::layers::fp8::Fp8Weight::quantize(&w.to_device(&gpu).unwrap(), p).unwrap();
        assert!(f.codes().is_some(), "codes stay on the device");
        let y = f
            .matmul_t(&x.to_device(&gpu).unwrap(), None)
            .unwrap()
            .to_dtype(DType::F32)
            .unwrap()
            .to_device(&Device::Cpu)
            .unwrap();
        let e = rel_err(&y, &cpu);
        println!("layer {p:?}: {e:.2e}");
        // bf16 output rounding (and bf16 products for W8A16) only.
        assert!(e <= 4e-3, "{p:?}: {e:.2e}");
    }
    // The longest inner dimension of the Nano (the down projection, k = 12288) in both
    // accumulations: fast accumulation adds its narrower sums to the bf16 rounding.
    // Drawn in bf16, so both sides quantize the same values.
    let bf16 = |t: Tensor| {
        t.to_dtype(DType::BF16)
            .unwrap()
            .to_dtype(DType::F32)
            .unwrap()
    };
    let x = bf16(Tensor::randn(0f32, 1.0, (128, 12288), &Device::Cpu).unwrap());
    let w = bf16(Tensor::randn(0f32, 0.02, (256, 12288), &Device::Cpu).unwrap());
    let cpu = phyai::layers::fp8::Fp8Weight::quantize(&w, ActivationPrecision::W8A8)
        .unwrap()
        .matmul_t(&x, None)
        .unwrap();
    let to_gpu = |t: &Tensor| t.to_dtype(DType::BF16).unwrap().to_device(&gpu).unwrap();
    let f =
        phyai::layers::fp8::Fp8Weight::quantize(&to_gpu(&w), ActivationPrecision::W8A8).unwrap();
    for (a, bound) in [(Accumulation::Exact, 4e-3), (Accumulation::Fast, 1e-2)] {
        f.set_accumulation(a);
        let y = f.matmul_t(&to_gpu(&x), None).unwrap();
        let e = rel_err(
            &y.to_dtype(DType::F32)
                .unwrap()
                .to_device(&Device::Cpu)
                .unwrap(),
            &cpu,
        );
        println!("layer k=12288 {a:?} accumulation: {e:.2e}");
        assert!(e <= bound, "{a:?}: {e:.2e}");
    }
    // The checkpoint: fused q|k|v blocks with their own scales, static input scales.
    let r = load_ref("fp8_velocity.safetensors");
    let dir = fp8_dir();
    let cfg: TransformerConfig = read_json(&dir.join("config.json")).unwrap();
    let on = |device: &Device| {
        Cosmos3Transformer::load_quantized(
            &dir,
            &cfg,
            DType::BF16,
            device,
            &RankMesh::single(),
            None,
        )
        .unwrap()
    };
    let (m_gpu, m_cpu) = (on(&gpu), on(&Device::Cpu));
    for (p, key) in [
        (ActivationPrecision::W8A8, "video_w8a8"),
        (ActivationPrecision::W8A16, "video_w8a16"),
    ] {
        m_gpu.set_activation_precision(p);
        m_cpu.set_activation_precision(p);
        let v = |m: &Cosmos3Transformer, d: &Device| {
            let c = load_ref("transformer_t2av_cond.safetensors");
            let und = m.und(&ids(&c["input_ids"])).unwrap();
            let to = |t: &Tensor| t.to_dtype(DType::BF16).unwrap().to_device(d).unwrap();
            let (video, sound) = (to(&c["video_latent"]), to(&c["sound_latent"]));
            let t = video.dim(2).unwrap();
            m.velocity(
                &und,
                &GenInputs {
                    video: &video,
                    sound: Some(&sound),
                    timestep: 995.0,
                    noisy_frames: &vec![true; t],
                    fps: 24.0,
                },
            )
            .unwrap()
            .video
            .to_dtype(DType::F32)
            .unwrap()
            .to_device(&Device::Cpu)
            .unwrap()
        };
        let (eg, ec) = (
            rel_err(&v(&m_gpu, &gpu), &r[key]),
            rel_err(&v(&m_cpu, &Device::Cpu), &r[key]),
        );
        println!("{key}: cuda {eg:.2e}, cpu bf16 {ec:.2e}");
        #[cfg(feature = "cuda")]
        assert_eq!(
            phyai::layers::cuda::fp8::emulated_products(),
            0,
            "every W8A8 product ran as an FP8 GEMM"
        );
        assert!(
            eg <= (2.0 * ec).max(1e-2),
            "{key}: cuda {eg:.2e} vs cpu bf16 {ec:.2e}"
        );
    }
}

/// FP8 attention (E4M3 q, k, v with per-head scales, FP8 tensor-core products) against
/// exact f32 attention, beside cuDNN's bf16, at the generation tower's heads (32 query,
/// 8 key/value, d 128) with lengths that are not multiples of the kernel's tiles and one
/// key head 8× louder than the others (per-head scales must absorb it). Both the head-major
/// layout and the token-major views the tower passes give the same result.
/// Opt-in: a Hopper GPU and a build with the FP8 attention kernels, PHYAI_GPU_TESTS=1,
/// `--ignored`.
#[cfg(feature = "cuda")]
#[test]
#[ignore = "needs a Hopper GPU: PHYAI_GPU_TESTS=1, --ignored"]
fn cuda_fp8_attention_tracks_exact_attention() {
    use phyai::layers::attention::{attention, fp8_available};
    use phyai::layers::cuda::fp8_attention;
    assert!(
        std::env::var_os("PHYAI_GPU_TESTS").is_some(),
        "set PHYAI_GPU_TESTS=1 to run the GPU tests"
    );
    let gpu = Device::new_cuda(0).expect("a CUDA device");
    assert!(
        fp8_available(&gpu),
        "this build has no FP8 attention kernels (PHYAI_FLASHINFER_DIR)"
    );
    let (hq, hkv, sq, sk, d) = (32, 8, 1000, 1100, 128);
    let cpu = Device::Cpu;
    let q = Tensor::randn(0f32, 1.0, (hq, sq, d), &cpu).unwrap();
    let k = Tensor::randn(0f32, 1.0, (hkv, sk, d), &cpu).unwrap();
    let v = Tensor::randn(0f32, 1.0, (hkv, sk, d), &cpu).unwrap();
    let loud = Tensor::from_vec(
        (0..hkv).map(|h| if h == 3 { 8f32 } else { 1.0 }).collect(),
        (hkv, 1, 1),
        &cpu,
    )
    .unwrap();
    let k = k.broadcast_mul(&loud).unwrap();
    // The reference sees the bf16-rounded inputs both GPU paths see.
    let round = |t: &Tensor| t.to_dtype(DType::BF16).unwrap();
    let (q, k, v) = (round(&q), round(&k), round(&v));
    let f32s = |t: &Tensor| t.to_dtype(DType::F32).unwrap();
    let exact = attention(&f32s(&q), &f32s(&k), &f32s(&v), false).unwrap();
    let on_gpu = |t: &Tensor| t.to_device(&gpu).unwrap();
    let back = |t: Tensor| f32s(&t).to_device(&cpu).unwrap();
    let (gq, gk, gv) = (on_gpu(&q), on_gpu(&k), on_gpu(&v));
    let bf16 = back(attention(&gq, &gk, &gv, false).unwrap());
    let fp8 = back(fp8_attention::attention(&gq, &gk, &gv).expect("FP8 attention runs"));
    let (e16, e8) = (rel_err(&bf16, &exact), rel_err(&fp8, &exact));
    println!("attention vs exact f32: bf16 (cuDNN) {e16:.2e}, FP8 {e8:.2e}");
    assert!(e16 < 1e-2, "bf16 {e16:.2e}");
    // E4M3 keeps 3 mantissa bits: a few per cent on q, k, v and P each (the number goes
    // to BENCHMARKS.md beside the velocity and PSNR guards).
    assert!(e8 < 0.15, "FP8 {e8:.2e}");
    assert!(e8 > e16, "the FP8 result must come from the FP8 kernel");
    // Token-major storage viewed head-major, as the tower joins text and video keys.
    let token_major = |t: &Tensor| {
        t.transpose(0, 1)
            .unwrap()
            .contiguous()
            .unwrap()
            .transpose(0, 1)
            .unwrap()
    };
    let fp8_views = back(
        fp8_attention::attention(&token_major(&gq), &token_major(&gk), &token_major(&gv)).unwrap(),
    );
    let max_diff = |a: &Tensor, b: &Tensor| {
        (a - b)
            .unwrap()
            .abs()
            .unwrap()
            .max_all()
            .unwrap()
            .to_scalar::<f32>()
            .unwrap()
    };
    let diff = max_diff(&fp8_views, &fp8);
    assert_eq!(diff, 0.0, "layouts disagree by {diff}");

    // Two branches at once over K/V in parts (text, then video, as the tower passes them)
    // equal one call per branch on the joined K/V, bit for bit: the same codes, scales and
    // kernel.
    let split = 300;
    let (k_text, k_own) = (
        gk.narrow(1, 0, split).unwrap(),
        gk.narrow(1, split, sk - split).unwrap(),
    );
    let (v_text, v_own) = (
        gv.narrow(1, 0, split).unwrap(),
        gv.narrow(1, split, sk - split).unwrap(),
    );
    let q2 = on_gpu(&round(
        &Tensor::randn(0f32, 1.0, (hq, sq, d), &cpu).unwrap(),
    ));
    let both = Tensor::cat(&[&gq, &q2], 1).unwrap();
    let (k2, v2) = (
        gk.narrow(1, 100, 700).unwrap(),
        gv.narrow(1, 100, 700).unwrap(),
    );
    let joined = back(
        fp8_attention::attention_branches(
            &both,
            &[
                fp8_attention::Branch {
                    k: vec![&k_text, &k_own],
                    v: vec![&v_text, &v_own],
                },
                fp8_attention::Branch {
                    k: vec![&k2],
                    v: vec![&v2],
                },
            ],
        )
        .expect("FP8 attention over parts runs"),
    );
    let second = back(fp8_attention::attention(&q2, &k2, &v2).unwrap());
    let d0 = max_diff(&joined.narrow(1, 0, sq).unwrap(), &fp8);
    let d1 = max_diff(&joined.narrow(1, sq, sq).unwrap(), &second);
    assert_eq!((d0, d1), (0.0, 0.0), "branches over parts disagree");
}
