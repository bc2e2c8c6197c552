//! The command line: scenarios and every option, with its unit.

use clap::Parser;

#[derive(Clone, Copy, Debug, PartialEq)]
pub(crate) enum Scenario {
    Idle,
    Direct,
    Group(usize),
    Mixed,
    ReconnectStorm,
    Echo,
    PresenceStorm,
}

pub(crate) fn parse_scenario(s: &str) -> Result<Scenario, String> {
    match s {
        "idle" => Ok(Scenario::Idle),
        "direct" => Ok(Scenario::Direct),
        "presence-storm" => Ok(Scenario::PresenceStorm),
        "mixed" => Ok(Scenario::Mixed),
        "reconnect-storm" => Ok(Scenario::ReconnectStorm),
        "echo" => Ok(Scenario::Echo),
        _ => match s.strip_prefix("group:").map(str::parse::<usize>) {
            Some(Ok(n)) if (2..=500).contains(&n) => Ok(Scenario::Group(n)),
            _ => Err("expected idle, direct, group:SIZE (2..=500), mixed, reconnect-storm, echo or presence-storm".into()),
        },
    }
}

#[derive(Parser, Debug, Clone)]
#[command(name = "shardchat-loadgen", about = "Load generator for shardchat")]
pub(crate) struct Args {
    /// WebSocket endpoint, e.g. ws://127.0.0.1:7700/ws (dev-auth: users log in with ?user=).
    /// Several, comma-separated, spread connections round-robin: one per engine process when a
    /// host runs several (each under its open-file cap). Across independent processes only
    /// `idle` and `echo` make sense until they route messages to each other (cluster mode).
    #[arg(long, default_value = "ws://127.0.0.1:7700/ws")]
    pub(crate) target: String,
    /// idle | direct | group:SIZE | mixed | reconnect-storm | echo | presence-storm
    #[arg(long, default_value = "idle", value_parser = parse_scenario)]
    pub(crate) scenario: Scenario,
    /// Presence subscriptions per user (presence-storm).
    #[arg(long, default_value_t = 50)]
    pub(crate) subs: usize,
    /// Connections to open.
    #[arg(long, default_value_t = 1000)]
    pub(crate) connections: usize,
    /// Seconds to hold (idle) or send (direct) once connected.
    #[arg(long, default_value_t = 10)]
    pub(crate) duration: u64,
    /// Messages per second over all senders (direct).
    #[arg(long, default_value_t = 10_000)]
    pub(crate) rate: u64,
    /// Senders wake on a grid of this many microseconds from the run's start, each sending what
    /// falls due before its next grid point: one wake and a burst of writes a tick on each
    /// thread instead of one a message, on both sides of every socket (at 10,000 one-on-one
    /// msg/s this roughly halved the load generator's CPU a message). A thread woken between
    /// grid points to read a frame also sends what falls due within a tick. A message sent ahead
    /// of its due time (by at most a tick) is stamped with when it left, one sent late with when
    /// it was due. 0: each
    /// message at its own time, a wake-up each. At most 1 s: a tick is a pacing grain, not a
    /// burst of the run.
    #[arg(long, default_value_t = 1000, value_parser = clap::value_parser!(u64).range(0..=SEND_TICK_US_MAX))]
    pub(crate) send_tick_us: u64,
    /// Message body size in bytes (direct).
    #[arg(long, default_value_t = 64)]
    pub(crate) payload: usize,
    /// Connections opened at once while ramping up.
    #[arg(long, default_value_t = 200)]
    pub(crate) connect_concurrency: usize,
    /// Seconds between application pings on idle connections.
    #[arg(long, default_value_t = 20)]
    pub(crate) ping_interval: u64,
    /// Server process id: report its RSS and memory per connection.
    #[arg(long)]
    pub(crate) server_pid: Option<u32>,
    /// Prefix of user ids, so runs do not share conversations.
    #[arg(long, default_value = "lg")]
    pub(crate) prefix: String,
    /// Write the report as JSON here.
    #[arg(long)]
    pub(crate) json: Option<std::path::PathBuf>,
    /// Worker processes: each opens its share of the connections (and sends its share of the
    /// rate) under its own open-file limit; their histograms are merged into one report.
    #[arg(long, default_value_t = 1)]
    pub(crate) procs: usize,
    /// Local addresses to connect from, round robin: `127.0.0.2-127.0.0.40` or `a,b,c`. Each
    /// source address has its own ephemeral port range (about 28K ports), so more than ~28K
    /// connections to one server address need several.
    #[arg(long, value_parser = parse_source_ips)]
    pub(crate) source_ips: Option<SourceIps>,
    /// Log users in with HS256 JWTs minted from this secret (the server's `--jwt-secret`)
    /// instead of `?user=` (which only a `--dev-auth` server accepts).
    #[arg(long, env = "SHARDCHAT_JWT_SECRET", hide_env_values = true)]
    pub(crate) jwt_secret: Option<String>,
    /// Members per group (mixed).
    #[arg(long, default_value_t = 20)]
    pub(crate) group_size: usize,
    /// Share of the receivers that drop and reconnect at once (reconnect-storm).
    #[arg(long, default_value_t = 0.5)]
    pub(crate) storm_fraction: f64,
    /// Messages travel as rkyv binary frames instead of JSON (send, ack and msg).
    #[arg(long)]
    pub(crate) binary: bool,
    /// Connections opened per second while ramping up (0: as fast as --connect-concurrency allows).
    #[arg(long, default_value_t = 0)]
    pub(crate) ramp: u64,
    /// Draw the latency percentile distribution and deliveries over time here (PNG if the name
    /// ends in .png, else SVG).
    #[arg(long)]
    pub(crate) plot: Option<std::path::PathBuf>,
    /// Threads (glommio executors, one per core) in each process; 0: the cores divided by
    /// --procs, or half the cores (the last ones) when every --target is on this host, so the
    /// server keeps the others.
    #[arg(long, default_value_t = 0)]
    pub(crate) threads: usize,
    /// Which of this process's threads these arguments are for (set at run time).
    #[arg(skip)]
    pub(crate) thread: usize,
    /// Whose CPU time the sending phase weighs: `--server-pid`, also in workers (which leave
    /// weighing memory to their parent; the parent keeps the largest of their CPU figures, as
    /// their sending phases overlap).
    #[arg(skip)]
    pub(crate) cpu_of: Option<u32>,
    /// Internal: this process is worker K of P (`K/P`), started by `--procs`.
    #[arg(long, hide = true)]
    pub(crate) worker: Option<String>,
}

