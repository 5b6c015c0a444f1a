//! `phyai bench --part read --weights DIR`: how fast the weight files read into host memory.
//! Four passes: the loader's way (`PHYAI_LOAD_READ`: positioned reads by default, copies
//! from the memory map, or `O_DIRECT` reads around the page cache), the two other ways, the
//! loader's way again. The first pass meets the page cache as found (cold after dropping
//! it); the others compare the ways on whatever the first left cached (`O_DIRECT` always
//! reads the disk).

use phyai::bench::read_bench;
use phyai::io::read::ReadMode;
use serde_json::json;

use crate::bench::{emit, BenchArgs};

pub fn run(a: &BenchArgs) -> phyai::Result<()> {
    let dir = a.weights.as_ref().ok_or_else(|| {
        phyai::Error::invalid(
            "weights",
            "--part read needs --weights DIR (a checkpoint or its transformer/)",
        )
    })?;
    // A whole checkpoint: its transformer holds nearly all the bytes.
    let t = dir.join("transformer");
    let dir = if t.is_dir() { t } else { dir.clone() };
    // First as the loader reads (PHYAI_LOAD_READ), then the other ways, then the first again.
    let first = ReadMode::from_env();
    let mut modes = vec![first];
    modes.extend(
        [ReadMode::Pread, ReadMode::Mmap, ReadMode::Direct]
            .into_iter()
            .filter(|&m| m != first),
    );
    modes.push(first);
    for (i, p) in read_bench(&dir, &modes)?.into_iter().enumerate() {
        if a.json {
            let mut v = serde_json::to_value(&p).map_err(|e| phyai::Error::msg(e.to_string()))?;
            v["part"] = json!("read");
            v["pass"] = json!(i + 1);
            emit(v);
        } else {
            let cached = p
                .page_cache_bytes
                .map(|c| {
                    format!(
                        "{:.0}% in the page cache",
                        100.0 * c as f64 / p.file_bytes.max(1) as f64
                    )
                })
                .unwrap_or_else(|| "page cache unknown".into());
            println!(
                "read pass {} ({}): {:.2} GB in {:.2} s = {:.2} GB/s ({cached})",
                i + 1,
                p.mode,
                p.bytes as f64 / 1e9,
                p.seconds,
                p.gb_per_s
            );
        }
    }
    Ok(())
}
