//! `fsync-floor`: what durability alone costs on this machine's disk, in CPU.
//!
//! shardchat acks a message only once an `fdatasync` covers it; at light traffic every commit
//! holds one message, so each message pays a whole journal append and sync. The in-memory relays
//! `benches/run.sh` measures beside it pay neither, so "shardchat's cores at a light load" can go
//! no lower than "a relay's cores plus one append and sync a message". This measures that second
//! term alone, the way the engine pays it: appends of `--record-bytes` to a file grown with
//! `set_len` (as fjall's journal is), each followed by `fdatasync`, paced at `--rate` a second.
//!
//! Three paced phases run in turn: the loop alone, appends, appends each followed by a sync. The
//! figure is this process's CPU (user and system, the total `/proc/<pid>/stat` gives for the
//! servers), for a paced loop that appends and syncs less the same paced loop that only
//! sleeps: the pacing's own wake-ups are not durability's. Like the servers' figures it leaves out the
//! block layer's worker threads and the interrupts that land on other cores.
//!
//! Beside the CPU it counts the requests the disk completed during the sync phase, a sync each
//! (from `/sys/dev/block/<device>/stat`, device-wide): what one `fdatasync` asks of this
//! filesystem and disk. Each request is a round trip the syncing thread sleeps through, so the
//! count says much of why the figure is what it is (a data write, the inode's block when the
//! filesystem dirtied it, a cache flush).
//!
//! Then, on a glommio executor as a shard runs, two ways of making one record durable, in
//! alternated rounds of a second each (this VM's noise is as large as their difference), each less
//! a round of the same paced loop that only sleeps:
//! - **pool**: the engine's path, a blocking-pool job that appends to a `set_len` file and calls
//!   `fdatasync`, awaited by the executor (two thread wake-ups a commit beside the sync);
//! - **dma**: the path a log of the shard's own would take, a 4 KiB `O_DIRECT | O_DSYNC` write
//!   into a file zero-filled and synced beforehand, submitted on the executor's io_uring ring and
//!   awaited there: no thread but the executor's, and no separate sync (on a disk without FUA the
//!   kernel flushes the cache after the write).
//!
//! The medians of the rounds go in the table and the JSON (`pool_us_per_op`, `dma_us_per_op`);
//! where the filesystem takes no `O_DIRECT` (a tmpfs) the second is left out.
//!
//!     fsync-floor --dir /var/lib/shardchat --rate 1000 --seconds 3 --json floor.json

