//! The HTTP routes: OpenAI's Videos API under `/v1`, plus `/health`, `/metrics` and the
//! web page. Every error is a JSON body in OpenAI's shape (see `errors`).

use std::convert::Infallible;
use std::sync::Arc;

use axum::body::Body;
use axum::extract::{DefaultBodyLimit, FromRequest, Multipart, Path, Query, Request};
use axum::http::{header, HeaderValue, StatusCode};
use axum::middleware::{self, Next};
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::{json, Value};
use tokio::sync::broadcast::error::RecvError;

use crate::continuation::{is_mp4, resolve_continuation};
use crate::errors::ApiError;
use crate::events::Event;
use crate::object::video_object;
use crate::params::{resolve, CreateFields};
use crate::state::State;
use crate::store::{new_id, InsertError, Job};
use crate::transfer::{field_hint, resolve_transfer, FIELD_PREFIX};
use phyai::models::cosmos3::Hint;

type St = axum::extract::State<Arc<State>>;

pub fn router(state: Arc<State>) -> Router {
    let v1 = Router::new()
        .route("/v1/videos", get(list).post(create))
        .route("/v1/videos/{id}", get(retrieve).delete(delete))
        .route("/v1/videos/{id}/content", get(content))
        .route("/v1/videos/{id}/events", get(events))
        .route_layer(middleware::from_fn_with_state(state.clone(), authorize));
    Router::new()
        .merge(v1)
        .route("/health", get(health))
        .route("/metrics", get(metrics))
        .merge(crate::web::routes())
        .fallback(|| async { ApiError::not_found("no such route") })
        // The create handler enforces its own limit with a JSON error; this one also
        // bounds the multipart reader.
        .layer(DefaultBodyLimit::max(state.max_body_bytes))
        .with_state(state)
}

/// With `--api-key`, every `/v1` call needs `Authorization: Bearer KEY`.
async fn authorize(st: St, req: Request, next: Next) -> Response {
    let Some(key) = &st.api_key else {
        return next.run(req).await;
    };
    let given = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "));
    match given {
        Some(g) if constant_time_eq(g.trim().as_bytes(), key.as_bytes()) => next.run(req).await,
        Some(_) => ApiError::unauthorized("incorrect API key provided").into_response(),
        None => ApiError::unauthorized(
            "no API key provided: send the header `Authorization: Bearer KEY`",
        )
        .into_response(),
    }
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

fn multipart_error(e: axum::extract::multipart::MultipartError, limit: usize) -> ApiError {
    if e.status() == StatusCode::PAYLOAD_TOO_LARGE {
        ApiError::too_large(limit)
    } else {
        ApiError::bad_request(format!("unreadable multipart body: {}", e.body_text()))
    }
}

/// What a create request uploads besides its text fields.
#[derive(Default)]
struct Uploads {
    /// `input_reference`: the image of an image-to-video request, or the mp4 of a
    /// continuation.
    image: Option<Vec<u8>>,
    /// `control_<hint>`: the control clips of a transfer request.
    controls: Vec<(Hint, Vec<u8>)>,
}

/// Reads the create fields from a multipart form or a JSON object; the uploaded files
/// (`input_reference`, `control_<hint>`) come separately.
async fn read_create(st: &State, req: Request) -> Result<(CreateFields, Uploads), ApiError> {
    let limit = st.max_body_bytes;
    let declared = req
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<usize>().ok());
    if declared.is_some_and(|n| n > limit) {
        return Err(ApiError::too_large(limit));
    }
    let ctype = req
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_ascii_lowercase();
    let mut fields = CreateFields::default();
    let mut up = Uploads::default();
    if ctype.starts_with("multipart/form-data") {
        let mut form = Multipart::from_request(req, &()).await.map_err(|e| {
            ApiError::bad_request(format!("unreadable multipart body: {}", e.body_text()))
        })?;
        while let Some(field) = form
            .next_field()
            .await
            .map_err(|e| multipart_error(e, limit))?
        {
            let name = field.name().unwrap_or_default().to_string();
            if name == "input_reference" {
                let bytes = field.bytes().await.map_err(|e| multipart_error(e, limit))?;
                up.image = Some(bytes.to_vec());
            } else if let Some(hint) = field_hint(&name) {
                let hint = hint?;
                let bytes = field.bytes().await.map_err(|e| multipart_error(e, limit))?;
                up.controls.push((hint, bytes.to_vec()));
            } else {
                let text = field.text().await.map_err(|e| multipart_error(e, limit))?;
                fields.set(&name, text);
            }
        }
    } else if ctype.starts_with("application/json") || ctype.is_empty() {
        let bytes = axum::body::to_bytes(req.into_body(), limit)
            .await
            .map_err(|_| ApiError::too_large(limit))?;
        let v: Value = serde_json::from_slice(&bytes)
            .map_err(|e| ApiError::bad_request(format!("the body is not valid JSON: {e}")))?;
        let Value::Object(map) = v else {
            return Err(ApiError::bad_request("the body must be a JSON object"));
        };
        for (k, v) in map {
            if k == "input_reference" {
                return Err(ApiError::invalid(
                    "input_reference",
                    "send the image as a file in a multipart/form-data request",
                ));
            }
            if field_hint(&k).is_some() {
                return Err(ApiError::invalid(
                    &k,
                    "send the control clip as a file in a multipart/form-data request",
                ));
            }
            match v {
                Value::Null => {}
                Value::String(s) => fields.set(&k, s),
                Value::Number(_) | Value::Bool(_) => fields.set(&k, v.to_string()),
                _ => return Err(ApiError::invalid(&k, "must be a string, number or boolean")),
            }
        }
    } else {
        return Err(ApiError {
            status: StatusCode::UNSUPPORTED_MEDIA_TYPE,
            ..ApiError::bad_request(format!(
                "Content-Type must be multipart/form-data or application/json, got {ctype:?}"
            ))
        });
    }
    Ok((fields, up))
}

