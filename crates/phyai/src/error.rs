//! One error type for the whole engine. Every variant renders as a single line that names
//! the file, key, flag or value at fault, because the CLI prints it verbatim.

use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A file could not be opened or read.
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// A config file is unreadable JSON, or a key is missing or out of range.
    #[error("{file}: {key}: {msg}")]
    Config {
        file: PathBuf,
        key: String,
        msg: String,
    },
    /// A weight file is missing, truncated, corrupt, or does not match the model.
    #[error("{file}: {msg}")]
    Weights { file: PathBuf, msg: String },
    /// A user-supplied value is invalid. `what` names the request or config field
    /// (`num_frames`, `tp`); a front end may show its own name for it
    /// ([`set_field_names`]).
    #[error("{}: {msg}", field_name(what))]
    Invalid { what: String, msg: String },
    /// A tensor operation failed (shape mismatch, device error).
    #[error("tensor: {}", without_backtrace(.0))]
    Tensor(#[from] candle_core::Error),
    /// One rank of a parallel run failed; `source` is that rank's own error. Errors of
    /// the other ranks caused by it (aborted collectives) are not reported.
    #[error("rank {rank} failed: {source}")]
    Rank {
        rank: usize,
        #[source]
        source: Box<Error>,
    },
    /// The caller's progress hook asked to stop (between denoising steps).
    #[error("cancelled")]
    Cancelled,
    /// Anything else, already phrased as one line.
    #[error("{0}")]
    Msg(String),
}

pub type Result<T> = std::result::Result<T, Error>;

/// candle appends the backtrace it captured (when RUST_BACKTRACE is set) on further lines;
/// the message stays one line without it.
fn without_backtrace(e: &candle_core::Error) -> String {
    match e {
        candle_core::Error::WithBacktrace { inner, .. } => without_backtrace(inner),
        e => e.to_string(),
    }
}

impl Error {
    pub fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Error::Io {
            path: path.into(),
            source,
        }
    }
    pub fn config(
        file: impl Into<PathBuf>,
        key: impl Into<String>,
        msg: impl Into<String>,
    ) -> Self {
        Error::Config {
            file: file.into(),
            key: key.into(),
            msg: msg.into(),
        }
    }
    pub fn weights(file: impl Into<PathBuf>, msg: impl Into<String>) -> Self {
        Error::Weights {
            file: file.into(),
            msg: msg.into(),
        }
    }
    pub fn invalid(what: impl Into<String>, msg: impl Into<String>) -> Self {
        Error::Invalid {
            what: what.into(),
            msg: msg.into(),
        }
    }
    /// The text without the field prefix of an [`Error::Invalid`] (for a caller that names
    /// the field itself); other errors whole.
    pub fn detail(&self) -> String {
        match self {
            Error::Invalid { msg, .. } => msg.clone(),
            other => other.to_string(),
        }
    }
    pub fn msg(msg: impl Into<String>) -> Self {
        Error::Msg(msg.into())
    }
    /// Attributes an error to `rank`, unless it already names a rank.
    pub fn on_rank(self, rank: usize) -> Self {
        match self {
            e @ Error::Rank { .. } => e,
            e => Error::Rank {
                rank,
                source: Box::new(e),
            },
        }
    }
    /// The error a rank raised itself, looking through rank attribution.
    pub fn root(&self) -> &Error {
        match self {
            Error::Rank { source, .. } => source.root(),
            e => e,
        }
    }
}

/// How a front end names library fields (the CLI: `num_frames` → `--num-frames`).
type FieldNames = fn(&str) -> Option<String>;

static FIELD_NAMES: std::sync::OnceLock<FieldNames> = std::sync::OnceLock::new();

/// Makes every `Invalid` error render its field as `names` maps it (`None` keeps the
/// field's own name). Set once, at start-up, by the program that owns the names; errors
/// rendered anywhere later, also those sent to the other ranks of a job, use them.
pub fn set_field_names(names: FieldNames) {
    let _ = FIELD_NAMES.set(names);
}

fn field_name(what: &str) -> String {
    FIELD_NAMES
        .get()
        .and_then(|f| f(what))
        .unwrap_or_else(|| what.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_tensor_error_with_a_backtrace_is_one_line() {
        let inner = candle_core::Error::Msg("invalid device ordinal".into());
        let e: Error = candle_core::Error::WithBacktrace {
            inner: Box::new(inner),
            backtrace: Box::new(std::backtrace::Backtrace::force_capture()),
        }
        .into();
        assert_eq!(e.to_string(), "tensor: invalid device ordinal");
    }
}
