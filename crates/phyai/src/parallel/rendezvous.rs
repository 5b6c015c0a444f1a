//! A small TCP rendezvous: rank 0 serves a payload (the NCCL unique id) to every other
//! rank, which connects with retries. Timeouts on connect and accept turn a missing or
//! dead peer into an error naming it, never a hang. Also reads the torchrun-style
//! launch environment (RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR, MASTER_PORT).

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream, ToSocketAddrs};
use std::time::{Duration, Instant};

use crate::{Error, Result};

/// Where this process sits in a multi-process launch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LaunchEnv {
    pub rank: usize,
    pub world_size: usize,
    pub local_rank: usize,
    pub master_addr: String,
    pub master_port: u16,
}

impl LaunchEnv {
    /// Reads the torchrun variables through `get` (e.g. `|k| std::env::var(k).ok()`).
    /// `None` when WORLD_SIZE is unset (a single-process launch).
    pub fn from_vars(get: impl Fn(&str) -> Option<String>) -> Result<Option<Self>> {
        let Some(world) = get("WORLD_SIZE") else {
            return Ok(None);
        };
        let num = |k: &str, v: &str| -> Result<usize> {
            v.trim()
                .parse()
                .map_err(|_| Error::invalid(k, format!("not a non-negative integer: {v:?}")))
        };
        let world_size = num("WORLD_SIZE", &world)?;
        let rank = num("RANK", &get("RANK").unwrap_or_else(|| "0".into()))?;
        let local_rank = num(
            "LOCAL_RANK",
            &get("LOCAL_RANK").unwrap_or_else(|| rank.to_string()),
        )?;
        if world_size == 0 || rank >= world_size {
            return Err(Error::invalid(
                "RANK",
                format!("{rank} is not below WORLD_SIZE {world_size}"),
            ));
        }
        let master_addr = get("MASTER_ADDR").unwrap_or_else(|| "127.0.0.1".into());
        let port = get("MASTER_PORT").unwrap_or_else(|| "29500".into());
        let master_port = port
            .trim()
            .parse()
            .map_err(|_| Error::invalid("MASTER_PORT", format!("not a port number: {port:?}")))?;
        Ok(Some(Self {
            rank,
            world_size,
            local_rank,
            master_addr,
            master_port,
        }))
    }
}

const MAGIC: &[u8; 8] = b"PHYAIRDV";

