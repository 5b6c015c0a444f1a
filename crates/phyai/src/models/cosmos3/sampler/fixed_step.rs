//! The fixed few-step schedule of distilled checkpoints (Cosmos3-*-4Step).
//!
//! A distilled checkpoint ships a `FlowMatchEulerDiscreteScheduler` config whose
//! `fixed_step_sampler_config` holds the sigmas (`t_list`) and the sampling process
//! (`sample_type`, only "sde" exists), and a root `modular_model_index.json` that may repeat
//! the sigmas as `distilled_sigmas` (where diffusers reads them). Either source is enough;
//! when both are present they must agree. The sigmas are then mapped exactly as diffusers'
//! `set_timesteps(sigmas=…)` maps them: rounded to f32, warped by
//! `shift·σ/(1 + (shift−1)·σ)` in f32, timesteps `σ·num_train_timesteps` in f32 (floats such
//! as 833.3333, not integers), and a final sigma 0 appended.

use std::path::Path;

use serde_json::Value;

use super::schedule::MAX_STEPS;
use crate::{Error, Result};

/// File name of the distilled pipeline's index at the checkpoint root.
pub const MODULAR_INDEX: &str = "modular_model_index.json";

/// The resolved schedule of a distilled checkpoint.
#[derive(Debug, Clone, PartialEq)]
pub struct FixedStepSchedule {
    /// `steps + 1` sigmas, decreasing, the last one 0.
    sigmas: Vec<f32>,
    /// The model-facing timestep of each step (σ·N in f32, widened).
    timesteps: Vec<f64>,
}

impl FixedStepSchedule {
    /// Reads the schedule of the checkpoint at `root` when its scheduler is a fixed-step
    /// one (a FlowMatch config, a `fixed_step_sampler_config`, or `distilled_sigmas` in a
    /// `modular_model_index.json`); `None` for a base (UniPC) checkpoint.
    pub fn from_checkpoint(root: &Path) -> Result<Option<Self>> {
        let sched_file = root.join("scheduler").join("scheduler_config.json");
        let sched = read_value(&sched_file)?;
        let index_file = root.join(MODULAR_INDEX);
        let index = if index_file.is_file() {
            Some(read_value(&index_file)?)
        } else {
            None
        };
        let class = sched.get("_class_name").and_then(Value::as_str);
        let from_index = match &index {
            Some(v) => sigma_list(v.get("distilled_sigmas"), &index_file, "distilled_sigmas")?,
            None => None,
        };
        let fixed = sched
            .get("fixed_step_sampler_config")
            .filter(|v| !v.is_null());
        let fixed_step = class == Some("FlowMatchEulerDiscreteScheduler")
            || fixed.is_some()
            || from_index.is_some();
        if !fixed_step {
            return Ok(None);
        }
        let resolved = resolve(
            &sched,
            &sched_file,
            fixed,
            from_index.as_deref(),
            &index_file,
        )?;
        Ok(Some(resolved))
    }

    /// Builds the schedule from raw sigmas with the scheduler's `shift` and
    /// `num_train_timesteps` (what diffusers' `set_timesteps(sigmas=…)` computes).
    pub fn new(sigmas: &[f64], shift: f64, num_train_timesteps: usize) -> Result<Self> {
        let n = num_train_timesteps as f32;
        let shift = shift as f32;
        let sig: Vec<f32> = sigmas
            .iter()
            .map(|&s| {
                let s = s as f32;
                shift * s / (1.0 + (shift - 1.0) * s)
            })
            .collect();
        let timesteps = sig.iter().map(|&s| (s * n) as f64).collect();
        let mut sigmas = sig;
        sigmas.push(0.0);
        Ok(Self { sigmas, timesteps })
    }

    /// `steps + 1` sigmas, the last one 0.
    pub fn sigmas(&self) -> &[f32] {
        &self.sigmas
    }

    /// The timestep the model sees at each step.
    pub fn timesteps(&self) -> &[f64] {
        &self.timesteps
    }

    /// Number of denoising steps (fixed by the checkpoint).
    pub fn steps(&self) -> usize {
        self.timesteps.len()
    }

