//! The safetensors loader: single and sharded files, dtype conversion, slices, strict mode,
//! and the one-line errors for missing, truncated and corrupt files.

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;

use candle_core::{DType, Device, Tensor};
use half::bf16;
use phyai::io::weights::{WeightStore, Weights};
use safetensors::tensor::{Dtype, TensorView};

fn f32_bytes(v: &[f32]) -> Vec<u8> {
    v.iter().flat_map(|x| x.to_le_bytes()).collect()
}

type Entry<'a> = (&'a str, Dtype, Vec<usize>, Vec<u8>);

fn write_st(path: &Path, tensors: &[Entry]) {
    let views: HashMap<String, TensorView> = tensors
        .iter()
        .map(|(n, d, s, b)| (n.to_string(), TensorView::new(*d, s.clone(), b).unwrap()))
        .collect();
    safetensors::serialize_to_file(&views, None, path).unwrap();
}

fn ramp(n: usize) -> Vec<f32> {
    (0..n).map(|i| i as f32 * 0.5 - 3.0).collect()
}

#[test]
fn single_file_loads_with_dtype_conversion() {
    let dir = tempfile::tempdir().unwrap();
    let bf: Vec<u8> = ramp(6)
        .iter()
        .flat_map(|x| bf16::from_f32(*x).to_le_bytes())
        .collect();
    write_st(
        &dir.path().join("model.safetensors"),
        &[
            ("a.weight", Dtype::F32, vec![2, 3], f32_bytes(&ramp(6))),
            ("b.weight", Dtype::BF16, vec![3, 2], bf),
        ],
    );
    let store = Arc::new(WeightStore::open_dir(dir.path()).unwrap());
    let w = Weights::new(store.clone(), DType::F32, &Device::Cpu);
    let a = w.pp("a").get((2, 3), "weight").unwrap();
    assert_eq!(a.dtype(), DType::F32);
    assert_eq!(a.flatten_all().unwrap().to_vec1::<f32>().unwrap(), ramp(6));
    let b = w.pp("b").get((3, 2), "weight").unwrap();
    assert_eq!(b.flatten_all().unwrap().to_vec1::<f32>().unwrap(), ramp(6));
    let b16 = w
        .with_dtype(DType::BF16)
        .pp("b")
        .get((3, 2), "weight")
        .unwrap();
    assert_eq!(b16.dtype(), DType::BF16);
    store.check_all_used(&[]).unwrap();
}

#[test]
fn wrong_shape_and_missing_key_name_the_key() {
    let dir = tempfile::tempdir().unwrap();
    write_st(
        &dir.path().join("model.safetensors"),
        &[("a.weight", Dtype::F32, vec![2, 3], f32_bytes(&ramp(6)))],
    );
    let store = Arc::new(WeightStore::open_dir(dir.path()).unwrap());
    let w = Weights::new(store, DType::F32, &Device::Cpu);
    let e = w.get((3, 2), "a.weight").unwrap_err().to_string();
    assert!(
        e.contains("a.weight") && e.contains("[2, 3]") && e.contains("[3, 2]"),
        "{e}"
    );
    let e = w.get((1,), "nope").unwrap_err().to_string();
    assert!(e.contains("missing tensor nope"), "{e}");
}

