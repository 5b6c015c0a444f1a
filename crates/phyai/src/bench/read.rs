//! How fast a checkpoint's weight files read into host memory, by each way the loader can
//! read them ([`ReadMode`]): the part of a load that no device work hides.
//!
//! Each pass opens the component afresh (a new memory map, so the map's page faults are
//! paid again, as in a real load), notes how much of the files the page cache holds, then
//! reads every tensor in file order into one reused 64 MiB buffer with the loader's own
//! parallel reads.

use std::path::Path;
use std::time::Instant;

use serde::Serialize;

use crate::io::load_stats::load_stats;
use crate::io::read::ReadMode;
use crate::io::weights::WeightStore;
use crate::{Error, Result};

const BUFFER: usize = 64 << 20;

#[derive(Debug, Clone, Serialize)]
pub struct ReadPass {
    pub mode: &'static str,
    pub bytes: u64,
    pub seconds: f64,
    pub gb_per_s: f64,
    /// Bytes of the files the page cache held when the pass opened them.
    pub page_cache_bytes: Option<u64>,
    pub file_bytes: u64,
}

/// One pass per entry of `modes` over the weights in `dir` (a component folder such as a
/// checkpoint's `transformer/`).
pub fn read_bench(dir: &Path, modes: &[ReadMode]) -> Result<Vec<ReadPass>> {
    let mut buf = vec![0u8; BUFFER];
    let mut out = Vec::new();
    for &mode in modes {
        let before = load_stats();
        let store = WeightStore::open_dir(dir)?;
        let opened = load_stats().since(&before);
        let t = Instant::now();
        let mut bytes = 0u64;
        for s in store.stored_tensors() {
            for start in (0..s.len()).step_by(BUFFER) {
                let n = BUFFER.min(s.len() - start);
                s.read_into(start, &mut buf[..n], mode)
                    .map_err(|e| Error::io(dir, e))?;
            }
            bytes += s.len() as u64;
        }
        let seconds = t.elapsed().as_secs_f64();
        out.push(ReadPass {
            mode: mode.name(),
            bytes,
            seconds,
            gb_per_s: bytes as f64 / seconds.max(1e-9) / 1e9,
            page_cache_bytes: opened.resident_bytes,
            file_bytes: opened.file_bytes,
        });
    }
    Ok(out)
}