    /// Checks a request's step count and guidance scale (`None`: not given) against the
    /// checkpoint: the steps are fixed and guidance is baked into the weights, so only the
    /// schedule's own step count and a scale of 1 are accepted, as diffusers does.
    pub fn check_request(&self, steps: Option<usize>, guidance_scale: Option<f64>) -> Result<()> {
        if let Some(s) = steps.filter(|&s| s != self.steps()) {
            return Err(Error::invalid(
                "steps",
                format!(
                    "this distilled checkpoint samples exactly {} steps, got {s}",
                    self.steps()
                ),
            ));
        }
        if let Some(g) = guidance_scale.filter(|&g| g != 1.0) {
            return Err(Error::invalid(
                "guidance_scale",
                format!("guidance is baked into this distilled checkpoint; must be 1, got {g}"),
            ));
        }
        Ok(())
    }
}

fn read_value(file: &Path) -> Result<Value> {
    let text = std::fs::read_to_string(file).map_err(|e| Error::io(file, e))?;
    serde_json::from_str(&text).map_err(|e| Error::config(file, "", format!("invalid JSON: {e}")))
}

/// A list of sigmas: each in (0, 1], strictly decreasing, at least one, at most MAX_STEPS.
/// `None` when the key is absent or null.
fn sigma_list(v: Option<&Value>, file: &Path, key: &str) -> Result<Option<Vec<f64>>> {
    let Some(v) = v.filter(|v| !v.is_null()) else {
        return Ok(None);
    };
    let bad = |msg: String| Error::config(file, key, msg);
    let items = v
        .as_array()
        .ok_or_else(|| bad(format!("expected a list of sigmas, got {v}")))?;
    if items.is_empty() {
        return Err(bad(
            "is empty: a fixed-step schedule needs at least one sigma".into(),
        ));
    }
    if items.len() > MAX_STEPS {
        return Err(bad(format!(
            "has {} entries (at most {MAX_STEPS})",
            items.len()
        )));
    }
    let mut out = Vec::with_capacity(items.len());
    for item in items {
        let s = item
            .as_f64()
            .ok_or_else(|| bad(format!("expected numbers, got {item}")))?;
        if !(s > 0.0 && s <= 1.0) {
            return Err(bad(format!("sigmas must lie in (0, 1], got {s}")));
        }
        if out.last().is_some_and(|&prev| s >= prev) {
            return Err(bad(format!(
                "sigmas must decrease, got {s} after {}",
                out[out.len() - 1]
            )));
        }
        out.push(s);
    }
    Ok(Some(out))
}

