//! The TCP rendezvous of a multi-process launch: rank 0 listens on MASTER_PORT and every
//! other rank connects to it (with retries, since processes start in any order), once per
//! channel. The streams stay open: they carry the control channel and, on CPU, the
//! collectives. Timeouts on connect and accept turn a missing or dead peer into an error
//! naming it, never a hang. Also reads the torchrun-style launch environment (RANK,
//! WORLD_SIZE, LOCAL_RANK, MASTER_ADDR, MASTER_PORT).

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
    /// The launch described by this process's environment; `None` without WORLD_SIZE.
    pub fn from_env() -> Result<Option<Self>> {
        Self::from_vars(|k| std::env::var(k).ok())
    }

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
        if world_size == 0 {
            return Err(Error::invalid("WORLD_SIZE", "must be at least 1"));
        }
        let rank = num("RANK", &get("RANK").unwrap_or_else(|| "0".into()))?;
        let local_rank = num(
            "LOCAL_RANK",
            &get("LOCAL_RANK").unwrap_or_else(|| rank.to_string()),
        )?;
        if rank >= world_size {
            return Err(Error::invalid(
                "RANK",
                format!("{rank} is not below WORLD_SIZE {world_size}"),
            ));
        }
        let master_addr = get("MASTER_ADDR").unwrap_or_else(|| "127.0.0.1".into());
        let port = get("MASTER_PORT").unwrap_or_else(|| "29500".into());
        let master_port = match port.trim().parse::<u16>() {
            Ok(p) if p > 0 => p,
            _ => {
                return Err(Error::invalid(
                    "MASTER_PORT",
                    format!("not a port number in 1..=65535: {port:?}"),
                ))
            }
        };
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

/// Largest frame [`read_frame`] accepts: frames carry ids and messages, not tensors.
const MAX_FRAME: usize = 1 << 20;