#[test]
fn slices_read_rows_and_columns() {
    let dir = tempfile::tempdir().unwrap();
    write_st(
        &dir.path().join("model.safetensors"),
        &[("m", Dtype::F32, vec![4, 6], f32_bytes(&ramp(24)))],
    );
    let store = Arc::new(WeightStore::open_dir(dir.path()).unwrap());
    let w = Weights::new(store, DType::F32, &Device::Cpu);
    let full = Tensor::from_vec(ramp(24), (4, 6), &Device::Cpu).unwrap();
    for (dim, range) in [(0usize, 1..3usize), (1, 2..6), (1, 0..1), (0, 0..4)] {
        let got = w.get_slice((4, 6), "m", dim, range.clone()).unwrap();
        let want = full.narrow(dim, range.start, range.len()).unwrap();
        assert_eq!(got.dims(), want.dims());
        assert_eq!(
            got.flatten_all().unwrap().to_vec1::<f32>().unwrap(),
            want.flatten_all().unwrap().to_vec1::<f32>().unwrap()
        );
    }
    let e = w.get_slice((4, 6), "m", 1, 4..7).unwrap_err().to_string();
    assert!(e.contains("out of bounds"), "{e}");

    // Stored in bf16 and converted: row slices read as one run of the file, column slices
    // row by row; both as the narrowed whole tensor.
    let dir = tempfile::tempdir().unwrap();
    let vals: Vec<bf16> = ramp(24).into_iter().map(bf16::from_f32).collect();
    let bytes: Vec<u8> = vals.iter().flat_map(|v| v.to_le_bytes()).collect();
    write_st(
        &dir.path().join("model.safetensors"),
        &[("b", Dtype::BF16, vec![4, 6], bytes)],
    );
    let store = Arc::new(WeightStore::open_dir(dir.path()).unwrap());
    let w = Weights::new(store, DType::F32, &Device::Cpu);
    for (dim, range) in [(0usize, 2..4usize), (1, 1..4), (0, 0..4)] {
        let got = w.get_slice((4, 6), "b", dim, range.clone()).unwrap();
        let want = full.narrow(dim, range.start, range.len()).unwrap();
        assert_eq!(
            got.flatten_all().unwrap().to_vec1::<f32>().unwrap(),
            want.flatten_all().unwrap().to_vec1::<f32>().unwrap(),
            "dim {dim} {range:?}"
        );
    }
}

#[test]
fn sharded_index_and_strict_mode() {
    let dir = tempfile::tempdir().unwrap();
    write_st(
        &dir.path().join("m-00001-of-00002.safetensors"),
        &[("x.weight", Dtype::F32, vec![2], f32_bytes(&[1.0, 2.0]))],
    );
    write_st(
        &dir.path().join("m-00002-of-00002.safetensors"),
        &[
            ("y.weight", Dtype::F32, vec![1], f32_bytes(&[3.0])),
            ("z.extra", Dtype::F32, vec![1], f32_bytes(&[4.0])),
        ],
    );
    std::fs::write(
        dir.path().join("m.safetensors.index.json"),
        r#"{"metadata":{},"weight_map":{"x.weight":"m-00001-of-00002.safetensors","y.weight":"m-00002-of-00002.safetensors","z.extra":"m-00002-of-00002.safetensors"}}"#,
    )
    .unwrap();
    let store = Arc::new(WeightStore::open_dir(dir.path()).unwrap());
    assert_eq!(store.keys().count(), 3);
    let w = Weights::new(store.clone(), DType::F32, &Device::Cpu);
    w.get(2, "x.weight").unwrap();
    w.get(1, "y.weight").unwrap();
    let e = store.check_all_used(&[]).unwrap_err().to_string();
    assert!(e.contains("1 unexpected") && e.contains("z.extra"), "{e}");
    store.check_all_used(&["z."]).unwrap();
}

#[test]
fn index_naming_a_missing_shard_is_an_error() {
    let dir = tempfile::tempdir().unwrap();
    write_st(
        &dir.path().join("m-00001-of-00002.safetensors"),
        &[("x.weight", Dtype::F32, vec![2], f32_bytes(&[1.0, 2.0]))],
    );
    std::fs::write(
        dir.path().join("m.safetensors.index.json"),
        r#"{"weight_map":{"x.weight":"m-00001-of-00002.safetensors","y.weight":"m-00002-of-00002.safetensors"}}"#,
    )
    .unwrap();
    let e = WeightStore::open_dir(dir.path()).unwrap_err().to_string();
    assert!(e.contains("m-00002-of-00002.safetensors"), "{e}");
    assert_eq!(e.lines().count(), 1);
}

