//! Safetensors weights: one file or a sharded `*.safetensors.index.json`, memory-mapped,
//! converted to the compute dtype on load, optionally sliced along one dimension so a
//! tensor-parallel rank reads only its shard. F8_E4M3 tensors are read only as raw codes
//! by the FP8 layers ([`crate::layers::fp8`]), never converted without their scale.
//!
//! Model code sees a [`Weights`] handle whose `pp` prefixes mirror the checkpoint keys
//! (`vb.pp("layers").pp(3).pp("self_attn")`), the candle `VarBuilder` idiom. Every name
//! fetched is recorded so [`WeightStore::unused_keys`] can list unexpected keys (strict mode).

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fs::File;
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use candle_core::{DType, Device, Shape, Tensor};
use memmap2::Mmap;
use rayon::prelude::*;
use safetensors::tensor::{Dtype as StDtype, SafeTensors, TensorInfo};

use super::read::{host_tensor, DirectHandle, ReadMode, Source, StoredBytes};
use crate::layers::fp8::Fp8Context;
use crate::{Error, Result};

/// One memory-mapped safetensors file with its parsed header.
struct MappedFile {
    path: PathBuf,
    file: File,
    direct: DirectHandle,
    mmap: Mmap,
    header_len: usize,
    tensors: HashMap<String, TensorInfo>,
}

impl MappedFile {
    fn open(path: &Path) -> Result<Self> {
        let file = File::open(path).map_err(|e| Error::io(path, e))?;
        // SAFETY: the map is read-only; a file truncated underneath us is the user's fault
        // and is detected at open time by the header/length check below.
        let mmap = unsafe { Mmap::map(&file) }.map_err(|e| Error::io(path, e))?;
        // Before the read-ahead hint below changes it: was this file served from memory?
        super::load_stats::record_open(mmap.len(), super::read::resident_bytes(&mmap));
        // Copying from the map: start reading the whole file ahead in the background (a cold
        // disk then overlaps with the copies of the tensors already read); only a hint.
        // Positioned reads need no hint: each 4 MiB read goes to the disk whole, many at once.
        #[cfg(unix)]
        if ReadMode::from_env() == ReadMode::Mmap {
            let _ = mmap.advise(memmap2::Advice::WillNeed);
        }
        let (n, metadata) = SafeTensors::read_metadata(&mmap).map_err(|e| {
            let what = match e {
                safetensors::SafeTensorError::MetadataIncompleteBuffer => {
                    "truncated or padded safetensors file (data length does not match the header)"
                        .to_string()
                }
                safetensors::SafeTensorError::HeaderTooSmall
                | safetensors::SafeTensorError::InvalidHeaderLength => {
                    "not a safetensors file (header length is invalid or the file is truncated)"
                        .to_string()
                }
                other => format!("corrupt safetensors header: {other}"),
            };
            Error::weights(path, what)
        })?;
        let tensors = metadata
            .tensors()
            .into_iter()
            .map(|(k, v)| (k, v.clone()))
            .collect();
        Ok(Self {
            path: path.to_path_buf(),
            file,
            direct: DirectHandle::new(path),
            mmap,
            header_len: n + 8,
            tensors,
        })
    }

    fn bytes(&self, info: &TensorInfo) -> &[u8] {
        let (a, b) = info.data_offsets;
        &self.mmap[self.header_len + a..self.header_len + b]
    }

    fn stored(&self, info: &TensorInfo) -> StoredBytes<'_> {
        StoredBytes {
            file: &self.file,
            direct: &self.direct,
            offset: (self.header_len + info.data_offsets.0) as u64,
            map: self.bytes(info),
        }
    }
}

/// Description of one stored tensor, as the file declares it.
#[derive(Debug, Clone, PartialEq)]
pub struct StoredTensor {
    pub dtype: DType,
    pub shape: Vec<usize>,
}

