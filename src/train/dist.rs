//! Data-parallel communication: the [`Communicator`] trait (a sum all-reduce over ranks), its
//! in-process implementation for ranks that are threads of one process (CPU tests, `--devices
//! cpu,cpu`), the NCCL one behind the `nccl` feature, and the gradient [`Reducer`], which sends
//! the gradients in per-layer buckets in a fixed order.
//!
//! Every collective must be called by every rank in the same order. The trainer's order per
//! step: the start agreement ([`agree`]), the gradient buckets (layers from last to first,
//! then the rest), then one small vector with the presence flags, loss sums and stop flag.

use std::sync::{Arc, Condvar, Mutex};

use candle_core::{DType, Device, Result, Tensor};

use super::micro::Sums;
use super::optim::Params;

#[cfg(feature = "nccl")]
pub mod nccl;

/// A group of `world` ranks that can sum tensors elementwise.
pub trait Communicator: Send {
    fn rank(&self) -> usize;
    fn world(&self) -> usize;
    /// The elementwise sum over all ranks of `t` (same shape and dtype on every rank), on
    /// `t`'s device. Every rank gets the same bits. May return before the sum is computed
    /// (NCCL enqueues it); using the result waits for it.
    fn all_reduce_sum(&self, t: &Tensor) -> Result<Tensor>;
    /// Releases the other ranks from any wait because this rank failed (so an error on one
    /// rank ends the step on all of them instead of hanging them).
    fn abort(&self) {}
}

/// The state shared by in-process ranks: each rank's contribution and a reusable barrier.
struct Shared {
    world: usize,
    state: Mutex<Round>,
    cv: Condvar,
}

struct Round {
    slots: Vec<Option<Tensor>>,
    arrived: usize,
    generation: u64,
    aborted: bool,
}

/// One rank of an in-process group (ranks are threads): contributions meet in shared memory
/// and every rank adds them in rank order, so the sum is bitwise the same on every rank and
/// from run to run.
pub struct InProcess {
    rank: usize,
    shared: Arc<Shared>,
}

impl InProcess {
    /// The `world` ranks of a new group, rank `r` at index `r`.
    pub fn group(world: usize) -> Vec<InProcess> {
        let shared = Arc::new(Shared {
            world,
            state: Mutex::new(Round {
                slots: vec![None; world],
                arrived: 0,
                generation: 0,
                aborted: false,
            }),
            cv: Condvar::new(),
        });
        (0..world)
            .map(|rank| InProcess {
                rank,
                shared: shared.clone(),
            })
            .collect()
    }

    /// Waits until every rank has arrived at this barrier (or one aborted).
    fn barrier(&self) -> Result<()> {
        let lock_err = |_| candle_core::Error::Msg("in-process communicator lock poisoned".into());
        let mut st = self.shared.state.lock().map_err(lock_err)?;
        if st.aborted {
            candle_core::bail!("another data-parallel rank failed");
        }
        let gen = st.generation;
        st.arrived += 1;
        if st.arrived == self.shared.world {
            st.arrived = 0;
            st.generation += 1;
            self.shared.cv.notify_all();
            return Ok(());
        }
        while st.generation == gen && !st.aborted {
            st = self.shared.cv.wait(st).map_err(lock_err)?;
        }
        if st.aborted {
            candle_core::bail!("another data-parallel rank failed");
        }
        Ok(())
    }
}

impl Communicator for InProcess {
    fn rank(&self) -> usize {
        self.rank
    }

    fn world(&self) -> usize {
        self.shared.world
    }

    fn all_reduce_sum(&self, t: &Tensor) -> Result<Tensor> {
        let lock_err = |_| candle_core::Error::Msg("in-process communicator lock poisoned".into());
        {
            let mut st = self.shared.state.lock().map_err(lock_err)?;
            st.slots[self.rank] = Some(t.to_device(&Device::Cpu)?);
        }
        self.barrier()?;
        let parts: Vec<Tensor> = {
            let st = self.shared.state.lock().map_err(lock_err)?;
            st.slots.iter().flatten().cloned().collect()
        };
        // Everyone has read the slots before anyone writes the next round's.
        self.barrier()?;
        if parts.len() != self.shared.world {
            candle_core::bail!("in-process all-reduce: a rank sent nothing");
        }
        let mut sum = parts[0].clone();
        for p in &parts[1..] {
            sum = (sum + p)?;
        }
        sum.to_device(t.device())
    }

