//! Progress bars on stderr (indicatif) and the per-stage timing summary.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressStyle};
use phyai::engine::Progress;

/// Draws one bar per engine stage; silent when `quiet`.
pub struct Bars {
    quiet: bool,
    current: Mutex<Option<ProgressBar>>,
    /// When the first denoising stage began (start-up time is measured up to it).
    denoise_started: OnceLock<Instant>,
}

impl Bars {
    pub fn new(quiet: bool) -> Self {
        Self {
            quiet,
            current: Mutex::new(None),
            denoise_started: OnceLock::new(),
        }
    }

    /// When the first denoising stage began, if one did.
    pub fn denoise_started(&self) -> Option<Instant> {
        self.denoise_started.get().copied()
    }
}

impl Progress for Bars {
    fn stage(&self, name: &str, total: usize) {
        if name == "denoise" {
            self.denoise_started.get_or_init(Instant::now);
        }
        if self.quiet {
            return;
        }
        let bar = ProgressBar::new(total as u64);
        let style = ProgressStyle::with_template(
            "{prefix:>9} [{bar:30}] {pos}/{len} {per_sec} elapsed {elapsed_precise} eta {eta_precise}",
        )
        .unwrap_or_else(|_| ProgressStyle::default_bar())
        .progress_chars("=> ");
        bar.set_style(style);
        bar.set_prefix(name.to_string());
        *self.current.lock().unwrap() = Some(bar);
    }

    fn step(&self) {
        if let Some(b) = self.current.lock().unwrap().as_ref() {
            b.inc(1);
        }
    }

    fn done(&self, _name: &str, _elapsed: Duration) {
        if let Some(b) = self.current.lock().unwrap().take() {
            b.finish();
        }
    }
}

/// A bar over bytes (`name [====>  ] 12.3 GiB/30.1 GiB 2.1 GiB/s`), hidden when `quiet`.
pub fn bytes_bar(name: &str, quiet: bool) -> ProgressBar {
    if quiet {
        return ProgressBar::hidden();
    }
    let bar = ProgressBar::new(0);
    let style = ProgressStyle::with_template(
        "{prefix:>9} [{bar:30}] {binary_bytes}/{binary_total_bytes} {binary_bytes_per_sec} elapsed {elapsed_precise}",
    )
    .unwrap_or_else(|_| ProgressStyle::default_bar())
    .progress_chars("=> ");
    bar.set_style(style);
    bar.set_prefix(name.to_string());
    bar
}

/// `name  1.23 s` lines, then the total.
pub fn summary(timings: &[(String, Duration)]) -> String {
    let mut out = String::new();
    let mut total = Duration::ZERO;
    for (name, d) in timings {
        out.push_str(&format!("  {name:<12} {:>9.3} s\n", d.as_secs_f64()));
        total += *d;
    }
    out.push_str(&format!("  {:<12} {:>9.3} s", "total", total.as_secs_f64()));
    out
}

/// Test hook for fault tests: with `PHYAI_TEST_STALL_AT_STEP=k` the process announces on
/// stderr that it has finished denoising step k and then stops making progress for good,
/// so a test can kill it mid-run at a known point.
pub struct StallHook<P> {
    inner: P,
    at: Option<usize>,
    denoising: AtomicBool,
    steps: AtomicUsize,
}

impl<P: Progress> StallHook<P> {
    pub fn from_env(inner: P) -> phyai::Result<Self> {
        let at = match std::env::var("PHYAI_TEST_STALL_AT_STEP") {
            Ok(v) => Some(v.trim().parse().map_err(|_| {
                phyai::Error::invalid("PHYAI_TEST_STALL_AT_STEP", format!("not a step: {v:?}"))
            })?),
            Err(_) => None,
        };
        Ok(Self {
            inner,
            at,
            denoising: AtomicBool::new(false),
            steps: AtomicUsize::new(0),
        })
    }

    pub fn inner(&self) -> &P {
        &self.inner
    }
}

impl<P: Progress> Progress for StallHook<P> {
    fn stage(&self, name: &str, total: usize) {
        self.denoising.store(name == "denoise", Ordering::Relaxed);
        self.inner.stage(name, total)
    }

    fn step(&self) {
        self.inner.step();
        if self.denoising.load(Ordering::Relaxed) {
            let n = self.steps.fetch_add(1, Ordering::Relaxed) + 1;
            if Some(n) == self.at {
                eprintln!("test hook: stalling after denoising step {n}");
                loop {
                    std::thread::park();
                }
            }
        }
    }

    fn done(&self, name: &str, elapsed: Duration) {
        self.inner.done(name, elapsed)
    }
}

/// The load bar: polls the weight loader's byte counter until [`LoadBar::finish`].
pub struct LoadBar {
    stop: std::sync::Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl LoadBar {
    /// `expected`: the bytes the load will read (the bar's length).
    pub fn start(expected: u64, quiet: bool) -> Self {
        let stop = std::sync::Arc::new(AtomicBool::new(false));
        let thread = (!quiet).then(|| {
            let stop = stop.clone();
            std::thread::spawn(move || {
                let bar = bytes_bar("load", false);
                bar.set_length(expected);
                let base = phyai::io::load_stats::load_stats().bytes;
                while !stop.load(Ordering::Relaxed) {
                    let done = phyai::io::load_stats::load_stats().bytes - base;
                    bar.set_position(done.min(expected));
                    std::thread::sleep(Duration::from_millis(100));
                }
                bar.finish_and_clear();
            })
        });
        Self { stop, thread }
    }

    pub fn finish(mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}
