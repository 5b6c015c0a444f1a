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
