//! Opt-in GPU tests (CUDA build, 2+ GPUs, PHYAI_GPU_TESTS=1, `--ignored`; ignored in the
//! default run, and an explicit run without the variable fails): the guided step of a medium
//! random config (hidden 2048, 8 layers, 16/8 heads of 128, 9,360 video tokens, bf16; or
//! the Nano architecture with PHYAI_GPU_CONFIG=nano, and the W720 grid with
//! PHYAI_GPU_GRID=w720) with one GPU, and tensor, CFG and sequence parallelism over two
//! (NCCL, one thread per GPU). Prints the median step times and checks the sharded
//! velocities against one GPU.

#[cfg(feature = "cuda")]
#[test]
#[ignore = "needs 2 CUDA devices: PHYAI_GPU_TESTS=1, --ignored"]
fn guided_step_times_with_tp_and_cfg() {
    use std::path::Path;
    use std::sync::Arc;
    use std::time::Instant;

    use candle_core::{DType, Device, Tensor};
    use phyai::io::weights::{WeightStore, Weights};
    use phyai::models::cosmos3::sampler::noise;
    use phyai::models::cosmos3::transformer::{Cosmos3Transformer, GenInputs, TransformerConfig};
    use phyai::parallel::nccl::NcclMeshPlan;
    use phyai::parallel::Group;
    use phyai::parallel::{MeshShape, RankMesh};

    assert!(
        std::env::var_os("PHYAI_GPU_TESTS").is_some(),
        "set PHYAI_GPU_TESTS=1 on a machine with 2+ GPUs"
    );
    // PHYAI_GPU_CONFIG=nano: the Nano architecture (hidden 4096, 32/8 heads, MLP 12288)
    // with PHYAI_GPU_LAYERS layers (default 4) instead of the medium config.
    let cfg: TransformerConfig = if std::env::var("PHYAI_GPU_CONFIG").as_deref() == Ok("nano") {
        TransformerConfig {
            num_hidden_layers: std::env::var("PHYAI_GPU_LAYERS")
                .ok()
                .and_then(|v| v.parse().ok())
                .unwrap_or(4),
            ..TransformerConfig::default()
        }
    } else {
        serde_json::from_str(
            r#"{"hidden_size": 2048, "num_hidden_layers": 8, "num_attention_heads": 16,
                "num_key_value_heads": 8, "head_dim": 128, "intermediate_size": 6144,
                "vocab_size": 32000}"#,
        )
        .unwrap()
    };
    cfg.validate(Path::new("config.json")).unwrap();
    println!(
        "config: hidden {}, {} layers, {}/{} heads, MLP {}",
        cfg.hidden_size,
        cfg.num_hidden_layers,
        cfg.num_attention_heads,
        cfg.num_key_value_heads,
        cfg.intermediate_size
    );
    let vocab = cfg.vocab_size as u32;
    let pos: Vec<u32> = (0..300).map(|i| (i * 7919) % vocab).collect();
    let neg: Vec<u32> = (0..120).map(|i| (i * 104_729) % vocab).collect();

    /// The latent grid: W480 (24×30×52 → 9,360 tokens) or, with PHYAI_GPU_GRID=w720,
    /// W720 (48×45×80 → 44,160 tokens).
    fn grid() -> [usize; 5] {
        match std::env::var("PHYAI_GPU_GRID").as_deref() {
            Ok("w720") => [1, 48, 48, 45, 80],
            _ => [1, 48, 24, 30, 52],
        }
    }

    /// Median of 3 timed guided steps after a warm-up, and this rank's conditional-branch
    /// velocity.
    fn run(
        mesh: RankMesh,
        ordinal: usize,
        cfg: &TransformerConfig,
        pos: &[u32],
        neg: &[u32],
    ) -> (f64, Tensor) {
        let dev = Device::new_cuda(ordinal).unwrap();
        let store = Arc::new(WeightStore::synthetic(Path::new("bench"), 11));
        let m = Cosmos3Transformer::new_parallel(
            cfg,
            Weights::new(store, DType::BF16, &dev),
            &Group::new(mesh.tp.clone()),
            Group::new(mesh.sp.clone()),
        )
        .unwrap();
        let cfg_parallel = mesh.cfg.size() == 2;
        let mine = if cfg_parallel && mesh.cfg.rank() == 1 {
            neg
        } else {
            pos
        };
        let und_own = m.und(mine).unwrap();
        let und_neg = if cfg_parallel {
            None
        } else {
            Some(m.und(neg).unwrap())
        };
        // The same input on every rank and run (seeded, not the thread-local RNG).
        let shape = grid();
        let video = Tensor::from_vec(noise::standard_normal(5, &shape).unwrap(), &shape[..], &dev)
            .unwrap()
            .to_dtype(DType::BF16)
            .unwrap();
        let noisy = vec![true; shape[2]];
        let inputs = GenInputs {
            video: &video,
            sound: None,
            timestep: 999.0,
            noisy_frames: &noisy,
            fps: 24.0,
        };
        // Returns this rank's own (conditional on rank 0) velocity: the guided one amplifies
        // bf16 rounding of the small cond − uncond difference by the guidance scale.
        let step = || -> Tensor {
            let c = m.velocity(&und_own, &inputs).unwrap().video;
            let own = c.clone();
            let _guided = match &und_neg {
                Some(u) => {
                    let u = m.velocity(u, &inputs).unwrap().video;
                    (&u + ((&c - &u).unwrap() * 6.0).unwrap()).unwrap()
                }
                None => {
                    let both = mesh.cfg.all_gather(&c, 0).unwrap();
                    let (c, u) = (both.narrow(0, 0, 1).unwrap(), both.narrow(0, 1, 1).unwrap());
                    (&u + ((&c - &u).unwrap() * 6.0).unwrap()).unwrap()
                }
            };
            dev.synchronize().unwrap();
            own
        };
        let v = step();
        let mut times: Vec<f64> = (0..3)
            .map(|_| {
                mesh.world.barrier().unwrap();
                let t = Instant::now();
                step();
                mesh.world.barrier().unwrap();
                t.elapsed().as_secs_f64()
            })
            .collect();
        times.sort_by(|a, b| a.partial_cmp(b).unwrap());
        (times[1], v)
    }

    let (t1, v1) = run(RankMesh::single(), 0, &cfg, &pos, &neg);
    println!("1 GPU: guided step {:.1} ms", t1 * 1e3);
    let v1 = v1
        .to_dtype(DType::F32)
        .unwrap()
        .to_device(&Device::Cpu)
        .unwrap();
    // PHYAI_GPU_TOPO (e.g. "sp=2") limits the run to the named topologies.
    let only = std::env::var("PHYAI_GPU_TOPO").ok();
    for (name, shape) in [
        ("tp=2", MeshShape::new(1, 1, 2)),
        ("cfg=2", MeshShape::new(2, 1, 1)),
        ("sp=2", MeshShape::new(1, 2, 1)),
    ] {
        if only
            .as_deref()
            .is_some_and(|o| !o.split(',').any(|t| t == name))
        {
            continue;
        }
        let plan = Arc::new(NcclMeshPlan::new(shape).unwrap());
        let outs: Vec<(f64, Tensor)> = std::thread::scope(|s| {
            let hs: Vec<_> = (0..shape.world())
                .map(|r| {
                    let plan = plan.clone();
                    let (cfg, pos, neg) = (&cfg, &pos, &neg);
                    s.spawn(move || run(plan.build(r, r).unwrap(), r, cfg, pos, neg))
                })
                .collect();
            hs.into_iter().map(|h| h.join().unwrap()).collect()
        });
        let (t, v) = &outs[0];
        let v = v
            .to_dtype(DType::F32)
            .unwrap()
            .to_device(&Device::Cpu)
            .unwrap();
        let err = ((&v - &v1)
            .unwrap()
            .sqr()
            .unwrap()
            .sum_all()
            .unwrap()
            .to_scalar::<f32>()
            .unwrap()
            / v1.sqr()
                .unwrap()
                .sum_all()
                .unwrap()
                .to_scalar::<f32>()
                .unwrap())
        .sqrt();
        println!(
            "{name}: guided step {:.1} ms ({:.2}× one GPU), conditional velocity rel err vs one GPU {err:.2e}",
            t * 1e3,
            t1 / t
        );
        assert!(err < 2e-2, "{name}: {err}");
    }
}