use clap::Parser;
use std::fs::OpenOptions;
use std::os::unix::fs::{FileExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

#[derive(Parser)]
#[command(about = "CPU one append and fdatasync costs on this disk (benches/run.sh's durability floor)")]
struct Args {
    /// A directory on the filesystem the engine's data directory would use.
    #[arg(long)]
    dir: PathBuf,
    /// Appends (and syncs) a second.
    #[arg(long, default_value_t = 1000)]
    rate: u32,
    /// Seconds each of the three phases runs.
    #[arg(long, default_value_t = 3)]
    seconds: u32,
    /// Bytes an append writes: about one one-on-one message's journal entry.
    #[arg(long, default_value_t = 300)]
    record_bytes: usize,
    /// Rounds of the executor's paths (each path a second a round, alternated); 0 skips them.
    #[arg(long, default_value_t = 4)]
    rounds: u32,
    /// Writes the figures here as JSON.
    #[arg(long)]
    json: Option<PathBuf>,
}

/// The journal's preallocated length (fjall's default journal size): appends land in a hole,
/// as the engine's do.
const FILE_BYTES: u64 = 64 << 20;

/// This process's CPU time so far (user and system, every thread), in seconds: the same total
/// `/proc/<pid>/stat` gives for the servers, read at nanosecond precision.
fn cpu_s() -> f64 {
    let mut t = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: a valid clock id and a timespec to fill.
    let rc = unsafe { libc::clock_gettime(libc::CLOCK_PROCESS_CPUTIME_ID, &mut t) };
    assert_eq!(rc, 0, "clock_gettime(CLOCK_PROCESS_CPUTIME_ID)");
    t.tv_sec as f64 + t.tv_nsec as f64 * 1e-9
}

/// The `stat` file of the block device `dir` is on; None where there is none (a tmpfs, an overlay
/// or network filesystem).
fn device_stat(dir: &Path) -> Option<PathBuf> {
    let dev = std::fs::metadata(dir).ok()?.dev();
    let stat = PathBuf::from(format!("/sys/dev/block/{}:{}/stat", libc::major(dev), libc::minor(dev)));
    stat.exists().then_some(stat)
}

/// Write and flush requests the device has completed so far (fields 5 and 16 of its `stat`,
/// Documentation/block/stat.rst; a kernel before 5.5 has no flush count: 0).
fn device_requests(stat: &Path) -> Option<(u64, u64)> {
    let text = std::fs::read_to_string(stat).ok()?;
    let fields: Vec<u64> = text.split_whitespace().map(|f| f.parse().ok()).collect::<Option<_>>()?;
    Some((*fields.get(4)?, fields.get(15).copied().unwrap_or(0)))
}

/// Runs `op(k)` at `rate` a second for `seconds`, on a schedule (not back to back), and gives
/// the CPU it took and how many ops ran.
fn paced(rate: u32, seconds: u32, label: &str, mut op: impl FnMut(u64)) -> (f64, u64) {
    let interval = Duration::from_secs(1) / rate.max(1);
    let total = u64::from(rate) * u64::from(seconds);
    let (t0, c0) = (Instant::now(), cpu_s());
    let mut next_report = 1;
    for k in 0..total {
        let due = t0 + interval * k as u32;
        if let Some(wait) = due.checked_duration_since(Instant::now()) {
            std::thread::sleep(wait);
        }
        op(k);
        if t0.elapsed() >= Duration::from_secs(next_report) {
            eprintln!("   {label}: {next_report} of {seconds} s");
            next_report += 1;
        }
    }
    (cpu_s() - c0, total)
}

/// One block of the DMA path's writes: the smallest `O_DIRECT` write, holding one record.
const DMA_BLOCK_BYTES: usize = 4096;
/// The DMA path's file, zero-filled before the rounds; writes wrap around in it.
const DMA_FILE_BYTES: u64 = 16 << 20;

/// The executor's paths: CPU µs a durable record, the median over the rounds of (path's round
/// less the idle loop's round). `dma` is None where the filesystem refused `O_DIRECT`.
struct ExecutorPaths {
    pool_us: f64,
    dma_us: Option<f64>,
}

fn median(mut v: Vec<f64>) -> f64 {
    assert!(!v.is_empty(), "a median of no rounds");
    v.sort_by(f64::total_cmp);
    let m = v.len() / 2;
    if v.len() % 2 == 1 {
        v[m]
    } else {
        (v[m - 1] + v[m]) / 2.0
    }
}

/// Runs `op(k)` for `k` in `0..n` at `rate` a second on the executor (a timer a wait, as a shard
/// waits), and gives this process's CPU µs an op.
async fn paced_on_executor<F: std::future::Future<Output = ()>>(rate: u32, n: u64, mut op: impl FnMut(u64) -> F) -> f64 {
    let interval = Duration::from_secs(1) / rate.max(1);
    let (t0, c0) = (Instant::now(), cpu_s());
    for k in 0..n {
        let due = t0 + interval * k as u32;
        if let Some(wait) = due.checked_duration_since(Instant::now()) {
            glommio::timer::sleep(wait).await;
        }
        op(k).await;
    }
    (cpu_s() - c0) / n as f64 * 1e6
}

/// The pool and DMA paths in `dir`, `rounds` alternated rounds of `rate` ops each.
fn executor_paths(dir: &Path, rate: u32, rounds: u32, record_bytes: usize) -> ExecutorPaths {
    let dir = dir.to_path_buf();
    let n = u64::from(rate);
    glommio::LocalExecutorBuilder::new(glommio::Placement::Unbound)
        .name("fsync-floor")
        .spawn(move || async move {
            let journal = dir.join("pool-journal");
            let file = OpenOptions::new().create(true).truncate(true).write(true).open(&journal).expect("create the pool path's file");
            file.set_len(FILE_BYTES).expect("set_len");
            let file = std::sync::Arc::new(file);
            let dma_path = dir.join("dma-log");
            {
                let zeroes = std::fs::File::create(&dma_path).expect("create the DMA path's file");
                zeroes.write_all_at(&vec![0; DMA_FILE_BYTES as usize], 0).expect("zero-fill");
                zeroes.sync_all().expect("fsync");
            }
            let dma = glommio::io::OpenOptions::new()
                .write(true)
                .custom_flags(libc::O_DSYNC)
                .dma_open(&dma_path)
                .await
                .ok()
                .map(std::rc::Rc::new);
            let record = std::sync::Arc::new(vec![b'x'; record_bytes]);
            let (mut pool, mut direct) = (Vec::new(), Vec::new());
            for round in 0..rounds {
                eprintln!("   executor paths: round {} of {rounds}", round + 1);
                let idle = paced_on_executor(rate, n, |_| async {}).await;
                let first = u64::from(round) * n;
                let p = paced_on_executor(rate, n, |k| {
                    let (file, record) = (file.clone(), record.clone());
                    async move {
                        let at = ((first + k) * record.len() as u64) % FILE_BYTES;
                        glommio::executor()
                            .spawn_blocking(move || {
                                file.write_all_at(&record, at).expect("append");
                                file.sync_data().expect("fdatasync");
                            })
                            .await;
                    }
                })
                .await;
                pool.push((p - idle).max(0.0));
                if let Some(dma) = &dma {
                    let d = paced_on_executor(rate, n, |k| {
                        let (dma, len) = (dma.clone(), record_bytes.min(DMA_BLOCK_BYTES));
                        async move {
                            let mut block = dma.alloc_dma_buffer(DMA_BLOCK_BYTES);
                            block.as_bytes_mut()[..len].fill(b'x');
                            let at = ((first + k) * DMA_BLOCK_BYTES as u64) % DMA_FILE_BYTES;
                            dma.write_at(block, at).await.expect("O_DSYNC write");
                        }
                    })
                    .await;
                    direct.push((d - idle).max(0.0));
                }
            }
            ExecutorPaths { pool_us: median(pool), dma_us: (!direct.is_empty()).then(|| median(direct)) }
        })
        .expect("start the executor")
        .join()
        .expect("the executor's paths")
}

fn main() {
    let args = Args::parse();
    // Removed when it drops, also when a write or sync fails.
    let dir = tempfile::Builder::new().prefix("fsync-floor-").tempdir_in(&args.dir).expect("create the probe directory");
    let path = dir.path().join("journal");
    let file = OpenOptions::new().create(true).truncate(true).read(true).write(true).open(&path).expect("create the probe file");
    file.set_len(FILE_BYTES).expect("set_len");
    let record = vec![b'x'; args.record_bytes];
    let ops_max = FILE_BYTES / args.record_bytes.max(1) as u64;
    assert!(
        2 * u64::from(args.rate) * u64::from(args.seconds) <= ops_max,
        "two phases of --rate × --seconds appends would pass the file's {FILE_BYTES} bytes"
    );

    eprintln!(
        "== fsync-floor: {} appends of {} B a second, {} s a phase, in {}",
        args.rate,
        args.record_bytes,
        args.seconds,
        dir.path().display()
    );
    let (idle, n) = paced(args.rate, args.seconds, "paced loop alone", |_| {});
    let append_at = |k: u64| file.write_all_at(&record, k * record.len() as u64).expect("append");
    let (appended, _) = paced(args.rate, args.seconds, "append", append_at);
    let stat = device_stat(&args.dir);
    let before = stat.as_deref().and_then(device_requests);
    let (synced, _) = paced(args.rate, args.seconds, "append + fdatasync", |k| {
        // Past the first phase's appends, so each lands in the hole as a journal's do.
        append_at(n + k);
        file.sync_data().expect("fdatasync");
    });
    // Requests a sync: device-wide, so anything else writing meanwhile adds to them.
    let requests = match (before, stat.as_deref().and_then(device_requests)) {
        (Some((w0, f0)), Some((w1, f1))) => Some((w1.saturating_sub(w0) as f64 / n as f64, f1.saturating_sub(f0) as f64 / n as f64)),
        _ => None,
    };
    let paths = (args.rounds > 0).then(|| executor_paths(dir.path(), args.rate, args.rounds, args.record_bytes));
    let per_op = |cpu: f64| cpu.max(0.0) / n as f64 * 1e6;
    // Each phase's CPU less the one before it. Noise can put a phase under the one before (the
    // append is a few µs, the loop's own wake-ups vary as much), so each difference stops at 0
    // and the total is their sum.
    let (append_us, sync_us) = (per_op(appended - idle), per_op(synced - appended));
    let total_us = append_us + sync_us;
    let cores = total_us * f64::from(args.rate) / 1e6;
    println!("| figure | value |");
    println!("|---|---|");
    println!("| append, CPU | {append_us:.1} µs |");
    println!("| fdatasync after it, CPU | {sync_us:.1} µs |");
    println!("| append + fdatasync, CPU | {total_us:.1} µs |");
    println!("| cores at {} a second | {cores:.3} |", args.rate);
    match requests {
        Some((writes, flushes)) => {
            println!("| disk writes a sync | {writes:.2} |");
            println!("| disk cache flushes a sync | {flushes:.2} |");
        }
        None => println!("| disk requests a sync | not counted: no block device under {} |", args.dir.display()),
    }
    if let Some(p) = &paths {
        println!("| on an executor: blocking-pool append + fdatasync, CPU | {:.1} µs |", p.pool_us);
        match p.dma_us {
            Some(d) => println!("| on an executor: {DMA_BLOCK_BYTES} B O_DIRECT + O_DSYNC write on its ring, CPU | {d:.1} µs |"),
            None => println!("| on an executor: O_DIRECT + O_DSYNC write | not measured: no O_DIRECT under {} |", args.dir.display()),
        }
    }
    if let Some(p) = &args.json {
        let figures = serde_json::json!({
            "rate": args.rate,
            "record_bytes": args.record_bytes,
            "ops": n,
            "append_us_per_op": append_us,
            "fdatasync_us_per_op": sync_us,
            "cpu_us_per_op": total_us,
            "cores": cores,
            "device_writes_per_sync": requests.map(|r| r.0),
            "device_flushes_per_sync": requests.map(|r| r.1),
            "pool_us_per_op": paths.as_ref().map(|p| p.pool_us),
            "dma_us_per_op": paths.as_ref().and_then(|p| p.dma_us),
        });
        std::fs::write(p, figures.to_string()).expect("write --json");
    }
}
