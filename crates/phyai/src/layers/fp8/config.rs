//! `quantization_config` of a component's `config.json` (ModelOpt's export) and the
//! `--quantize` choice for unquantized checkpoints.
//!
//! Read keys: `quant_method` (must be `"modelopt"`), `quant_algo` (must be `"FP8"`), the
//! modules kept in 16 bits (`ignore`, `modules_to_not_convert` and `exclude_modules`, all
//! merged), `kv_cache_quant_algo` (must be absent or null) and
//! `runtime.diffusion_step_policy` (see [`super::policy`]). Other keys (`producer`, …) are
//! informational and ignored.

use std::path::Path;

use serde_json::Value;

use super::policy::StepPolicy;
use crate::{Error, Result};

/// Online quantization of an unquantized checkpoint at load (`--quantize`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Quantize {
    /// FP8 E4M3 weights with per-tensor scales, dynamic per-tensor activation scales.
    Fp8,
}

impl std::str::FromStr for Quantize {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        match s.to_ascii_lowercase().as_str() {
            "fp8" => Ok(Self::Fp8),
            _ => Err(Error::invalid(
                "quantize",
                format!("{s:?} (expected \"fp8\")"),
            )),
        }
    }
}

/// Module-path patterns: a pattern matches a module when it matches its whole dotted path
/// (`*` stands for any run of characters, dots included) or names one of its parents
/// (`time_embedder` covers `time_embedder.linear_1`).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ModulePatterns(Vec<String>);

impl ModulePatterns {
    pub fn new(patterns: Vec<String>) -> Self {
        Self(patterns)
    }

    /// The modules NVIDIA's FP8 checkpoints keep in 16 bits, used for `--quantize fp8`:
    /// the input/output projections, the timestep embedder, the sound and action adapters,
    /// the text head and any vision tower.
    pub fn published_ignore() -> Self {
        Self(
            [
                "proj_in",
                "proj_out",
                "time_embedder*",
                "audio_proj_*",
                "action_proj_*",
                "lm_head",
                "visual*",
                "model.visual*",
            ]
            .map(String::from)
            .to_vec(),
        )
    }

    /// The first pattern matching `module`.
    pub fn matching(&self, module: &str) -> Option<&str> {
        self.0
            .iter()
            .find(|p| {
                glob(p, module)
                    || module
                        .strip_prefix(p.as_str())
                        .is_some_and(|rest| rest.starts_with('.'))
            })
            .map(|p| p.as_str())
    }
}

/// Whether a checkpoint key is ModelOpt quantizer state (`*.weight_quantizer._amax`,
/// `*.input_quantizer._amax`, `*._scale`, …): calibration bookkeeping that inference never
/// reads (the exported `weight_scale`/`input_scale` carry what it needs).
pub fn is_quantizer_state(key: &str) -> bool {
    let leaf = key.rsplit('.').next().unwrap_or(key);
    leaf.starts_with('_') || key.split('.').any(|c| c.ends_with("_quantizer"))
}

/// `*` matches any run of characters; everything else literally.
fn glob(pattern: &str, s: &str) -> bool {
    match pattern.split_once('*') {
        None => pattern == s,
        Some((head, tail)) => {
            let Some(rest) = s.strip_prefix(head) else {
                return false;
            };
            (0..=rest.len())
                .filter(|&i| rest.is_char_boundary(i))
                .any(|i| glob(tail, &rest[i..]))
        }
    }
}

/// A checkpoint's FP8 quantization: which modules stay 16-bit and the step policy.
#[derive(Debug, Clone, PartialEq)]
pub struct QuantConfig {
    pub ignore: ModulePatterns,
    /// `None`: every step runs W8A8, the text tower too.
    pub policy: Option<StepPolicy>,
}

