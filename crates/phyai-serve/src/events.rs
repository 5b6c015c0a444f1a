//! Live progress of the running job and the broadcast that feeds server-sent events.
//!
//! Per-step progress lives in memory only (a step is far too frequent to be worth a
//! durable write); state changes go to the store first and are announced here after.

use std::sync::Mutex;

use tokio::sync::broadcast;

/// Progress of the running job.
#[derive(Debug, Clone, PartialEq)]
pub struct Live {
    pub id: String,
    /// The engine's current stage (`text`, `denoise`, `decode`, `write`).
    pub stage: String,
    /// Units done in that stage, of `total`.
    pub done: usize,
    pub total: usize,
    /// 0–100 over the whole job.
    pub progress: u8,
}

impl Live {
    /// The job's overall percentage: text encoding up to 2, denoising to 92 (the bulk of
    /// the time), decoding to 96, writing to 99; 100 is reserved for `completed`.
    pub fn percent(stage: &str, done: usize, total: usize) -> u8 {
        let frac = if total == 0 {
            0.0
        } else {
            (done.min(total) as f64) / total as f64
        };
        let (from, to) = match stage {
            "text" => (0.0, 2.0),
            "denoise" => (2.0, 92.0),
            "decode" | "audio" => (92.0, 96.0),
            "write" => (96.0, 99.0),
            _ => (0.0, 0.0),
        };
        (from + (to - from) * frac).floor() as u8
    }
}

/// What happened to a job.
#[derive(Debug, Clone)]
pub enum Event {
    /// Its stored state changed (created, started, completed, failed): read it again.
    Changed(String),
    /// The running job made progress.
    Progress(Live),
    /// It was deleted.
    Deleted(String),
}

impl Event {
    pub fn id(&self) -> &str {
        match self {
            Event::Changed(id) | Event::Deleted(id) => id,
            Event::Progress(l) => &l.id,
        }
    }
}

pub struct Events {
    tx: broadcast::Sender<Event>,
    live: Mutex<Option<Live>>,
}

impl Default for Events {
    fn default() -> Self {
        Self::new()
    }
}

impl Events {
    pub fn new() -> Self {
        let (tx, _) = broadcast::channel(1024);
        Self {
            tx,
            live: Mutex::new(None),
        }
    }

    pub fn subscribe(&self) -> broadcast::Receiver<Event> {
        self.tx.subscribe()
    }

    /// Sends to whoever listens (nobody listening is fine).
    pub fn send(&self, e: Event) {
        let _ = self.tx.send(e);
    }

    pub fn set_live(&self, live: Option<Live>) {
        *self.live.lock().unwrap_or_else(|p| p.into_inner()) = live.clone();
        if let Some(l) = live {
            self.send(Event::Progress(l));
        }
    }

    /// The live progress of job `id`, if it is the one running.
    pub fn live(&self, id: &str) -> Option<Live> {
        self.live
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .as_ref()
            .filter(|l| l.id == id)
            .cloned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percent_grows_through_the_stages() {
        assert_eq!(Live::percent("text", 0, 2), 0);
        assert_eq!(Live::percent("text", 2, 2), 2);
        assert_eq!(Live::percent("denoise", 0, 4), 2);
        assert_eq!(Live::percent("denoise", 2, 4), 47);
        assert_eq!(Live::percent("denoise", 4, 4), 92);
        assert_eq!(Live::percent("decode", 1, 1), 96);
        assert_eq!(Live::percent("write", 0, 1), 96);
        assert_eq!(Live::percent("denoise", 9, 4), 92);
    }

    #[test]
    fn live_progress_is_per_job() {
        let ev = Events::new();
        let mut rx = ev.subscribe();
        ev.set_live(Some(Live {
            id: "a".into(),
            stage: "denoise".into(),
            done: 1,
            total: 2,
            progress: 47,
        }));
        assert_eq!(ev.live("a").unwrap().done, 1);
        assert!(ev.live("b").is_none());
        assert_eq!(rx.try_recv().unwrap().id(), "a");
        ev.set_live(None);
        assert!(ev.live("a").is_none());
    }
}
