//! What loading weights has cost this process so far: bytes, and the time split into
//! reading (from the memory-mapped files into host memory, page faults and any disk reads
//! included, plus dtype conversion) and copying to the device. Counters are process-wide and
//! summed over the threads that load (one per rank), so with several ranks the times add
//! up like CPU time; take differences of [`load_stats`] around a load.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

static BYTES: AtomicU64 = AtomicU64::new(0);
static TENSORS: AtomicU64 = AtomicU64::new(0);
static READ_NS: AtomicU64 = AtomicU64::new(0);
static COPY_NS: AtomicU64 = AtomicU64::new(0);

#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct LoadStats {
    /// Stored bytes of the tensors loaded.
    pub bytes: u64,
    pub tensors: u64,
    pub read_seconds: f64,
    pub copy_seconds: f64,
}

impl LoadStats {
    /// What was loaded between `earlier` and `self`.
    pub fn since(&self, earlier: &LoadStats) -> LoadStats {
        LoadStats {
            bytes: self.bytes - earlier.bytes,
            tensors: self.tensors - earlier.tensors,
            read_seconds: self.read_seconds - earlier.read_seconds,
            copy_seconds: self.copy_seconds - earlier.copy_seconds,
        }
    }
}

/// Records one tensor load.
pub(crate) fn record(bytes: usize, read: Duration, copy: Duration) {
    BYTES.fetch_add(bytes as u64, Ordering::Relaxed);
    TENSORS.fetch_add(1, Ordering::Relaxed);
    READ_NS.fetch_add(read.as_nanos() as u64, Ordering::Relaxed);
    COPY_NS.fetch_add(copy.as_nanos() as u64, Ordering::Relaxed);
}

/// The totals so far.
pub fn load_stats() -> LoadStats {
    LoadStats {
        bytes: BYTES.load(Ordering::Relaxed),
        tensors: TENSORS.load(Ordering::Relaxed),
        read_seconds: READ_NS.load(Ordering::Relaxed) as f64 * 1e-9,
        copy_seconds: COPY_NS.load(Ordering::Relaxed) as f64 * 1e-9,
    }
}
