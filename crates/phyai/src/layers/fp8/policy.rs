//! Activation precision per denoising step: `quantization_config.runtime.diffusion_step_policy`
//! of a ModelOpt FP8 checkpoint. Static FP8 activations hurt most at the first steps (the
//! layout forms) and the last ones (fine detail), so the checkpoint asks for 16-bit
//! activations there (W8A16: the same FP8 weights, dequantized) and FP8 in between (W8A8).
//!
//! Accepted JSON, every key required (the schema other runtimes read from these checkpoints):
//!
//! ```json
//! { "schema_version": 1, "type": "first_last_n", "index_space": "denoising_loop_iteration",
//!   "scope": ["transformer"], "default_mode": "native",
//!   "first_steps": {"count": 3, "mode": "a16"}, "last_steps": {"count": 3, "mode": "a16"},
//!   "overlap": "a16", "reasoner": "a16" }
//! ```
//!
//! - `first_steps.count` / `last_steps.count`: steps at the start / end of the loop that run
//!   W8A16 (`mode` must be `"a16"`); windows that overlap simply cover both.
//! - `reasoner`: the text ("und") tower, which runs once per prompt: `"a16"` always W8A16,
//!   `"native"` always W8A8.
//! - `scope` without `"transformer"`: the policy is not for this component and is ignored.
//! - A loop of one step stays W8A8 (it is a probe, not a request made only of edges).
//!
//! Any other value, a missing key or an unknown key is an error naming the key: a policy
//! half-understood would silently run a precision the checkpoint did not ask for.

use serde_json::Value;

/// How the FP8 layers treat their inputs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ActivationPrecision {
    /// FP8 activations (static or dynamic per-tensor scale), FP8 weights.
    W8A8,
    /// 16-bit activations, FP8 weights dequantized.
    W8A16,
}

/// The first/last-N step policy; [`StepPolicy::precision_at`] is a pure function of the step.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StepPolicy {
    pub first_steps: usize,
    pub last_steps: usize,
    /// The text tower's fixed precision.
    pub reasoner: ActivationPrecision,
}

const KEYS: [&str; 9] = [
    "schema_version",
    "type",
    "index_space",
    "scope",
    "default_mode",
    "first_steps",
    "last_steps",
    "overlap",
    "reasoner",
];

impl StepPolicy {
    /// The policy NVIDIA ships with the Nano and Super FP8 checkpoints.
    pub const PUBLISHED: StepPolicy = StepPolicy {
        first_steps: 3,
        last_steps: 3,
        reasoner: ActivationPrecision::W8A16,
    };

    /// Parses the policy object. `Ok(None)` when its `scope` excludes the transformer;
    /// errors are `(key, message)` with the key relative to the policy object.
    pub fn parse(v: &Value) -> Result<Option<Self>, (String, String)> {
        let err = |k: &str, m: String| Err((k.to_string(), m));
        let obj = match v.as_object() {
            Some(o) => o,
            None => return err("", "must be an object".into()),
        };
        if let Some(k) = obj.keys().find(|k| !KEYS.contains(&k.as_str())) {
            return err(
                k,
                "unknown key (this engine implements schema_version 1)".into(),
            );
        }
        if let Some(k) = KEYS.iter().find(|k| !obj.contains_key(**k)) {
            return err(k, "missing".into());
        }
        let exact = |k: &str, want: &str| -> Result<(), (String, String)> {
            match obj[k].as_str() {
                Some(s) if s == want => Ok(()),
                _ => Err((
                    k.to_string(),
                    format!("{} (only {want:?} is supported)", obj[k]),
                )),
            }
        };
        if !(obj["schema_version"].is_u64() && obj["schema_version"].as_u64() == Some(1)) {
            return err(
                "schema_version",
                format!("{} (only 1 is supported)", obj["schema_version"]),
            );
        }
        exact("type", "first_last_n")?;
        exact("index_space", "denoising_loop_iteration")?;
        exact("default_mode", "native")?;
        exact("overlap", "a16")?;
        let scope = match obj["scope"].as_array() {
            Some(a) if !a.is_empty() && a.iter().all(|s| s.is_string()) => a,
            _ => {
                return err(
                    "scope",
                    "must be a non-empty list of component names".into(),
                )
            }
        };
        let reasoner = match obj["reasoner"].as_str() {
            Some("a16") => ActivationPrecision::W8A16,
            Some("native") => ActivationPrecision::W8A8,
            _ => {
                return err(
                    "reasoner",
                    format!("{} (expected \"a16\" or \"native\")", obj["reasoner"]),
                )
            }
        };
        let window = |k: &str| -> Result<usize, (String, String)> {
            let w = &obj[k];
            let count = w.get("count").and_then(|c| c.as_u64());
            let mode = w.get("mode").and_then(|m| m.as_str());
            match (w.as_object().map(|o| o.len()), count, mode) {
                (Some(2), Some(c), Some("a16")) => Ok(c as usize),
                _ => Err((
                    k.to_string(),
                    format!("{w} (expected {{\"count\": N ≥ 0, \"mode\": \"a16\"}})"),
                )),
            }
        };
        let policy = StepPolicy {
            first_steps: window("first_steps")?,
            last_steps: window("last_steps")?,
            reasoner,
        };
        if !scope.iter().any(|s| s.as_str() == Some("transformer")) {
            return Ok(None);
        }
        Ok(Some(policy))
    }

