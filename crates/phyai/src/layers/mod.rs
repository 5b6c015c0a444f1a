//! Building blocks shared by the models: attention, norms, rotary embedding, MLP, linear
//! layers (plain and tensor-parallel).

pub mod attention;
pub mod linear;
pub mod mlp;
pub mod norm;
pub mod rope;
pub mod tp;
