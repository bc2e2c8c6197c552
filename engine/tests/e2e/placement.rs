//! Where the engine's threads run: its shards stay on the CPUs the process was given, and the
//! store's background threads run at a lower weight than the shards.

use crate::common::*;

/// The CPUs the calling thread may run on.
fn allowed() -> Vec<usize> {
    core_affinity::get_core_ids().expect("read the affinity mask").into_iter().map(|c| c.id).collect()
}

/// Restricts the calling thread (and the processes it starts) to `cpus`.
fn allow(cpus: &[usize]) {
    // SAFETY: `set` is a plain bit set that CPU_SET fills and sched_setaffinity reads.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        for &c in cpus {
            libc::CPU_SET(c, &mut set);
        }
        assert_eq!(libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set), 0);
    }
}

/// Started on its last allowed CPU alone (as `taskset -c N` or a cgroup cpuset would), the engine
/// pins all three shards there: pinned by the online CPUs' numbers, shard 0 went to CPU 0,
/// outside the mask, onto a core the operator kept for something else.
#[test]
fn shards_stay_on_the_cpus_the_process_was_given() {
    let mine = allowed();
    if mine.len() < 2 {
        // Not a tool CI could install (`skip` fails under CI): a 1-CPU runner has no CPU to leave
        // out, and nothing here to test.
        eprintln!("SKIPPED shards_stay_on_the_cpus_the_process_was_given: one CPU, none to leave out");
        return;
    }
    let last = *mine.last().unwrap();
    allow(&[last]);
    let server = Server::start(&[]);
    allow(&mine);
    let mut shards = 0;
    for task in std::fs::read_dir(format!("/proc/{}/task", server.pid())).unwrap() {
        let task = task.unwrap().path();
        let comm = std::fs::read_to_string(task.join("comm")).unwrap_or_default();
        if !comm.starts_with("shard-") {
            continue;
        }
        shards += 1;
        let status = std::fs::read_to_string(task.join("status")).unwrap();
        let cpus = status.lines().find_map(|l| l.strip_prefix("Cpus_allowed_list:")).unwrap().trim().to_string();
        assert_eq!(cpus, last.to_string(), "{} runs on CPUs {cpus}, not the process's {last}", comm.trim());
    }
    assert!(shards >= 3, "found {shards} shard threads");
}

/// `--store-maintenance-nice` reaches the store: fjall's threads run that much nicer than the
/// engine's (10 by default), the shards at the engine's own; 0 leaves them all alike.
#[test]
fn the_store_s_background_threads_run_nicer_than_the_shards() {
    // The engine inherits this thread's niceness.
    let base = shardchat_storage_fjall::nice::own().unwrap();
    for (flag, added) in [(None, 10), (Some("7"), 7), (Some("0"), 0)] {
        let extra: Vec<&str> = flag.map(|n| vec!["--store-maintenance-nice", n]).unwrap_or_default();
        let mut server = Server::start(&extra);
        let threads = shardchat_storage_fjall::nice::of_threads(server.pid()).unwrap();
        let of = |prefix: &str| threads.iter().filter(|(n, _)| n.starts_with(prefix)).map(|&(_, nice)| nice).collect::<Vec<_>>();
        let (store, shards) = (of("fjall"), of("shard-"));
        assert!(!store.is_empty() && !shards.is_empty(), "the store's and the shards' threads: {threads:?}");
        let want = (base + added).min(shardchat_storage_fjall::nice::NICE_MAX.into());
        assert!(store.iter().all(|&n| n == want), "{flag:?}: the store's threads at {store:?}, not {want}");
        assert!(shards.iter().all(|&n| n == base), "{flag:?}: the shards at {shards:?}, not the engine's {base}");
        server.stop();
    }
}