    /// The generation tower's precision at loop iteration `index` of `count`.
    pub fn precision_at(&self, index: usize, count: usize) -> ActivationPrecision {
        let edge = count > 1 && (index < self.first_steps || index + self.last_steps >= count);
        if edge {
            ActivationPrecision::W8A16
        } else {
            ActivationPrecision::W8A8
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ActivationPrecision::{W8A16, W8A8};

    fn published() -> Value {
        serde_json::json!({
            "schema_version": 1, "type": "first_last_n",
            "index_space": "denoising_loop_iteration", "scope": ["transformer"],
            "default_mode": "native", "first_steps": {"count": 3, "mode": "a16"},
            "last_steps": {"count": 3, "mode": "a16"}, "overlap": "a16", "reasoner": "a16"
        })
    }

    #[test]
    fn published_policy_selects_the_edges() {
        let p = StepPolicy::parse(&published()).unwrap().unwrap();
        assert_eq!(p, StepPolicy::PUBLISHED);
        let got: Vec<_> = (0..10).map(|i| p.precision_at(i, 10)).collect();
        let mut want = vec![W8A16; 3];
        want.extend([W8A8; 4]);
        want.extend([W8A16; 3]);
        assert_eq!(got, want);
        // Overlapping windows cover every step; one step is a probe and stays W8A8.
        assert!((0..4).all(|i| p.precision_at(i, 4) == W8A16));
        assert_eq!(p.precision_at(0, 1), W8A8);
        let none = StepPolicy {
            first_steps: 0,
            last_steps: 0,
            reasoner: W8A8,
        };
        assert!((0..5).all(|i| none.precision_at(i, 5) == W8A8));
    }

    #[test]
    fn reasoner_and_scope() {
        let mut v = published();
        v["reasoner"] = "native".into();
        v["first_steps"]["count"] = 1.into();
        let p = StepPolicy::parse(&v).unwrap().unwrap();
        assert_eq!((p.first_steps, p.last_steps, p.reasoner), (1, 3, W8A8));
        v["scope"] = serde_json::json!(["vae"]);
        assert_eq!(StepPolicy::parse(&v).unwrap(), None);
    }

    #[test]
    fn malformed_policies_name_the_key() {
        let cases: Vec<(&str, Value)> = vec![
            ("schema_version", 2.into()),
            ("schema_version", true.into()),
            ("type", "every_n".into()),
            ("index_space", "sigma".into()),
            ("default_mode", "a16".into()),
            ("overlap", "native".into()),
            ("reasoner", "a8".into()),
            (
                "first_steps",
                serde_json::json!({"count": -1, "mode": "a16"}),
            ),
            (
                "first_steps",
                serde_json::json!({"count": 3, "mode": "native"}),
            ),
            ("last_steps", serde_json::json!({"count": 3})),
            ("scope", serde_json::json!([])),
        ];
        for (key, bad) in cases {
            let mut v = published();
            v[key] = bad;
            let (k, _) = StepPolicy::parse(&v).unwrap_err();
            assert_eq!(k, key);
        }
        let mut v = published();
        v["future_knob"] = 1.into();
        assert_eq!(StepPolicy::parse(&v).unwrap_err().0, "future_knob");
        let mut v = published();
        v.as_object_mut().unwrap().remove("overlap");
        assert_eq!(StepPolicy::parse(&v).unwrap_err().0, "overlap");
        assert!(StepPolicy::parse(&serde_json::json!([])).is_err());
    }
}
