//! The video object of OpenAI's Videos API, with our extension fields: the generation
//! parameters, live stage and step of a running job, and the two timings the server
//! measures per job (`generation_seconds`: the engine's own time; `total_seconds`: from
//! dequeue to the mp4 being in place).

use serde_json::{json, Value};

use crate::events::Live;
use crate::store::{Job, Status};

pub fn video_object(job: &Job, live: Option<&Live>) -> Value {
    let p = &job.params;
    let progress = match job.status {
        Status::Completed => 100,
        Status::InProgress => live.map_or(0, |l| l.progress),
        Status::Queued | Status::Failed => 0,
    };
    let error = job
        .error
        .as_ref()
        .map(|e| json!({"code": e.code, "message": e.message}));
    let mut v = json!({
        "id": job.id,
        "object": "video",
        "created_at": job.created_at,
        "status": job.status.as_str(),
        "progress": progress,
        "model": p.model,
        "size": p.size(),
        "seconds": p.seconds,
        "prompt": p.prompt,
        "error": error,
        "completed_at": job.completed_at,
        "expires_at": null,
        "remixed_from_video_id": null,
        "negative_prompt": p.negative_prompt,
        "num_frames": p.num_frames,
        "fps": p.fps,
        "steps": p.steps,
        "guidance_scale": p.guidance_scale,
        "seed": p.seed,
        "sound": p.sound,
        "image_to_video": job.has_image && p.continuation.is_none(),
        "attempts": job.attempts,
        "generation_seconds": job.generation_seconds,
        "total_seconds": job.total_seconds,
    });
    if let Some(t) = &p.transfer {
        v["controls"] = json!(t.hints);
        v["chunk_frames"] = json!(t.chunk_frames);
        v["conditional_frames"] = json!(t.conditional_frames);
        v["control_guidance"] = json!(t.control_guidance);
        v["control_guidance_interval"] = json!(t.control_guidance_interval);
    }
    if let Some(c) = &p.continuation {
        v["video_to_video"] = json!(true);
        v["condition_frames"] = json!(c.condition_frames);
        v["condition_video_keep"] = json!(c.keep);
    }
    if let (Status::InProgress, Some(l)) = (job.status, live) {
        v["stage"] = json!(l.stage);
        v["stage_progress"] = json!({"done": l.done, "total": l.total});
    }
    v
}
