//! Data-parallel training: one rank per device, each a thread of this process with its own
//! replica of the trainer (model, variables, optimizer); each step every rank trains its share
//! of the effective batch's micro-batches, the gradients are summed over ranks
//! ([`super::dist`]), and every rank takes the same AdamW step. Rank 0 is the trainer the
//! command built; it alone validates, writes checkpoints and reports.
//!
//! Why threads, not one process per GPU: the ranks share one loading of the data, the task
//! plan and the tokenizer, the replicas are copies of rank 0's variables (so they start
//! bitwise equal with no broadcast), and the code CI runs with in-process ranks on the CPU is
//! the code that runs with NCCL on GPUs. Several machines run one such process each, joined by
//! NCCL's unique-id bootstrap (`docs/scale.md`); a process whose ranks do not include global
//! rank 0 runs [`follow`] instead of the training loop.

use std::collections::HashMap;
use std::sync::atomic::AtomicBool;

use candle_core::{DType, Device, Result, Tensor, TensorId, Var};
use candle_nn::Linear;

use super::dist::{agree, Communicator, InProcess};
use super::loss::Gct;
use super::optim::Params;
use super::run::step_samples;
use super::step::{Ranks, StepStats, Trainer};
use crate::tasks::build::{Planned, TaskBuilder};

/// The ranks of this process other than the trainer itself, and every local rank's
/// communicator (index 0: the trainer's).
pub struct DataParallel {
    replicas: Vec<Trainer>,
    comms: Vec<Box<dyn Communicator>>,
    /// The dtype gradients travel in.
    pub reduce_dtype: DType,
    /// Whether ranks outside this process take part (multi-node).
    remote: bool,
    /// Whether the ranks have agreed to stop (nothing more to tell the remote ranks).
    stopped: bool,
}

impl Ranks for DataParallel {
    fn step(
        &mut self,
        rank0: &mut Trainer,
        samples: &[crate::tasks::build::Encoded],
        stop: &AtomicBool,
    ) -> Result<Option<StepStats>> {
        DataParallel::step(self, rank0, samples, stop)
    }

    fn reduce_dtype(&self) -> DType {
        self.reduce_dtype
    }

    fn world(&self) -> usize {
        DataParallel::world(self)
    }

    fn is_leader(&self) -> bool {
        DataParallel::is_leader(self)
    }

    fn release(&mut self, rank0: &mut Trainer) -> Result<()> {
        DataParallel::release(self, rank0)
    }
}

impl DataParallel {
    /// Ranks in all processes.
    pub fn world(&self) -> usize {
        self.comms[0].world()
    }

    /// Whether this process holds global rank 0 (the one that validates and writes).
    pub fn is_leader(&self) -> bool {
        self.comms[0].rank() == 0
    }

    /// One step on every local rank at once; rank 0's statistics (the global sums).
    pub fn step(
        &mut self,
        rank0: &mut Trainer,
        samples: &[crate::tasks::build::Encoded],
        stop: &AtomicBool,
    ) -> Result<Option<StepStats>> {
        let out = self.on_all_ranks(rank0, |t, comm| t.local_step(samples, Some(comm), stop));
        if matches!(out, Ok(None)) {
            self.stopped = true;
        }
        out
    }

    /// Tells ranks in other processes that training ended early (time limit, error), so they
    /// stop waiting for the next step. A no-op when all ranks are local, when they already
    /// agreed to stop, or after the last step.
    pub fn release(&mut self, rank0: &mut Trainer) -> Result<()> {
        if !self.remote || self.stopped || rank0.step >= rank0.cfg.total {
            return Ok(());
        }
        self.stopped = true;
        self.on_all_ranks(rank0, |_, comm| agree(comm, true).map(|_| None))
            .map(|_| ())
    }

    /// Runs `f` for rank 0 on this thread and for every other local rank on its own thread;
    /// a rank that fails aborts its communicator so the others do not wait for it.
    fn on_all_ranks<F>(&mut self, rank0: &mut Trainer, f: F) -> Result<Option<StepStats>>
    where
        F: Fn(&mut Trainer, &dyn Communicator) -> Result<Option<StepStats>> + Sync,
    {
        let (first, rest) = self
            .comms
            .split_first_mut()
            .ok_or_else(|| candle_core::Error::Msg("data parallelism without ranks".into()))?;
        let f = &f;
        std::thread::scope(|s| {
            let handles: Vec<_> = self
                .replicas
                .iter_mut()
                .zip(rest.iter_mut())
                .map(|(t, c)| {
                    s.spawn(move || {
                        let r = f(t, c.as_ref());
                        if r.is_err() {
                            c.abort();
                        }
                        r
                    })
                })
                .collect();
            let mut out = f(rank0, first.as_ref());
            if out.is_err() {
                first.abort();
            }
            for h in handles {
                let r = h
                    .join()
                    .map_err(|_| candle_core::Error::Msg("a data-parallel rank panicked".into()))?;
                if let (Ok(_), Err(e)) = (&out, r) {
                    out = Err(e);
                }
            }
            out
        })
    }
}

