//! The control channel of a multi-process job and the watchdog that reads it.
//!
//! Rank 0 is the hub: every other rank has one control stream to it. A watchdog thread per
//! stream reads heartbeats, "done" and "failed" messages. When a rank reports an error,
//! falls silent, or its stream closes before it said "done" (killed, crashed), rank 0
//! decides the job's verdict ("rank k failed: …"), sends it to every other rank, prints it
//! and exits; each rank prints the verdict it receives and exits too, so every process ends
//! non-zero with the same line naming the failing rank.
//!
//! The watchdog never waits on the compute thread: a rank may be blocked forever inside an
//! NCCL call, so the process ends with `_exit` (no atexit teardown that could wait on the
//! GPU either).

use std::io::Write;
use std::net::TcpStream;
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use super::rendezvous::{read_frame, write_frame};
use crate::{Error, Result};

const PING: u8 = 0;
const DONE: u8 = 1;
const FAILED: u8 = 2;
const ABORT: u8 = 3;

/// How often every process tells its peers it is alive.
const HEARTBEAT: Duration = Duration::from_secs(2);
/// Silence after which a peer (hung machine, cut network) counts as failed.
const SILENCE: Duration = Duration::from_secs(30);
/// How long a failing rank > 0 waits for rank 0's verdict before printing its own error.
const VERDICT_WAIT: Duration = Duration::from_secs(5);
/// How long a failing rank 0 waits for a peer's earlier failure that may have caused its
/// own error (e.g. NCCL reporting a vanished peer) before blaming itself.
const ROOT_CAUSE_GRACE: Duration = Duration::from_millis(500);

/// Serialises the end of the process: the first thread to take it prints and exits.
static EXITING: Mutex<()> = Mutex::new(());

struct Peer {
    rank: usize,
    writer: Mutex<TcpStream>,
}

impl Peer {
    fn send(&self, kind: u8, text: &str) -> std::io::Result<()> {
        let mut w = self.writer.lock().unwrap_or_else(|p| p.into_inner());
        w.write_all(&[kind])?;
        write_frame(&mut *w, text.as_bytes())
    }
}

#[derive(Default)]
struct State {
    /// This process is past its part of the job (no more failures to report).
    finished: bool,
    /// Rank 0: which ranks said "done".
    done: Vec<bool>,
    verdict: Option<String>,
}

/// One process's end of the control channel.
pub(crate) struct Watchdog {
    rank: usize,
    /// Rank 0: ranks 1..world; other ranks: rank 0 only.
    peers: Vec<Peer>,
    state: Mutex<State>,
    cv: Condvar,
}