/// Rank 0: accepts `world_size − 1` peers on `listener` and sends each the payload.
pub fn serve(
    listener: &TcpListener,
    world_size: usize,
    payload: &[u8],
    timeout: Duration,
) -> Result<()> {
    listener
        .set_nonblocking(true)
        .map_err(|e| Error::msg(format!("rendezvous: {e}")))?;
    let deadline = Instant::now() + timeout;
    let mut seen = vec![false; world_size];
    seen[0] = true;
    let mut pending = world_size - 1;
    while pending > 0 {
        match listener.accept() {
            Ok((mut s, _)) => {
                s.set_nonblocking(false).ok();
                s.set_read_timeout(Some(timeout)).ok();
                s.set_write_timeout(Some(timeout)).ok();
                let mut hello = [0u8; 16];
                s.read_exact(&mut hello)
                    .map_err(|e| Error::msg(format!("rendezvous: reading a peer's hello: {e}")))?;
                if &hello[..8] != MAGIC {
                    continue; // not one of ours
                }
                let rank = u64::from_le_bytes(hello[8..].try_into().unwrap()) as usize;
                if rank == 0 || rank >= world_size || seen[rank] {
                    return Err(Error::msg(format!(
                        "rendezvous: unexpected rank {rank} (world size {world_size})"
                    )));
                }
                seen[rank] = true;
                s.write_all(&(payload.len() as u64).to_le_bytes())
                    .and_then(|_| s.write_all(payload))
                    .map_err(|e| Error::msg(format!("rendezvous: sending to rank {rank}: {e}")))?;
                pending -= 1;
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                if Instant::now() >= deadline {
                    let missing: Vec<String> = (0..world_size)
                        .filter(|&r| !seen[r])
                        .map(|r| r.to_string())
                        .collect();
                    return Err(Error::msg(format!(
                        "rendezvous: rank(s) {} did not connect within {timeout:?}",
                        missing.join(", ")
                    )));
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            Err(e) => return Err(Error::msg(format!("rendezvous: accept: {e}"))),
        }
    }
    Ok(())
}

/// Rank > 0: connects to rank 0 (retrying until `timeout`) and returns its payload.
pub fn fetch(addr: &str, port: u16, rank: usize, timeout: Duration) -> Result<Vec<u8>> {
    let deadline = Instant::now() + timeout;
    let target = (addr, port)
        .to_socket_addrs()
        .map_err(|e| Error::invalid("MASTER_ADDR", format!("{addr}:{port}: {e}")))?
        .next()
        .ok_or_else(|| {
            Error::invalid("MASTER_ADDR", format!("{addr}:{port} resolves to nothing"))
        })?;
    loop {
        match TcpStream::connect_timeout(&target, Duration::from_millis(500)) {
            Ok(mut s) => {
                s.set_read_timeout(Some(timeout)).ok();
                let mut hello = [0u8; 16];
                hello[..8].copy_from_slice(MAGIC);
                hello[8..].copy_from_slice(&(rank as u64).to_le_bytes());
                s.write_all(&hello)
                    .map_err(|e| Error::msg(format!("rendezvous: rank {rank}: {e}")))?;
                let mut len = [0u8; 8];
                s.read_exact(&mut len)
                    .map_err(|e| Error::msg(format!("rendezvous: rank {rank}: rank 0 hung up: {e}")))?;
                let n = u64::from_le_bytes(len) as usize;
                if n > 1 << 20 {
                    return Err(Error::msg("rendezvous: payload too large"));
                }
                let mut buf = vec![0u8; n];
                s.read_exact(&mut buf)
                    .map_err(|e| Error::msg(format!("rendezvous: rank {rank}: {e}")))?;
                return Ok(buf);
            }
            Err(_) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(100)),
            Err(e) => {
                return Err(Error::msg(format!(
                    "rendezvous: rank {rank} could not reach rank 0 at {addr}:{port} within {timeout:?}: {e}"
                )))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn payload_reaches_every_rank() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let payload: Vec<u8> = (0..128u8).collect();
        std::thread::scope(|s| {
            let p = payload.clone();
            s.spawn(move || serve(&listener, 4, &p, Duration::from_secs(10)).unwrap());
            let got: Vec<_> = (1..4)
                .map(|r| {
                    s.spawn(move || fetch("127.0.0.1", port, r, Duration::from_secs(10)).unwrap())
                })
                .collect();
            for g in got {
                assert_eq!(g.join().unwrap(), payload);
            }
        });
    }

    #[test]
    fn a_missing_rank_is_named_after_the_timeout() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let e = std::thread::scope(|s| {
            let h = s.spawn(move || serve(&listener, 3, b"id", Duration::from_millis(500)));
            fetch("127.0.0.1", port, 1, Duration::from_secs(5)).unwrap();
            h.join().unwrap()
        })
        .unwrap_err()
        .to_string();
        assert!(e.contains("rank(s) 2 did not connect"), "{e}");
    }

    #[test]
    fn launch_env_parses_torchrun_variables() {
        let vars = |pairs: &'static [(&'static str, &'static str)]| {
            move |k: &str| {
                pairs
                    .iter()
                    .find(|(a, _)| *a == k)
                    .map(|(_, v)| v.to_string())
            }
        };
        assert_eq!(LaunchEnv::from_vars(vars(&[])).unwrap(), None);
        let env = LaunchEnv::from_vars(vars(&[
            ("WORLD_SIZE", "8"),
            ("RANK", "5"),
            ("LOCAL_RANK", "1"),
            ("MASTER_ADDR", "node0"),
            ("MASTER_PORT", "1234"),
        ]))
        .unwrap()
        .unwrap();
        assert_eq!(
            (env.rank, env.world_size, env.local_rank, env.master_port),
            (5, 8, 1, 1234)
        );
        let e = LaunchEnv::from_vars(vars(&[("WORLD_SIZE", "2"), ("RANK", "2")]))
            .unwrap_err()
            .to_string();
        assert!(e.starts_with("RANK"), "{e}");
        let e = LaunchEnv::from_vars(vars(&[("WORLD_SIZE", "x")]))
            .unwrap_err()
            .to_string();
        assert!(e.starts_with("WORLD_SIZE"), "{e}");
    }
}
