//! One cuDNN handle per (thread, stream), shared by every cuDNN user on that thread (fused
//! attention, video convolution): creating a handle costs time and device memory, and a
//! handle must not be used from two threads at once.

use std::cell::RefCell;
use std::collections::HashMap;
use std::rc::Rc;

use cudarc::cudnn::sys as dnn;

use crate::{Error, Result};

/// A cuDNN handle bound to one thread's stream.
pub(crate) struct Handle(pub(crate) dnn::cudnnHandle_t);

impl Drop for Handle {
    fn drop(&mut self) {
        // SAFETY: created by cudnnCreate and destroyed once.
        unsafe { dnn::cudnnDestroy(self.0) };
    }
}

thread_local! {
    static HANDLES: RefCell<HashMap<usize, Rc<Handle>>> = RefCell::new(HashMap::new());
}

/// This thread's handle for `stream`, created on first use.
pub(crate) fn handle_for(stream: dnn::cudaStream_t) -> Result<Rc<Handle>> {
    HANDLES.with(|h| {
        if let Some(x) = h.borrow().get(&(stream as usize)) {
            return Ok(x.clone());
        }
        let mut raw = std::ptr::null_mut();
        // SAFETY: out-pointer to a local.
        let status = unsafe { dnn::cudnnCreate(&mut raw) };
        if status != dnn::cudnnStatus_t::CUDNN_STATUS_SUCCESS {
            return Err(Error::msg(format!("cuDNN: create handle: {status:?}")));
        }
        let handle = Rc::new(Handle(raw));
        // SAFETY: a live handle and the caller's stream.
        let status = unsafe { dnn::cudnnSetStream(raw, stream) };
        if status != dnn::cudnnStatus_t::CUDNN_STATUS_SUCCESS {
            return Err(Error::msg(format!("cuDNN: set stream: {status:?}")));
        }
        h.borrow_mut().insert(stream as usize, handle.clone());
        Ok(handle)
    })
}
