//! `phyai serve`: the OpenAI Videos API over one resident engine.
//!
//! Requests are queued in an SQLite database in the data folder and run one at a time, in
//! arrival order, by a worker thread that owns the engine (loaded once). The HTTP side is
//! axum on tokio; it never waits for the engine.

pub mod api;
pub mod backend;
pub mod continuation;
pub mod errors;
pub mod events;
pub mod metrics;
pub mod object;
pub mod params;
pub mod state;
pub mod store;
pub mod transfer;
pub mod web;
pub mod worker;

use std::io::Write;
use std::path::PathBuf;
use std::sync::Arc;

use phyai::{Error, Result};

pub use backend::BackendArgs;

/// Everything `phyai serve` is told on its command line.
#[derive(Debug, Clone)]
pub struct ServeConfig {
    pub backend: BackendArgs,
    pub host: String,
    /// 0 picks a free port; the bound address is printed either way.
    pub port: u16,
    pub data_dir: PathBuf,
    pub api_key: Option<String>,
    /// Queued (not yet running) jobs beyond which creates get 429.
    pub max_queue: usize,
    /// Largest accepted request body (the image of an image-to-video request included).
    pub max_body_bytes: usize,
    /// Test hook: the running job stops making progress after this denoising step until
    /// it is deleted (so tests can observe and kill a job mid-run).
    pub stall_at_step: Option<usize>,
}

/// Opens the store, loads the engine, then serves until SIGINT/SIGTERM. Prints
/// `listening on http://ADDR` as one line on stdout once requests are accepted.
pub fn serve(config: ServeConfig) -> Result<()> {
    if config.max_queue == 0 {
        return Err(Error::invalid("--max-queue", "must be at least 1"));
    }
    std::fs::create_dir_all(&config.data_dir).map_err(|e| Error::io(&config.data_dir, e))?;
    let lock_path = config.data_dir.join("lock");
    let lock = std::fs::File::create(&lock_path).map_err(|e| Error::io(&lock_path, e))?;
    if lock.try_lock().is_err() {
        return Err(Error::invalid(
            "--data-dir",
            format!(
                "{} is in use by another phyai serve",
                config.data_dir.display()
            ),
        ));
    }
    let (store, recovery) = store::Store::open(&config.data_dir)?;
    for id in &recovery.requeued {
        eprintln!("phyai serve: {id} was running when the server stopped; queued again");
    }
    for id in &recovery.failed {
        eprintln!("phyai serve: {id} was interrupted twice; marked failed");
    }

    // The engine lives on the worker thread from its load on.
    let (loaded_tx, loaded_rx) = std::sync::mpsc::channel();
    let (state_tx, state_rx) = std::sync::mpsc::channel::<Arc<state::State>>();
    let backend_args = config.backend.clone();
    let stall = config.stall_at_step;
    std::thread::Builder::new()
        .name("phyai-worker".into())
        .spawn(move || {
            let backend = match backend::Backend::load(&backend_args) {
                Ok(b) => b,
                Err(e) => {
                    let _ = loaded_tx.send(Err(e));
                    return;
                }
            };
            if loaded_tx.send(Ok(backend.info().clone())).is_err() {
                return;
            }
            if let Ok(state) = state_rx.recv() {
                worker::run(state, backend, stall);
            }
        })
        .map_err(|e| Error::msg(format!("cannot start the worker thread: {e}")))?;
    let model = loaded_rx
        .recv()
        .map_err(|_| Error::msg("the engine's thread ended while loading"))??;

    let state = Arc::new(state::State::new(
        store,
        model,
        config.api_key.clone(),
        config.max_queue,
        config.max_body_bytes,
    ));
    let _ = state_tx.send(state.clone());

    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|e| Error::msg(format!("cannot start the async runtime: {e}")))?;
    rt.block_on(async move {
        let addr = format!("{}:{}", config.host, config.port);
        let listener = tokio::net::TcpListener::bind(&addr).await.map_err(|e| {
            Error::invalid("--host/--port", format!("cannot listen on {addr}: {e}"))
        })?;
        let bound = listener
            .local_addr()
            .map_err(|e| Error::msg(format!("listener: {e}")))?;
        let mut out = std::io::stdout().lock();
        let _ = writeln!(out, "phyai serve: listening on http://{bound}");
        let _ = out.flush();
        drop(out);
        // No graceful drain: event streams never end on their own, and every state worth
        // keeping is already in the store.
        tokio::select! {
            r = axum::serve(listener, api::router(state)) => {
                r.map_err(|e| Error::msg(format!("server: {e}")))
            }
            () = shutdown() => Ok(()),
        }
    })?;
    drop(lock);
    Ok(())
}

/// Resolves on SIGINT or SIGTERM. A job still running is re-queued at the next start.
async fn shutdown() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {},
        _ = term => {},
    }
    eprintln!("phyai serve: shutting down");
}
