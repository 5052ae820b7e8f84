//! Gradient buffers kept across micro-batches and steps: the fused ops' backward passes add
//! weight gradients straight into them (a GEMM with accumulation, a scatter-add) instead of
//! handing candle's autograd a fresh tensor that it adds into a fresh zero tensor, so the
//! weight gradients of a whole step cost no allocation at all.
//!
//! A trainer makes one `GradBuffers` for its variables, zeroes it at the start of each step,
//! [`GradBuffers::activate`]s it on the thread that runs the forward passes, and after the
//! backward passes reads [`GradBuffers::merge`]: a variable's gradient is its buffer (when an
//! op wrote to it) plus whatever candle's `GradStore` still holds for it (uses through ops
//! that have no sink, e.g. a LoRA branch or the GCT head).

use std::cell::RefCell;
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use candle_core::{DType, Result, Tensor, TensorId, Var};
use rayon::prelude::*;

struct Entry {
    buf: Tensor,
    touched: AtomicBool,
}

/// One f32 buffer per CPU f32 variable, in the order of the variables given to `new`.
pub struct GradBuffers {
    entries: Vec<Option<Entry>>,
    index: HashMap<TensorId, usize>,
}

thread_local! {
    static ACTIVE: RefCell<Vec<Arc<GradBuffers>>> = const { RefCell::new(Vec::new()) };
}

/// Keeps buffers active on this thread until dropped.
pub struct Active(());

impl Drop for Active {
    fn drop(&mut self) {
        ACTIVE.with(|a| a.borrow_mut().pop());
    }
}

impl GradBuffers {
    /// Zeroed buffers for the contiguous f32 CPU variables among `vars` (others get none and
    /// keep the autograd path).
    pub fn new(vars: &[Var]) -> Result<Self> {
        let mut entries = Vec::with_capacity(vars.len());
        let mut index = HashMap::new();
        for (i, v) in vars.iter().enumerate() {
            let t = v.as_tensor();
            if t.device().is_cpu() && t.dtype() == DType::F32 && t.is_contiguous() {
                index.insert(t.id(), i);
                entries.push(Some(Entry {
                    buf: Tensor::zeros(t.shape(), DType::F32, t.device())?,
                    touched: AtomicBool::new(false),
                }));
            } else {
                entries.push(None);
            }
        }
        Ok(Self { entries, index })
    }

    /// Zeroes the buffers written since the last call (in place, in parallel).
    pub fn zero(&self) -> Result<()> {
        for e in self.entries.iter().flatten() {
            if e.touched.swap(false, Ordering::Relaxed) {
                super::mutate_cpu(&e.buf, |d| {
                    d.par_chunks_mut(1 << 16).for_each(|c| c.fill(0.0));
                    Ok(())
                })?;
            }
        }
        Ok(())
    }

    /// Routes the fused ops' weight gradients into these buffers for forwards built on this
    /// thread until the guard drops. Activations nest; the innermost wins.
    pub fn activate(self: &Arc<Self>) -> Active {
        ACTIVE.with(|a| a.borrow_mut().push(self.clone()));
        Active(())
    }

    /// The accumulated gradient of variable `i`, when an op wrote one.
    pub fn grad(&self, i: usize) -> Option<&Tensor> {
        match self.entries.get(i) {
            Some(Some(e)) if e.touched.load(Ordering::Relaxed) => Some(&e.buf),
            _ => None,
        }
    }

    /// Adds the buffered gradients into `grads` (one slot per variable, as given to `new`).
    /// The buffer itself is handed out when the slot is empty: it is valid until `zero`.
    pub fn merge(&self, grads: &mut [Option<Tensor>]) -> Result<()> {
        for (i, slot) in grads.iter_mut().enumerate() {
            if let Some(b) = self.grad(i) {
                *slot = Some(match slot.take() {
                    Some(g) => (b + g)?,
                    None => b.clone(),
                });
            }
        }
        Ok(())
    }
}

/// Where a weight's gradient goes: a buffer of the active `GradBuffers`.
pub(crate) struct Sink {
    bufs: Arc<GradBuffers>,
    i: usize,
}

impl std::fmt::Debug for Sink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Sink({})", self.i)
    }
}

impl Sink {
    /// Runs `f` on the buffer's data (to add a gradient into it) and marks it written.
    pub fn accumulate(&self, f: impl FnOnce(&mut [f32]) -> Result<()>) -> Result<()> {
        let Some(e) = &self.bufs.entries[self.i] else {
            candle_core::bail!("gradient sink without a buffer")
        };
        super::mutate_cpu(&e.buf, f)?;
        e.touched.store(true, Ordering::Relaxed);
        Ok(())
    }
}

/// The sink for weight `w` when buffers are active on this thread and one belongs to `w`.
pub(crate) fn sink_for(w: &Tensor) -> Option<Sink> {
    ACTIVE.with(|a| {
        let a = a.borrow();
        let bufs = a.last()?;
        let i = *bufs.index.get(&w.id())?;
        Some(Sink {
            bufs: bufs.clone(),
            i,
        })
    })
}
