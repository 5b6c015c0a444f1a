//! The worker: one thread that owns the engine and runs queued jobs one at a time, in
//! arrival order, on every GPU of the topology. A failing job is marked failed with its
//! reason (a panic included) and the worker goes on with the next.
//!
//! A finished generation's files (thumbnail, mp4 encode) are written by a second thread
//! while the engine already runs the next job, so the encode costs the engine no time; the
//! job is `completed` only once its files are in place. At most one clip waits for the
//! writer, which bounds the memory held by finished clips.

use std::io::Cursor;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{sync_channel, Receiver, SyncSender};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::backend::{Backend, Clip, Observer, Rgb8Clip};
use crate::events::{Event, Live};
use crate::state::State;
use crate::store::Job;

/// A generated clip on its way to disk.
struct Finished {
    job: Job,
    clip: Clip,
    /// When the job left the queue.
    started: Instant,
}

/// Runs forever: takes the oldest queued job, runs it, hands the clip to the writer.
/// Records, per generated job, the worker's time outside the engine.
pub fn run(state: Arc<State>, mut backend: Backend, stall_at_step: Option<usize>) {
    let (to_writer, finished) = sync_channel::<Finished>(1);
    {
        let state = state.clone();
        std::thread::Builder::new()
            .name("phyai-serve-writer".into())
            .spawn(move || writer(&state, finished))
            .expect("cannot start the writer thread");
    }
    loop {
        let seen = state.work_counter();
        let claimed = Instant::now();
        match state.store.claim_next() {
            Ok(Some(job)) => {
                let engine = run_one(&state, &mut backend, job, stall_at_step, &to_writer);
                // The server's own share of the worker's time for this job: claiming it,
                // recording its state and handing its clip over (waiting for the writer
                // included), i.e. everything but the engine.
                if let Some(engine) = engine {
                    let own = claimed.elapsed().saturating_sub(engine);
                    state.metrics.server_time(own.as_secs_f64());
                }
            }
            Ok(None) => {
                state.wait_for_work(seen, Duration::from_secs(1));
            }
            Err(e) => {
                eprintln!("phyai serve: cannot read the queue: {e}");
                std::thread::sleep(Duration::from_secs(1));
            }
        }
    }
}

/// Writes each finished clip and records its outcome.
fn writer(state: &State, finished: Receiver<Finished>) {
    while let Ok(Finished { job, clip, started }) = finished.recv() {
        let id = job.id.clone();
        state.events.set_writing(
            &id,
            Some(Live {
                id: id.clone(),
                stage: "write".into(),
                done: 0,
                total: 1,
                progress: Live::percent("write", 0, 1),
            }),
        );
        let written = clip
            .rgb8()
            .and_then(|rgb| write_outputs(state, &id, &job, &rgb));
        let outcome = match written {
            Ok(()) => Outcome::Done(clip.engine_time),
            Err(e) => Outcome::Failed("output_failed", e.to_string()),
        };
        record(state, &id, outcome, started);
        state.events.set_writing(&id, None);
        state.events.send(Event::Changed(id));
    }
}

/// Runs one job; the engine's time when it produced a clip for the writer.
fn run_one(
    state: &State,
    backend: &mut Backend,
    job: Job,
    stall_at_step: Option<usize>,
    to_writer: &SyncSender<Finished>,
) -> Option<Duration> {
    let started = Instant::now();
    let id = job.id.clone();
    let cancel = Arc::new(AtomicBool::new(false));
    state.set_running(Some((id.clone(), cancel.clone())));
    state.events.send(Event::Changed(id.clone()));
    let observer = JobObserver {
        state,
        id: id.clone(),
        cancel: cancel.clone(),
        stall_at_step,
        stage: Mutex::new(("".into(), 0, 0, Instant::now())),
    };
    let image = job.has_image.then(|| state.store.input_path(&id));
    let control = |hint: &str| state.store.control_path(&id, hint);
    let result = catch_unwind(AssertUnwindSafe(|| {
        backend.generate(&job.params, image.as_deref(), &control, &observer)
    }));
    let outcome = match result {
        // Deleted while running: its row is gone; whatever was produced is dropped.
        _ if cancel.load(Ordering::SeqCst) => Outcome::Deleted,
        Ok(Ok(clip)) => {
            state.events.set_live(None);
            state.set_running(None);
            let engine = clip.engine_time;
            let finished = Finished { job, clip, started };
            if let Err(e) = to_writer.send(finished) {
                // The writer is gone (it only ends with the process): fail the job.
                let msg = "the output writer stopped".to_string();
                record(
                    state,
                    &id,
                    Outcome::Failed("internal_error", msg),
                    e.0.started,
                );
                state.events.send(Event::Changed(id));
                return None;
            }
            return Some(engine);
        }
        Ok(Err(e)) => Outcome::Failed("generation_failed", e.to_string()),
        Err(panic) => {
            let msg = panic
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
                .unwrap_or_else(|| "unknown panic".into());
            Outcome::Failed("internal_error", format!("the engine panicked: {msg}"))
        }
    };
    state.events.set_live(None);
    record(state, &id, outcome, started);
    state.set_running(None);
    state.events.send(Event::Changed(id));
    None
}

