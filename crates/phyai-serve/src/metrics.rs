//! Counters for `GET /metrics` (Prometheus text format): queue length, jobs by state,
//! denoising step time, per-job engine time against dequeue-to-mp4 time, and the
//! worker's time outside the engine (the server's overhead on the engine's timeline).

use std::fmt::Write;
use std::sync::Mutex;

use crate::store::Status;

#[derive(Debug, Default, Clone)]
struct Totals {
    steps: u64,
    step_seconds: f64,
    jobs_finished: u64,
    generation_seconds: f64,
    total_seconds: f64,
    last_generation_seconds: f64,
    last_total_seconds: f64,
    rejected_queue_full: u64,
    server_jobs: u64,
    server_seconds: f64,
    last_server_seconds: f64,
}

#[derive(Default)]
pub struct Metrics {
    totals: Mutex<Totals>,
}

impl Metrics {
    fn with<R>(&self, f: impl FnOnce(&mut Totals) -> R) -> R {
        f(&mut self.totals.lock().unwrap_or_else(|p| p.into_inner()))
    }

    pub fn step(&self, seconds: f64) {
        self.with(|t| {
            t.steps += 1;
            t.step_seconds += seconds;
        })
    }

    /// A job's mp4 is in place: `generation` seconds in the engine, `total` from dequeue.
    pub fn job_finished(&self, generation: f64, total: f64) {
        self.with(|t| {
            t.jobs_finished += 1;
            t.generation_seconds += generation;
            t.total_seconds += total;
            t.last_generation_seconds = generation;
            t.last_total_seconds = total;
        })
    }

    /// The worker's time on a job outside the engine (claim, bookkeeping, hand-over).
    pub fn server_time(&self, seconds: f64) {
        self.with(|t| {
            t.server_jobs += 1;
            t.server_seconds += seconds;
            t.last_server_seconds = seconds;
        })
    }

    pub fn rejected_queue_full(&self) {
        self.with(|t| t.rejected_queue_full += 1)
    }

    /// The exposition text, with the job counts read from the store.
    pub fn render(&self, counts: &[(Status, u64)]) -> String {
        let t = self.with(|t| t.clone());
        let mut s = String::new();
        let queued = counts
            .iter()
            .find(|(st, _)| *st == Status::Queued)
            .map_or(0, |(_, n)| *n);
        let mut gauge = |name: &str, help: &str, kind: &str, value: String| {
            let _ = writeln!(
                s,
                "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {value}"
            );
        };
        gauge(
            "phyai_queue_length",
            "Videos waiting to run.",
            "gauge",
            queued.to_string(),
        );
        gauge(
            "phyai_rejected_queue_full_total",
            "Create requests refused because the queue was full.",
            "counter",
            t.rejected_queue_full.to_string(),
        );
        let _ = writeln!(
            s,
            "# HELP phyai_jobs Videos by state.\n# TYPE phyai_jobs gauge"
        );
        for (st, n) in counts {
            let _ = writeln!(s, "phyai_jobs{{state=\"{}\"}} {n}", st.as_str());
        }
        let _ = writeln!(
            s,
            "# HELP phyai_step_seconds Wall time of one denoising step.\n\
             # TYPE phyai_step_seconds summary\n\
             phyai_step_seconds_sum {}\nphyai_step_seconds_count {}",
            t.step_seconds, t.steps
        );
        let _ = writeln!(
            s,
            "# HELP phyai_generation_seconds The engine's own time per finished video.\n\
             # TYPE phyai_generation_seconds summary\n\
             phyai_generation_seconds_sum {}\nphyai_generation_seconds_count {}",
            t.generation_seconds, t.jobs_finished
        );
        let _ = writeln!(
            s,
            "# HELP phyai_job_seconds Time from dequeue to the mp4 being in place, per finished video.\n\
             # TYPE phyai_job_seconds summary\n\
             phyai_job_seconds_sum {}\nphyai_job_seconds_count {}",
            t.total_seconds, t.jobs_finished
        );
        let _ = writeln!(
            s,
            "# HELP phyai_server_seconds The worker's time per generated video outside the engine: \
             what the server adds to the engine's timeline.\n\
             # TYPE phyai_server_seconds summary\n\
             phyai_server_seconds_sum {}\nphyai_server_seconds_count {}",
            t.server_seconds, t.server_jobs
        );
        let mut gauge = |name: &str, help: &str, value: f64| {
            let _ = writeln!(
                s,
                "# HELP {name} {help}\n# TYPE {name} gauge\n{name} {value}"
            );
        };
        gauge(
            "phyai_last_generation_seconds",
            "The engine's own time for the last finished video.",
            t.last_generation_seconds,
        );
        gauge(
            "phyai_last_job_seconds",
            "Dequeue to mp4 in place for the last finished video.",
            t.last_total_seconds,
        );
        gauge(
            "phyai_last_server_seconds",
            "The worker's time outside the engine for the last generated video.",
            t.last_server_seconds,
        );
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn render_reports_counts_and_sums() {
        let m = Metrics::default();
        m.step(0.5);
        m.step(0.25);
        m.job_finished(2.0, 2.5);
        m.rejected_queue_full();
        m.server_time(0.125);
        m.server_time(0.375);
        let text = m.render(&[(Status::Queued, 3), (Status::Completed, 1)]);
        for line in [
            "phyai_queue_length 3",
            "phyai_jobs{state=\"queued\"} 3",
            "phyai_jobs{state=\"completed\"} 1",
            "phyai_step_seconds_sum 0.75",
            "phyai_step_seconds_count 2",
            "phyai_generation_seconds_sum 2",
            "phyai_job_seconds_sum 2.5",
            "phyai_last_job_seconds 2.5",
            "phyai_rejected_queue_full_total 1",
            "phyai_server_seconds_sum 0.5",
            "phyai_server_seconds_count 2",
            "phyai_last_server_seconds 0.375",
        ] {
            assert!(
                text.lines().any(|l| l == line),
                "missing {line:?} in\n{text}"
            );
        }
    }
}
