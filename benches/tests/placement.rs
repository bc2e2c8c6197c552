//! `benches/placement.py`: which CPUs `benches/run.sh` gives the servers and which the load
//! generator, following the data disk's interrupts.

use std::path::Path;
use std::process::Command;

/// The script's answer, `SERVER_CPUS LOADGEN_CPUS`.
fn placement(args: &[&str]) -> (String, String) {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("placement.py");
    let out = Command::new("python3").arg(&script).args(args).output().expect("python3 runs the placement");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let line = String::from_utf8(out.stdout).unwrap();
    let (s, l) = line.trim().split_once(' ').expect("two CPU lists");
    (s.to_string(), l.to_string())
}

/// The half that took more of the disk's interrupts goes to the servers; ties keep the first
/// half; the servers get half the CPUs rounded down, the load generator the rest.
#[test]
fn the_servers_get_the_half_that_takes_the_disk_s_interrupts() {
    // The 2-core VM: every disk interrupt on CPU 1.
    assert_eq!(placement(&["--counts", "0,860463"]), ("1".into(), "0".into()));
    assert_eq!(placement(&["--counts", "860463,0"]), ("0".into(), "1".into()));
    // None anywhere (no MSI found): the first half, as before.
    assert_eq!(placement(&["--counts", "0,0,0,0"]), ("0-1".into(), "2-3".into()));
    assert_eq!(placement(&["--counts", "3,0,1,2"]), ("0-1".into(), "2-3".into()));
    assert_eq!(placement(&["--counts", "0,1,2,3"]), ("2-3".into(), "0-1".into()));
    // Odd counts: two for the servers, three for the load generator, whichever half.
    assert_eq!(placement(&["--counts", "0,0,0,1,9"]), ("3-4".into(), "0-2".into()));
    assert_eq!(placement(&["--counts", "9,1,0,0,0"]), ("0-1".into(), "2-4".into()));
    // One CPU: both share it.
    assert_eq!(placement(&["--counts", "7"]), ("0".into(), "0".into()));
}

/// On this machine, for a directory on its disk: two lists that together are the CPUs this
/// process may run on, each CPU on one side only (with two or more).
#[test]
fn this_machine_s_placement_covers_its_cpus() {
    let dir = tempfile::tempdir().unwrap();
    let (s, l) = placement(&[dir.path().to_str().unwrap()]);
    let cpus = |list: &str| -> Vec<usize> {
        list.split(',')
            .flat_map(|r| match r.split_once('-') {
                Some((a, b)) => (a.parse().unwrap()..=b.parse().unwrap()).collect::<Vec<usize>>(),
                None => vec![r.parse().unwrap()],
            })
            .collect()
    };
    let (mut s, l) = (cpus(&s), cpus(&l));
    let allowed = allowed_cpus();
    let n = allowed.len();
    if n == 1 {
        assert_eq!(s, l, "one CPU is shared");
        return;
    }
    assert_eq!(s.len(), n / 2, "the servers get half, rounded down");
    assert!(s.iter().all(|c| !l.contains(c)), "a CPU on both sides: {s:?} {l:?}");
    s.extend(l);
    s.sort();
    assert_eq!(s, allowed);
    // Where the disk cannot be read, the servers keep the first half.
    let (s, l) = placement(&["/no/such/directory"]);
    assert_eq!((cpus(&s), cpus(&l)), (allowed[..n / 2].to_vec(), allowed[n / 2..].to_vec()));
}

/// The CPUs this process may run on, in order (one `sched_getaffinity`).
fn allowed_cpus() -> Vec<usize> {
    // SAFETY: a zeroed cpu_set_t is valid, and sched_getaffinity writes at most its size.
    let set = unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        assert_eq!(libc::sched_getaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &mut set), 0, "sched_getaffinity");
        set
    };
    // SAFETY: CPU_ISSET reads the set only, for indices below CPU_SETSIZE.
    (0..libc::CPU_SETSIZE as usize).filter(|&c| unsafe { libc::CPU_ISSET(c, &set) }).collect()
}
