"""Which CPUs the servers get and which the load generator gets, in `benches/run.sh`.

    python3 benches/placement.py DIR              # discovers, for the disk that holds DIR
    python3 benches/placement.py --counts 0,5,9   # interrupts per allowed CPU, given (tests)

Prints one line, `SERVER_CPUS LOADGEN_CPUS` (lists for `taskset -c`), and why on stderr.

The servers get half the CPUs this process may run on (rounded down, at least one), the load
generator the rest; which half the servers get follows the data disk's interrupts. A disk's
completion interrupt runs on whatever that CPU was running, and the kernel charges the time to
it: on a 2-core VM whose disk interrupts all land on CPU 1, with shardchat on CPU 0 and the load
generator on CPU 1, the load generator's CPU per message included shardchat's fsync completions
(`blk_done_softirq` and the interrupt entry, 10% of its samples at 10,000 one-on-one msg/s), and
each completion woke shardchat's committing thread across cores. With shardchat on CPU 1 instead
(two alternated 15 s runs each): the load generator 60.9 / 60.1 -> 56.5 / 55.0 µs a message,
shardchat 72.0 / 71.1 -> 74.7 / 74.5 µs, their sum unchanged. So the half that takes more of
the disk's interrupts goes to the servers, and each side is charged for its own work.

The disk's interrupts are those of the nearest device above it in sysfs that lists `msi_irqs`
(the virtio or NVMe PCI function); where none can be found (no MSI, a RAM disk, a container
without /sys), the servers keep the first half.
"""
import os, sys


def cpu_list(cpus):
    """`taskset -c` form: "0-3,8"."""
    out, run = [], []
    for c in sorted(cpus):
        if run and c == run[-1] + 1:
            run.append(c)
        else:
            if run:
                out.append(run)
            run = [c]
    if run:
        out.append(run)
    return ",".join(f"{r[0]}-{r[-1]}" if len(r) > 1 else f"{r[0]}" for r in out)


def split(cpus, counts):
    """(server CPUs, load generator CPUs): the half of `cpus` (sorted) with more of `counts`
    (interrupts per CPU, same order) to the servers; ties, and a single CPU, keep the first."""
    n = len(cpus)
    if n < 2:
        return cpus, cpus
    k = n // 2
    first, last = cpus[:k], cpus[n - k:]
    if sum(counts[n - k:]) > sum(counts[:k]):
        return last, cpus[: n - k]
    return first, cpus[k:]


def disk_irqs(path):
    """IRQ numbers of the device that holds `path`, or [] when they cannot be found."""
    st = os.stat(path)
    node = f"/sys/dev/block/{os.major(st.st_dev)}:{os.minor(st.st_dev)}"
    if not os.path.exists(node):
        return []
    d = os.path.realpath(node)
    # A partition's device is its disk's.
    if os.path.exists(os.path.join(d, "partition")):
        d = os.path.dirname(d)
    d = os.path.realpath(os.path.join(d, "device")) if os.path.exists(os.path.join(d, "device")) else d
    while d.startswith("/sys/devices") and d != "/sys/devices":
        irqs = os.path.join(d, "msi_irqs")
        if os.path.isdir(irqs):
            return sorted(int(x) for x in os.listdir(irqs) if x.isdigit())
        d = os.path.dirname(d)
    return []


def irq_counts(irqs, cpus):
    """Interrupts so far of `irqs` on each of `cpus`, from /proc/interrupts."""
    with open("/proc/interrupts") as f:
        header = f.readline().split()
        col = {int(name[3:]): i for i, name in enumerate(header) if name.startswith("CPU")}
        counts = [0] * len(cpus)
        want = set(irqs)
        for line in f:
            head, _, rest = line.partition(":")
            if not head.strip().isdigit() or int(head) not in want:
                continue
            fields = rest.split()
            for j, c in enumerate(cpus):
                if c in col and col[c] < len(fields) and fields[col[c]].isdigit():
                    counts[j] += int(fields[col[c]])
    return counts


def main(argv):
    cpus = sorted(os.sched_getaffinity(0))
    if len(argv) == 2 and argv[0] == "--counts":
        counts = [int(x) for x in argv[1].split(",")]
        cpus = list(range(len(counts)))
        why = "interrupts given"
    elif len(argv) == 1:
        try:
            irqs = disk_irqs(argv[0])
            counts = irq_counts(irqs, cpus) if irqs else [0] * len(cpus)
            why = f"the data disk's interrupts ({', '.join(map(str, irqs))})" if irqs else "no interrupts found for the data disk"
        except OSError as e:
            # Unreadable /sys or /proc (a sandbox): the servers keep the first half.
            counts, why = [0] * len(cpus), f"the data disk's interrupts unreadable ({e})"
    else:
        sys.exit(__doc__)
    servers, loadgen = split(cpus, counts)
    print(f"placement: {why}, per CPU {dict(zip(cpus, counts))}", file=sys.stderr)
    print(cpu_list(servers), cpu_list(loadgen))


if __name__ == "__main__":
    main(sys.argv[1:])