/// Opt-in (CUDA build, PHYAI_GPU_TESTS=1, `--ignored`): the NCCL collectives on one rank, and on two
/// when a second GPU is present. all_to_all is grouped send/recv (to this rank too); every
/// split/concat pair of a 4-D tensor must equal slicing every rank's input and
/// concatenating, like the CPU backend.
#[cfg(feature = "cuda")]
#[test]
#[ignore = "needs a CUDA device: PHYAI_GPU_TESTS=1, --ignored"]
fn nccl_collectives_match_their_definition() {
    use candle_core::{DType, Device, Tensor};
    use phyai::parallel::nccl::{new_unique_id, NcclComm};
    use phyai::parallel::Communicator;

    assert!(
        std::env::var_os("PHYAI_GPU_TESTS").is_some(),
        "set PHYAI_GPU_TESTS=1 on a machine with a GPU"
    );
    let dims = [2usize, 4, 2, 6];
    let input = |r: usize, dev: &Device| {
        let n: usize = dims.iter().product();
        let v: Vec<f32> = (0..n).map(|i| (r * 1000 + i) as f32).collect();
        Tensor::from_vec(v, &dims[..], dev)?.to_dtype(DType::BF16)
    };
    let worlds: &[usize] = if Device::new_cuda(1).is_ok() {
        &[1, 2]
    } else {
        &[1]
    };
    for &world in worlds {
        let id = new_unique_id().unwrap();
        let checked: Vec<usize> = std::thread::scope(|s| {
            let handles: Vec<_> = (0..world)
                .map(|rank| {
                    s.spawn(move || {
                        let dev = Device::new_cuda(rank).unwrap();
                        let comm = NcclComm::new(&dev, rank, world, id).unwrap();
                        let mut checked = 0;
                        for (split, &len) in dims.iter().enumerate() {
                            for concat in 0..4 {
                                let x = input(rank, &dev).unwrap();
                                let got = comm.all_to_all(&x, split, concat).unwrap();
                                let c = len / world;
                                let parts: Vec<Tensor> = (0..world)
                                    .map(|r| {
                                        input(r, &Device::Cpu)
                                            .unwrap()
                                            .narrow(split, rank * c, c)
                                            .unwrap()
                                    })
                                    .collect();
                                let want = Tensor::cat(&parts, concat).unwrap();
                                let got = got.to_device(&Device::Cpu).unwrap();
                                assert_eq!(
                                    got.dims(),
                                    want.dims(),
                                    "split {split} concat {concat}"
                                );
                                let flat = |t: &Tensor| {
                                    let t = t.to_dtype(DType::F32).unwrap();
                                    t.flatten_all().unwrap().to_vec1::<f32>().unwrap()
                                };
                                assert_eq!(
                                    flat(&got),
                                    flat(&want),
                                    "world {world} split {split} concat {concat}"
                                );
                                checked += 1;
                            }
                        }
                        let x = input(rank, &dev).unwrap();
                        let g = comm.all_gather(&x, 1).unwrap();
                        assert_eq!(g.dims(), &[2, 4 * world, 2, 6]);
                        let sum = comm
                            .all_reduce_sum(&x.to_dtype(DType::F32).unwrap())
                            .unwrap();
                        let want: f32 = (0..world).map(|r| (r * 1000) as f32).sum();
                        let first = sum.flatten_all().unwrap().get(0).unwrap();
                        assert_eq!(first.to_scalar::<f32>().unwrap(), want);
                        comm.barrier().unwrap();
                        checked
                    })
                })
                .collect();
            handles.into_iter().map(|h| h.join().unwrap()).collect()
        });
        assert!(checked.iter().all(|&c| c == 16));
        eprintln!("nccl collectives: {world} rank(s) ok");
    }
}