/// All tensors of one checkpoint component (e.g. `transformer/`), across its shards.
pub struct WeightStore {
    /// What the user pointed at: the single file or the index file. Named in errors.
    origin: PathBuf,
    files: Vec<MappedFile>,
    /// tensor name → index into `files`.
    index: BTreeMap<String, usize>,
    used: Mutex<BTreeSet<String>>,
    /// Set for a synthetic store: tensors are drawn on first request (see [`WeightStore::synthetic`]).
    synthetic: Option<Synthetic>,
}

/// Random weights made on demand, recorded so they can be saved as a checkpoint, or (for
/// benchmarks at full model size) drawn on the requesting device and not kept.
struct Synthetic {
    seed: u64,
    made: Mutex<BTreeMap<String, Tensor>>,
    on_device: bool,
    /// Only the names and shapes matter (see [`WeightStore::shapes_only`]).
    shapes_only: bool,
}

/// How a synthetic tensor is initialised, by its name: norm weights ones, biases zeros,
/// everything else N(0, 1/fan_in).
pub(crate) enum Init {
    Ones,
    Zeros,
    Normal(f64),
}

impl Init {
    pub(crate) fn of(name: &str, shape: &[usize]) -> Self {
        let leaf = name.rsplit('.').next().unwrap_or(name);
        if name.contains("norm") && leaf == "weight" || leaf == "gamma" || leaf == "scale" {
            Self::Ones
        } else if leaf == "bias" || leaf == "beta" {
            Self::Zeros
        } else {
            let fan_in: usize = shape.iter().skip(1).product::<usize>().max(1);
            Self::Normal((1.0 / fan_in as f64).sqrt())
        }
    }
}

impl std::fmt::Debug for WeightStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WeightStore")
            .field("origin", &self.origin)
            .field("tensors", &self.index.len())
            .finish()
    }
}

fn st_dtype(d: StDtype, file: &Path, name: &str) -> Result<DType> {
    Ok(match d {
        StDtype::F32 => DType::F32,
        StDtype::F16 => DType::F16,
        StDtype::BF16 => DType::BF16,
        StDtype::F64 => DType::F64,
        StDtype::I64 => DType::I64,
        StDtype::U32 => DType::U32,
        StDtype::U8 => DType::U8,
        StDtype::F8_E4M3 => DType::F8E4M3,
        other => {
            return Err(Error::weights(
                file,
                format!("tensor {name}: unsupported dtype {other:?}"),
            ))
        }
    })
}

/// FP8 codes mean nothing without their scale: only the FP8 loader may read them, so
/// converting them to another dtype is an error naming the tensor, never silent garbage.
fn refuse_fp8(src: DType, want: DType, file: &Path, name: &str) -> Result<()> {
    if src == DType::F8E4M3 && want != DType::F8E4M3 {
        return Err(Error::weights(
            file,
            format!(
                "tensor {name} is F8_E4M3 (FP8-quantized) but this module reads only unquantized weights"
            ),
        ));
    }
    Ok(())
}

impl WeightStore {
    /// Opens the weights of one component folder: `*.safetensors.index.json` when present
    /// (sharded), otherwise the single `*.safetensors` file in it.
    pub fn open_dir(dir: &Path) -> Result<Self> {
        let entries = std::fs::read_dir(dir).map_err(|e| Error::io(dir, e))?;
        let mut singles = Vec::new();
        let mut indexes = Vec::new();
        for entry in entries {
            let p = entry.map_err(|e| Error::io(dir, e))?.path();
            let name = p.file_name().and_then(|n| n.to_str()).unwrap_or_default();
            if name.ends_with(".safetensors.index.json") {
                indexes.push(p);
            } else if name.ends_with(".safetensors") {
                singles.push(p);
            }
        }
        indexes.sort();
        singles.sort();
        match (indexes.first(), singles.as_slice()) {
            (Some(index), _) => Self::open_index(index),
            (None, [single]) => Self::open_files(single, std::slice::from_ref(single)),
            (None, []) => Err(Error::weights(
                dir,
                "no *.safetensors weights in this folder",
            )),
            (None, _) => Err(Error::weights(
                dir,
                "several *.safetensors files but no *.safetensors.index.json naming their shards",
            )),
        }
    }

