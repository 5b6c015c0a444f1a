//! `phyai serve` end to end: the real binary on the demo checkpoint, driven over HTTP
//! with tiny requests (32x32, 5 frames, 2 steps) so each job takes well under a second.

use std::io::{BufRead, BufReader, Read};
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

mod serve_support;
use serve_support::*;

#[test]
fn create_poll_events_download_list_and_errors() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let srv = Server::start(&data, &["--max-queue", "4", "--max-body-mb", "1"], &[]);

    let (s, h) = srv.get("/health");
    assert_eq!((s, h["status"].as_str()), (200, Some("ok")));
    assert_eq!(h["model"], "cosmos3-demo");

    // A larger job first, so the next one is still queued when its event stream opens.
    let (s, v) = srv.create(
        &[
            ("prompt", "ahead"),
            ("size", "64x64"),
            ("num_frames", "9"),
            ("steps", "4"),
            ("guidance_scale", "1"),
        ],
        None,
    );
    assert_eq!(s, 200, "{v}");
    let ahead = v["id"].as_str().unwrap().to_string();
    // Create (multipart) and follow it over server-sent events to the end.
    let v = srv.create_ok("a red cube", &[("seed", "7")]);
    let id = v["id"].as_str().unwrap().to_string();
    assert_eq!(v["object"], "video");
    assert_eq!(
        (v["size"].as_str(), v["seconds"].as_str()),
        (Some("32x32"), Some("0.208"))
    );
    assert_eq!(
        (v["num_frames"].as_u64(), v["steps"].as_u64()),
        (Some(5), Some(2))
    );
    assert_eq!(v["prompt"], "a red cube");
    assert_eq!(v["progress"], 0);
    let mut r = srv
        .agent
        .get(srv.url(&format!("/v1/videos/{id}/events")))
        .call()
        .unwrap();
    assert_eq!(r.status().as_u16(), 200);
    let mut events: Vec<(String, Value)> = Vec::new();
    let mut name = String::new();
    for line in BufReader::new(r.body_mut().as_reader()).lines() {
        let line = line.unwrap();
        if let Some(n) = line.strip_prefix("event: ") {
            name = n.to_string();
        } else if let Some(d) = line.strip_prefix("data: ") {
            events.push((name.clone(), serde_json::from_str(d).unwrap()));
        }
    }
    let (last, done) = events.last().unwrap();
    assert_eq!(last, "completed", "{events:?}");
    assert_eq!(done["progress"], 100);
    let steps: Vec<u64> = events
        .iter()
        .filter(|(_, v)| v["stage"] == "denoise")
        .map(|(_, v)| v["stage_progress"]["done"].as_u64().unwrap())
        .collect();
    assert!(steps.contains(&1) && steps.contains(&2), "{events:?}");
    let progress: Vec<u64> = events
        .iter()
        .map(|(_, v)| v["progress"].as_u64().unwrap())
        .collect();
    assert!(progress.windows(2).all(|w| w[0] <= w[1]), "{progress:?}");
    // The server's own timings: the engine's time and dequeue → mp4, the second larger.
    let gen = done["generation_seconds"].as_f64().unwrap();
    let total = done["total_seconds"].as_f64().unwrap();
    assert!(gen > 0.0 && total >= gen, "{done}");
    assert!(done["completed_at"].as_i64().unwrap() >= done["created_at"].as_i64().unwrap());

    // Download the mp4 and the thumbnail.
    let (s, mp4, ct) = srv.get_raw(&format!("/v1/videos/{id}/content"));
    assert_eq!((s, ct.as_str()), (200, "video/mp4"));
    assert_eq!(&mp4[4..8], b"ftyp");
    let path = tmp.path().join("dl.mp4");
    std::fs::write(&path, &mp4).unwrap();
    if let Some(probe) = ffprobe(&path) {
        assert_eq!(probe, "32,32,5");
    } else {
        assert!(std::env::var_os("CI").is_none(), "ffprobe is missing in CI");
    }
    let (s, thumb, ct) = srv.get_raw(&format!("/v1/videos/{id}/content?variant=thumbnail"));
    assert_eq!((s, ct.as_str()), (200, "image/png"));
    let img = image::load_from_memory(&thumb).unwrap();
    assert_eq!((img.width(), img.height()), (32, 32));

    // JSON create (numbers as numbers) with `seconds` instead of frames: 0.4 s at 10 fps
    // = 4 frames → 5 (the nearest 4k+1).
    let (s, v) = srv.post(
        "application/json",
        br#"{"prompt":"json","size":"32x32","seconds":"0.4","fps":10,"steps":2,"guidance_scale":1}"#,
    );
    assert_eq!(s, 200, "{v}");
    assert_eq!(
        (v["num_frames"].as_u64(), v["seconds"].as_str()),
        (Some(5), Some("0.4"))
    );
    let json_id = v["id"].as_str().unwrap().to_string();

    // Image to video.
    let mut fields = vec![("prompt", "from an image")];
    fields.extend_from_slice(TINY);
    let (s, v) = srv.create(&fields, Some(&png(48, 40)));
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["image_to_video"], true);
    let i2v = v["id"].as_str().unwrap().to_string();
    let v = srv.wait_for(&i2v, &["completed", "failed"]);
    assert_eq!(v["status"], "completed", "{v}");
    let (s, mp4, _) = srv.get_raw(&format!("/v1/videos/{i2v}/content"));
    assert_eq!(s, 200);
    std::fs::write(&path, &mp4).unwrap();
    if let Some(probe) = ffprobe(&path) {
        assert_eq!(probe, "32,32,5");
    }
    srv.wait_for(&json_id, &["completed"]);

    // List: newest first by default, pages with `after`, `asc` order.
    let (s, l) = srv.get("/v1/videos");
    assert_eq!(s, 200);
    assert_eq!(l["object"], "list");
    let ids: Vec<&str> = l["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v["id"].as_str().unwrap())
        .collect();
    assert_eq!(
        ids,
        vec![i2v.as_str(), json_id.as_str(), id.as_str(), ahead.as_str()]
    );
    let (_, l) = srv.get(&format!("/v1/videos?limit=1&after={i2v}"));
    assert_eq!(l["data"][0]["id"], json_id.as_str());
    assert_eq!(
        (l["has_more"].as_bool(), l["first_id"].as_str()),
        (Some(true), Some(json_id.as_str()))
    );
    let (_, l) = srv.get("/v1/videos?order=asc&limit=2");
    assert_eq!(l["data"][0]["id"], ahead.as_str());
    assert_eq!(l["data"][1]["id"], id.as_str());
    assert_eq!(l["data"].as_array().unwrap().len(), 2);

    // Error cases, each a 4xx in OpenAI's shape naming the field.
    let tiny_with = |k: &'static str, val: &'static str| {
        let mut f: Vec<(&str, &str)> = vec![("prompt", "x")];
        f.extend(TINY.iter().filter(|(n, _)| *n != k));
        f.push((k, val));
        f
    };
    for (k, val) in [
        ("size", "33x32"),
        ("size", "big"),
        ("num_frames", "4"),
        ("steps", "0"),
        ("seconds", "-2"),
        ("prompt", ""),
    ] {
        let (s, v) = srv.create(&tiny_with(k, val), None);
        assert_error(s, &v, 400, Some(k), &format!("{k}={val}"));
    }
    let mut fields = vec![("prompt", "x")];
    fields.extend_from_slice(TINY);
    let (s, v) = srv.create(&fields, Some(b"this is not a png"));
    assert_error(s, &v, 400, Some("input_reference"), "unreadable image");
    // The server answers an oversized body from its declared length, without reading it.
    let (s, v) = srv.post_declared_length(3 << 20);
    assert_error(s, &v, 413, None, "oversized body");
    let (s, v) = srv.post("application/json", b"{not json");
    assert_error(s, &v, 400, None, "bad json");
    let (s, v) = srv.get("/v1/videos/video_nope");
    assert_error(s, &v, 404, None, "unknown id");
    let (s, v) = srv.delete("/v1/videos/video_nope");
    assert_error(s, &v, 404, None, "delete unknown id");
    let (s, v) = srv.get("/v1/videos/video_nope/content");
    assert_error(s, &v, 404, None, "content of unknown id");
    let (s, v) = srv.get(&format!("/v1/videos/{id}/content?variant=gif"));
    assert_error(s, &v, 400, Some("variant"), "bad variant");
    let (s, v) = srv.get("/v1/videos?limit=0");
    assert_error(s, &v, 400, Some("limit"), "bad limit");
    let (s, v) = srv.get("/v1/nothing");
    assert_error(s, &v, 404, None, "unknown route");
    // The server still answers after all that, and nothing failed.
    let (_, h) = srv.get("/health");
    assert_eq!(
        (h["completed"].as_u64(), h["failed"].as_u64()),
        (Some(4), Some(0))
    );

    // Delete a finished job: it and its files are gone.
    let (s, v) = srv.delete(&format!("/v1/videos/{id}"));
    assert_eq!(
        (s, v["deleted"].as_bool(), v["object"].as_str()),
        (200, Some(true), Some("video.deleted"))
    );
    assert_eq!(srv.get(&format!("/v1/videos/{id}")).0, 404);
    assert!(!data.join("videos").join(format!("{id}.mp4")).exists());

    let (_, m, _) = srv.get_raw("/metrics");
    let m = String::from_utf8(m).unwrap();
    for line in [
        "phyai_queue_length 0",
        "phyai_jobs{state=\"completed\"} 3",
        "phyai_generation_seconds_count 4",
        "phyai_step_seconds_count 10",
        "phyai_server_seconds_count 4",
    ] {
        assert!(m.lines().any(|l| l == line), "{line:?} not in\n{m}");
    }
    // The worker's time outside the engine is measured, and is a small part of a job.
    let value = |name: &str| -> f64 {
        m.lines()
            .find_map(|l| l.strip_prefix(&format!("{name} ")))
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("{name} not in\n{m}"))
    };
    let server = value("phyai_server_seconds_sum");
    assert!(
        server > 0.0 && server < value("phyai_job_seconds_sum"),
        "server time {server} s\n{m}"
    );
}

