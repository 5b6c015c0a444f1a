//! `phyai generate` as a multi-process job (torchrun-style environment, one process per
//! rank): the same output as one process, only rank 0 writes, and a killed or failing rank
//! ends every process promptly with one line naming it and no output file.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

#[path = "../../../tests/support/mod.rs"]
mod support;
use support::{fixtures, rel_err};

/// How long any process of a test may take before the test fails (the jobs take seconds).
const LIMIT: Duration = Duration::from_secs(60);

/// The job's flags shared by every rank: the tiny checkpoint, a short guided T2AV request.
fn request_args(extra: &[&str]) -> Vec<String> {
    let tiny = fixtures().join("tiny");
    let mut a: Vec<String> = [
        "generate",
        "--checkpoint",
        tiny.to_str().unwrap(),
        "--prompt",
        "A robot arm stacks three red cubes on a wooden table.",
        "--num-frames",
        "9",
        "--height",
        "64",
        "--width",
        "96",
        "--steps",
        "3",
        "--guidance-scale",
        "6",
        "--sound",
        "--quiet",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    a.extend(extra.iter().map(|s| s.to_string()));
    a
}

fn outputs(dir: &Path) -> Vec<String> {
    let o = dir.join("clip");
    let d = dir.join("dump");
    vec![
        "--out".into(),
        o.to_str().unwrap().into(),
        "--dump-dir".into(),
        d.to_str().unwrap().into(),
    ]
}

/// The `phyai` binary with no launch variables inherited from the test's environment.
fn phyai() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_phyai"));
    for k in [
        "WORLD_SIZE",
        "RANK",
        "LOCAL_RANK",
        "MASTER_ADDR",
        "MASTER_PORT",
        "PHYAI_TEST_STALL_AT_STEP",
    ] {
        c.env_remove(k);
    }
    c.env("PHYAI_LOG", "off");
    c
}

/// A port free now and not handed to another test of this run (tests run concurrently).
fn free_port() -> u16 {
    static GIVEN: Mutex<Vec<u16>> = Mutex::new(Vec::new());
    loop {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let mut given = GIVEN.lock().unwrap();
        if !given.contains(&port) {
            given.push(port);
            return port;
        }
    }
}

/// A running rank whose stderr is collected as it arrives.
struct Rank {
    child: Child,
    stderr: Arc<Mutex<String>>,
}

