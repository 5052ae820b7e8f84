//! The NCCL communicator (cargo feature `nccl`): one NCCL rank per GPU, on its own CUDA stream
//! so a gradient bucket's all-reduce runs while the backward computes the next layers.
//!
//! Single machine: `ncclCommInitAll` over this process's GPUs. Several machines: one process
//! per machine, each with the same GPU count, and NCCL's unique-id bootstrap through
//! `NCCL_COMM_ID=<host of node 0>:<port>` (with it set, `ncclGetUniqueId` returns the same id
//! in every process and global rank 0 opens the bootstrap socket there); this process's ranks
//! are `LLMBS_NODE_RANK * gpus + j` of `LLMBS_NNODES * gpus`.
//!
//! Why a second stream is safe: cudarc records a read/write event on every buffer it hands to
//! a kernel once a context has several streams, and makes each stream wait for the events of
//! the buffers it touches; the all-reduce reads the bucket after the backward wrote it, and
//! the optimizer reads the sum after NCCL wrote it. `LLMBS_NCCL_SAME_STREAM=1` runs the
//! collectives on candle's stream instead (no overlap), to rule the second stream out.

use std::sync::Arc;

use candle_core::backend::BackendStorage;
use candle_core::cuda_backend::cudarc::driver::CudaStream;
use candle_core::cuda_backend::cudarc::nccl::{group_end, group_start, Comm, Id, ReduceOp};
use candle_core::cuda_backend::CudaStorage;
use candle_core::{CpuStorage, CustomOp1, DType, Device, Layout, Result, Shape, Tensor};

use super::Communicator;

/// One NCCL rank and the candle device its tensors live on.
pub struct Nccl {
    comm: Comm,
    device: Device,
}

// SAFETY: an NCCL communicator may be used from any thread as long as no two threads use it
// at once (NCCL's thread-safety rules); each rank's communicator is used only by the thread
// that runs that rank's part of a step, and the trainer runs one step at a time.
unsafe impl Send for Nccl {}

fn nccl_err(
    what: &str,
) -> impl Fn(candle_core::cuda_backend::cudarc::nccl::result::NcclError) -> candle_core::Error + '_
{
    move |e| candle_core::Error::Msg(format!("NCCL {what}: {e:?}"))
}

impl Communicator for Nccl {
    fn rank(&self) -> usize {
        self.comm.rank()
    }

    fn world(&self) -> usize {
        self.comm.world_size()
    }

    fn all_reduce_sum(&self, t: &Tensor) -> Result<Tensor> {
        // Control vectors come from the host: reduce them on the GPU and bring them back.
        let on_gpu = t.to_device(&self.device)?.contiguous()?;
        let sum = on_gpu.apply_op1_no_bwd(&AllReduceSum { comm: &self.comm })?;
        sum.to_device(t.device())
    }
}

/// The sum all-reduce as a candle op, so it reads and writes candle's CUDA buffers directly.
struct AllReduceSum<'a> {
    comm: &'a Comm,
}

