//! The transfer prompt template: the prompt (an already detailed caption, usually JSON) is
//! used verbatim, without the clip metadata of generation, under transfer's own system
//! prompt; the default negative prompt is empty. The system prompt is always on (the
//! reference's transfer text step does not read the checkpoint's `default_use_system_prompt`).

use super::Processor;
use crate::Result;

/// The reference's system prompt for transfer.
pub const SYSTEM_PROMPT_TRANSFER: &str = "You are a helpful assistant that generates images or videos following the user's instructions and control signals (edge maps, blur, depth, or segmentation).";

impl Processor {
    /// Token ids of the conditional and unconditional transfer prompts.
    pub fn encode_transfer_pair(
        &self,
        prompt: &str,
        negative_prompt: Option<&str>,
    ) -> Result<(Vec<u32>, Vec<u32>)> {
        let extra: &[(&str, bool)] = &[("add_vision_id", false)];
        let system = Some(SYSTEM_PROMPT_TRANSFER);
        Ok((
            self.encode_turn(system, prompt, extra)?,
            self.encode_turn(system, negative_prompt.unwrap_or(""), extra)?,
        ))
    }
}