/// The communicators of data-parallel ranks on `devices` (this process's devices, in local
/// rank order): in-process for CPU devices, NCCL for CUDA ones (single- or multi-node).
pub fn local_group(devices: &[Device]) -> Result<Vec<Box<dyn Communicator>>> {
    if devices.is_empty() {
        candle_core::bail!("--devices: no device");
    }
    if devices.iter().all(|d| d.is_cpu()) {
        return Ok(InProcess::group(devices.len())
            .into_iter()
            .map(|c| Box::new(c) as Box<dyn Communicator>)
            .collect());
    }
    if devices.iter().all(|d| d.is_cuda()) {
        #[cfg(feature = "nccl")]
        return super::dist::nccl::local_group(devices);
        #[cfg(not(feature = "nccl"))]
        candle_core::bail!(
            "--devices with CUDA devices needs NCCL: build with `scripts/build-cuda.sh --nccl` \
             (cargo feature `nccl`)"
        );
    }
    candle_core::bail!("--devices: every device must be a CPU or every one a CUDA device")
}

impl Trainer {
    /// Makes this trainer rank 0 of data-parallel training over `devices` (`devices[0]` is
    /// this trainer's device): the other local ranks become replicas on their devices.
    pub fn enable_data_parallel(&mut self, devices: &[Device], reduce_dtype: DType) -> Result<()> {
        let comms = local_group(devices)?;
        self.enable_data_parallel_with(devices, comms, reduce_dtype)
    }

    /// As [`Trainer::enable_data_parallel`] with given communicators (`comms[r]` for
    /// `devices[r]`).
    pub fn enable_data_parallel_with(
        &mut self,
        devices: &[Device],
        comms: Vec<Box<dyn Communicator>>,
        reduce_dtype: DType,
    ) -> Result<()> {
        if comms.len() != devices.len() || devices.is_empty() {
            candle_core::bail!(
                "{} communicators for {} devices",
                comms.len(),
                devices.len()
            );
        }
        if !devices[0].same_device(self.model.device()) {
            candle_core::bail!("--devices: the first device must be the trainer's own");
        }
        if self.mixed.is_none() {
            candle_core::bail!(
                "data parallelism builds each rank's model from the trainer's model recipe: \
                 give the trainer a MixedPrecision (its dtype may be f32)"
            );
        }
        let replicas = devices[1..]
            .iter()
            .map(|d| self.replica(d))
            .collect::<Result<Vec<_>>>()?;
        let remote = comms[0].world() > devices.len();
        self.dp = Some(Box::new(DataParallel {
            replicas,
            comms,
            reduce_dtype,
            remote,
            stopped: false,
        }));
        Ok(())
    }

    /// A copy of this trainer on `dev`, with its own variables (equal values) and optimizer.
    fn replica(&self, dev: &Device) -> Result<Trainer> {
        let mut subst: HashMap<TensorId, Tensor> = HashMap::new();
        let mut vars = Vec::with_capacity(self.params.vars.len());
        for v in &self.params.vars {
            // detach: a same-device copy must be a new variable, not the same one.
            let nv = Var::from_tensor(&v.as_tensor().detach().to_device(dev)?)?;
            subst.insert(v.as_tensor().id(), nv.as_tensor().clone());
            vars.push(nv);
        }
        let params = Params {
            names: self.params.names.clone(),
            vars,
        };
        let mixed = match &self.mixed {
            Some(mp) => mp.replicate(dev, &subst)?,
            None => candle_core::bail!("replica without a model recipe"),
        };
        let gct = self
            .gct
            .as_ref()
            .map(|g| replicate_gct(g, dev, &subst))
            .transpose()?;
        Ok(Trainer {
            model: mixed.model(&self.model)?,
            opt: self.opt.replicate(&params)?,
            params,
            gct,
            cfg: self.cfg,
            step: self.step,
            mixed: Some(mixed),
            dp: None,
            teacher: None,
        })
    }

    /// Ends data-parallel training: see [`DataParallel::release`].
    pub fn release_data_parallel(&mut self) -> Result<()> {
        match self.dp.take() {
            Some(mut dp) => {
                let r = dp.release(self);
                self.dp = Some(dp);
                r
            }
            None => Ok(()),
        }
    }
}

/// `t` itself when it is a variable being replaced, else `t` on `dev`.
fn substitute(t: &Tensor, dev: &Device, subst: &HashMap<TensorId, Tensor>) -> Result<Tensor> {
    match subst.get(&t.id()) {
        Some(v) => Ok(v.clone()),
        None => t.to_device(dev),
    }
}

fn replicate_gct(g: &Gct, dev: &Device, subst: &HashMap<TensorId, Tensor>) -> Result<Gct> {
    let lin = |l: &Linear| -> Result<Linear> {
        let b = l.bias().map(|b| substitute(b, dev, subst)).transpose()?;
        Ok(Linear::new(substitute(l.weight(), dev, subst)?, b))
    };
    Ok(Gct {
        proj_s: lin(&g.proj_s)?,
        proj_b: lin(&g.proj_b)?,
        zs: g.zs.to_device(dev)?,
        zb: g.zb.to_device(dev)?,
        tau: g.tau,
        negatives: g.negatives,
    })
}

/// The loop of a process that does not hold global rank 0: the same steps over the same plan
/// (every process builds it from the same config and seed), no validation, no files. Ends
/// after the last step, or when the ranks agree to stop (rank 0 stopped early or a rank was
/// interrupted).
pub fn follow(
    trainer: &mut Trainer,
    plan: &[Planned],
    builder: &TaskBuilder,
    batch_size: usize,
    stop: &AtomicBool,
) -> anyhow::Result<()> {
    while trainer.step < trainer.cfg.total {
        let samples = step_samples(plan, builder, trainer.step, batch_size)?;
        // A raised `stop` reaches the other ranks at the next agreement.
        if trainer.train_step(&samples, stop)?.is_none() {
            break;
        }
    }
    Ok(())
}