#[test]
fn cancel_queued_and_running_jobs_and_full_queue() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    // Every job stalls after its first denoising step until deleted.
    let srv = Server::start(
        &data,
        &["--max-queue", "2"],
        &[("PHYAI_TEST_STALL_AT_STEP", "1")],
    );
    let running = srv.create_ok("runs", &[])["id"]
        .as_str()
        .unwrap()
        .to_string();
    let v = srv.wait_stalled(&running);
    assert!(v["progress"].as_u64().unwrap() > 0, "{v}");
    let queued_a = srv.create_ok("waits a", &[])["id"]
        .as_str()
        .unwrap()
        .to_string();
    let queued_b = srv.create_ok("waits b", &[])["id"]
        .as_str()
        .unwrap()
        .to_string();
    // The queue holds two waiting jobs: a third gets 429.
    let mut f = vec![("prompt", "too many")];
    f.extend_from_slice(TINY);
    let (s, v) = srv.create(&f, None);
    assert_error(s, &v, 429, None, "full queue");
    assert_eq!(v["error"]["code"], "queue_full");

    // Cancel a queued job: gone at once, never runs.
    let (s, _) = srv.delete(&format!("/v1/videos/{queued_a}"));
    assert_eq!(s, 200);
    assert_eq!(srv.get(&format!("/v1/videos/{queued_a}")).0, 404);

    // Cancel the running job: gone, and the next one starts.
    let (s, _) = srv.delete(&format!("/v1/videos/{running}"));
    assert_eq!(s, 200);
    assert_eq!(srv.get(&format!("/v1/videos/{running}")).0, 404);
    srv.wait_stalled(&queued_b);
    let ids: Vec<String> = srv.get("/v1/videos").1["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v["id"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(ids, vec![queued_b.clone()]);
    let files: Vec<_> = std::fs::read_dir(data.join("videos")).unwrap().collect();
    assert!(files.is_empty(), "{files:?}");

    // A generation that fails (its input image vanished from the disk) fails the job
    // with the reason; the server goes on with the next job.
    let mut fields = vec![("prompt", "loses its image")];
    fields.extend_from_slice(TINY);
    let (s, v) = srv.create(&fields, Some(&png(32, 32)));
    assert_eq!(s, 200, "{v}");
    let broken = v["id"].as_str().unwrap().to_string();
    std::fs::remove_file(data.join("inputs").join(&broken)).unwrap();
    srv.delete(&format!("/v1/videos/{queued_b}"));
    let v = srv.wait_for(&broken, &["failed", "completed"]);
    assert_eq!(v["status"], "failed", "{v}");
    assert_eq!(v["error"]["code"], "generation_failed");
    assert!(
        v["error"]["message"].as_str().unwrap().contains(&broken),
        "{v}"
    );
    let next = srv.create_ok("still served", &[])["id"]
        .as_str()
        .unwrap()
        .to_string();
    srv.wait_stalled(&next);
}