    /// Opens a sharded checkpoint through its `weight_map` index.
    pub fn open_index(index_path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(index_path).map_err(|e| Error::io(index_path, e))?;
        let json: serde_json::Value = serde_json::from_str(&text)
            .map_err(|e| Error::config(index_path, "(file)", format!("invalid JSON: {e}")))?;
        let map = json
            .get("weight_map")
            .and_then(|m| m.as_object())
            .ok_or_else(|| Error::config(index_path, "weight_map", "missing or not an object"))?;
        let dir = index_path.parent().unwrap_or(Path::new("."));
        let mut shard_names: Vec<String> = Vec::new();
        for (key, v) in map {
            let s = v.as_str().ok_or_else(|| {
                Error::config(index_path, format!("weight_map.{key}"), "not a file name")
            })?;
            if !shard_names.iter().any(|n| n == s) {
                shard_names.push(s.to_string());
            }
        }
        shard_names.sort();
        let paths: Vec<PathBuf> = shard_names.iter().map(|n| dir.join(n)).collect();
        let store = Self::open_files(index_path, &paths)?;
        // Every key the index names must be in the shard it names.
        for (key, v) in map {
            let shard = dir.join(v.as_str().unwrap_or_default());
            match store.index.get(key) {
                Some(&i) if store.files[i].path == shard => {}
                _ => {
                    return Err(Error::weights(
                        &shard,
                        format!(
                            "tensor {key} listed in {} is not in this shard",
                            index_path.display()
                        ),
                    ))
                }
            }
        }
        Ok(store)
    }

    /// Opens a fixed list of files (shards of one component).
    pub fn open_files(origin: &Path, paths: &[PathBuf]) -> Result<Self> {
        let mut files = Vec::with_capacity(paths.len());
        let mut index = BTreeMap::new();
        for (i, p) in paths.iter().enumerate() {
            let f = MappedFile::open(p)?;
            for name in f.tensors.keys() {
                if let Some(prev) = index.insert(name.clone(), i) {
                    return Err(Error::weights(
                        p,
                        format!("tensor {name} also stored in {}", paths[prev].display()),
                    ));
                }
            }
            files.push(f);
        }
        Ok(Self {
            origin: origin.to_path_buf(),
            files,
            index,
            used: Mutex::new(BTreeSet::new()),
            synthetic: None,
        })
    }

    /// A store with no files whose tensors are drawn, deterministically from `seed` and the
    /// tensor name, the first time a model asks for them with their shape. Norm weights are
    /// ones, biases zeros, other tensors N(0, 1/fan_in). Used to make the demo checkpoint:
    /// build the model against it, then [`WeightStore::save_synthetic`].
    pub fn synthetic(origin: &Path, seed: u64) -> Self {
        Self {
            origin: origin.to_path_buf(),
            files: Vec::new(),
            index: BTreeMap::new(),
            used: Mutex::new(BTreeSet::new()),
            synthetic: Some(Synthetic {
                seed,
                made: Mutex::new(BTreeMap::new()),
                on_device: false,
                shapes_only: false,
            }),
        }
    }

    /// Like [`Self::synthetic`], but every tensor is drawn on the device that asks for it,
    /// with that device's generator, and not kept: random weights at full model size in
    /// seconds, for benchmarks. Values differ from run to run and from [`Self::synthetic`].
    pub fn random_on_device(origin: &Path) -> Self {
        let mut s = Self::synthetic(origin, 0);
        if let Some(syn) = &mut s.synthetic {
            syn.on_device = true;
        }
        s
    }

    /// A store that records the name and shape of every tensor a model asks for and hands
    /// back zeros that take no memory (a broadcast scalar): building a model against it lists
    /// its weights at any size ([`Self::requested`]), e.g. to write a checkpoint of it.
    pub fn shapes_only(origin: &Path) -> Self {
        let mut s = Self::synthetic(origin, 0);
        if let Some(syn) = &mut s.synthetic {
            syn.shapes_only = true;
        }
        s
    }