#[test]
fn truncated_corrupt_and_missing_files_give_one_line_errors() {
    let dir = tempfile::tempdir().unwrap();
    let good = dir.path().join("good.safetensors");
    write_st(&good, &[("a", Dtype::F32, vec![64], f32_bytes(&ramp(64)))]);
    let bytes = std::fs::read(&good).unwrap();

    let mut garbage = bytes.clone();
    for x in garbage[8..20].iter_mut() {
        *x = b'#';
    }
    let mut huge = bytes.clone();
    huge[..8].copy_from_slice(&(u64::MAX / 2).to_le_bytes());
    let cases: Vec<(&str, Vec<u8>, &str)> = vec![
        ("truncated", bytes[..bytes.len() - 10].to_vec(), "truncated"),
        ("tiny", bytes[..4].to_vec(), "not a safetensors file"),
        ("empty", vec![], "not a safetensors file"),
        ("garbage", garbage, "corrupt safetensors header"),
        ("huge-header", huge, "safetensors"),
    ];
    for (name, data, expect) in cases {
        let sub = dir.path().join(name);
        std::fs::create_dir(&sub).unwrap();
        std::fs::write(sub.join("model.safetensors"), data).unwrap();
        let e = WeightStore::open_dir(&sub).unwrap_err().to_string();
        assert!(e.contains(expect), "{name}: {e}");
        assert!(
            e.contains("model.safetensors"),
            "{name}: must name the file: {e}"
        );
        assert_eq!(e.lines().count(), 1, "{name}: {e}");
    }

    let e = WeightStore::open_dir(&dir.path().join("absent"))
        .unwrap_err()
        .to_string();
    assert!(e.contains("absent"), "{e}");
    let empty = dir.path().join("no-weights");
    std::fs::create_dir(&empty).unwrap();
    let e = WeightStore::open_dir(&empty).unwrap_err().to_string();
    assert!(e.contains("no *.safetensors"), "{e}");
}

/// Every component of the fixture checkpoint loads strictly: each stored tensor has the
/// shape its config implies, is bf16 as published, and none is left unused (beyond the
/// ones generation never reads).
#[test]
fn fixture_checkpoint_loads_strictly() {
    use phyai::io::json::read_json;
    use phyai::models::cosmos3::transformer::{
        Cosmos3Transformer, TransformerConfig, UNUSED_WEIGHT_PREFIXES,
    };
    use phyai::models::cosmos3::vae::{
        AudioDecoder, AudioVaeConfig, VaeConfig, WanDecoder, WanEncoder,
    };

    let tiny = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures/tiny");
    let open = |name: &str| {
        let store = Arc::new(WeightStore::open_dir(&tiny.join(name)).unwrap());
        for k in store.keys() {
            assert_eq!(store.info(k).unwrap().dtype, DType::BF16, "{name}/{k}");
        }
        store
    };

    let store = open("transformer");
    assert!(store
        .origin()
        .to_string_lossy()
        .ends_with(".safetensors.index.json"));
    let file = tiny.join("transformer/config.json");
    let cfg: TransformerConfig = read_json(&file).unwrap();
    cfg.validate(&file).unwrap();
    Cosmos3Transformer::new(&cfg, Weights::new(store.clone(), DType::F32, &Device::Cpu)).unwrap();
    store.check_all_used(UNUSED_WEIGHT_PREFIXES).unwrap();

    let store = open("vae");
    let file = tiny.join("vae/config.json");
    let cfg: VaeConfig = read_json(&file).unwrap();
    cfg.validate(&file).unwrap();
    let w = Weights::new(store.clone(), DType::F32, &Device::Cpu);
    WanDecoder::new(&cfg, &w).unwrap();
    WanEncoder::new(&cfg, &w).unwrap();
    store.check_all_used(&[]).unwrap();

    let store = open("sound_tokenizer");
    let file = tiny.join("sound_tokenizer/config.json");
    let cfg: AudioVaeConfig = read_json(&file).unwrap();
    cfg.validate(&file).unwrap();
    AudioDecoder::new(&cfg, &Weights::new(store.clone(), DType::F32, &Device::Cpu)).unwrap();
    store.check_all_used(&[]).unwrap();
}

/// A copy of `src` (a checkpoint folder) at `dst`, the transformer's weights re-sharded by
/// the project's writer into shards of at most `max_shard` bytes. Returns the files written.
fn reshard_copy(src: &Path, dst: &Path, max_shard: u64) -> Vec<std::path::PathBuf> {
    use phyai::io::shards::{write_sharded, TensorSpec};
    for entry in std::fs::read_dir(src).unwrap() {
        let entry = entry.unwrap();
        let to = dst.join(entry.file_name());
        if entry.path().is_dir() {
            std::fs::create_dir_all(&to).unwrap();
            for f in std::fs::read_dir(entry.path()).unwrap() {
                let f = f.unwrap();
                let name = f.file_name().to_string_lossy().to_string();
                if entry.file_name() == "transformer" && name.contains(".safetensors") {
                    continue;
                }
                std::fs::copy(f.path(), to.join(&name)).unwrap();
            }
        } else {
            std::fs::copy(entry.path(), &to).unwrap();
        }
    }
    let store = WeightStore::open_dir(&src.join("transformer")).unwrap();
    let specs: Vec<TensorSpec> = store
        .keys()
        .map(|k| {
            let info = store.info(k).unwrap();
            TensorSpec {
                name: k.to_string(),
                dtype: info.dtype,
                shape: info.shape,
            }
        })
        .collect();
    let fill = |s: &TensorSpec, buf: &mut [u8]| -> phyai::Result<()> {
        buf.copy_from_slice(store.raw_bytes(&s.name)?);
        Ok(())
    };
    write_sharded(
        &dst.join("transformer"),
        "diffusion_pytorch_model",
        &specs,
        max_shard,
        &fill,
        &|_| {},
    )
    .unwrap()
}