async fn create(st: St, req: Request) -> Result<Json<Value>, ApiError> {
    let (fields, up) = read_create(&st, req).await?;
    let image = up.image;
    let mut params = resolve(&fields, &st.model)?;
    let id = new_id();
    // An mp4 as input_reference continues that video; anything else must be an image.
    let video = image.as_deref().is_some_and(is_mp4);
    resolve_continuation(&fields, video, &mut params)?;
    if !up.controls.is_empty() {
        // Stored first (the reader takes a file), checked, and removed again if refused.
        let controls = store_controls(&st, &id, up.controls).await;
        let checked =
            controls.and_then(|c| resolve_transfer(&fields, &c, image.is_some(), &mut params));
        if let Err(e) = checked {
            st.remove_files(&id);
            return Err(e);
        }
    }
    if let (Some(bytes), true) = (&image, video) {
        // Stored first (the reader takes a file), decoded once, removed again if unreadable.
        let path = st.store.input_path(&id);
        phyai::io::atomic::write_atomic(&path, bytes)?;
        let p = path.clone();
        let read = tokio::task::spawn_blocking(move || {
            phyai::io::mp4_read::probe_mp4(&p, "input_reference")
        })
        .await
        .map_err(|e| ApiError::internal(e.to_string()))?;
        if let Err(e) = read {
            st.remove_files(&id);
            // The reader names the stored file; the client knows it as its upload.
            let msg = e.detail();
            let prefix = format!("{}: ", path.display());
            let msg = msg.strip_prefix(&prefix).unwrap_or(&msg);
            return Err(ApiError::invalid(
                "input_reference",
                format!("not a readable H.264 mp4: {msg}"),
            ));
        }
    } else if let Some(bytes) = &image {
        let b = bytes.clone();
        let decoded = tokio::task::spawn_blocking(move || image::load_from_memory(&b).map(|_| ()))
            .await
            .map_err(|e| ApiError::internal(e.to_string()))?;
        decoded.map_err(|e| {
            ApiError::invalid(
                "input_reference",
                format!("not a readable PNG or JPEG image: {e}"),
            )
        })?;
    }
    // The input is in place before the job exists, so a queued job always has it.
    if let (Some(bytes), false) = (&image, video) {
        phyai::io::atomic::write_atomic(&st.store.input_path(&id), bytes)?;
    }
    let job = match st.store.insert(&id, &params, image.is_some(), st.max_queue) {
        Ok(j) => j,
        Err(e) => {
            st.remove_files(&id);
            return Err(match e {
                InsertError::QueueFull => {
                    st.metrics.rejected_queue_full();
                    ApiError::queue_full(st.max_queue)
                }
                InsertError::Store(e) => e.into(),
            });
        }
    };
    st.wake_worker();
    st.events.send(Event::Changed(id));
    Ok(Json(video_object(&job, None)))
}

