//! Prompt processing against `fixtures/refs/processor.json`: token ids from diffusers'
//! `tokenize_prompt` and from PhyAI's processor logic, for the fixture checkpoint's
//! tokenizer and the bundled Qwen tokenizer. Ids must be identical.

use std::path::{Path, PathBuf};

use phyai::models::cosmos3::processor::{
    write_qwen_tokenizer, Processor, PromptInputs, PromptStyle,
};
use serde_json::Value;

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures")
}

fn refs() -> Value {
    let text =
        std::fs::read_to_string(fixtures().join("refs/processor.json")).expect("processor.json");
    serde_json::from_str(&text).expect("valid JSON")
}

fn inputs(case: &Value, style: PromptStyle) -> PromptInputs {
    PromptInputs {
        prompt: case["prompt"].as_str().unwrap().to_string(),
        negative_prompt: case["negative_prompt"].as_str().map(str::to_string),
        num_frames: case["num_frames"].as_u64().unwrap() as usize,
        height: case["height"].as_u64().unwrap() as usize,
        width: case["width"].as_u64().unwrap() as usize,
        fps: case["fps"].as_f64().unwrap(),
        style,
    }
}

fn ids(v: &Value) -> Vec<u32> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_u64().unwrap() as u32)
        .collect()
}

/// Compares every case and both styles for one tokenizer; returns the number of checks.
fn check_tokenizer(name: &str, processor: &Processor, refs: &Value) -> usize {
    let mut checked = 0;
    for case in refs["cases"].as_array().unwrap() {
        let case_name = case["name"].as_str().unwrap();
        for (style, key) in [
            (PromptStyle::Phyai, "phyai"),
            (PromptStyle::Diffusers, "diffusers"),
        ] {
            let want = &refs["ids"][name][case_name][key];
            let (pos, neg) = processor.encode_pair(&inputs(case, style)).unwrap();
            assert_eq!(
                pos,
                ids(&want["pos"]),
                "{name}/{case_name}/{key}: positive ids differ"
            );
            assert_eq!(
                neg,
                ids(&want["neg"]),
                "{name}/{case_name}/{key}: negative ids differ"
            );
            checked += 2;
        }
    }
    checked
}

#[test]
fn fixture_tokenizer_matches_references() {
    let refs = refs();
    if refs["ids"].get("tiny").is_none() {
        panic!("processor.json has no ids for the fixture tokenizer");
    }
    let processor = Processor::from_dir(&fixtures().join("tiny/text_tokenizer")).unwrap();
    let n = check_tokenizer("tiny", &processor, &refs);
    assert!(n >= 16, "only {n} sequences checked");
}

#[test]
fn qwen_tokenizer_matches_references() {
    let refs = refs();
    let dir = tempfile::tempdir().unwrap();
    write_qwen_tokenizer(dir.path()).unwrap();
    let processor = Processor::from_dir(dir.path()).unwrap();
    assert_eq!(processor.eos_id(), 151645);
    assert_eq!(processor.vision_start_id(), 151652);
    let n = check_tokenizer("qwen", &processor, &refs);
    assert!(n >= 16, "only {n} sequences checked");
}

#[test]
fn phyai_positive_texts_match() {
    let refs = refs();
    let processor = Processor::from_dir(&fixtures().join("tiny/text_tokenizer")).unwrap();
    for case in refs["cases"].as_array().unwrap() {
        let name = case["name"].as_str().unwrap();
        let (pos, _) = processor
            .captions(&inputs(case, PromptStyle::Phyai))
            .unwrap();
        assert_eq!(
            pos,
            refs["phyai_positive_texts"][name].as_str().unwrap(),
            "{name}"
        );
    }
}

#[test]
fn bad_inputs_are_errors() {
    let processor = Processor::from_dir(&fixtures().join("tiny/text_tokenizer")).unwrap();
    let mut input = PromptInputs {
        prompt: " \n\t".into(),
        negative_prompt: None,
        num_frames: 17,
        height: 128,
        width: 224,
        fps: 24.0,
        style: PromptStyle::Phyai,
    };
    let err = processor.encode_pair(&input).unwrap_err().to_string();
    assert!(err.starts_with("prompt: "), "{err}");
    input.prompt = "a cat".into();
    input.fps = 0.0;
    assert!(processor
        .encode_pair(&input)
        .unwrap_err()
        .to_string()
        .starts_with("fps: "));
    let missing = Processor::from_dir(Path::new("no/such/dir"));
    assert!(missing.is_err());
}
