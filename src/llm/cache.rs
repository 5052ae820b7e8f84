//! A batched key/value cache for incremental decoding; beam search reorders it by beam index.

use candle_core::{DType, Result, Storage, Tensor};
use rayon::prelude::*;

/// Per-layer keys and values, each `[b, n_kv_heads, t, head_dim]`, plus which cached positions
/// are real (`[b, t]`, 1 = attend), since right-padded prompts leave holes.
#[derive(Debug, Clone, Default)]
pub struct KvCache {
    pub(crate) layers: Vec<Option<(Tensor, Tensor)>>,
    pub(crate) valid: Option<Tensor>,
}

impl KvCache {
    pub fn new(n_layers: usize) -> Self {
        Self {
            layers: vec![None; n_layers],
            valid: None,
        }
    }

    /// Cached sequence length (0 when empty).
    pub fn len(&self) -> usize {
        self.valid
            .as_ref()
            .and_then(|v| v.dims2().ok())
            .map(|(_, t)| t)
            .unwrap_or(0)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The key validity mask `[b, t]` (u8), if anything is cached.
    pub fn valid(&self) -> Option<&Tensor> {
        self.valid.as_ref()
    }

    pub(crate) fn append(
        &mut self,
        layer: usize,
        k: &Tensor,
        v: &Tensor,
    ) -> Result<(Tensor, Tensor)> {
        let (k, v) = match &self.layers[layer] {
            None => (k.clone(), v.clone()),
            Some((pk, pv)) => (cat_seq(pk, k)?, cat_seq(pv, v)?),
        };
        self.layers[layer] = Some((k.clone(), v.clone()));
        Ok((k, v))
    }

    /// Selects (and repeats) batch rows: row i of the result is row `index[i]` of this cache.
    /// Beam search calls it with each surviving beam's parent.
    pub fn reorder(&mut self, index: &Tensor) -> Result<()> {
        let rows: Option<Vec<u32>> = match index.device().is_cpu() {
            true => Some(index.to_dtype(DType::U32)?.to_vec1()?),
            false => None,
        };
        for slot in self.layers.iter_mut() {
            if let Some((k, v)) = slot {
                *slot = Some((select_rows(k, index, &rows)?, select_rows(v, index, &rows)?));
            }
        }
        if let Some(valid) = &self.valid {
            self.valid = Some(valid.index_select(index, 0)?);
        }
        Ok(())
    }
}

/// Whether `t` takes the parallel CPU paths below: contiguous f32 on the CPU.
fn cpu_f32(t: &Tensor) -> bool {
    t.device().is_cpu()
        && t.dtype() == DType::F32
        && t.is_contiguous()
        && crate::llm::kernels::fused_enabled()
}

/// Runs `f` on the contiguous f32 slice of CPU tensor `t`.
fn with_slice<R>(t: &Tensor, f: impl FnOnce(&[f32]) -> R) -> Result<R> {
    let (s, l) = t.storage_and_layout();
    match (&*s, l.contiguous_offsets()) {
        (Storage::Cpu(c), Some((a, b))) => Ok(f(&c.as_slice::<f32>()?[a..b])),
        _ => candle_core::bail!("expected a contiguous CPU tensor"),
    }
}

/// `t.index_select(index, 0)`, copied in parallel for contiguous f32 CPU tensors. Why: candle's
/// CPU index_select runs on one thread, and beam search moves the whole cache through it every
/// step (9% of `llmbs eval` on 2 cores, all of it with the second core idle).
fn select_rows(t: &Tensor, index: &Tensor, rows: &Option<Vec<u32>>) -> Result<Tensor> {
    let Some(idx) = rows.as_ref().filter(|_| cpu_f32(t) && t.rank() >= 1) else {
        return t.index_select(index, 0);
    };
    let n = t.dim(0)?;
    if let Some(bad) = idx.iter().find(|&&i| i as usize >= n) {
        candle_core::bail!("cache reorder: row {bad} of {n}");
    }
    let row = t.elem_count() / n.max(1);
    let mut out = vec![0f32; idx.len() * row];
    with_slice(t, |src| {
        out.par_chunks_mut(row.max(1))
            .zip(idx.par_iter())
            .for_each(|(o, &i)| o.copy_from_slice(&src[i as usize * row..(i as usize + 1) * row]));
    })?;
    let mut shape = t.dims().to_vec();
    shape[0] = idx.len();
    Tensor::from_vec(out, shape, t.device())
}

/// `Tensor::cat(&[a, b], 2)` for `[b, h, t, d]` keys or values, copied in parallel for
/// contiguous f32 CPU tensors (the same single-thread cost as the reorder, every step).
fn cat_seq(a: &Tensor, b: &Tensor) -> Result<Tensor> {
    if !(cpu_f32(a) && cpu_f32(b) && a.rank() == 4 && b.rank() == 4) {
        return Tensor::cat(&[a, b], 2);
    }
    let (n, h, ta, d) = a.dims4()?;
    let (nb, hb, tb, db) = b.dims4()?;
    if (n, h, d) != (nb, hb, db) {
        return Tensor::cat(&[a, b], 2);
    }
    let (sa, sb) = (ta * d, tb * d);
    let mut out = vec![0f32; n * h * (sa + sb)];
    with_slice(a, |xa| {
        with_slice(b, |xb| {
            out.par_chunks_mut((sa + sb).max(1))
                .enumerate()
                .for_each(|(k, o)| {
                    o[..sa].copy_from_slice(&xa[k * sa..(k + 1) * sa]);
                    o[sa..].copy_from_slice(&xb[k * sb..(k + 1) * sb]);
                })
        })
    })??;
    Tensor::from_vec(out, (n, h, ta + tb, d), a.device())
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    fn t(shape: &[usize], k: f32) -> Tensor {
        let n: usize = shape.iter().product();
        let v: Vec<f32> = (0..n).map(|i| (i as f32 * 0.37 + k).sin()).collect();
        Tensor::from_vec(v, shape, &Device::Cpu).unwrap()
    }

    #[test]
    fn parallel_row_select_equals_index_select() {
        let x = t(&[5, 3, 7, 4], 0.0);
        let idx = [4u32, 0, 0, 2, 4, 1, 3];
        let it = Tensor::new(&idx[..], &Device::Cpu).unwrap();
        let got = select_rows(&x, &it, &Some(idx.to_vec())).unwrap();
        let want = x.index_select(&it, 0).unwrap();
        assert_eq!(got.dims(), want.dims());
        let d = (got - want).unwrap().abs().unwrap().max_all().unwrap();
        assert_eq!(d.to_scalar::<f32>().unwrap(), 0.0);
        let bad = [5u32];
        let bt = Tensor::new(&bad[..], &Device::Cpu).unwrap();
        assert!(select_rows(&x, &bt, &Some(bad.to_vec())).is_err());
    }

    #[test]
    fn parallel_seq_cat_equals_cat() {
        let (a, b) = (t(&[4, 3, 9, 8], 1.0), t(&[4, 3, 2, 8], 2.0));
        let got = cat_seq(&a, &b).unwrap();
        let want = Tensor::cat(&[&a, &b], 2).unwrap();
        assert_eq!(got.dims(), want.dims());
        let d = (got - want).unwrap().abs().unwrap().max_all().unwrap();
        assert_eq!(d.to_scalar::<f32>().unwrap(), 0.0);
    }
}
