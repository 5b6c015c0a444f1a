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
static FILE_BYTES: AtomicU64 = AtomicU64::new(0);
static RESIDENT_BYTES: AtomicU64 = AtomicU64::new(0);
static RESIDENT_KNOWN: AtomicU64 = AtomicU64::new(0);

#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct LoadStats {
    /// Stored bytes of the tensors loaded.
    pub bytes: u64,
    pub tensors: u64,
    pub read_seconds: f64,
    pub copy_seconds: f64,
    /// Size of the weight files opened.
    pub file_bytes: u64,
    /// How much of them was in the page cache when opened (cold disk: near 0); `None`
    /// where the system cannot tell.
    pub resident_bytes: Option<u64>,
}

impl LoadStats {
    /// What was loaded between `earlier` and `self`.
    pub fn since(&self, earlier: &LoadStats) -> LoadStats {
        LoadStats {
            bytes: self.bytes - earlier.bytes,
            tensors: self.tensors - earlier.tensors,
            read_seconds: self.read_seconds - earlier.read_seconds,
            copy_seconds: self.copy_seconds - earlier.copy_seconds,
            file_bytes: self.file_bytes - earlier.file_bytes,
            resident_bytes: match (self.resident_bytes, earlier.resident_bytes) {
                (Some(a), Some(b)) => Some(a - b),
                _ => None,
            },
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

/// Records one weight file opened: its size and how much of it the page cache held.
pub(crate) fn record_open(bytes: usize, resident: Option<u64>) {
    FILE_BYTES.fetch_add(bytes as u64, Ordering::Relaxed);
    if let Some(r) = resident {
        RESIDENT_BYTES.fetch_add(r, Ordering::Relaxed);
        RESIDENT_KNOWN.fetch_add(bytes as u64, Ordering::Relaxed);
    }
}

/// The totals so far.
pub fn load_stats() -> LoadStats {
    LoadStats {
        bytes: BYTES.load(Ordering::Relaxed),
        tensors: TENSORS.load(Ordering::Relaxed),
        read_seconds: READ_NS.load(Ordering::Relaxed) as f64 * 1e-9,
        copy_seconds: COPY_NS.load(Ordering::Relaxed) as f64 * 1e-9,
        file_bytes: FILE_BYTES.load(Ordering::Relaxed),
        // Known only if every file opened could say.
        resident_bytes: (RESIDENT_KNOWN.load(Ordering::Relaxed)
            == FILE_BYTES.load(Ordering::Relaxed))
        .then(|| RESIDENT_BYTES.load(Ordering::Relaxed)),
    }
}