fn resolve(
    sched: &Value,
    sched_file: &Path,
    fixed: Option<&Value>,
    from_index: Option<&[f64]>,
    index_file: &Path,
) -> Result<FixedStepSchedule> {
    let cfg_err = |key: &str, msg: String| Error::config(sched_file, key, msg);
    let class = sched.get("_class_name").and_then(Value::as_str);
    if let Some(c) = class {
        if c != "FlowMatchEulerDiscreteScheduler" {
            return Err(cfg_err(
                "_class_name",
                format!("a fixed-step schedule needs FlowMatchEulerDiscreteScheduler, got {c:?}"),
            ));
        }
    }
    let num_train = match sched.get("num_train_timesteps") {
        None | Some(Value::Null) => 1000,
        Some(v) => positive_int(v).ok_or_else(|| {
            cfg_err(
                "num_train_timesteps",
                format!("expected a positive integer, got {v}"),
            )
        })?,
    };
    let shift = match sched.get("shift") {
        None | Some(Value::Null) => 1.0,
        Some(v) => v
            .as_f64()
            .filter(|s| s.is_finite() && *s > 0.0)
            .ok_or_else(|| cfg_err("shift", format!("must be a positive number, got {v}")))?,
    };
    // Switches that would make diffusers compute another schedule or another process.
    for key in [
        "use_dynamic_shifting",
        "use_karras_sigmas",
        "use_exponential_sigmas",
        "use_beta_sigmas",
        "invert_sigmas",
    ] {
        if sched.get(key).and_then(Value::as_bool) == Some(true) {
            return Err(cfg_err(
                key,
                "not supported with a fixed-step schedule".into(),
            ));
        }
    }
    if let Some(v) = sched.get("shift_terminal").filter(|v| !v.is_null()) {
        return Err(cfg_err(
            "shift_terminal",
            format!("not supported (got {v})"),
        ));
    }
    if sched.get("stochastic_sampling").and_then(Value::as_bool) == Some(false) {
        return Err(cfg_err(
            "stochastic_sampling",
            "is false, but distilled checkpoints sample with the SDE step (sample_type \"sde\")"
                .into(),
        ));
    }

    let from_config = match fixed {
        None => None,
        Some(f) => {
            let key = |k: &str| format!("fixed_step_sampler_config.{k}");
            if !f.is_object() {
                return Err(cfg_err(
                    "fixed_step_sampler_config",
                    format!("expected an object, got {f}"),
                ));
            }
            match f.get("sample_type").and_then(Value::as_str) {
                Some("sde") => {}
                Some(other) => {
                    return Err(cfg_err(
                        &key("sample_type"),
                        format!("only \"sde\" is supported, got {other:?}"),
                    ))
                }
                None => {
                    return Err(cfg_err(
                        &key("sample_type"),
                        "missing (expected \"sde\")".into(),
                    ))
                }
            }
            if let Some(v) = f.get("num_train_timesteps").filter(|v| !v.is_null()) {
                if positive_int(v) != Some(num_train) {
                    return Err(cfg_err(
                        &key("num_train_timesteps"),
                        format!("is {v}, the scheduler's num_train_timesteps is {num_train}"),
                    ));
                }
            }
            let list = sigma_list(f.get("t_list"), sched_file, &key("t_list"))?;
            Some(list.ok_or_else(|| cfg_err(&key("t_list"), "missing".into()))?)
        }
    };
    let sigmas = match (from_config, from_index) {
        (Some(a), Some(b)) => {
            if a.as_slice() != b {
                return Err(Error::config(
                    index_file,
                    "distilled_sigmas",
                    format!(
                        "{b:?} disagrees with fixed_step_sampler_config.t_list {a:?} in {}",
                        sched_file.display()
                    ),
                ));
            }
            a
        }
        (Some(a), None) => a,
        (None, Some(b)) => b.to_vec(),
        (None, None) => {
            return Err(cfg_err(
                "fixed_step_sampler_config",
                format!(
                    "missing, and no distilled_sigmas in {}: the checkpoint names no fixed-step schedule",
                    MODULAR_INDEX
                ),
            ))
        }
    };
    FixedStepSchedule::new(&sigmas, shift, num_train)
}

fn positive_int(v: &Value) -> Option<usize> {
    v.as_u64().filter(|&n| n > 0).map(|n| n as usize)
}

#[cfg(test)]
mod tests {
    use super::*;

    const T_LIST: &str = "[1.0, 0.9375, 0.8333333333333334, 0.625]";