/// Writes each control clip beside the job's inputs and decodes it once (without keeping
/// the pixels), so an unreadable clip is refused at once; the frame count of each, by hint
/// (a hint sent twice is refused by `resolve_transfer`).
/// Clips of another size are resized when the job runs, as `phyai generate` does.
async fn store_controls(
    st: &State,
    id: &str,
    controls: Vec<(Hint, Vec<u8>)>,
) -> Result<Vec<(Hint, usize)>, ApiError> {
    let mut out = Vec::with_capacity(controls.len());
    for (hint, bytes) in controls {
        let field = format!("{FIELD_PREFIX}{hint}");
        let path = st.store.control_path(id, hint.name());
        phyai::io::atomic::write_atomic(&path, &bytes)?;
        let (f, p) = (field.clone(), path.clone());
        let read = tokio::task::spawn_blocking(move || phyai::io::mp4_read::probe_mp4(&p, &f))
            .await
            .map_err(|e| ApiError::internal(e.to_string()))?;
        let (frames, _, _) = read.map_err(|e| {
            // The reader names the stored file; the client knows it as its upload.
            let msg = e.detail();
            let prefix = format!("{}: ", path.display());
            let msg = msg.strip_prefix(&prefix).unwrap_or(&msg);
            ApiError::invalid(&field, format!("not a readable H.264 mp4: {msg}"))
        })?;
        out.push((hint, frames));
    }
    Ok(out)
}

fn find(st: &State, id: &str) -> Result<Job, ApiError> {
    st.store
        .get(id)?
        .ok_or_else(|| ApiError::not_found(format!("no video with id {id:?}")))
}

fn object_of(st: &State, job: &Job) -> Value {
    video_object(job, st.events.live(&job.id).as_ref())
}

async fn retrieve(st: St, Path(id): Path<String>) -> Result<Json<Value>, ApiError> {
    let job = find(&st, &id)?;
    Ok(Json(object_of(&st, &job)))
}

#[derive(Deserialize)]
struct ListQuery {
    limit: Option<String>,
    after: Option<String>,
    order: Option<String>,
}

async fn list(st: St, Query(q): Query<ListQuery>) -> Result<Json<Value>, ApiError> {
    let limit = match q.limit.as_deref() {
        None => 20,
        Some(s) => match s.parse::<usize>() {
            Ok(n) if (1..=100).contains(&n) => n,
            _ => {
                return Err(ApiError::invalid(
                    "limit",
                    format!("must be in 1..=100, got {s:?}"),
                ))
            }
        },
    };
    let ascending = match q.order.as_deref() {
        None | Some("desc") => false,
        Some("asc") => true,
        Some(o) => {
            return Err(ApiError::invalid(
                "order",
                format!("must be asc or desc, got {o:?}"),
            ))
        }
    };
    let (jobs, more) = st
        .store
        .list(limit, q.after.as_deref(), ascending)?
        .ok_or_else(|| ApiError::invalid("after", "no video with that id"))?;
    let data: Vec<Value> = jobs.iter().map(|j| object_of(&st, j)).collect();
    Ok(Json(json!({
        "object": "list",
        "data": data,
        "first_id": jobs.first().map(|j| &j.id),
        "last_id": jobs.last().map(|j| &j.id),
        "has_more": more,
    })))
}

/// Deletes a job in any state: a queued one never runs, a running one is stopped between
/// denoising steps, and its files go.
async fn delete(st: St, Path(id): Path<String>) -> Result<Json<Value>, ApiError> {
    st.store
        .delete(&id)?
        .ok_or_else(|| ApiError::not_found(format!("no video with id {id:?}")))?;
    st.cancel_running(&id);
    st.remove_files(&id);
    st.events.send(Event::Deleted(id.clone()));
    Ok(Json(
        json!({"id": id, "object": "video.deleted", "deleted": true}),
    ))
}