    /// Name and shape of every tensor requested from a synthetic store, sorted by name.
    pub fn requested(&self) -> Vec<(String, Vec<usize>)> {
        match &self.synthetic {
            Some(syn) => syn
                .made
                .lock()
                .unwrap()
                .iter()
                .map(|(k, t)| (k.clone(), t.dims().to_vec()))
                .collect(),
            None => Vec::new(),
        }
    }

    /// A tensor of [`Self::random_on_device`].
    fn draw(name: &str, shape: &[usize], dtype: DType, device: &Device) -> Result<Tensor> {
        Ok(match Init::of(name, shape) {
            Init::Ones => Tensor::ones(shape, dtype, device)?,
            Init::Zeros => Tensor::zeros(shape, dtype, device)?,
            Init::Normal(std) => Tensor::randn(0f32, std as f32, shape, device)?.to_dtype(dtype)?,
        })
    }

    fn synthesize(&self, syn: &Synthetic, name: &str, shape: &[usize]) -> Result<Tensor> {
        let mut made = syn.made.lock().unwrap();
        if let Some(t) = made.get(name) {
            if t.dims() != shape {
                return Err(Error::weights(
                    &self.origin,
                    format!(
                        "tensor {name} requested with shapes {:?} and {shape:?}",
                        t.dims()
                    ),
                ));
            }
            return Ok(t.clone());
        }
        if syn.shapes_only {
            let t = Tensor::zeros((), DType::F32, &Device::Cpu)?.broadcast_as(shape)?;
            made.insert(name.to_string(), t.clone());
            return Ok(t);
        }
        let numel: usize = shape.iter().product();
        let values: Vec<f32> = match Init::of(name, shape) {
            Init::Ones => vec![1.0; numel],
            Init::Zeros => vec![0.0; numel],
            Init::Normal(std) => {
                // splitmix64 stream keyed by seed and name, Box-Muller to normals.
                let mut state = name.bytes().fold(syn.seed ^ 0x9E37_79B9_7F4A_7C15, |h, b| {
                    (h ^ b as u64).wrapping_mul(0x1000_0000_01B3)
                });
                let mut next = move || {
                    state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
                    let mut z = state;
                    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
                    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
                    ((z ^ (z >> 31)) >> 11) as f64 / (1u64 << 53) as f64
                };
                (0..numel)
                    .map(|_| {
                        let u1 = next().max(1e-300);
                        let u2 = next();
                        ((-2.0 * u1.ln()).sqrt() * (2.0 * std::f64::consts::PI * u2).cos() * std)
                            as f32
                    })
                    .collect()
            }
        };
        let t = Tensor::from_vec(values, shape, &Device::Cpu)?;
        made.insert(name.to_string(), t.clone());
        Ok(t)
    }

    /// Writes every tensor a synthetic store has made to one safetensors file in `dtype`.
    pub fn save_synthetic(&self, path: &Path, dtype: DType) -> Result<()> {
        let syn = self
            .synthetic
            .as_ref()
            .ok_or_else(|| Error::msg("save_synthetic on a store read from files"))?;
        let made = syn.made.lock().unwrap();
        let tensors = made
            .iter()
            .map(|(k, t)| Ok((k.clone(), t.to_dtype(dtype)?)))
            .collect::<Result<std::collections::HashMap<String, Tensor>>>()?;
        let tmp = path.with_extension("safetensors.partial");
        candle_core::safetensors::save(&tensors, &tmp)
            .map_err(|e| Error::weights(path, e.to_string()))?;
        std::fs::rename(&tmp, path).map_err(|e| Error::io(path, e))
    }

    pub fn origin(&self) -> &Path {
        &self.origin
    }

    /// All tensor names, sorted.
    pub fn keys(&self) -> impl Iterator<Item = &str> {
        self.index.keys().map(|s| s.as_str())
    }

