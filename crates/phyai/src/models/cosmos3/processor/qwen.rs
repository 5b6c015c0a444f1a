//! The bundled Qwen tokenizer (Qwen2/Qwen3 byte-level BPE, 151643 merges ranks plus the
//! special tokens at their real ids, e.g. `<|endoftext|>` 151643, `<|im_start|>` 151644,
//! `<|im_end|>` 151645, `<|vision_start|>` 151652) with a Qwen-VL style chat template.
//! Used to build demo checkpoints whose `text_tokenizer/` behaves like the real one.

use std::io::Read;
use std::path::Path;

use crate::io::atomic::write_atomic;
use crate::{Error, Result};

const TOKENIZER_JSON_GZ: &[u8] =
    include_bytes!("../../../../assets/qwen-tokenizer/tokenizer.json.gz");
const TOKENIZER_CONFIG: &str =
    include_str!("../../../../assets/qwen-tokenizer/tokenizer_config.json");

/// Writes `tokenizer.json` and `tokenizer_config.json` into `dir` (created if missing).
pub fn write_qwen_tokenizer(dir: &Path) -> Result<()> {
    std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
    let mut json = Vec::with_capacity(8 << 20);
    flate2::read::GzDecoder::new(TOKENIZER_JSON_GZ)
        .read_to_end(&mut json)
        .map_err(|e| Error::msg(format!("bundled Qwen tokenizer is corrupt: {e}")))?;
    write_atomic(&dir.join("tokenizer.json"), &json)?;
    write_atomic(
        &dir.join("tokenizer_config.json"),
        TOKENIZER_CONFIG.as_bytes(),
    )
}
