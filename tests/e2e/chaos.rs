//! The bounded process-level fault suite (the full one is `tests/bench/chaos.rs`): two vkhost
//! replicas and cube-sim as processes (debug builds, `cargo build -p vkhost -p cube-sim`) on the
//! real control plane, a small burst and scale-down per fault, the invariants sampled every
//! 250 ms: never two live instances for one pod, every pod Running or a named failure with an
//! Event, none stuck Terminating, no orphan after one sweep, no EIP or disk left behind.

use std::time::Duration;

use vkcube_e2e::chaos::{Fault, Options, Profile, World};

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn faults_mid_burst_and_scale_down_keep_every_invariant() {
    let cluster = vkcube_e2e::cluster();
    let mut opts = Options::new(Profile::Debug);
    opts.cut = Duration::from_secs(15);
    opts.cloud_window = Duration::from_secs(5);
    opts.timeout = Duration::from_secs(120);
    let mut world = World::start(cluster, opts, "test").await.expect("start the chaos world");
    for fault in [Fault::Kill, Fault::ApiserverCut, Fault::SimRestart, Fault::CloudErrors] {
        let report = match world.cycle(fault, 20, 2000).await {
            Ok(r) => r,
            Err(e) => panic!("{}: {e:#}\nlogs in {}", fault.name(), world.dir.display()),
        };
        eprintln!("{}", serde_json::to_string(&report).unwrap());
        assert!(report.counts.clean(), "{}: {:?}", fault.name(), report.counts);
        assert!(report.counts.samples > 0, "{}: the sampler took no sample", fault.name());
    }
    world.stop();
    let _ = std::fs::remove_dir_all(&world.dir);
}