    pub fn contains(&self, name: &str) -> bool {
        self.index.contains_key(name)
    }

    fn locate(&self, name: &str) -> Result<(&MappedFile, &TensorInfo)> {
        let i = *self
            .index
            .get(name)
            .ok_or_else(|| Error::weights(&self.origin, format!("missing tensor {name}")))?;
        let f = &self.files[i];
        Ok((f, &f.tensors[name]))
    }

    /// The stored bytes of a whole tensor (little-endian, its stored dtype), unconverted.
    pub fn raw_bytes(&self, name: &str) -> Result<&[u8]> {
        let (f, info) = self.locate(name)?;
        Ok(f.bytes(info))
    }

    /// Every stored tensor's bytes, file by file in the order they lie on disk.
    pub fn stored_tensors(&self) -> Vec<StoredBytes<'_>> {
        let mut out = Vec::new();
        for f in &self.files {
            let mut infos: Vec<&TensorInfo> = f.tensors.values().collect();
            infos.sort_by_key(|i| i.data_offsets.0);
            out.extend(infos.into_iter().map(|i| f.stored(i)));
        }
        out
    }

    /// The stored dtype and shape of a tensor.
    pub fn info(&self, name: &str) -> Result<StoredTensor> {
        let (f, info) = self.locate(name)?;
        Ok(StoredTensor {
            dtype: st_dtype(info.dtype, &f.path, name)?,
            shape: info.shape.clone(),
        })
    }

    /// Loads a whole tensor, converted to `dtype`, onto `device`.
    pub fn load(&self, name: &str, dtype: DType, device: &Device) -> Result<Tensor> {
        let (f, info) = self.locate(name)?;
        let src = st_dtype(info.dtype, &f.path, name)?;
        refuse_fp8(src, dtype, &f.path, name)?;
        self.used.lock().unwrap().insert(name.to_string());
        load_stored(f, f.stored(info), name, src, &info.shape, dtype, device)
    }

    /// Loads `range` of dimension `dim` of a tensor, reading only those bytes: the
    /// building block of tensor-parallel shards (rows for column-parallel weights,
    /// columns for row-parallel ones). A slice that is one run of bytes in the file (the
    /// whole tensor, as every shard of a single GPU is, or rows of it) is read like a whole
    /// tensor, with parallel positioned reads straight into the staging buffers.
    pub fn load_slice(
        &self,
        name: &str,
        dim: usize,
        range: Range<usize>,
        dtype: DType,
        device: &Device,
    ) -> Result<Tensor> {
        let (f, info) = self.locate(name)?;
        let src = st_dtype(info.dtype, &f.path, name)?;
        let shape = &info.shape;
        if dim < shape.len()
            && range.start <= range.end
            && range.end <= shape[dim]
            && shape[..dim].iter().all(|&d| d == 1)
        {
            refuse_fp8(src, dtype, &f.path, name)?;
            self.used.lock().unwrap().insert(name.to_string());
            let inner = shape[dim + 1..].iter().product::<usize>() * src.size_in_bytes();
            let stored = f.stored(info).sub(range.start * inner..range.end * inner);
            let mut new_shape = shape.clone();
            new_shape[dim] = range.len();
            return load_stored(f, stored, name, src, &new_shape, dtype, device);
        }
        let t0 = std::time::Instant::now();
        let (out, new_shape, src) = self.slice_bytes(name, Some((dim, range)))?;
        refuse_fp8(src, dtype, &f.path, name)?;
        #[cfg(feature = "cuda")]
        if let Device::Cuda(dev) = device {
            if src == dtype && super::upload::enabled(dtype) {
                let (t, _, copy) =
                    super::upload::upload(Source::Host(&out), dtype, &new_shape, dev)
                        .map_err(|e| Error::weights(&f.path, format!("tensor {name}: {e}")))?;
                super::load_stats::record(out.len(), t0.elapsed() - copy, copy);
                return Ok(t);
            }
        }
        let t = Tensor::from_raw_buffer(&out, src, &new_shape, &Device::Cpu)?.to_dtype(dtype)?;
        let t1 = std::time::Instant::now();
        let t = t.to_device(device)?;
        super::load_stats::record(out.len(), t1 - t0, t1.elapsed());
        Ok(t)
    }

    /// The stored bytes of a tensor, or of `range` of its dimension `dim`, with the shape of
    /// what is returned and the stored dtype. Marks the tensor used.
    fn slice_bytes(
        &self,
        name: &str,
        slice: Option<(usize, Range<usize>)>,
    ) -> Result<(Vec<u8>, Vec<usize>, DType)> {
        let (f, info) = self.locate(name)?;
        let src = st_dtype(info.dtype, &f.path, name)?;
        let shape = &info.shape;
        let bytes = f.bytes(info);
        let Some((dim, range)) = slice else {
            self.used.lock().unwrap().insert(name.to_string());
            // The whole tensor: the loader's parallel reads, not a copy out of the map.
            let mut out = vec![0u8; bytes.len()];
            f.stored(info)
                .read_into(0, &mut out, ReadMode::from_env())
                .map_err(|e| Error::weights(&f.path, format!("tensor {name}: {e}")))?;
            return Ok((out, shape.clone(), src));
        };
        if dim >= shape.len() || range.start > range.end || range.end > shape[dim] {
            return Err(Error::weights(
                &f.path,
                format!("tensor {name} {shape:?}: slice {range:?} of dim {dim} is out of bounds"),
            ));
        }
        self.used.lock().unwrap().insert(name.to_string());
        let elem = src.size_in_bytes();
        let outer: usize = shape[..dim].iter().product();
        let inner: usize = shape[dim + 1..].iter().product::<usize>() * elem;
        let row = shape[dim] * inner;
        // One run of bytes per outer index, copied out of the map in parallel.
        let run = range.len() * inner;
        let mut out = vec![0u8; outer * run];
        if run > 0 {
            out.par_chunks_mut(run).enumerate().for_each(|(o, d)| {
                let at = o * row + range.start * inner;
                d.copy_from_slice(&bytes[at..at + run]);
            });
        }
        let mut new_shape = shape.clone();
        new_shape[dim] = range.len();
        Ok((out, new_shape, src))
    }

    /// The raw E4M3 codes of an F8_E4M3 tensor (whole, or `range` of dimension `dim`) and
    /// their shape; an error naming the tensor when it is stored in another dtype.
    pub fn load_fp8_codes(
        &self,
        name: &str,
        slice: Option<(usize, Range<usize>)>,
    ) -> Result<(Vec<u8>, Vec<usize>)> {
        let (f, info) = self.locate(name)?;
        if info.dtype != StDtype::F8_E4M3 {
            return Err(Error::weights(
                &f.path,
                format!(
                    "tensor {name}: stored as {:?}, expected F8_E4M3",
                    info.dtype
                ),
            ));
        }
        let (codes, shape, _) = self.slice_bytes(name, slice)?;
        Ok((codes, shape))
    }

    /// The file that stores `name` (for error messages), else the store's origin.
    pub fn file_of(&self, name: &str) -> &Path {
        match self.locate(name) {
            Ok((f, _)) => &f.path,
            Err(_) => &self.origin,
        }
    }

    /// Names stored in the files that no `load`/`load_slice` has asked for.
    pub fn unused_keys(&self) -> Vec<String> {
        let used = self.used.lock().unwrap();
        self.index
            .keys()
            .filter(|k| !used.contains(*k))
            .cloned()
            .collect()
    }

    /// Strict mode: fails listing every unexpected key (stored but never loaded).
    /// Keys matching one of `ignore` prefixes (e.g. `lm_head.`) are allowed to stay unused.
    pub fn check_all_used(&self, ignore: &[&str]) -> Result<()> {
        let unexpected: Vec<String> = self
            .unused_keys()
            .into_iter()
            .filter(|k| !ignore.iter().any(|p| k.starts_with(p)))
            .collect();
        if unexpected.is_empty() {
            Ok(())
        } else {
            let n = unexpected.len();
            let shown: Vec<&str> = unexpected.iter().take(8).map(|s| s.as_str()).collect();
            Err(Error::weights(
                &self.origin,
                format!(
                    "{n} unexpected tensor(s) not used by the model: {}{}",
                    shown.join(", "),
                    if n > 8 { ", …" } else { "" }
                ),
            ))
        }
    }
}

