//! **A test fixture, never a product backend**: the CQL test double as a process, so that several
//! engine processes can share one store in a test run from outside the suite (the README's
//! three-node recipe on a machine without ScyllaDB). It keeps everything in memory and forgets it
//! when it exits.
//!
//! ```text
//! shardchat-cql-double [--listen 127.0.0.1:9042]
//! ```

use std::net::SocketAddr;

fn main() {
    let mut args = std::env::args().skip(1);
    let mut listen: SocketAddr = "127.0.0.1:9042".parse().expect("valid literal");
    while let Some(a) = args.next() {
        match (a.as_str(), args.next()) {
            ("--listen", Some(v)) => match v.parse() {
                Ok(addr) => listen = addr,
                Err(e) => fail(&format!("--listen {v}: {e}")),
            },
            _ => fail(&format!("unexpected argument {a}")),
        }
    }
    let double = shardchat_cql_double::CqlDouble::start_on(listen).unwrap_or_else(|e| fail(&format!("binding {listen}: {e}")));
    println!("cql-double (TEST FIXTURE: in memory, not a product backend) listening on {}", double.addr());
    loop {
        std::thread::park();
    }
}

fn fail(why: &str) -> ! {
    eprintln!("shardchat-cql-double: {why}\nusage: shardchat-cql-double [--listen HOST:PORT]");
    std::process::exit(2);
}
