//! The sampler side of the denoising loop: seeded initial noise, sigma/timestep schedules,
//! the UniPC multistep solver (one state per latent stream) and classifier-free guidance.

pub mod config;
pub mod guidance;
pub mod noise;
pub mod schedule;
pub mod unipc;

pub use config::{FinalSigma, SchedulerConfig, SolverType};
pub use guidance::{cfg_combine, uses_cfg};
pub use schedule::{Schedule, ScheduleOptions, SigmaStyle, SolverSettings};
pub use unipc::UniPc;
