//! Writing a component's weights in the published sharded layout, streamed one tensor at a
//! time (a full-size checkpoint never sits in memory): `NAME-0000i-of-0000n.safetensors`
//! shards of at most `max_shard_bytes` each, filled greedily in tensor-name order, and the
//! `NAME.safetensors.index.json` (`metadata.total_size`, `weight_map`) that names them, as
//! diffusers' `save_pretrained` writes them. A component that fits one shard is one
//! `NAME.safetensors` with no index, as diffusers does too.

use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};

use candle_core::DType;

use crate::{Error, Result};

/// One tensor to write: its name, stored dtype and shape.
#[derive(Debug, Clone, PartialEq)]
pub struct TensorSpec {
    pub name: String,
    pub dtype: DType,
    pub shape: Vec<usize>,
}

impl TensorSpec {
    pub fn bytes(&self) -> u64 {
        (self.shape.iter().product::<usize>() * self.dtype.size_in_bytes()) as u64
    }
}

/// diffusers' default for the published checkpoints: 5 GB (decimal).
pub const PUBLISHED_SHARD_BYTES: u64 = 5_000_000_000;

/// Shards as lists of indexes into `specs` (sorted by name): a shard closes when the next
/// tensor would take it past `max_bytes`; a tensor larger than that gets a shard alone.
pub fn plan_shards(specs: &[TensorSpec], max_bytes: u64) -> Vec<Vec<usize>> {
    let mut order: Vec<usize> = (0..specs.len()).collect();
    order.sort_by(|&a, &b| specs[a].name.cmp(&specs[b].name));
    let mut shards: Vec<Vec<usize>> = Vec::new();
    let mut size = 0u64;
    for i in order {
        let b = specs[i].bytes();
        match shards.last_mut() {
            Some(s) if size + b <= max_bytes => {
                s.push(i);
                size += b;
            }
            _ => {
                shards.push(vec![i]);
                size = b;
            }
        }
    }
    shards
}

/// The shard file names diffusers gives `n` shards of `stem`.
pub fn shard_names(stem: &str, n: usize) -> Vec<String> {
    if n == 1 {
        return vec![format!("{stem}.safetensors")];
    }
    (1..=n)
        .map(|i| format!("{stem}-{i:05}-of-{n:05}.safetensors"))
        .collect()
}

fn st_dtype(d: DType) -> Result<&'static str> {
    Ok(match d {
        DType::BF16 => "BF16",
        DType::F16 => "F16",
        DType::F32 => "F32",
        DType::F8E4M3 => "F8_E4M3",
        DType::U8 => "U8",
        other => return Err(Error::msg(format!("cannot store dtype {other:?}"))),
    })
}

/// Writes `specs` into `dir` as `stem` shards (plus the index when there are several).
/// `fill(spec, buf)` writes one tensor's little-endian bytes into `buf` (its exact size);
/// `written(bytes)` is told after every tensor. Each file is written aside and renamed into
/// place. Returns the files written, shards first.
pub fn write_sharded(
    dir: &Path,
    stem: &str,
    specs: &[TensorSpec],
    max_shard_bytes: u64,
    fill: &(dyn Fn(&TensorSpec, &mut [u8]) -> Result<()> + Sync),
    written: &dyn Fn(u64),
) -> Result<Vec<PathBuf>> {
    let shards = plan_shards(specs, max_shard_bytes);
    let names = shard_names(stem, shards.len());
    let mut files = Vec::new();
    let mut weight_map = serde_json::Map::new();
    let mut buf: Vec<u8> = Vec::new();
    for (shard, name) in shards.iter().zip(&names) {
        let path = dir.join(name);
        write_shard(
            &path,
            shard.iter().map(|&i| &specs[i]),
            fill,
            written,
            &mut buf,
        )?;
        for &i in shard {
            weight_map.insert(specs[i].name.clone(), name.clone().into());
        }
        files.push(path);
    }
    if shards.len() > 1 {
        let total: u64 = specs.iter().map(TensorSpec::bytes).sum();
        let index = serde_json::json!({
            "metadata": {"total_size": total},
            "weight_map": weight_map,
        });
        let path = dir.join(format!("{stem}.safetensors.index.json"));
        let text = serde_json::to_string_pretty(&index).map_err(|e| Error::msg(e.to_string()))?;
        crate::io::atomic::write_atomic(&path, text.as_bytes())?;
        files.push(path);
    }
    Ok(files)
}

/// One safetensors file: the 8-byte header length, the JSON header padded with spaces to a
/// multiple of 8, then every tensor's bytes in header order.
fn write_shard<'a>(
    path: &Path,
    specs: impl Iterator<Item = &'a TensorSpec> + Clone,
    fill: &(dyn Fn(&TensorSpec, &mut [u8]) -> Result<()> + Sync),
    written: &dyn Fn(u64),
    buf: &mut Vec<u8>,
) -> Result<()> {
    let mut header = serde_json::Map::new();
    header.insert("__metadata__".into(), serde_json::json!({"format": "pt"}));
    let mut offset = 0u64;
    for s in specs.clone() {
        let end = offset + s.bytes();
        header.insert(
            s.name.clone(),
            serde_json::json!({"dtype": st_dtype(s.dtype)?, "shape": s.shape,
                "data_offsets": [offset, end]}),
        );
        offset = end;
    }
    let mut text = serde_json::to_string(&header).map_err(|e| Error::msg(e.to_string()))?;
    while text.len() % 8 != 0 {
        text.push(' ');
    }
    let tmp = path.with_extension("safetensors.partial");
    let result = (|| -> Result<()> {
        let file = std::fs::File::create(&tmp).map_err(|e| Error::io(&tmp, e))?;
        let mut out = BufWriter::with_capacity(8 << 20, file);
        let io = |e| Error::io(&tmp, e);
        out.write_all(&(text.len() as u64).to_le_bytes())
            .map_err(io)?;
        out.write_all(text.as_bytes()).map_err(io)?;
        for s in specs {
            buf.clear();
            buf.resize(s.bytes() as usize, 0);
            fill(s, buf)?;
            out.write_all(buf).map_err(io)?;
            written(s.bytes());
        }
        out.into_inner()
            .map_err(|e| Error::io(&tmp, e.into_error()))?
            .sync_all()
            .map_err(io)
    })();
    match result {
        Ok(()) => std::fs::rename(&tmp, path).map_err(|e| Error::io(path, e)),
        Err(e) => {
            let _ = std::fs::remove_file(&tmp);
            Err(e)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(name: &str, n: usize) -> TensorSpec {
        TensorSpec {
            name: name.into(),
            dtype: DType::BF16,
            shape: vec![n],
        }
    }

    #[test]
    fn shards_fill_greedily_in_name_order() {
        // 2 bytes per element: b=8, a=6, c=4, d=20 (over the limit alone).
        let specs = [spec("b", 4), spec("a", 3), spec("d", 10), spec("c", 2)];
        let plan = plan_shards(&specs, 12);
        assert_eq!(plan, vec![vec![1], vec![0, 3], vec![2]]);
        assert_eq!(
            shard_names("diffusion_pytorch_model", 3),
            [
                "diffusion_pytorch_model-00001-of-00003.safetensors",
                "diffusion_pytorch_model-00002-of-00003.safetensors",
                "diffusion_pytorch_model-00003-of-00003.safetensors"
            ]
        );
        assert_eq!(shard_names("m", 1), ["m.safetensors"]);
    }
}