/// Stores a job's outcome; a job deleted meanwhile leaves no files behind.
fn record(state: &State, id: &str, outcome: Outcome, started: Instant) {
    let recorded = match &outcome {
        Outcome::Done(engine) => {
            let total = started.elapsed().as_secs_f64();
            let r = state.store.complete(id, engine.as_secs_f64(), total);
            if matches!(r, Ok(true)) {
                state.metrics.job_finished(engine.as_secs_f64(), total);
                eprintln!(
                    "phyai serve: {id} completed: engine {:.3} s, dequeue to mp4 {total:.3} s",
                    engine.as_secs_f64()
                );
            }
            r
        }
        Outcome::Failed(code, msg) => {
            eprintln!("phyai serve: {id} failed: {msg}");
            state.store.fail(id, code, msg)
        }
        Outcome::Deleted => Ok(false),
    };
    match recorded {
        Ok(true) => {}
        // The job was deleted meanwhile: its files must not outlive it.
        Ok(false) => state.remove_files(id),
        Err(e) => eprintln!("phyai serve: {id}: cannot record the outcome: {e}"),
    }
}

enum Outcome {
    Done(Duration),
    Failed(&'static str, String),
    Deleted,
}

/// The thumbnail (first frame, PNG) then the mp4, each written aside and renamed into
/// place; the job is marked completed only after both exist.
fn write_outputs(state: &State, id: &str, job: &Job, clip: &Rgb8Clip) -> phyai::Result<()> {
    let frame = clip.height * clip.width * 3;
    let first = clip
        .rgb
        .get(..frame)
        .ok_or_else(|| phyai::Error::msg("the engine returned no frames"))?;
    let img = image::RgbImage::from_raw(clip.width as u32, clip.height as u32, first.to_vec())
        .ok_or_else(|| phyai::Error::msg("thumbnail: frame size mismatch"))?;
    let mut png = Cursor::new(Vec::new());
    img.write_to(&mut png, image::ImageFormat::Png)
        .map_err(|e| phyai::Error::msg(format!("thumbnail: {e}")))?;
    phyai::io::atomic::write_atomic(&state.store.thumbnail_path(id), png.get_ref())?;
    phyai::io::video::write_mp4(
        &state.store.video_path(id),
        &clip.rgb,
        clip.frames,
        clip.height,
        clip.width,
        job.params.fps,
        clip.audio.as_ref().map(|(s, r)| (s.as_slice(), *r)),
    )
}

/// Feeds the engine's progress to the live state, the event stream and the step-time
/// metric, and answers its cancellation question from the job's delete flag.
struct JobObserver<'a> {
    state: &'a State,
    id: String,
    cancel: Arc<AtomicBool>,
    /// Test hook: stop making progress after this denoising step until cancelled.
    stall_at_step: Option<usize>,
    /// Current stage, units done, total, and when the last unit ended.
    stage: Mutex<(String, usize, usize, Instant)>,
}

impl JobObserver<'_> {
    fn publish(&self, stage: &str, done: usize, total: usize) {
        self.state.events.set_live(Some(Live {
            id: self.id.clone(),
            stage: stage.to_string(),
            done,
            total,
            progress: Live::percent(stage, done, total),
        }));
    }
}

impl Observer for JobObserver<'_> {
    fn stage(&self, name: &str, total: usize) {
        *self.stage.lock().unwrap_or_else(|p| p.into_inner()) =
            (name.to_string(), 0, total, Instant::now());
        self.publish(name, 0, total);
    }

    fn step(&self) {
        let (name, done, total) = {
            let mut g = self.stage.lock().unwrap_or_else(|p| p.into_inner());
            g.1 += 1;
            if g.0 == "denoise" {
                self.state.metrics.step(g.3.elapsed().as_secs_f64());
            }
            g.3 = Instant::now();
            (g.0.clone(), g.1, g.2)
        };
        self.publish(&name, done, total);
        if name == "denoise" && self.stall_at_step == Some(done) {
            eprintln!(
                "phyai serve: {} stalled after denoising step {done}",
                self.id
            );
            while !self.cancelled() {
                std::thread::sleep(Duration::from_millis(20));
            }
        }
    }

    fn cancelled(&self) -> bool {
        self.cancel.load(Ordering::SeqCst)
    }
}
