use std::time::Instant;
use candle_core::{Device, Tensor, DType};
use candle_nn::{VarMap, VarBuilder, Optimizer, AdamW, ParamsAdamW};
use llmbs::behavior::{SasRec, SasRecConfig};
use llmbs::behavior::batch::SeqBatch;
use rand::SeedableRng;

#[test]
#[ignore]
fn prof() {
    let dev = Device::Cpu;
    let vm = VarMap::new();
    let cfg = SasRecConfig { n_items: 12101, dim: 64, max_len: 20, blocks: 2, heads: 1, dropout: 0.5 };
    let m = SasRec::new(cfg, VarBuilder::from_varmap(&vm, DType::F32, &dev)).unwrap();
    let mut opt = AdamW::new(vm.all_vars(), ParamsAdamW { lr: 1e-3, weight_decay: 0.0, ..Default::default() }).unwrap();
    let (b, t) = (128usize, 20usize);
    let ids: Vec<u32> = (0..b*t).map(|i| (i * 7919 % 12101) as u32).collect();
    let positions: Vec<u32> = (0..b*t).step_by(3).map(|i| i as u32).collect();
    let targets: Vec<u32> = positions.iter().map(|&p| (p * 31 % 12101) as u32).collect();
    let batch = SeqBatch { size: b, t, ids, positions, targets };
    let mut rng = rand::rngs::StdRng::seed_from_u64(0);
    for _ in 0..12 {
        let t0 = Instant::now();
        let idt = Tensor::from_slice(&batch.ids, (b, t), &dev).unwrap();
        let h = m.forward(&idt, Some(&mut rng)).unwrap();
        let t1 = t0.elapsed().as_secs_f64();
        let h = h.reshape((b*t, 64)).unwrap().index_select(&Tensor::from_slice(&batch.positions, batch.positions.len(), &dev).unwrap(), 0).unwrap();
        let lg = m.logits(&h).unwrap();
        let _ = lg.sum_all().unwrap().to_scalar::<f32>();
        let t2 = t0.elapsed().as_secs_f64();
        let loss = llmbs::behavior::ce::full_cross_entropy(&lg, &Tensor::from_slice(&batch.targets, batch.targets.len(), &dev).unwrap()).unwrap();
        let _ = loss.to_scalar::<f32>();
        let t3 = t0.elapsed().as_secs_f64();
        let g = loss.backward().unwrap();
        let t4 = t0.elapsed().as_secs_f64();
        opt.step(&g).unwrap();
        let t5 = t0.elapsed().as_secs_f64();
        eprintln!("rows {} fwd {:.3} logits {:.3} ce {:.3} bwd {:.3} step {:.3}", batch.positions.len(), t1, t2-t1, t3-t2, t4-t3, t5-t4);
    }
}

#[test]
#[ignore]
fn prof_fwd() {
    let dev = Device::Cpu;
    let vm = VarMap::new();
    let cfg = SasRecConfig { n_items: 12101, dim: 64, max_len: 20, blocks: 2, heads: 1, dropout: 0.5 };
    let m = SasRec::new(cfg, VarBuilder::from_varmap(&vm, DType::F32, &dev)).unwrap();
    let (b, t) = (128usize, 20usize);
    let ids: Vec<u32> = (0..b*t).map(|i| (i * 7919 % 12101) as u32).collect();
    let idt = Tensor::from_slice(&ids, (b, t), &dev).unwrap();
    let mut rng = rand::rngs::StdRng::seed_from_u64(0);
    for _ in 0..3 {
        let t0 = Instant::now();
        let _h = m.forward(&idt, Some(&mut rng)).unwrap();
        let t1 = t0.elapsed().as_secs_f64();
        let _h = m.forward(&idt, None).unwrap();
        let t2 = t0.elapsed().as_secs_f64();
        let x = Tensor::zeros((b, t, 64), DType::F32, &dev).unwrap();
        let _ = llmbs::behavior::init::dropout(&x, 0.5, &mut rng).unwrap();
        let t3 = t0.elapsed().as_secs_f64();
        eprintln!("fwd train {:.4} eval {:.4} one dropout {:.4}", t1, t2 - t1, t3 - t2);
    }
}