    fn checkpoint(sched: &str, index: Option<&str>) -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("scheduler")).unwrap();
        std::fs::write(dir.path().join("scheduler/scheduler_config.json"), sched).unwrap();
        if let Some(i) = index {
            std::fs::write(dir.path().join(MODULAR_INDEX), i).unwrap();
        }
        dir
    }

    fn sde(list: &str) -> String {
        format!(
            r#"{{"_class_name": "FlowMatchEulerDiscreteScheduler", "shift": 1.0, "stochastic_sampling": true,
               "fixed_step_sampler_config": {{"num_train_timesteps": 1000, "sample_type": "sde", "t_list": {list}}}}}"#
        )
    }

    fn error_of(sched: &str, index: Option<&str>) -> String {
        let d = checkpoint(sched, index);
        let e = FixedStepSchedule::from_checkpoint(d.path())
            .unwrap_err()
            .to_string();
        assert!(!e.contains('\n'), "{e}");
        e
    }

    #[test]
    fn either_source_gives_the_same_schedule() {
        let a = checkpoint(&sde(T_LIST), None);
        let b = checkpoint(
            r#"{"_class_name": "FlowMatchEulerDiscreteScheduler", "stochastic_sampling": true}"#,
            Some(&format!(r#"{{"distilled_sigmas": {T_LIST}}}"#)),
        );
        let c = checkpoint(
            &sde(T_LIST),
            Some(&format!(r#"{{"distilled_sigmas": {T_LIST}}}"#)),
        );
        let sa = FixedStepSchedule::from_checkpoint(a.path())
            .unwrap()
            .unwrap();
        let sb = FixedStepSchedule::from_checkpoint(b.path())
            .unwrap()
            .unwrap();
        let sc = FixedStepSchedule::from_checkpoint(c.path())
            .unwrap()
            .unwrap();
        assert_eq!(sa, sb);
        assert_eq!(sa, sc);
        assert_eq!(sa.sigmas(), &[1.0, 0.9375, 0.833_333_3, 0.625, 0.0]);
        // σ·1000 in f32, as diffusers' timesteps tensor holds it.
        assert_eq!(
            sa.timesteps(),
            &[1000.0, 937.5, 833.333_312_988_281_2, 625.0]
        );
    }

    #[test]
    fn requests_may_not_change_steps_or_guidance() {
        let s =
            FixedStepSchedule::new(&[1.0, 0.9375, 0.8333333333333334, 0.625], 1.0, 1000).unwrap();
        assert!(s.check_request(None, None).is_ok());
        assert!(s.check_request(Some(4), Some(1.0)).is_ok());
        let e = s.check_request(Some(35), None).unwrap_err().to_string();
        assert!(e.starts_with("steps: ") && e.contains("exactly 4"), "{e}");
        let e = s.check_request(None, Some(6.0)).unwrap_err().to_string();
        assert!(e.starts_with("guidance_scale: "), "{e}");
    }

    #[test]
    fn shift_warps_like_diffusers() {
        let s = FixedStepSchedule::new(&[1.0, 0.5], 3.0, 1000).unwrap();
        // 3·0.5/(1 + 2·0.5) = 0.75
        assert_eq!(s.sigmas(), &[1.0, 0.75, 0.0]);
        assert_eq!(s.timesteps(), &[1000.0, 750.0]);
    }

    #[test]
    fn unipc_checkpoints_have_no_fixed_schedule() {
        let d = checkpoint(
            r#"{"_class_name": "UniPCMultistepScheduler", "use_flow_sigmas": true}"#,
            None,
        );
        assert!(FixedStepSchedule::from_checkpoint(d.path())
            .unwrap()
            .is_none());
    }

    #[test]
    fn bad_schedules_are_one_line_errors_naming_the_key() {
        let idx = |l: &str| format!(r#"{{"distilled_sigmas": {l}}}"#);
        let cases: Vec<(String, Option<String>, &str)> = vec![
            (sde("[1.0, 0.5]"), Some(idx(T_LIST)), "disagrees"),
            (sde("[]"), None, "t_list: is empty"),
            (
                r#"{"_class_name": "FlowMatchEulerDiscreteScheduler"}"#.into(),
                Some(idx("[]")),
                "distilled_sigmas: is empty",
            ),
            (
                sde(T_LIST).replace("\"sde\"", "\"ode\""),
                None,
                "sample_type: only \"sde\"",
            ),
            (
                r#"{"_class_name": "FlowMatchEulerDiscreteScheduler"}"#.into(),
                None,
                "no fixed-step schedule",
            ),
            (sde("[0.5, 0.9]"), None, "must decrease"),
            (sde("[1.5]"), None, "(0, 1]"),
            (
                sde(T_LIST).replace(
                    "\"stochastic_sampling\": true",
                    "\"stochastic_sampling\": false",
                ),
                None,
                "stochastic_sampling",
            ),
            (
                sde(T_LIST).replace("\"shift\": 1.0", "\"use_dynamic_shifting\": true"),
                None,
                "use_dynamic_shifting",
            ),
        ];
        for (sched, index, want) in cases {
            let e = error_of(&sched, index.as_deref());
            assert!(e.contains(want), "{want:?} not in {e:?}");
        }
    }
}