fn index_json(dir: &Path) -> serde_json::Value {
    let text = std::fs::read_to_string(dir.join("diffusion_pytorch_model.safetensors.index.json"))
        .unwrap();
    serde_json::from_str(&text).unwrap()
}

/// The published layout (diffusers' `diffusion_pytorch_model-0000i-of-0000n.safetensors`
/// shards named by `diffusion_pytorch_model.safetensors.index.json`), as the committed
/// fixture has it from diffusers and as the project's shard writer writes it: the loader
/// opens both through the index, and the re-sharded copy generates exactly what the
/// original does.
#[test]
fn published_shard_layout_loads_and_reshards_identically() {
    use phyai::engine::{Engine, EngineArgs, EngineConfig, Plugin};
    use phyai::models::cosmos3::{Cosmos3Args, Cosmos3Plugin, Cosmos3Request, Prompt};

    let tiny = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures/tiny");
    let original = WeightStore::open_dir(&tiny.join("transformer")).unwrap();
    assert_eq!(
        original.origin().file_name().unwrap(),
        "diffusion_pytorch_model.safetensors.index.json"
    );

    let dir = tempfile::tempdir().unwrap();
    let copy = dir.path().join("tiny");
    std::fs::create_dir_all(&copy).unwrap();
    let files = reshard_copy(&tiny, &copy, 150_000);
    let names: Vec<String> = files
        .iter()
        .map(|p| p.file_name().unwrap().to_string_lossy().to_string())
        .collect();
    let n = names.len() - 1;
    assert!(n >= 4, "{names:?}");
    for (i, name) in names[..n].iter().enumerate() {
        assert_eq!(
            name,
            &format!("diffusion_pytorch_model-{:05}-of-{n:05}.safetensors", i + 1)
        );
        assert!(std::fs::metadata(&files[i]).unwrap().len() <= 150_000 + 8192);
    }
    assert_eq!(names[n], "diffusion_pytorch_model.safetensors.index.json");

    // The index has diffusers' shape: the same total size and keys as the fixture's.
    let (ours, theirs) = (
        index_json(&copy.join("transformer")),
        index_json(&tiny.join("transformer")),
    );
    assert_eq!(
        ours["metadata"]["total_size"],
        theirs["metadata"]["total_size"]
    );
    let keys = |v: &serde_json::Value| {
        let mut k: Vec<String> = v["weight_map"]
            .as_object()
            .unwrap()
            .keys()
            .cloned()
            .collect();
        k.sort();
        k
    };
    assert_eq!(keys(&ours), keys(&theirs));

    let resharded = WeightStore::open_dir(&copy.join("transformer")).unwrap();
    for k in original.keys() {
        assert_eq!(resharded.info(k).unwrap(), original.info(k).unwrap(), "{k}");
        assert_eq!(
            resharded.raw_bytes(k).unwrap(),
            original.raw_bytes(k).unwrap(),
            "{k}"
        );
    }

    let run = |ckpt: &Path| {
        let mut args = Cosmos3Args::new(ckpt);
        args.load_sound = true;
        let mut e = Engine::<Cosmos3Plugin>::new(EngineArgs {
            plugin: Cosmos3Plugin::NAME.into(),
            plugin_args: args,
            config: EngineConfig::default(),
        })
        .unwrap();
        let mut req = Cosmos3Request::new(
            Prompt::Tokens {
                pos: vec![5, 17, 42, 99, 3, 211, 8],
                neg: vec![5, 17, 3, 8],
            },
            5,
            64,
            64,
        );
        req.steps = 2;
        req.seed = 3;
        req.sound = true;
        e.step(&req).unwrap()
    };
    let before = phyai::io::load_stats::load_stats();
    let (a, b) = (run(&tiny), run(&copy));
    let loaded = phyai::io::load_stats::load_stats().since(&before);
    // Both loads read every transformer tensor at least (the counters are process-wide).
    assert!(loaded.bytes >= 2 * 559_232, "{loaded:?}");
    let max_diff = |x: &Tensor, y: &Tensor| -> f32 {
        (x - y)
            .unwrap()
            .abs()
            .unwrap()
            .flatten_all()
            .unwrap()
            .max(0)
            .unwrap()
            .to_scalar::<f32>()
            .unwrap()
    };
    assert_eq!(max_diff(&a.latents, &b.latents), 0.0);
    assert_eq!(max_diff(&a.video, &b.video), 0.0);
    assert_eq!(
        max_diff(
            a.sound_latents.as_ref().unwrap(),
            b.sound_latents.as_ref().unwrap()
        ),
        0.0
    );
}