#[derive(Deserialize)]
struct ContentQuery {
    variant: Option<String>,
}

async fn content(
    st: St,
    Path(id): Path<String>,
    Query(q): Query<ContentQuery>,
) -> Result<Response, ApiError> {
    let (path, mime) = match q.variant.as_deref() {
        None | Some("video") => (st.store.video_path(&id), "video/mp4"),
        Some("thumbnail") => (st.store.thumbnail_path(&id), "image/png"),
        Some(v) => {
            return Err(ApiError::invalid(
                "variant",
                format!("must be video or thumbnail, got {v:?}"),
            ))
        }
    };
    let job = find(&st, &id)?;
    if job.status != crate::store::Status::Completed {
        return Err(ApiError::conflict(
            format!("video {id} is {}, not completed", job.status.as_str()),
            "video_not_ready",
        ));
    }
    let bytes = tokio::fs::read(&path)
        .await
        .map_err(|e| ApiError::internal(format!("{}: {e}", path.display())))?;
    Ok((
        [
            (header::CONTENT_TYPE, HeaderValue::from_static(mime)),
            (header::CACHE_CONTROL, HeaderValue::from_static("no-cache")),
        ],
        Body::from(bytes),
    )
        .into_response())
}

/// Server-sent events for one job: its video object now, then at every step and state
/// change (event name = status, or `deleted`), ending after a terminal one.
async fn events(st: St, Path(id): Path<String>) -> Result<Response, ApiError> {
    // Subscribe before the first read so no change falls between them.
    let rx = st.events.subscribe();
    let job = find(&st, &id)?;
    let first = sse_of(&object_of(&st, &job));
    let done = job.status.is_terminal();
    let state = Stream {
        st: st.0.clone(),
        rx,
        id,
        pending: Some(first),
        finished: done,
    };
    let stream = futures_util::stream::unfold(state, |mut s| async move {
        let ev = s.next().await?;
        Some((Ok::<_, Infallible>(ev), s))
    });
    Ok(Sse::new(stream)
        .keep_alive(KeepAlive::default())
        .into_response())
}

struct Stream {
    st: Arc<State>,
    rx: tokio::sync::broadcast::Receiver<Event>,
    id: String,
    pending: Option<SseEvent>,
    finished: bool,
}

impl Stream {
    async fn next(&mut self) -> Option<SseEvent> {
        if let Some(ev) = self.pending.take() {
            return Some(ev);
        }
        if self.finished {
            return None;
        }
        loop {
            // A progress event carries the step it reports: the live state may already be
            // further on when this stream gets to it.
            let live = match self.rx.recv().await {
                Ok(e) if e.id() != self.id => continue,
                Ok(Event::Deleted(_)) => {
                    self.finished = true;
                    let deleted =
                        json!({"id": self.id, "object": "video.deleted", "deleted": true});
                    return Some(
                        SseEvent::default()
                            .event("deleted")
                            .data(deleted.to_string()),
                    );
                }
                Ok(Event::Progress(l)) => Some(l),
                Ok(Event::Changed(_)) | Err(RecvError::Lagged(_)) => None,
                Err(RecvError::Closed) => return None,
            };
            match self.st.store.get(&self.id) {
                Ok(Some(job)) => {
                    self.finished = job.status.is_terminal();
                    let live = live.or_else(|| self.st.events.live(&job.id));
                    return Some(sse_of(&video_object(&job, live.as_ref())));
                }
                // Deleted between the event and the read: the Deleted event follows.
                Ok(None) => continue,
                Err(_) => return None,
            }
        }
    }
}

fn sse_of(video: &Value) -> SseEvent {
    let status = video["status"].as_str().unwrap_or("unknown").to_string();
    SseEvent::default().event(status).data(video.to_string())
}

async fn health(st: St) -> Result<Json<Value>, ApiError> {
    let counts = st.store.counts()?;
    let mut v = json!({"status": "ok", "model": st.model.name});
    for (s, n) in counts {
        v[s.as_str()] = json!(n);
    }
    Ok(Json(v))
}

async fn metrics(st: St) -> Result<Response, ApiError> {
    let counts = st.store.counts()?;
    Ok((
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static("text/plain; version=0.0.4"),
        )],
        st.metrics.render(&counts),
    )
        .into_response())
}
