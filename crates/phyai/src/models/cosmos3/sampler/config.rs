//! `scheduler/scheduler_config.json`: the UniPC multistep settings of a checkpoint.
//!
//! Field names and defaults are diffusers' `UniPCMultistepScheduler.__init__` arguments, so a
//! missing key means what it means there (e.g. an absent `use_karras_sigmas` is `false`).
//! Only the flow-matching subset Cosmos3 uses is supported; `validate` rejects the rest.

use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::{Error, Result};

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SchedulerConfig {
    #[serde(default = "default_num_train_timesteps")]
    pub num_train_timesteps: usize,
    #[serde(default = "default_solver_order")]
    pub solver_order: usize,
    #[serde(default = "default_prediction_type")]
    pub prediction_type: String,
    #[serde(default)]
    pub thresholding: bool,
    #[serde(default = "default_true")]
    pub predict_x0: bool,
    #[serde(default = "default_solver_type")]
    pub solver_type: String,
    #[serde(default = "default_true")]
    pub lower_order_final: bool,
    /// Step indices (0-based) whose following corrector is skipped.
    #[serde(default)]
    pub disable_corrector: Vec<usize>,
    /// `None` when the key is absent (diffusers then treats it as `false`).
    #[serde(default)]
    pub use_karras_sigmas: Option<bool>,
    #[serde(default)]
    pub use_exponential_sigmas: bool,
    #[serde(default)]
    pub use_beta_sigmas: bool,
    #[serde(default)]
    pub use_flow_sigmas: bool,
    #[serde(default = "default_flow_shift")]
    pub flow_shift: f64,
    #[serde(default = "default_timestep_spacing")]
    pub timestep_spacing: String,
    #[serde(default = "default_final_sigmas_type")]
    pub final_sigmas_type: String,
    #[serde(default)]
    pub use_dynamic_shifting: bool,
    /// Karras bounds (in the VP-sigma space, before the flow remap σ/(σ+1)).
    #[serde(default)]
    pub sigma_min: Option<f64>,
    #[serde(default)]
    pub sigma_max: Option<f64>,
    #[serde(default)]
    pub shift_terminal: Option<f64>,
}

fn default_num_train_timesteps() -> usize {
    1000
}
fn default_solver_order() -> usize {
    2
}
fn default_prediction_type() -> String {
    "epsilon".into()
}
fn default_true() -> bool {
    true
}
fn default_solver_type() -> String {
    "bh2".into()
}
fn default_flow_shift() -> f64 {
    1.0
}
fn default_timestep_spacing() -> String {
    "linspace".into()
}
fn default_final_sigmas_type() -> String {
    "zero".into()
}

/// How the last sigma of a schedule is chosen (`final_sigmas_type`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FinalSigma {
    Zero,
    SigmaMin,
}

/// The UniPC "B(h)" variant (`solver_type`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SolverType {
    Bh1,
    Bh2,
}

impl Default for SchedulerConfig {
    /// The values the Cosmos3 checkpoints ship.
    fn default() -> Self {
        SchedulerConfig {
            num_train_timesteps: 1000,
            solver_order: 2,
            prediction_type: "flow_prediction".into(),
            thresholding: false,
            predict_x0: true,
            solver_type: "bh2".into(),
            lower_order_final: true,
            disable_corrector: Vec::new(),
            use_karras_sigmas: Some(true),
            use_exponential_sigmas: false,
            use_beta_sigmas: false,
            use_flow_sigmas: true,
            flow_shift: 1.0,
            timestep_spacing: "linspace".into(),
            final_sigmas_type: "zero".into(),
            use_dynamic_shifting: false,
            sigma_min: Some(0.147),
            sigma_max: Some(200.0),
            shift_terminal: None,
        }
    }
}

impl SchedulerConfig {
    /// Reads and validates `scheduler_config.json`.
    pub fn from_file(path: &Path) -> Result<Self> {
        let cfg: SchedulerConfig = crate::io::json::read_json(path)?;
        cfg.validate(path)?;
        Ok(cfg)
    }