#[derive(Clone, Debug)]
pub(crate) struct SourceIps(pub(crate) Vec<std::net::IpAddr>);

pub(crate) fn parse_source_ips(s: &str) -> Result<SourceIps, String> {
    let bad = |e: std::net::AddrParseError| e.to_string();
    let ips: Vec<std::net::IpAddr> = if let Some((a, b)) = s.split_once('-') {
        let (a, b): (std::net::Ipv4Addr, std::net::Ipv4Addr) = (a.trim().parse().map_err(bad)?, b.trim().parse().map_err(bad)?);
        let (a, b) = (u32::from(a), u32::from(b));
        if b < a || b - a > 65_535 {
            return Err("a range is low-high, at most 65,536 addresses".into());
        }
        (a..=b).map(|x| std::net::IpAddr::V4(x.into())).collect()
    } else {
        s.split(',').map(|x| x.trim().parse().map_err(bad)).collect::<Result<_, _>>()?
    };
    if ips.is_empty() {
        return Err("no addresses".into());
    }
    Ok(SourceIps(ips))
}

/// The coarsest send grid `--send-tick-us` takes, in microseconds.
pub(crate) const SEND_TICK_US_MAX: u64 = 1_000_000;

impl Args {
    /// The grid senders wake on (`--send-tick-us`); zero: none.
    pub(crate) fn send_tick(&self) -> std::time::Duration {
        std::time::Duration::from_micros(self.send_tick_us)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_send_tick_is_a_grain_of_at_most_a_second() {
        let parse = |tick: &str| Args::try_parse_from(["shardchat-loadgen", "--send-tick-us", tick]);
        assert_eq!(Args::try_parse_from(["shardchat-loadgen"]).unwrap().send_tick(), std::time::Duration::from_millis(1));
        assert_eq!(parse("0").unwrap().send_tick(), std::time::Duration::ZERO);
        assert_eq!(parse("1000000").unwrap().send_tick(), std::time::Duration::from_secs(1));
        assert!(parse("1000001").is_err(), "a tick over a second is refused");
    }
}
