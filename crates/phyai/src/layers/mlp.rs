//! Gated feed-forward blocks: SwiGLU (`down(silu(gate(x)) · up(x))`, Nano/Super) and the
//! squared-ReLU variant (`down(relu(up(x))²)`, Edge). Up/gate are column-parallel and down
//! is row-parallel over the intermediate channels.

use candle_core::Tensor;

use super::tp::{ColumnParallelLinear, RowParallelLinear};
use crate::io::weights::Weights;
use crate::parallel::Group;
use crate::{Error, Result};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Activation {
    Silu,
    Relu2,
}

impl Activation {
    pub fn parse(name: &str) -> Result<Self> {
        match name {
            "silu" => Ok(Self::Silu),
            "relu2" => Ok(Self::Relu2),
            other => Err(Error::invalid(
                "hidden_act",
                format!("{other:?} (expected \"silu\" or \"relu2\")"),
            )),
        }
    }
}

#[derive(Clone)]
pub struct GatedMlp {
    /// SiLU: `[gate | up]` as one GEMM; squared ReLU: `up` alone.
    gate_up: ColumnParallelLinear,
    gated: bool,
    down: RowParallelLinear,
}

impl GatedMlp {
    /// Loads `gate_proj` (SiLU only), `up_proj`, `down_proj`, all without bias.
    pub fn load(
        w: &Weights,
        hidden: usize,
        intermediate: usize,
        act: Activation,
        tp: &Group,
    ) -> Result<Self> {
        let what = "intermediate_size";
        let (gate, up) = (w.pp("gate_proj"), w.pp("up_proj"));
        let gate_up = match act {
            Activation::Silu => tp.fused_column(
                &[(&gate, intermediate, 1, what), (&up, intermediate, 1, what)],
                hidden,
                false,
            )?,
            Activation::Relu2 => tp.column(&up, hidden, intermediate, 1, false, what)?,
        };
        Ok(Self {
            gate_up,
            gated: act == Activation::Silu,
            down: tp.row(&w.pp("down_proj"), intermediate, 1, hidden, false, what)?,
        })
    }

    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        self.down
            .forward(&self.activate(&self.gate_up.forward(x)?)?)
    }

    /// [`Self::forward`] with a profile mark after each of its three stages
    /// ([`super::profile`]).
    pub fn forward_profiled(&self, x: &Tensor) -> Result<Tensor> {
        let dev = x.device();
        let y = self.gate_up.forward(x)?;
        super::profile::mark(dev, "gate|up GEMM");
        let h = self.activate(&y)?;
        super::profile::mark(dev, "activation");
        let out = self.down.forward(&h)?;
        super::profile::mark(dev, "down GEMM");
        Ok(out)
    }

    fn activate(&self, y: &Tensor) -> Result<Tensor> {
        Ok(if self.gated {
            super::glue::silu_mul(y)?
        } else {
            y.relu()?.sqr()?
        })
    }
}