    /// Accepts the flow-matching, x0-predicting UniPC that Cosmos3 uses; anything else
    /// would silently sample a different process.
    pub fn validate(&self, file: &Path) -> Result<()> {
        let err = |key: &str, msg: String| Err(Error::config(file, key, msg));
        if self.num_train_timesteps < 2 {
            return err(
                "num_train_timesteps",
                format!("must be at least 2, got {}", self.num_train_timesteps),
            );
        }
        if !(1..=3).contains(&self.solver_order) {
            return err(
                "solver_order",
                format!(
                    "only orders 1 to 3 are supported, got {}",
                    self.solver_order
                ),
            );
        }
        if self.prediction_type != "flow_prediction" {
            return err(
                "prediction_type",
                format!(
                    "only \"flow_prediction\" is supported, got {:?}",
                    self.prediction_type
                ),
            );
        }
        if !self.use_flow_sigmas {
            return err(
                "use_flow_sigmas",
                "must be true (the model predicts flow velocity)".into(),
            );
        }
        if !self.predict_x0 {
            return err(
                "predict_x0",
                "only the x0-predicting update is supported".into(),
            );
        }
        if self.thresholding {
            return err(
                "thresholding",
                "dynamic thresholding is not supported".into(),
            );
        }
        self.solver_in(file)?;
        self.final_sigma_in(file)?;
        for (key, on) in [
            ("use_exponential_sigmas", self.use_exponential_sigmas),
            ("use_beta_sigmas", self.use_beta_sigmas),
            ("use_dynamic_shifting", self.use_dynamic_shifting),
        ] {
            if on {
                return err(key, "not supported for Cosmos3 sampling".into());
            }
        }
        if let Some(v) = self.shift_terminal {
            return err("shift_terminal", format!("not supported (got {v})"));
        }
        if !(self.flow_shift.is_finite() && self.flow_shift > 0.0) {
            return err(
                "flow_shift",
                format!("must be a positive number, got {}", self.flow_shift),
            );
        }
        for (key, v) in [("sigma_min", self.sigma_min), ("sigma_max", self.sigma_max)] {
            if let Some(v) = v {
                if !(v.is_finite() && v > 0.0) {
                    return err(key, format!("must be a positive number, got {v}"));
                }
            }
        }
        if let (Some(lo), Some(hi)) = (self.sigma_min, self.sigma_max) {
            if lo >= hi {
                return err(
                    "sigma_min",
                    format!("must be below sigma_max ({lo} >= {hi})"),
                );
            }
        }
        Ok(())
    }

    /// The B(h) variant; unknown names are a config error.
    pub fn solver(&self) -> Result<SolverType> {
        self.solver_in(Path::new("scheduler_config.json"))
    }

    fn solver_in(&self, file: &Path) -> Result<SolverType> {
        match self.solver_type.as_str() {
            "bh1" => Ok(SolverType::Bh1),
            // diffusers maps these legacy names to bh2.
            "bh2" | "midpoint" | "heun" | "logrho" => Ok(SolverType::Bh2),
            other => Err(Error::config(
                file,
                "solver_type",
                format!("expected \"bh1\" or \"bh2\", got {other:?}"),
            )),
        }
    }

    fn final_sigma_in(&self, file: &Path) -> Result<FinalSigma> {
        match self.final_sigmas_type.as_str() {
            "zero" => Ok(FinalSigma::Zero),
            "sigma_min" => Ok(FinalSigma::SigmaMin),
            other => Err(Error::config(
                file,
                "final_sigmas_type",
                format!("expected \"zero\" or \"sigma_min\", got {other:?}"),
            )),
        }
    }

    /// `final_sigmas_type` as an enum (validated configs only).
    pub fn final_sigmas(&self) -> Result<FinalSigma> {
        self.final_sigma_in(Path::new("scheduler_config.json"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<SchedulerConfig> {
        let p = Path::new("scheduler_config.json");
        let c: SchedulerConfig = crate::io::json::parse_json(p, text)?;
        c.validate(p)?;
        Ok(c)
    }

    #[test]
    fn defaults_follow_diffusers_when_keys_are_absent() {
        let c =
            parse(r#"{"prediction_type": "flow_prediction", "use_flow_sigmas": true}"#).unwrap();
        assert_eq!(c.num_train_timesteps, 1000);
        assert_eq!(c.solver_order, 2);
        assert_eq!(c.use_karras_sigmas, None);
        assert_eq!(c.flow_shift, 1.0);
        assert_eq!(c.final_sigmas().unwrap(), FinalSigma::Zero);
        assert_eq!(c.solver().unwrap(), SolverType::Bh2);
    }

    #[test]
    fn unsupported_settings_name_their_key() {
        let bad = [
            (r#"{"use_flow_sigmas": true}"#, "prediction_type"),
            (
                r#"{"prediction_type": "flow_prediction"}"#,
                "use_flow_sigmas",
            ),
            (
                r#"{"prediction_type": "flow_prediction", "use_flow_sigmas": true, "flow_shift": 0}"#,
                "flow_shift",
            ),
            (
                r#"{"prediction_type": "flow_prediction", "use_flow_sigmas": true, "solver_order": 4}"#,
                "solver_order",
            ),
            (
                r#"{"prediction_type": "flow_prediction", "use_flow_sigmas": true, "final_sigmas_type": "x"}"#,
                "final_sigmas_type",
            ),
            (
                r#"{"prediction_type": "flow_prediction", "use_flow_sigmas": true, "sigma_min": 5, "sigma_max": 1}"#,
                "sigma_min",
            ),
        ];
        for (text, key) in bad {
            match parse(text) {
                Err(Error::Config { key: k, .. }) => assert_eq!(k, key, "{text}"),
                other => panic!("{text}: expected a config error, got {other:?}"),
            }
        }
    }
}