impl Watchdog {
    /// Starts watching `streams` (peer rank, control stream) and sending heartbeats.
    pub fn start(rank: usize, world: usize, streams: Vec<(usize, TcpStream)>) -> Result<Arc<Self>> {
        let mut readers = Vec::new();
        let mut peers = Vec::new();
        for (peer, s) in streams {
            let r = s
                .try_clone()
                .map_err(|e| Error::msg(format!("control link to rank {peer}: {e}")))?;
            r.set_read_timeout(Some(SILENCE)).ok();
            s.set_write_timeout(Some(Duration::from_secs(5))).ok();
            readers.push((peer, r));
            peers.push(Peer {
                rank: peer,
                writer: Mutex::new(s),
            });
        }
        let dog = Arc::new(Self {
            rank,
            peers,
            state: Mutex::new(State {
                done: vec![false; world],
                ..State::default()
            }),
            cv: Condvar::new(),
        });
        for (peer, r) in readers {
            let d = dog.clone();
            std::thread::Builder::new()
                .name(format!("phyai-watch-{peer}"))
                .spawn(move || d.watch(peer, r))
                .map_err(|e| Error::msg(format!("cannot start the watchdog: {e}")))?;
        }
        let d = dog.clone();
        std::thread::Builder::new()
            .name("phyai-heartbeat".into())
            .spawn(move || loop {
                std::thread::sleep(HEARTBEAT);
                if d.lock().finished {
                    return;
                }
                for p in &d.peers {
                    let _ = p.send(PING, "");
                }
            })
            .map_err(|e| Error::msg(format!("cannot start the heartbeat: {e}")))?;
        Ok(dog)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Reads one peer's control stream until the job ends.
    fn watch(&self, peer: usize, mut r: TcpStream) {
        loop {
            let mut kind = [0u8; 1];
            let msg = std::io::Read::read_exact(&mut r, &mut kind)
                .and_then(|_| read_frame(&mut r))
                .map(|m| (kind[0], String::from_utf8_lossy(&m).into_owned()));
            match msg {
                Ok((PING, _)) => {}
                Ok((DONE, _)) => {
                    self.lock().done[peer] = true;
                    self.cv.notify_all();
                }
                Ok((FAILED, m)) => self.job_failed(format!("rank {peer} failed: {m}")),
                Ok((ABORT, verdict)) => self.job_failed(verdict),
                Ok((k, _)) => self.job_failed(format!(
                    "rank {peer} failed: unexpected control message {k}"
                )),
                Err(e) => {
                    let s = self.lock();
                    if s.done[peer] || (s.finished && self.rank != 0) {
                        return; // a clean end
                    }
                    drop(s);
                    let why = if matches!(
                        e.kind(),
                        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                    ) {
                        format!("no sign of life for {} s", SILENCE.as_secs())
                    } else {
                        "its process ended without reporting an error (killed or crashed)".into()
                    };
                    self.job_failed(format!("rank {peer} failed: {why}"));
                }
            }
        }
    }

    /// A peer failed: record the verdict (the first one wins) and end the process, unless
    /// this rank > 0 already finished its part.
    fn job_failed(&self, verdict: String) {
        {
            let mut s = self.lock();
            if s.finished && self.rank != 0 {
                return;
            }
            s.verdict.get_or_insert(verdict);
        }
        self.cv.notify_all();
        self.exit_with_verdict()
    }

    /// Rank 0 passes the verdict on to every other rank; every process prints it and exits.
    fn exit_with_verdict(&self) -> ! {
        let _only_one = EXITING.lock().unwrap_or_else(|p| p.into_inner());
        let verdict = self
            .lock()
            .verdict
            .clone()
            .unwrap_or_else(|| format!("rank {} failed", self.rank));
        if self.rank == 0 {
            for p in &self.peers {
                let _ = p.send(ABORT, &verdict);
            }
        }
        die(&verdict)
    }

    /// This rank's own error: report it and end the process with the job's verdict (this
    /// error, or an earlier failure elsewhere that may have caused it).
    pub fn fail(&self, msg: &str) -> ! {
        let msg = msg.replace('\n', " ");
        if self.rank != 0 {
            let _ = self.peers[0].send(FAILED, &msg);
        }
        let wait = if self.rank == 0 {
            ROOT_CAUSE_GRACE
        } else {
            VERDICT_WAIT
        };
        {
            let s = self.lock();
            let (mut s, _) = self
                .cv
                .wait_timeout_while(s, wait, |s| s.verdict.is_none())
                .unwrap_or_else(|p| p.into_inner());
            s.verdict
                .get_or_insert_with(|| format!("rank {} failed: {msg}", self.rank));
        }
        self.exit_with_verdict()
    }

    /// Ends this process's part of the job. A rank > 0 tells rank 0 it is done; rank 0
    /// waits until every rank has (failing the job if one has not within `timeout`).
    pub fn finish(&self, timeout: Duration) {
        if self.rank != 0 {
            self.lock().finished = true;
            if let Err(e) = self.peers[0].send(DONE, "") {
                die(&format!(
                    "rank 0 failed: the control link closed before rank {} finished: {e}",
                    self.rank
                ));
            }
            return;
        }
        let deadline = Instant::now() + timeout;
        let mut s = self.lock();
        loop {
            let missing: Vec<usize> = self
                .peers
                .iter()
                .map(|p| p.rank)
                .filter(|&r| !s.done[r])
                .collect();
            if missing.is_empty() {
                s.finished = true;
                return;
            }
            let now = Instant::now();
            if now >= deadline {
                drop(s);
                let list: Vec<String> = missing.iter().map(|r| r.to_string()).collect();
                self.fail(&format!(
                    "rank(s) {} did not finish within {timeout:?} of rank 0",
                    list.join(", ")
                ));
            }
            s = self
                .cv
                .wait_timeout(s, deadline - now)
                .unwrap_or_else(|p| p.into_inner())
                .0;
        }
    }
}

/// Prints the one line of a failed job and ends the process at once.
fn die(line: &str) -> ! {
    eprintln!("error: {line}");
    #[cfg(unix)]
    {
        extern "C" {
            fn _exit(status: i32) -> !;
        }
        // SAFETY: `_exit` takes no pointers and never returns; skipping atexit handlers
        // is the point (they may wait on a GPU stream blocked in a collective).
        unsafe { _exit(1) }
    }
    #[cfg(not(unix))]
    std::process::exit(1)
}