/// The random-weights checkpoint writer (what `phyai make-checkpoint` runs, here at the
/// tiny size with small shards): the published layout, every tensor the models read, and
/// the engine generates from it.
#[test]
fn random_published_checkpoint_loads_and_generates() {
    use phyai::bench::checkpoint::{write_random_checkpoint, CheckpointOptions, CheckpointSize};
    use phyai::engine::{Engine, EngineArgs, EngineConfig, Plugin};
    use phyai::models::cosmos3::{Cosmos3Args, Cosmos3Plugin, Cosmos3Request, Prompt};

    let dir = tempfile::tempdir().unwrap();
    let ckpt = dir.path().join("random");
    let mut opts = CheckpointOptions::new(CheckpointSize::Tiny);
    opts.max_shard_bytes = 2_000_000;
    let last = std::sync::Mutex::new((0u64, 0u64));
    write_random_checkpoint(&ckpt, &opts, &|d, t| *last.lock().unwrap() = (d, t)).unwrap();
    let (done, total) = *last.lock().unwrap();
    assert_eq!(done, total);
    for f in [
        "model_index.json",
        "scheduler/scheduler_config.json",
        "text_tokenizer/tokenizer.json",
        "transformer/config.json",
        "vae/config.json",
        "sound_tokenizer/config.json",
    ] {
        assert!(ckpt.join(f).is_file(), "{f}");
    }
    // Nothing but the checkpoint is left next to it.
    assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
    // The transformer's shards are the ones its index names, each within the limit, and
    // the index's total is the sum of the tensors stored.
    let index = index_json(&ckpt.join("transformer"));
    let mut shards: Vec<String> = index["weight_map"]
        .as_object()
        .unwrap()
        .values()
        .map(|v| v.as_str().unwrap().to_string())
        .collect();
    shards.sort();
    shards.dedup();
    let n = shards.len();
    assert!(n >= 2, "{shards:?}");
    for (i, s) in shards.iter().enumerate() {
        assert_eq!(
            s,
            &format!("diffusion_pytorch_model-{:05}-of-{n:05}.safetensors", i + 1)
        );
    }
    let store = WeightStore::open_dir(&ckpt.join("transformer")).unwrap();
    let stored: u64 = store
        .keys()
        .map(|k| store.raw_bytes(k).unwrap().len() as u64)
        .sum();
    assert_eq!(index["metadata"]["total_size"].as_u64(), Some(stored));
    assert!(store.contains("lm_head.weight"));

    let mut args = Cosmos3Args::new(&ckpt);
    args.load_sound = true;
    let mut e = Engine::<Cosmos3Plugin>::new(EngineArgs {
        plugin: Cosmos3Plugin::NAME.into(),
        plugin_args: args,
        config: EngineConfig::default(),
    })
    .unwrap();
    let mut req = Cosmos3Request::new(Prompt::text("a red cube"), 5, 64, 64);
    req.steps = 2;
    req.sound = true;
    let out = e.step(&req).unwrap();
    assert_eq!(out.video.dims(), &[1, 3, 5, 64, 64]);
    let v = out.video.flatten_all().unwrap().to_vec1::<f32>().unwrap();
    assert!(v.iter().all(|x| x.is_finite() && (0.0..=1.0).contains(x)));
    // Random weights: the frames are not constant.
    let (lo, hi) = v
        .iter()
        .fold((f32::MAX, f32::MIN), |(l, h), x| (l.min(*x), h.max(*x)));
    assert!(hi - lo > 0.01, "{lo} {hi}");
}