/// Rank 0: accepts `channels` connections from each of ranks `1..world_size` and returns
/// them as `streams[rank − 1][channel]` (blocking, no delay, no timeouts set).
pub fn accept(
    listener: &TcpListener,
    world_size: usize,
    channels: usize,
    timeout: Duration,
) -> Result<Vec<Vec<TcpStream>>> {
    listener
        .set_nonblocking(true)
        .map_err(|e| Error::msg(format!("rendezvous: {e}")))?;
    let deadline = Instant::now() + timeout;
    let mut slots: Vec<Vec<Option<TcpStream>>> = (1..world_size)
        .map(|_| (0..channels).map(|_| None).collect())
        .collect();
    let mut pending = (world_size - 1) * channels;
    while pending > 0 {
        match listener.accept() {
            Ok((mut s, _)) => {
                s.set_nonblocking(false).ok();
                s.set_read_timeout(Some(timeout.min(Duration::from_secs(10))))
                    .ok();
                let mut hello = [0u8; 16];
                if s.read_exact(&mut hello).is_err() || &hello[..8] != MAGIC {
                    continue; // not one of ours
                }
                let rank = u32::from_le_bytes(hello[8..12].try_into().unwrap()) as usize;
                let channel = u32::from_le_bytes(hello[12..].try_into().unwrap()) as usize;
                if rank == 0 || rank >= world_size || channel >= channels {
                    return Err(Error::msg(format!(
                        "rendezvous: a peer claims rank {rank} channel {channel} \
                         (WORLD_SIZE {world_size}): is another job using this MASTER_PORT?"
                    )));
                }
                let slot = &mut slots[rank - 1][channel];
                if slot.is_some() {
                    return Err(Error::msg(format!(
                        "rendezvous: rank {rank} connected twice: is another job using this \
                         MASTER_PORT?"
                    )));
                }
                s.set_read_timeout(None).ok();
                s.set_nodelay(true).ok();
                *slot = Some(s);
                pending -= 1;
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                if Instant::now() >= deadline {
                    let missing: Vec<String> = slots
                        .iter()
                        .enumerate()
                        .filter(|(_, c)| c.iter().any(Option::is_none))
                        .map(|(i, _)| (i + 1).to_string())
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
    Ok(slots
        .into_iter()
        .map(|c| {
            c.into_iter()
                .map(|s| s.expect("every slot filled"))
                .collect()
        })
        .collect())
}

/// Rank > 0: connects channel `channel` to rank 0, retrying until `timeout`.
pub fn connect(
    addr: &str,
    port: u16,
    rank: usize,
    channel: usize,
    timeout: Duration,
) -> Result<TcpStream> {
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
                let mut hello = [0u8; 16];
                hello[..8].copy_from_slice(MAGIC);
                hello[8..12].copy_from_slice(&(rank as u32).to_le_bytes());
                hello[12..].copy_from_slice(&(channel as u32).to_le_bytes());
                s.write_all(&hello)
                    .map_err(|e| Error::msg(format!("rendezvous: rank {rank}: {e}")))?;
                s.set_nodelay(true).ok();
                return Ok(s);
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

/// Writes a length-prefixed frame.
pub fn write_frame(s: &mut impl Write, payload: &[u8]) -> std::io::Result<()> {
    s.write_all(&(payload.len() as u64).to_le_bytes())?;
    s.write_all(payload)
}

/// Reads a frame written by [`write_frame`] (at most 1 MiB).
pub fn read_frame(s: &mut impl Read) -> std::io::Result<Vec<u8>> {
    let mut len = [0u8; 8];
    s.read_exact(&mut len)?;
    let n = u64::from_le_bytes(len) as usize;
    if n > MAX_FRAME {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!("frame of {n} bytes is too large"),
        ));
    }
    let mut buf = vec![0u8; n];
    s.read_exact(&mut buf)?;
    Ok(buf)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_rank_gets_a_stream_per_channel() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let t = Duration::from_secs(10);
        std::thread::scope(|s| {
            let hub = s.spawn(move || {
                let mut streams = accept(&listener, 4, 2, t).unwrap();
                for (i, chans) in streams.iter_mut().enumerate() {
                    for (c, st) in chans.iter_mut().enumerate() {
                        write_frame(st, format!("rank {} channel {c}", i + 1).as_bytes()).unwrap();
                    }
                }
            });
            let peers: Vec<_> = (1..4)
                .map(|r| {
                    s.spawn(move || {
                        // Every channel first: rank 0 answers once all have connected.
                        let streams: Vec<_> = (0..2)
                            .map(|c| connect("127.0.0.1", port, r, c, t).unwrap())
                            .collect();
                        streams
                            .into_iter()
                            .map(|mut st| String::from_utf8(read_frame(&mut st).unwrap()).unwrap())
                            .collect::<Vec<_>>()
                    })
                })
                .collect();
            hub.join().unwrap();
            for (i, p) in peers.into_iter().enumerate() {
                let got = p.join().unwrap();
                assert_eq!(got[1], format!("rank {} channel 1", i + 1));
            }
        });
    }

    #[test]
    fn a_missing_rank_is_named_after_the_timeout() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let e = std::thread::scope(|s| {
            let h = s.spawn(move || accept(&listener, 3, 1, Duration::from_millis(500)));
            let _kept = connect("127.0.0.1", port, 1, 0, Duration::from_secs(5)).unwrap();
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
        for (bad, what) in [
            (&[("WORLD_SIZE", "2"), ("RANK", "2")][..], "RANK"),
            (&[("WORLD_SIZE", "x")][..], "WORLD_SIZE"),
            (&[("WORLD_SIZE", "0")][..], "WORLD_SIZE"),
            (
                &[("WORLD_SIZE", "2"), ("MASTER_PORT", "70000")][..],
                "MASTER_PORT",
            ),
            (
                &[("WORLD_SIZE", "2"), ("MASTER_PORT", "0")][..],
                "MASTER_PORT",
            ),
        ] {
            let owned: Vec<(String, String)> = bad
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect();
            let e = LaunchEnv::from_vars(|k| {
                owned.iter().find(|(a, _)| a == k).map(|(_, v)| v.clone())
            })
            .unwrap_err()
            .to_string();
            assert!(e.starts_with(what), "{e}");
        }
    }
}