#[test]
fn api_key_is_required_when_set() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let srv = Server::start(&data, &["--api-key", "sesame"], &[]);
    let agent = &srv.agent;
    for key in [None, Some("Bearer wrong"), Some("sesame")] {
        let mut req = agent.get(srv.url("/v1/videos"));
        if let Some(k) = key {
            req = req.header("Authorization", k);
        }
        let mut r = req.call().unwrap();
        let v: Value = serde_json::from_str(&r.body_mut().read_to_string().unwrap()).unwrap();
        assert_error(r.status().as_u16(), &v, 401, None, &format!("key {key:?}"));
        assert_eq!(v["error"]["code"], "invalid_api_key");
    }
    // With the key everything works; /health stays open for load balancers.
    let v = srv.create_ok("with a key", &[]);
    srv.wait_for(v["id"].as_str().unwrap(), &["completed"]);
    let mut r = agent.get(srv.url("/health")).call().unwrap();
    assert_eq!(r.status().as_u16(), 200);
    let _ = r.body_mut().read_to_string();
}

/// Killing the server (SIGKILL) with jobs queued and running loses nothing: finished
/// clips stay downloadable, queued jobs stay queued, the running one is re-queued, and
/// failed with a clear error once interrupted twice.
#[test]
fn sigkill_with_jobs_queued_and_running_loses_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let stall = [("PHYAI_TEST_STALL_AT_STEP", "1")];

    let mut srv = Server::start(&data, &[], &[]);
    let done = srv.create_ok("finished before the kill", &[])["id"]
        .as_str()
        .unwrap()
        .to_string();
    srv.wait_for(&done, &["completed"]);
    let (_, before, _) = srv.get_raw(&format!("/v1/videos/{done}/content"));
    srv.kill();

    let mut srv = Server::start(&data, &[], &stall);
    let interrupted = srv.create_ok("interrupted twice", &[])["id"]
        .as_str()
        .unwrap()
        .to_string();
    srv.wait_stalled(&interrupted);
    let waiting: Vec<String> = (0..2)
        .map(|i| {
            srv.create_ok(&format!("queued {i}"), &[])["id"]
                .as_str()
                .unwrap()
                .to_string()
        })
        .collect();
    srv.kill();

    // First restart: the interrupted job runs again (its second attempt), the others wait.
    let mut srv = Server::start(&data, &[], &stall);
    let v = srv.wait_stalled(&interrupted);
    assert_eq!(v["attempts"], 2, "{v}");
    for id in &waiting {
        assert_eq!(srv.get(&format!("/v1/videos/{id}")).1["status"], "queued");
    }
    let (s, after, _) = srv.get_raw(&format!("/v1/videos/{done}/content"));
    assert_eq!((s, after.len()), (200, before.len()));
    assert!(after == before);
    srv.kill();

    // Second restart: interrupted twice → failed with a reason; the rest complete.
    let srv = Server::start(&data, &[], &[]);
    let v = srv.get(&format!("/v1/videos/{interrupted}")).1;
    assert_eq!(v["status"], "failed", "{v}");
    assert_eq!(v["error"]["code"], "interrupted");
    assert!(
        v["error"]["message"].as_str().unwrap().contains("stopped"),
        "{v}"
    );
    for id in &waiting {
        srv.wait_for(id, &["completed"]);
        assert_eq!(srv.get_raw(&format!("/v1/videos/{id}/content")).0, 200);
    }
    assert_eq!(srv.get_raw(&format!("/v1/videos/{done}/content")).1, before);
    let (s, v) = srv.get(&format!("/v1/videos/{interrupted}/content"));
    assert_error(s, &v, 409, None, "content of a failed job");
    // No temporary or orphaned file is left in the outputs.
    let mut names: Vec<String> = std::fs::read_dir(data.join("videos"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    let mut want: Vec<String> = [&done, &waiting[0], &waiting[1]]
        .iter()
        .flat_map(|id| [format!("{id}.mp4"), format!("{id}.png")])
        .collect();
    want.sort();
    assert_eq!(names, want);
}

/// 50 clients create and poll at once against a queue of 6: every request is either
/// accepted and completed or refused with 429, and the server stays responsive.
#[test]
fn bounded_load_every_job_accounted_for() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let srv = Server::start(&data, &["--max-queue", "6"], &[]);
    let base = srv.base.clone();
    let barrier = std::sync::Arc::new(std::sync::Barrier::new(50));
    let clients: Vec<_> = (0..50)
        .map(|i| {
            let base = base.clone();
            let barrier = barrier.clone();
            std::thread::spawn(move || {
                let agent: ureq::Agent = ureq::Agent::config_builder()
                    .http_status_as_error(false)
                    .timeout_global(Some(Duration::from_secs(60)))
                    .build()
                    .into();
                let (ct, body) = multipart(
                    &[
                        ("prompt", &format!("load {i}")),
                        ("size", "32x32"),
                        ("num_frames", "1"),
                        ("steps", "1"),
                        ("guidance_scale", "1"),
                    ],
                    None,
                );
                barrier.wait();
                let mut r = agent
                    .post(format!("{base}/v1/videos"))
                    .header("Content-Type", &ct)
                    .send(&body[..])
                    .unwrap();
                let status = r.status().as_u16();
                let v: Value =
                    serde_json::from_str(&r.body_mut().read_to_string().unwrap()).unwrap();
                if status == 429 {
                    return (status, None);
                }
                assert_eq!(status, 200, "{v}");
                let id = v["id"].as_str().unwrap().to_string();
                let start = Instant::now();
                loop {
                    let mut r = agent.get(format!("{base}/v1/videos/{id}")).call().unwrap();
                    let v: Value =
                        serde_json::from_str(&r.body_mut().read_to_string().unwrap()).unwrap();
                    match v["status"].as_str().unwrap() {
                        "completed" => return (status, Some(id)),
                        "failed" => panic!("{v}"),
                        _ => {}
                    }
                    assert!(start.elapsed() < Duration::from_secs(100), "{v}");
                    std::thread::sleep(Duration::from_millis(100));
                }
            })
        })
        .collect();
    let results: Vec<(u16, Option<String>)> =
        clients.into_iter().map(|c| c.join().unwrap()).collect();
    let accepted: Vec<&String> = results.iter().filter_map(|(_, id)| id.as_ref()).collect();
    let refused = results.iter().filter(|(s, _)| *s == 429).count();
    assert_eq!(accepted.len() + refused, 50);
    assert!(
        accepted.len() >= 6 && refused > 0,
        "{} accepted, {refused} refused",
        accepted.len()
    );
    // Every accepted job is listed, completed, downloadable; the server answers at once.
    let t = Instant::now();
    let (_, h) = srv.get("/health");
    assert!(t.elapsed() < Duration::from_secs(2));
    assert_eq!(
        (
            h["completed"].as_u64(),
            h["queued"].as_u64(),
            h["failed"].as_u64()
        ),
        (Some(accepted.len() as u64), Some(0), Some(0))
    );
    let (_, l) = srv.get("/v1/videos?limit=100");
    let mut listed: Vec<&str> = l["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v["id"].as_str().unwrap())
        .collect();
    let mut want: Vec<&str> = accepted.iter().map(|s| s.as_str()).collect();
    listed.sort();
    want.sort();
    assert_eq!(listed, want);
    for id in &accepted {
        assert_eq!(srv.get_raw(&format!("/v1/videos/{id}/content")).0, 200);
    }
    let (_, m, _) = srv.get_raw("/metrics");
    let m = String::from_utf8(m).unwrap();
    let line = format!("phyai_rejected_queue_full_total {refused}");
    assert!(m.lines().any(|l| l == line), "{line} not in\n{m}");
}

fn chromium() -> Option<PathBuf> {
    [
        "/usr/bin/chromium",
        "/usr/bin/chromium-browser",
        "/usr/bin/google-chrome",
    ]
    .iter()
    .map(PathBuf::from)
    .find(|p| p.is_file())
}

/// The web page, rendered by headless Chromium, lists a finished job and plays it.
#[test]
fn web_page_shows_a_finished_job_in_chromium() {
    let Some(browser) = chromium() else {
        assert!(
            std::env::var_os("CI").is_none(),
            "chromium is missing in CI"
        );
        eprintln!("skipped: no chromium");
        return;
    };
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let srv = Server::start(&data, &[], &[]);
    let id = srv.create_ok("shown on the page", &[])["id"]
        .as_str()
        .unwrap()
        .to_string();
    srv.wait_for(&id, &["completed"]);
    let (s, html, ct) = srv.get_raw("/");
    assert_eq!((s, ct.as_str()), (200, "text/html; charset=utf-8"));
    assert!(String::from_utf8(html)
        .unwrap()
        .contains("<form id=\"form\""));

    let profile = tmp.path().join("chromium-profile");
    let mut child = Command::new(browser)
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-dev-shm-usage",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--no-first-run",
            "--virtual-time-budget=5000",
            "--dump-dom",
        ])
        .arg(format!("--user-data-dir={}", profile.display()))
        .arg(format!("{}/", srv.base))
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("start chromium");
    let mut dom = String::new();
    child
        .stdout
        .take()
        .unwrap()
        .read_to_string(&mut dom)
        .unwrap();
    let _ = child.wait();
    assert!(
        dom.contains(&format!("id=\"job-{id}\"")),
        "job row missing:\n{dom}"
    );
    assert!(dom.contains("shown on the page"), "{dom}");
    assert!(dom.contains("status-completed"), "{dom}");
    assert!(
        dom.contains(&format!(
            "<video controls=\"\" loop=\"\" id=\"player-video\" data-video-id=\"{id}\""
        )) || (dom.contains("<video") && dom.contains(&format!("data-video-id=\"{id}\""))),
        "player missing:\n{dom}"
    );
}
