//! Activation maxima computed by the kernel that produced the activation. A dynamic FP8
//! quantization needs `max|x|` of its whole input before it can write a code; the fused
//! glue kernels that make the inputs of the generation tower's GEMMs (residual add +
//! RMSNorm, SiLU·mul) can fold that maximum in while they write, which saves the
//! quantization a full read of the activation.
//!
//! The producer remembers the maximum under the identity of the tensor it returned; the
//! FP8 layer that receives that very tensor uses it instead of reducing the input again.
//! Tensor ids are never reused, so a remembered value cannot meet another tensor. Producers
//! only compute it while a caller that will consume it says so ([`Wanted`]), and the
//! memory is per thread and small.

use std::cell::{Cell, RefCell};
use std::collections::VecDeque;

use candle_core::Tensor;

/// Remembered maxima (the newest last); a layer's activations are consumed right after
/// they are made, so a few suffice.
const KEEP: usize = 4;

thread_local! {
    static WANTED: Cell<bool> = const { Cell::new(false) };
    static KNOWN: RefCell<VecDeque<(candle_core::TensorId, Tensor)>> =
        const { RefCell::new(VecDeque::new()) };
}

/// While alive, producers on this thread compute the maxima of their outputs (when `on`).
/// Dropping it stops that and forgets every remembered value.
pub struct Wanted {
    before: bool,
}

impl Wanted {
    pub fn new(on: bool) -> Self {
        Wanted {
            before: WANTED.replace(on),
        }
    }
}

impl Drop for Wanted {
    fn drop(&mut self) {
        WANTED.set(self.before);
        if !self.before {
            KNOWN.with_borrow_mut(|k| k.clear());
        }
    }
}

/// Whether a producer should compute the maximum of its output.
pub fn wanted() -> bool {
    WANTED.get()
}

/// `amax` (f32 `[1]`, on `t`'s device) is `max|t|` over all of `t`.
pub fn remember(t: &Tensor, amax: Tensor) {
    KNOWN.with_borrow_mut(|k| {
        if k.len() == KEEP {
            k.pop_front();
        }
        k.push_back((t.id(), amax));
    });
}

/// `max|t|` if the kernel that made `t` computed it.
pub fn known(t: &Tensor) -> Option<Tensor> {
    let id = t.id();
    KNOWN.with_borrow(|k| {
        k.iter()
            .rev()
            .find(|(i, _)| *i == id)
            .map(|(_, a)| a.clone())
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    #[test]
    fn maxima_follow_tensor_identity_and_scope() {
        let d = Device::Cpu;
        let t = Tensor::zeros(3, candle_core::DType::F32, &d).unwrap();
        let a = Tensor::new(&[2f32], &d).unwrap();
        assert!(!wanted());
        {
            let _w = Wanted::new(true);
            assert!(wanted());
            remember(&t, a.clone());
            assert!(known(&t).is_some());
            // Another tensor, even of the same values, is not `t`.
            assert!(known(&t.reshape((1, 3)).unwrap()).is_none());
            assert!(known(&t.copy().unwrap()).is_none());
            for _ in 0..KEEP {
                remember(
                    &Tensor::zeros(1, candle_core::DType::F32, &d).unwrap(),
                    a.clone(),
                );
            }
            assert!(known(&t).is_none(), "only the newest few are kept");
            remember(&t, a);
        }
        assert!(!wanted());
        assert!(known(&t).is_none(), "the scope's end forgets");
    }
}