impl CustomOp1 for AllReduceSum<'_> {
    fn name(&self) -> &'static str {
        "nccl-all-reduce-sum"
    }

    fn cpu_fwd(&self, _: &CpuStorage, _: &Layout) -> Result<(CpuStorage, Shape)> {
        candle_core::bail!("NCCL all-reduce of a CPU tensor")
    }

    fn cuda_fwd(&self, s: &CudaStorage, l: &Layout) -> Result<(CudaStorage, Shape)> {
        let (lo, hi) = l
            .contiguous_offsets()
            .ok_or_else(|| candle_core::Error::Msg("NCCL all-reduce: not contiguous".into()))?;
        let stream = self.comm.stream();
        let alloc_err = |e| candle_core::Error::Msg(format!("NCCL all-reduce buffer: {e:?}"));
        let out = match s.dtype() {
            DType::F32 => {
                let src = s.as_cuda_slice::<f32>()?.slice(lo..hi);
                // SAFETY: every element is written by the all-reduce before anyone reads it.
                let mut dst = unsafe { stream.alloc::<f32>(hi - lo) }.map_err(alloc_err)?;
                self.comm
                    .all_reduce(&src, &mut dst, &ReduceOp::Sum)
                    .map_err(nccl_err("all-reduce"))?;
                CudaStorage::wrap_cuda_slice(dst, s.device.clone())
            }
            DType::BF16 => {
                let src = s.as_cuda_slice::<half::bf16>()?.slice(lo..hi);
                // SAFETY: as above.
                let mut dst = unsafe { stream.alloc::<half::bf16>(hi - lo) }.map_err(alloc_err)?;
                self.comm
                    .all_reduce(&src, &mut dst, &ReduceOp::Sum)
                    .map_err(nccl_err("all-reduce"))?;
                CudaStorage::wrap_cuda_slice(dst, s.device.clone())
            }
            dt => candle_core::bail!("NCCL all-reduce of {dt:?} (f32 or bf16 only)"),
        };
        Ok((out, l.shape().clone()))
    }
}

/// The stream a rank's collectives run on: a fork of candle's stream (overlap), or candle's
/// own with `LLMBS_NCCL_SAME_STREAM=1`.
fn comm_stream(d: &Device) -> Result<Arc<CudaStream>> {
    let main = d.as_cuda_device()?.cuda_stream();
    if std::env::var("LLMBS_NCCL_SAME_STREAM").is_ok_and(|v| v == "1") {
        return Ok(main);
    }
    main.fork()
        .map_err(|e| candle_core::Error::Msg(format!("creating the NCCL stream: {e:?}")))
}

fn env_usize(key: &str, default: usize) -> Result<usize> {
    match std::env::var(key) {
        Ok(v) => v
            .trim()
            .parse()
            .map_err(|_| candle_core::Error::Msg(format!("{key}={v}: not a number"))),
        Err(_) => Ok(default),
    }
}

/// The NCCL ranks of this process's GPUs `devices` (module docs for several machines).
pub fn local_group(devices: &[Device]) -> Result<Vec<Box<dyn Communicator>>> {
    let streams = devices
        .iter()
        .map(comm_stream)
        .collect::<Result<Vec<_>>>()?;
    let nnodes = env_usize("LLMBS_NNODES", 1)?;
    let node = env_usize("LLMBS_NODE_RANK", 0)?;
    if node >= nnodes.max(1) {
        candle_core::bail!("LLMBS_NODE_RANK={node} with LLMBS_NNODES={nnodes}");
    }
    let comms = if nnodes <= 1 {
        Comm::from_devices(streams).map_err(nccl_err("init (ncclCommInitAll)"))?
    } else {
        if std::env::var_os("NCCL_COMM_ID").is_none() {
            candle_core::bail!(
                "LLMBS_NNODES={nnodes}: set NCCL_COMM_ID=<node 0 host>:<port> on every node \
                 (docs/scale.md)"
            );
        }
        // With NCCL_COMM_ID set every process gets the same id (the address in it).
        let id = Id::new().map_err(nccl_err("unique id"))?;
        let local = devices.len();
        let world = nnodes * local;
        group_start().map_err(nccl_err("group start"))?;
        let mut v = Vec::with_capacity(local);
        for (j, s) in streams.into_iter().enumerate() {
            // ncclCommInitRank uses the current device.
            s.context()
                .bind_to_thread()
                .map_err(|e| candle_core::Error::Msg(format!("binding GPU {j}: {e:?}")))?;
            v.push(Comm::from_rank(s, node * local + j, world, id).map_err(nccl_err("init"))?);
        }
        group_end().map_err(nccl_err("init (group end)"))?;
        v
    };
    Ok(comms
        .into_iter()
        .zip(devices)
        .map(|(comm, d)| {
            Box::new(Nccl {
                comm,
                device: d.clone(),
            }) as Box<dyn Communicator>
        })
        .collect())
}
