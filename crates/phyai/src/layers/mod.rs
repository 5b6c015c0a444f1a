//! Building blocks shared by the models: attention, norms, rotary embedding, MLP, linear
//! layers (plain and tensor-parallel).

pub mod tp;