impl Rank {
    fn spawn(mut cmd: Command) -> Self {
        let mut child = cmd
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start phyai");
        let stderr = Arc::new(Mutex::new(String::new()));
        let pipe = child.stderr.take().unwrap();
        let sink = stderr.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(pipe).lines().map_while(Result::ok) {
                let mut s = sink.lock().unwrap();
                s.push_str(&line);
                s.push('\n');
            }
        });
        Self { child, stderr }
    }

    fn stderr(&self) -> String {
        self.stderr.lock().unwrap().clone()
    }

    /// Waits for the exit (killing the process and failing the test past `limit`).
    fn wait(&mut self, limit: Duration) -> (ExitStatus, Duration) {
        let start = Instant::now();
        loop {
            if let Some(st) = self.child.try_wait().unwrap() {
                // Let the reader drain the pipe.
                std::thread::sleep(Duration::from_millis(50));
                return (st, start.elapsed());
            }
            if start.elapsed() > limit {
                let _ = self.child.kill();
                panic!("still running after {limit:?}:\n{}", self.stderr());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

/// Starts `world` processes of one job; rank r gets `args(r)` and `env(r)`.
fn launch(
    world: usize,
    args: impl Fn(usize) -> Vec<String>,
    env: impl Fn(usize) -> Vec<(&'static str, String)>,
) -> Vec<Rank> {
    let port = free_port().to_string();
    (0..world)
        .map(|r| {
            let mut c = phyai();
            c.args(args(r))
                .env("WORLD_SIZE", world.to_string())
                .env("RANK", r.to_string())
                .env("LOCAL_RANK", r.to_string())
                .env("MASTER_ADDR", "127.0.0.1")
                .env("MASTER_PORT", &port);
            for (k, v) in env(r) {
                c.env(k, v);
            }
            Rank::spawn(c)
        })
        .collect()
}

fn run_single(args: Vec<String>) {
    let o = phyai().args(args).output().unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
}

fn load(dir: &Path, name: &str) -> std::collections::HashMap<String, candle_core::Tensor> {
    candle_core::safetensors::load(dir.join(name), &candle_core::Device::Cpu).unwrap()
}

fn entries(dir: &Path) -> Vec<PathBuf> {
    match std::fs::read_dir(dir) {
        Ok(rd) => rd.map(|e| e.unwrap().path()).collect(),
        Err(_) => Vec::new(),
    }
}

/// One process with one rank, the same topology as threads of one process, and the same
/// topology as a job of processes. The job's latents and soundtrack match one rank to 1e-5
/// and every output matches the threaded run bit for bit; only rank 0 writes files. (The
/// decoded video of any parallel run is not compared with one rank: the ranks decode
/// spatial tiles with halos, which approximates the whole-frame decode.)
fn job_matches_one_process(world: usize, topology: &[&str]) {
    let tmp = tempfile::tempdir().unwrap();
    let dir = |n: &str| {
        let d = tmp.path().join(n);
        std::fs::create_dir_all(&d).unwrap();
        d
    };
    let single = dir("single");
    run_single(
        request_args(&[])
            .into_iter()
            .chain(outputs(&single))
            .collect(),
    );
    let threads = dir("threads");
    run_single(
        request_args(topology)
            .into_iter()
            .chain(outputs(&threads))
            .collect(),
    );
    let ranks: Vec<PathBuf> = (0..world).map(|r| dir(&format!("rank{r}"))).collect();
    let start = Instant::now();
    let mut job = launch(
        world,
        |r| {
            request_args(topology)
                .into_iter()
                .chain(outputs(&ranks[r]))
                .collect()
        },
        |_| vec![],
    );
    for (r, p) in job.iter_mut().enumerate() {
        let (st, _) = p.wait(LIMIT);
        assert!(st.success(), "rank {r}: {}", p.stderr());
    }
    println!("{topology:?}: {world} processes in {:.2?}", start.elapsed());
    for r in &ranks[1..] {
        assert!(entries(r).is_empty(), "a rank > 0 wrote {:?}", entries(r));
    }
    let out0 = &ranks[0];
    assert!(out0.join("clip.mp4").is_file() && out0.join("clip.wav").is_file());
    for file in ["latents.safetensors", "output.safetensors"] {
        let want = load(&single.join("dump"), file);
        let same = load(&threads.join("dump"), file);
        let got = load(&out0.join("dump"), file);
        assert_eq!(want.len(), got.len());
        for (k, w) in &want {
            if !(file == "output.safetensors" && k == "video") {
                let e = rel_err(&got[k], w);
                println!("{file} {k}: rel err vs one rank {e:.1e}");
                assert!(e <= 1e-5, "{file} {k}: rel err {e:e} vs one rank");
            }
            let d = rel_err(&got[k], &same[k]);
            assert_eq!(d, 0.0, "{file} {k}: differs from the threaded run");
        }
    }
}

#[test]
fn two_tp_processes_match_one() {
    job_matches_one_process(2, &["--tp", "2"]);
}

#[test]
fn two_cfg_processes_match_one() {
    job_matches_one_process(2, &["--cfg", "2"]);
}

#[test]
fn four_cfg_tp_processes_match_one() {
    job_matches_one_process(4, &["--cfg", "2", "--tp", "2"]);
}

/// Asserts a process ended non-zero with exactly one stderr line naming `needles`.
fn assert_one_line(p: &Rank, st: ExitStatus, needles: &[&str], who: &str) {
    let stderr = p.stderr();
    assert!(!st.success(), "{who} should fail:\n{stderr}");
    let lines: Vec<&str> = stderr.lines().filter(|l| !l.trim().is_empty()).collect();
    assert_eq!(lines.len(), 1, "{who}: expected one line, got:\n{stderr}");
    for n in needles {
        assert!(
            lines[0].starts_with("error: ") && lines[0].contains(n),
            "{who}: {:?} should name {n:?}",
            lines[0]
        );
    }
}

#[test]
fn a_killed_rank_ends_the_job_naming_it() {
    let tmp = tempfile::tempdir().unwrap();
    let mut job = launch(
        2,
        |_| {
            request_args(&["--tp", "2"])
                .into_iter()
                .chain(outputs(tmp.path()))
                .collect()
        },
        |r| match r {
            1 => vec![("PHYAI_TEST_STALL_AT_STEP", "1".to_string())],
            _ => vec![],
        },
    );
    // Rank 1 announces it is mid-run (between denoising steps), then is killed -9.
    let start = Instant::now();
    while !job[1].stderr().contains("stalling after denoising step 1") {
        assert!(start.elapsed() < LIMIT, "rank 1: {}", job[1].stderr());
        assert!(
            job[0].child.try_wait().unwrap().is_none(),
            "{}",
            job[0].stderr()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    job[1].child.kill().unwrap();
    let (st, took) = job[0].wait(LIMIT);
    println!("rank 0 exited {took:.2?} after rank 1 was killed");
    assert_one_line(
        &job[0],
        st,
        &["rank 1 failed", "killed or crashed"],
        "rank 0",
    );
    job[1].wait(LIMIT);
    assert!(entries(tmp.path()).is_empty(), "{:?}", entries(tmp.path()));
}

#[test]
fn an_error_in_one_rank_ends_the_job_naming_it() {
    let tmp = tempfile::tempdir().unwrap();
    // Initial noise of the wrong shape: the rank fails inside its generation, after the
    // others have entered theirs.
    let noise = tmp.path().join("noise.safetensors");
    let t = candle_core::Tensor::zeros(
        (1, 48, 1, 1, 1),
        candle_core::DType::F32,
        &candle_core::Device::Cpu,
    )
    .unwrap();
    candle_core::safetensors::save(&[("video".to_string(), t)].into(), &noise).unwrap();
    // The same error raised before the engine exists (a file missing on one node).
    let missing = tmp.path().join("missing.safetensors");
    for (failing, file) in [(1, &noise), (0, &noise), (1, &missing)] {
        let out = tmp.path().join(format!("out-{failing}"));
        std::fs::create_dir_all(&out).unwrap();
        let start = Instant::now();
        let mut job = launch(
            2,
            |r| {
                let mut a = request_args(&["--cfg", "2"]);
                a.extend(outputs(&out));
                if r == failing {
                    a.extend(["--init-noise".into(), file.to_str().unwrap().into()]);
                }
                a
            },
            |_| vec![],
        );
        for (r, p) in job.iter_mut().enumerate() {
            let (st, _) = p.wait(LIMIT);
            let who = format!("rank {r} (rank {failing} failing)");
            assert_one_line(
                p,
                st,
                &[&format!("rank {failing} failed"), "--init-noise"],
                &who,
            );
        }
        println!(
            "rank {failing} failing ({}): job ended in {:.2?}",
            file.display(),
            start.elapsed()
        );
        assert!(entries(&out).is_empty(), "{:?}", entries(&out));
    }
}

#[test]
fn a_rank_launched_with_other_flags_fails_the_job() {
    let tmp = tempfile::tempdir().unwrap();
    let mut job = launch(
        2,
        |r| {
            let topo: &[&str] = if r == 0 {
                &["--tp", "2"]
            } else {
                &["--cfg", "2"]
            };
            request_args(topo)
                .into_iter()
                .chain(outputs(tmp.path()))
                .collect()
        },
        |_| vec![],
    );
    for (r, p) in job.iter_mut().enumerate() {
        let (st, _) = p.wait(LIMIT);
        assert_one_line(p, st, &["rank 1 failed", "on rank 0"], &format!("rank {r}"));
    }
    assert!(entries(tmp.path()).is_empty());
}

#[test]
fn a_bad_launch_environment_gives_one_clear_line() {
    let tmp = tempfile::tempdir().unwrap();
    /// (case, launch variables, topology flags, what the line must name)
    type Case = (
        &'static str,
        Vec<(&'static str, &'static str)>,
        &'static [&'static str],
        &'static [&'static str],
    );
    let cases: Vec<Case> = vec![
        (
            "rank beyond the world",
            vec![("WORLD_SIZE", "2"), ("RANK", "2")],
            &["--tp", "2"],
            &["RANK", "WORLD_SIZE 2"],
        ),
        (
            "world not matching the flags",
            vec![("WORLD_SIZE", "2"), ("RANK", "0")],
            &["--tp", "1"],
            &["WORLD_SIZE", "--tp 1", "--cfg 1"],
        ),
        (
            "world larger than the flags",
            vec![("WORLD_SIZE", "4"), ("RANK", "1")],
            &["--cfg", "2"],
            &["WORLD_SIZE", "4 processes", "--cfg 2"],
        ),
        (
            "world not a number",
            vec![("WORLD_SIZE", "two")],
            &[],
            &["WORLD_SIZE"],
        ),
        (
            "port not a number",
            vec![("WORLD_SIZE", "2"), ("RANK", "1"), ("MASTER_PORT", "http")],
            &["--tp", "2"],
            &["MASTER_PORT"],
        ),
        (
            "port out of range",
            vec![("WORLD_SIZE", "2"), ("RANK", "0"), ("MASTER_PORT", "65536")],
            &["--tp", "2"],
            &["MASTER_PORT"],
        ),
        (
            "port zero",
            vec![("WORLD_SIZE", "2"), ("RANK", "0"), ("MASTER_PORT", "0")],
            &["--tp", "2"],
            &["MASTER_PORT"],
        ),
    ];
    for (case, env, topo, needles) in cases {
        let mut c = phyai();
        c.args(request_args(topo)).args(outputs(tmp.path()));
        for (k, v) in env {
            c.env(k, v);
        }
        let mut p = Rank::spawn(c);
        let (st, took) = p.wait(LIMIT);
        assert_one_line(&p, st, needles, case);
        assert!(took < Duration::from_secs(10), "{case}: took {took:?}");
    }
    assert!(entries(tmp.path()).is_empty());
}