/// Loads stored bytes (a whole tensor, or one run of it) of `shape` in the stored dtype
/// `src`, converted to `dtype`, onto `device`: on CUDA straight from the file through the
/// staging buffers when no conversion is needed, else through a host tensor.
fn load_stored(
    f: &MappedFile,
    stored: StoredBytes<'_>,
    name: &str,
    src: DType,
    shape: &[usize],
    dtype: DType,
    device: &Device,
) -> Result<Tensor> {
    let n = stored.len();
    let bad = |e: &dyn std::fmt::Display| Error::weights(&f.path, format!("tensor {name}: {e}"));
    let source = Source::Stored(stored, ReadMode::from_env());
    #[cfg(feature = "cuda")]
    if let Device::Cuda(dev) = device {
        if src == dtype && super::upload::enabled(dtype) {
            let (t, read, copy) =
                super::upload::upload(source, dtype, shape, dev).map_err(|e| bad(&e))?;
            super::load_stats::record(n, read, copy);
            return Ok(t);
        }
    }
    let t0 = std::time::Instant::now();
    let t = if src == dtype {
        host_tensor(source, dtype, shape).map_err(|e| bad(&e))?
    } else {
        Tensor::from_raw_buffer(stored.map, src, shape, &Device::Cpu)
            .map_err(|e| bad(&e))?
            .to_dtype(dtype)?
    };
    let t1 = std::time::Instant::now();
    let t = t.to_device(device)?;
    super::load_stats::record(n, t1 - t0, t1.elapsed());
    Ok(t)
}