    fn abort(&self) {
        if let Ok(mut st) = self.shared.state.lock() {
            st.aborted = true;
            self.shared.cv.notify_all();
        }
    }
}

/// Whether every rank goes on: false on all ranks when any rank's `stop` flag is raised.
pub fn agree(comm: &dyn Communicator, stop: bool) -> Result<bool> {
    let dev = comm_device();
    let flag = Tensor::new(&[if stop { 1f32 } else { 0.0 }], &dev)?;
    Ok(comm.all_reduce_sum(&flag)?.to_vec1::<f32>()?[0] == 0.0)
}

/// The device small control vectors are made on; the NCCL communicator moves them to its GPU.
fn comm_device() -> Device {
    Device::Cpu
}

/// Sends a step's gradients in buckets: one per decoder layer (its weights and adapters), sent
/// from the last layer to the first, then one with everything else (embedding, final norm,
/// LM head, GCT projectors). With activation checkpointing a layer's bucket goes as soon as
/// the rank's last micro-batch has finished that layer, while earlier layers still compute.
pub struct Reducer {
    /// Parameter indices of each bucket, in sending order.
    buckets: Vec<Vec<usize>>,
    /// The bucket of each decoder layer's parameters.
    layer_bucket: Vec<Option<usize>>,
    sent: Vec<bool>,
    /// Whether this rank had a gradient for each parameter when its bucket went.
    present: Vec<bool>,
    /// The dtype gradients travel in (f32, or bf16 for half the traffic).
    dtype: DType,
}

/// The decoder layer a parameter belongs to, from its Hugging Face / PEFT name.
fn layer_of(name: &str) -> Option<usize> {
    let rest = name.strip_prefix("model.layers.")?;
    rest.split('.').next()?.parse().ok()
}

impl Reducer {
    pub fn new(params: &Params, n_layers: usize, dtype: DType) -> Self {
        let mut per_layer: Vec<Vec<usize>> = vec![Vec::new(); n_layers];
        let mut rest = Vec::new();
        for (i, n) in params.names.iter().enumerate() {
            match layer_of(n).filter(|&l| l < n_layers) {
                Some(l) => per_layer[l].push(i),
                None => rest.push(i),
            }
        }
        let mut buckets = Vec::new();
        let mut layer_bucket = vec![None; n_layers];
        for l in (0..n_layers).rev() {
            if !per_layer[l].is_empty() {
                layer_bucket[l] = Some(buckets.len());
                buckets.push(std::mem::take(&mut per_layer[l]));
            }
        }
        if !rest.is_empty() {
            buckets.push(rest);
        }
        let sent = vec![false; buckets.len()];
        Self {
            buckets,
            layer_bucket,
            sent,
            present: vec![false; params.vars.len()],
            dtype,
        }
    }

    /// Layer `layer`'s gradients are final on this rank: send its bucket (and any bucket
    /// before it in the order that has not gone yet).
    pub fn layer_done(
        &mut self,
        comm: &dyn Communicator,
        layer: usize,
        grads: &mut [Option<Tensor>],
        params: &Params,
    ) -> Result<()> {
        if let Some(Some(b)) = self.layer_bucket.get(layer).copied() {
            for k in 0..=b {
                self.send(comm, k, grads, params)?;
            }
        }
        Ok(())
    }

    /// Sends every bucket not sent yet, then sums the presence flags (a parameter no rank
    /// has a gradient for keeps `None`, as on one rank), the loss sums and the stop flags.
    /// Returns the global sums and whether any rank wants to stop.
    pub fn finish(
        &mut self,
        comm: &dyn Communicator,
        grads: &mut [Option<Tensor>],
        params: &Params,
        sums: Sums,
        stop: bool,
    ) -> Result<(Sums, bool)> {
        for k in 0..self.buckets.len() {
            self.send(comm, k, grads, params)?;
        }
        let mut v: Vec<f32> = self.present.iter().map(|&p| p as u8 as f32).collect();
        v.extend([
            sums.ce as f32,
            sums.gs as f32,
            sums.gb as f32,
            sums.tokens as f32,
            sums.padded as f32,
            stop as u8 as f32,
            sums.mixed as f32,
        ]);
        let n = v.len();
        let v = comm
            .all_reduce_sum(&Tensor::from_vec(v, n, &comm_device())?)?
            .to_vec1::<f32>()?;
        for (g, &p) in grads.iter_mut().zip(&v) {
            if p == 0.0 {
                *g = None;
            }
        }
        let s = &v[grads.len()..];
        let sums = Sums {
            ce: s[0] as f64,
            gs: s[1] as f64,
            gb: s[2] as f64,
            tokens: s[3].round() as usize,
            padded: s[4].round() as usize,
            mixed: s[6] as f64,
        };
        Ok((sums, s[5] > 0.0))
    }

