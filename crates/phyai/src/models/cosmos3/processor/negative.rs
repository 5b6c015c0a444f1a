//! Default negative prompts of the two prompt styles.

/// PhyAI's structured "bad video" negative prompt, stored exactly as the reference feeds
/// it to the tokenizer (its JSON file loaded and re-dumped by Python `json.dumps`: one
/// line, ASCII only).
const STRUCTURED_BAD_VIDEO: &str =
    include_str!("../../../../assets/cosmos3/default_negative_prompt.txt");

/// The negative prompt PhyAI uses when none is given.
pub fn phyai_default() -> &'static str {
    STRUCTURED_BAD_VIDEO
}

/// The negative prompt diffusers uses when none is given (empty; its metadata sentences
/// are still appended).
pub fn diffusers_default() -> &'static str {
    ""
}