/// A prefixed view of a [`WeightStore`] with the compute dtype and device, handed down the
/// module tree. Cheap to clone.
#[derive(Clone)]
pub struct Weights {
    store: Arc<WeightStore>,
    prefix: String,
    dtype: DType,
    device: Device,
    /// Set when the linear layers below may be FP8 (a quantized checkpoint, or `--quantize`).
    fp8: Option<Fp8Context>,
}

impl Weights {
    pub fn new(store: Arc<WeightStore>, dtype: DType, device: &Device) -> Self {
        Self {
            store,
            prefix: String::new(),
            dtype,
            device: device.clone(),
            fp8: None,
        }
    }

    /// The same view whose linear layers load as FP8 per `ctx`.
    pub fn with_fp8(&self, ctx: Option<Fp8Context>) -> Self {
        Self {
            fp8: ctx,
            ..self.clone()
        }
    }

    pub fn fp8(&self) -> Option<&Fp8Context> {
        self.fp8.as_ref()
    }

    /// The dotted module path this view addresses (`layers.0.self_attn.to_q`).
    pub fn module_path(&self) -> &str {
        &self.prefix
    }

    /// The stored dtype of `name`, `None` when the file does not have it (or the store is
    /// synthetic).
    pub fn stored_dtype(&self, name: &str) -> Option<DType> {
        if self.store.synthetic.is_some() {
            return None;
        }
        self.store.info(&self.full_name(name)).ok().map(|i| i.dtype)
    }

    /// The E4M3 codes of `name` (full shape `shape`; whole, or `range` of dimension `dim`)
    /// and the shape returned.
    pub fn get_fp8_codes<S: Into<Shape>>(
        &self,
        shape: S,
        name: &str,
        slice: Option<(usize, Range<usize>)>,
    ) -> Result<(Vec<u8>, Vec<usize>)> {
        let full = self.full_name(name);
        self.check_shape(&full, &shape.into())?;
        self.store.load_fp8_codes(&full, slice)
    }