    /// All-reduces bucket `k` as one flat tensor (missing gradients as zeros) and puts the
    /// summed slices back.
    fn send(
        &mut self,
        comm: &dyn Communicator,
        k: usize,
        grads: &mut [Option<Tensor>],
        params: &Params,
    ) -> Result<()> {
        if self.sent[k] {
            return Ok(());
        }
        self.sent[k] = true;
        let idx = &self.buckets[k];
        let mut parts = Vec::with_capacity(idx.len());
        for &i in idx {
            let v = &params.vars[i];
            self.present[i] = grads[i].is_some();
            let flat = match &grads[i] {
                Some(g) => g.flatten_all()?.to_dtype(self.dtype)?,
                None => Tensor::zeros(v.elem_count(), self.dtype, v.device())?,
            };
            parts.push(flat);
        }
        let flat = Tensor::cat(&parts, 0)?;
        drop(parts);
        let sum = comm.all_reduce_sum(&flat)?;
        let mut off = 0;
        for &i in idx {
            let v = &params.vars[i];
            let n = v.elem_count();
            let g = sum
                .narrow(0, off, n)?
                .reshape(v.shape())?
                .to_dtype(DType::F32)?;
            grads[i] = Some(g);
            off += n;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn in_process_ranks_get_the_same_ordered_sum() {
        let comms = InProcess::group(3);
        let out: Vec<Vec<f32>> = std::thread::scope(|s| {
            let hs: Vec<_> = comms
                .iter()
                .map(|c| {
                    s.spawn(move || {
                        let r = c.rank() as f32;
                        let t = Tensor::new(&[r, 10.0 * r, 1.0], &Device::Cpu).unwrap();
                        // Two rounds back to back: the slots of one must not leak into the next.
                        let a = c.all_reduce_sum(&t).unwrap();
                        let b = c.all_reduce_sum(&(t * 2.0).unwrap()).unwrap();
                        let mut v = a.to_vec1::<f32>().unwrap();
                        v.extend(b.to_vec1::<f32>().unwrap());
                        v
                    })
                })
                .collect();
            hs.into_iter().map(|h| h.join().unwrap()).collect()
        });
        for v in &out {
            assert_eq!(v, &vec![3.0, 30.0, 3.0, 6.0, 60.0, 6.0]);
        }
    }

    #[test]
    fn an_aborting_rank_releases_the_others() {
        let comms = InProcess::group(2);
        std::thread::scope(|s| {
            let waiting =
                s.spawn(|| comms[0].all_reduce_sum(&Tensor::new(&[1f32], &Device::Cpu).unwrap()));
            comms[1].abort();
            assert!(waiting.join().unwrap().is_err());
        });
    }

    #[test]
    fn buckets_go_from_the_last_layer_to_the_first_then_the_rest() {
        let names = [
            "gct.proj_s.weight",
            "model.embed_tokens.weight",
            "model.layers.0.mlp.up_proj.lora_A.weight",
            "model.layers.1.mlp.up_proj.lora_A.weight",
            "model.layers.10.self_attn.q_proj.weight",
            "model.layers.1.self_attn.q_proj.lora_B.weight",
        ];
        let vars = names
            .iter()
            .map(|_| candle_core::Var::new(&[0f32], &Device::Cpu).unwrap())
            .collect();
        let p = Params {
            names: names.iter().map(|s| s.to_string()).collect(),
            vars,
        };
        let r = Reducer::new(&p, 11, DType::F32);
        assert_eq!(r.buckets, vec![vec![4], vec![3, 5], vec![2], vec![0, 1]]);
        assert_eq!(r.layer_bucket[1], Some(1));
        assert_eq!(r.layer_bucket[5], None);
    }
}