impl QuantConfig {
    /// Parses `quantization_config` (`v`) of `file`; errors name the key.
    pub fn parse(file: &Path, v: &Value) -> Result<Self> {
        let key = |k: &str| format!("quantization_config.{k}");
        let bad = |k: &str, m: String| Error::config(file, key(k), m);
        let obj = v
            .as_object()
            .ok_or_else(|| Error::config(file, "quantization_config", "must be an object"))?;
        match obj.get("quant_method").and_then(|m| m.as_str()) {
            Some(m) if m.eq_ignore_ascii_case("modelopt") => {}
            Some(m) => {
                return Err(bad(
                    "quant_method",
                    format!(
                        "{m:?} is not supported (this engine reads ModelOpt FP8: \"modelopt\")"
                    ),
                ))
            }
            None => return Err(bad("quant_method", "missing or not a string".into())),
        }
        match obj.get("quant_algo").and_then(|m| m.as_str()) {
            Some(a) if a.eq_ignore_ascii_case("fp8") => {}
            Some(a) => {
                return Err(bad(
                    "quant_algo",
                    format!("{a:?} is not supported (only per-tensor \"FP8\")"),
                ))
            }
            None => return Err(bad("quant_algo", "missing or not a string".into())),
        }
        match obj.get("kv_cache_quant_algo") {
            None | Some(Value::Null) => {}
            Some(other) => {
                return Err(bad(
                    "kv_cache_quant_algo",
                    format!("{other} is not supported (only null)"),
                ))
            }
        }
        let mut ignore = Vec::new();
        for k in ["ignore", "modules_to_not_convert", "exclude_modules"] {
            match obj.get(k) {
                None | Some(Value::Null) => {}
                Some(Value::Array(a)) => {
                    for p in a {
                        let p = p
                            .as_str()
                            .ok_or_else(|| bad(k, format!("{p} is not a module name")))?;
                        if !ignore.iter().any(|q| q == p) {
                            ignore.push(p.to_string());
                        }
                    }
                }
                Some(other) => return Err(bad(k, format!("{other} is not a list"))),
            }
        }
        let policy = match obj.get("runtime") {
            None | Some(Value::Null) => None,
            Some(Value::Object(rt)) => match rt.get("diffusion_step_policy") {
                None | Some(Value::Null) => None,
                Some(p) => StepPolicy::parse(p).map_err(|(k, m)| {
                    let path = if k.is_empty() {
                        "runtime.diffusion_step_policy".to_string()
                    } else {
                        format!("runtime.diffusion_step_policy.{k}")
                    };
                    bad(&path, m)
                })?,
            },
            Some(other) => return Err(bad("runtime", format!("{other} is not an object"))),
        };
        Ok(Self {
            ignore: ModulePatterns::new(ignore),
            policy,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn patterns_match_paths_and_parents() {
        let p = ModulePatterns::published_ignore();
        for m in [
            "proj_in",
            "proj_out",
            "time_embedder.linear_1",
            "audio_proj_in",
            "action_proj_out.3",
            "lm_head",
            "visual.blocks.0.attn",
        ] {
            assert!(p.matching(m).is_some(), "{m}");
        }
        for m in [
            "layers.0.self_attn.to_q",
            "layers.1.mlp_moe_gen.down_proj",
            "proj_input",
            "layers.0.proj_in",
        ] {
            assert_eq!(p.matching(m), None, "{m}");
        }
        assert!(glob("layers.*.mlp.*", "layers.12.mlp.up_proj"));
        assert!(is_quantizer_state(
            "layers.0.mlp.up_proj.input_quantizer._amax"
        ));
        assert!(is_quantizer_state(
            "layers.0.self_attn.to_q.weight_quantizer._scale"
        ));
        assert!(!is_quantizer_state("layers.0.self_attn.to_q.weight_scale"));
        assert!(!is_quantizer_state("layers.0.self_attn.to_q.input_scale"));
        assert!(!glob("layers.*.mlp", "layers.12.mlp_moe_gen"));
    }

    #[test]
    fn parses_modelopt_fp8_and_rejects_others() {
        let f = Path::new("transformer/config.json");
        let c = QuantConfig::parse(
            f,
            &json!({"quant_method": "modelopt", "quant_algo": "FP8",
                    "ignore": ["proj_in", "lm_head"], "modules_to_not_convert": ["lm_head", "visual*"],
                    "producer": {"name": "modelopt"}}),
        )
        .unwrap();
        assert_eq!(
            c.ignore,
            ModulePatterns::new(vec!["proj_in".into(), "lm_head".into(), "visual*".into()])
        );
        assert_eq!(c.policy, None);
        for (v, key) in [
            (
                json!({"quant_method": "gptq", "quant_algo": "FP8"}),
                "quant_method",
            ),
            (json!({"quant_algo": "FP8"}), "quant_method"),
            (
                json!({"quant_method": "modelopt", "quant_algo": "NVFP4"}),
                "quant_algo",
            ),
            (
                json!({"quant_method": "modelopt", "quant_algo": "FP8", "ignore": "proj_in"}),
                "ignore",
            ),
            (
                json!({"quant_method": "modelopt", "quant_algo": "FP8", "kv_cache_quant_algo": "FP8"}),
                "kv_cache_quant_algo",
            ),
            (
                json!({"quant_method": "modelopt", "quant_algo": "FP8",
                       "runtime": {"diffusion_step_policy": {"schema_version": 1}}}),
                "runtime.diffusion_step_policy.",
            ),
        ] {
            let e = QuantConfig::parse(f, &v).unwrap_err().to_string();
            assert!(e.contains(&format!("quantization_config.{key}")), "{e}");
            assert!(e.starts_with("transformer/config.json"), "{e}");
            assert_eq!(e.lines().count(), 1);
        }
        assert!("FP8".parse::<Quantize>().is_ok());
        assert!("int4".parse::<Quantize>().is_err());
    }
}
