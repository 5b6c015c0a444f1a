//! Reading JSON config files with errors that name the file and the key.

use std::path::Path;

use serde::de::DeserializeOwned;

use crate::{Error, Result};

/// Reads and deserialises a JSON config. Unknown keys are tolerated (the structs do not
/// deny them); a type error names the offending key path.
pub fn read_json<T: DeserializeOwned>(path: &Path) -> Result<T> {
    let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
    parse_json(path, &text)
}

/// Deserialises JSON text that came from `path` (named in errors).
pub fn parse_json<T: DeserializeOwned>(path: &Path, text: &str) -> Result<T> {
    let de = &mut serde_json::Deserializer::from_str(text);
    serde_path_to_error::deserialize(de).map_err(|e| {
        let key = e.path().to_string();
        let inner = e.into_inner();
        let key = if key == "." {
            "(file)".to_string()
        } else {
            key
        };
        Error::config(path, key, inner.to_string())
    })
}