    /// Pushes one path component: `w.pp("layers").pp(0)` addresses `layers.0.*`.
    pub fn pp(&self, s: impl ToString) -> Self {
        let s = s.to_string();
        let prefix = if self.prefix.is_empty() {
            s
        } else {
            format!("{}.{}", self.prefix, s)
        };
        Self {
            prefix,
            ..self.clone()
        }
    }

    /// The same view with another compute dtype (e.g. f32 for the timestep embedder).
    pub fn with_dtype(&self, dtype: DType) -> Self {
        Self {
            dtype,
            ..self.clone()
        }
    }

    pub fn dtype(&self) -> DType {
        self.dtype
    }
    pub fn device(&self) -> &Device {
        &self.device
    }
    pub fn store(&self) -> &Arc<WeightStore> {
        &self.store
    }

    pub fn full_name(&self, name: &str) -> String {
        if self.prefix.is_empty() {
            name.to_string()
        } else {
            format!("{}.{}", self.prefix, name)
        }
    }

    /// Whether the checkpoint has `name` (optional weights). A synthetic store has none.
    pub fn contains(&self, name: &str) -> bool {
        self.store.contains(&self.full_name(name))
    }

    /// Loads `name`, checking it has `shape` (errors name the key, both shapes and the file).
    pub fn get<S: Into<Shape>>(&self, shape: S, name: &str) -> Result<Tensor> {
        let full = self.full_name(name);
        let shape: Shape = shape.into();
        if let Some(syn) = &self.store.synthetic {
            if syn.on_device {
                return WeightStore::draw(&full, shape.dims(), self.dtype, &self.device);
            }
            let t = self.store.synthesize(syn, &full, shape.dims())?;
            if syn.shapes_only {
                return self.zeros_like(&t);
            }
            return Ok(t.to_dtype(self.dtype)?.to_device(&self.device)?);
        }
        self.check_shape(&full, &shape)?;
        self.store.load(&full, self.dtype, &self.device)
    }

    /// Zeros of `t`'s shape in this view's dtype and device that take no memory.
    fn zeros_like(&self, t: &Tensor) -> Result<Tensor> {
        Ok(Tensor::zeros((), self.dtype, &self.device)?.broadcast_as(t.dims())?)
    }

    fn check_shape(&self, full: &str, shape: &Shape) -> Result<()> {
        let info = self.store.info(full)?;
        if info.shape.as_slice() != shape.dims() {
            return Err(Error::weights(
                self.store.origin(),
                format!(
                    "tensor {full}: shape {:?} in the file, the config implies {:?}",
                    info.shape,
                    shape.dims()
                ),
            ));
        }
        Ok(())
    }

    /// Loads the `range` of dimension `dim` of `name`, whose full shape must be `shape`.
    pub fn get_slice<S: Into<Shape>>(
        &self,
        shape: S,
        name: &str,
        dim: usize,
        range: Range<usize>,
    ) -> Result<Tensor> {
        let full = self.full_name(name);
        let shape: Shape = shape.into();
        if let Some(syn) = &self.store.synthetic {
            let t = if syn.on_device {
                WeightStore::draw(&full, shape.dims(), self.dtype, &self.device)?
            } else {
                self.store.synthesize(syn, &full, shape.dims())?
            };
            if dim >= t.rank() || range.end > t.dims()[dim] || range.start > range.end {
                return Err(Error::weights(
                    self.store.origin(),
                    format!("tensor {full}: slice {range:?} of dim {dim} is out of bounds"),
                ));
            }
            let t = t.narrow(dim, range.start, range.len())?;
            if syn.shapes_only {
                return self.zeros_like(&t);
            }
            return Ok(t.to_dtype(self.dtype)?.to_device(&self.device)?);
        }
        self.check_shape(&full, &shape)?;
        self.store
            .load_slice(&full, dim, range, self.dtype, &self.device)
    }
}
