//! Where a forward's device time goes: named marks between the stages of a layer, summed
//! per stage. Off unless a caller turns it on (`phyai bench --profile`); then each mark
//! records one CUDA event on the device's stream (on the CPU, where every op finishes before
//! it returns, it reads the clock). A mark names the stage that has just ended, so the time
//! between two marks belongs to the second; everything before a stage's first mark in a
//! forward (the embeddings, the text tower, the VAE) falls to the first mark's name.
//!
//! Events are recorded between kernels and never wait, so a profiled forward runs as fast
//! as an unprofiled one, apart from one event record per mark. A profile belongs to the
//! thread that started it (the one running the forward).

use std::cell::{Cell, RefCell};
use std::time::Instant;

use candle_core::Device;

use crate::Result;

thread_local! {
    static ON: Cell<bool> = const { Cell::new(false) };
    static MARKS: RefCell<Vec<(&'static str, Mark)>> = const { RefCell::new(Vec::new()) };
}

enum Mark {
    Cpu(Instant),
    #[cfg(feature = "cuda")]
    Cuda(cudarc::driver::CudaEvent),
}

/// Device time of one stage, summed over its calls.
#[derive(Debug, Clone, serde::Serialize)]
pub struct StageTime {
    pub stage: &'static str,
    pub ms: f64,
    pub calls: usize,
}

/// Starts collecting marks (dropping any left from an earlier profile).
pub fn start() {
    MARKS.with_borrow_mut(|m| m.clear());
    ON.set(true);
}

/// Whether marks are being collected.
pub fn active() -> bool {
    ON.get()
}

/// Marks the end of `stage` on `device`'s work queue (nothing when profiling is off).
pub fn mark(device: &Device, stage: &'static str) {
    if !active() {
        return;
    }
    let m = match device {
        #[cfg(feature = "cuda")]
        Device::Cuda(dev) => {
            use cudarc::driver::sys::CUevent_flags;
            match dev
                .cuda_stream()
                .record_event(Some(CUevent_flags::CU_EVENT_DEFAULT))
            {
                Ok(e) => Mark::Cuda(e),
                Err(_) => return,
            }
        }
        _ => Mark::Cpu(Instant::now()),
    };
    MARKS.with_borrow_mut(|v| v.push((stage, m)));
}

/// Stops collecting and returns the time of each stage, in the order stages first ended.
/// Waits for the device to finish the marked work.
pub fn stop() -> Result<Vec<StageTime>> {
    ON.set(false);
    let marks = MARKS.with_borrow_mut(std::mem::take);
    let mut out: Vec<StageTime> = Vec::new();
    for pair in marks.windows(2) {
        let (_, a) = &pair[0];
        let (stage, b) = &pair[1];
        let ms = match (a, b) {
            (Mark::Cpu(a), Mark::Cpu(b)) => b.duration_since(*a).as_secs_f64() * 1e3,
            #[cfg(feature = "cuda")]
            (Mark::Cuda(a), Mark::Cuda(b)) => a
                .elapsed_ms(b)
                .map_err(|e| crate::Error::msg(format!("profile event: {e}")))?
                as f64,
            #[cfg(feature = "cuda")]
            _ => continue,
        };
        match out.iter_mut().find(|s| s.stage == *stage) {
            Some(s) => {
                s.ms += ms;
                s.calls += 1;
            }
            None => out.push(StageTime {
                stage,
                ms,
                calls: 1,
            }),
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stages_sum_between_marks_and_nothing_is_kept_when_off() {
        let d = Device::Cpu;
        mark(&d, "ignored");
        start();
        mark(&d, "begin");
        std::thread::sleep(std::time::Duration::from_millis(20));
        mark(&d, "a");
        mark(&d, "b");
        std::thread::sleep(std::time::Duration::from_millis(10));
        mark(&d, "a");
        let s = stop().unwrap();
        mark(&d, "after");
        let names: Vec<_> = s.iter().map(|s| s.stage).collect();
        assert_eq!(names, ["a", "b"]);
        assert_eq!(s[0].calls, 2);
        assert!(s[0].ms >= 30.0, "{s:?}");
        assert!(s[1].ms < 10.0, "{s:?}");
        assert!(stop().unwrap().is_empty());
    }
}
