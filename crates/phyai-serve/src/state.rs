//! What the HTTP handlers and the worker share.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;

use crate::events::Events;
use crate::metrics::Metrics;
use crate::params::ModelInfo;
use crate::store::Store;

pub struct State {
    pub store: Store,
    pub events: Events,
    pub metrics: Metrics,
    pub model: ModelInfo,
    pub api_key: Option<String>,
    pub max_queue: usize,
    pub max_body_bytes: usize,
    /// The running job and its cancel flag.
    running: Mutex<Option<(String, Arc<AtomicBool>)>>,
    /// Bumped on every new job; the worker sleeps on it while the queue is empty.
    work: (Mutex<u64>, Condvar),
}

impl State {
    pub fn new(
        store: Store,
        model: ModelInfo,
        api_key: Option<String>,
        max_queue: usize,
        max_body_bytes: usize,
    ) -> Self {
        Self {
            store,
            events: Events::new(),
            metrics: Metrics::default(),
            model,
            api_key,
            max_queue,
            max_body_bytes,
            running: Mutex::new(None),
            work: (Mutex::new(0), Condvar::new()),
        }
    }

    /// Tells the worker a job was queued.
    pub fn wake_worker(&self) {
        let (m, cv) = &self.work;
        *m.lock().unwrap_or_else(|p| p.into_inner()) += 1;
        cv.notify_all();
    }

    /// Sleeps until a job is queued or `timeout` passes (the worker then polls anyway).
    pub fn wait_for_work(&self, seen: u64, timeout: Duration) -> u64 {
        let (m, cv) = &self.work;
        let g = m.lock().unwrap_or_else(|p| p.into_inner());
        let (g, _) = cv
            .wait_timeout_while(g, timeout, |n| *n == seen)
            .unwrap_or_else(|p| p.into_inner());
        *g
    }

    pub fn work_counter(&self) -> u64 {
        *self.work.0.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn set_running(&self, job: Option<(String, Arc<AtomicBool>)>) {
        *self.running.lock().unwrap_or_else(|p| p.into_inner()) = job;
    }

    /// Asks the running job to stop if it is `id`; whether it was running.
    pub fn cancel_running(&self, id: &str) -> bool {
        let g = self.running.lock().unwrap_or_else(|p| p.into_inner());
        match g.as_ref() {
            Some((running, flag)) if running == id => {
                flag.store(true, Ordering::SeqCst);
                true
            }
            _ => false,
        }
    }

    /// Removes a job's files (absent ones are fine).
    pub fn remove_files(&self, id: &str) {
        let controls =
            phyai::models::cosmos3::Hint::ALL.map(|h| self.store.control_path(id, h.name()));
        for p in [
            self.store.video_path(id),
            self.store.thumbnail_path(id),
            self.store.input_path(id),
        ]
        .into_iter()
        .chain(controls)
        {
            let _ = std::fs::remove_file(p);
        }
    }
}
