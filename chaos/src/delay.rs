//! [`Delayer`]: netem's delay for kernels built without netem. What a host sends is queued to
//! userspace by iptables's `NFQUEUE` target (the legacy iptables: this kernel's nftables has no
//! `queue` expression), held for its delay and let go with an accept verdict, over a netlink
//! socket opened inside the host's namespace.
//!
//! Each packet is held `ms` ± a uniform `jitter_ms`, drawn independently, so packets may
//! overtake each other as with netem's jitter. The rule has `--queue-bypass`: if the delayer is
//! gone, packets pass undelayed rather than being lost. The kernel's queue holds at most
//! [`QUEUE_PACKETS_MAX`] packets; beyond that it lets packets through at once (fail-open), so a
//! burst is never turned into loss, which is a fault of its own.

use crate::ChaosError;
use crate::client::Rng;
use crate::net::in_namespace;
use std::collections::BinaryHeap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// Packets the kernel holds for the delayer at most (at 50 ms of delay, 200,000 packets a
/// second).
pub const QUEUE_PACKETS_MAX: u32 = 10_000;

/// The queue number (also in [`rule`]); queues are per namespace, so every host can use the
/// same one.
const QUEUE: u16 = 0;

/// How long the delayer sleeps at most between looks at its stop flag.
const TICK: Duration = Duration::from_millis(20);

// From linux/netfilter/nfnetlink.h and nfnetlink_queue.h.
const NFNL_SUBSYS_QUEUE: u16 = 3;
const NFQNL_MSG_PACKET: u16 = 0;
const NFQNL_MSG_VERDICT: u16 = 1;
const NFQNL_MSG_CONFIG: u16 = 2;
const NFQA_PACKET_HDR: u16 = 1;
const NFQA_VERDICT_HDR: u16 = 2;
const NFQA_CFG_CMD: u16 = 1;
const NFQA_CFG_PARAMS: u16 = 2;
const NFQA_CFG_QUEUE_MAXLEN: u16 = 3;
const NFQA_CFG_MASK: u16 = 4;
const NFQA_CFG_FLAGS: u16 = 5;
const NFQA_CFG_F_FAIL_OPEN: u32 = 1;
const NFQA_CFG_F_GSO: u32 = 4;
const NFQNL_CFG_CMD_BIND: u8 = 1;
const NFQNL_COPY_META: u8 = 1;
const NF_ACCEPT: u32 = 1;
const NLMSG_ERROR: u16 = 2;
const NLM_F_REQUEST: u16 = 1;
const NLM_F_ACK: u16 = 4;
const NLA_TYPE_MASK: u16 = 0x3fff;

/// The iptables rule that queues what `device` sends, added (`-A`) or removed (`-D`); `-w`
/// waits for iptables's lock rather than failing while another host's rule is changed.
fn rule<'a>(verb: &'a str, device: &'a str) -> Vec<&'a str> {
    let mut args = vec!["-t", "filter", verb, "OUTPUT", "-o", device];
    args.extend("-j NFQUEUE --queue-num 0 --queue-bypass -w".split(' '));
    args
}

/// Whether `namespace` can queue packets to a delayer (iptables-legacy is installed and the
/// kernel has the NFQUEUE target): a rule on `lo` added and removed.
pub fn available(namespace: &str) -> bool {
    let added = in_namespace(namespace, "iptables-legacy", &rule("-A", "lo")).is_ok();
    added && in_namespace(namespace, "iptables-legacy", &rule("-D", "lo")).is_ok()
}

/// A delay in force on one host: a thread holding its packets and the rule sending them there.
/// [`Delayer::stop`] removes both (dropping it does too, without the count).
pub struct Delayer {
    namespace: String,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<Result<u64, ChaosError>>>,
}

impl Delayer {
    /// Starts holding what `namespace`'s `eth0` sends for `ms` ± `jitter_ms` (drawn from
    /// `seed`).
    ///
    /// # Errors
    /// The namespace cannot be entered, the kernel refused the queue, or `iptables-legacy`
    /// refused the rule (not installed, or no NFQUEUE target in this kernel).
    pub fn start(namespace: &str, ms: u32, jitter_ms: u32, seed: u64) -> Result<Self, ChaosError> {
        let stop = Arc::new(AtomicBool::new(false));
        let (ready_tx, ready_rx) = mpsc::channel();
        let (ns, flag) = (namespace.to_string(), stop.clone());
        let thread = std::thread::Builder::new()
            .name(format!("delay {namespace}"))
            .spawn(move || {
                let queue = match enter_namespace(&ns).and_then(|()| Queue::bind(QUEUE)) {
                    Ok(queue) => {
                        let _ = ready_tx.send(Ok(()));
                        queue
                    }
                    Err(e) => {
                        let _ = ready_tx.send(Err(e));
                        return Ok(0);
                    }
                };
                let hold = Hold::new(ms, jitter_ms, seed);
                queue.serve(hold, &flag)
            })
            .map_err(|e| ChaosError::Invalid(format!("delayer thread: {e}")))?;
        let delayer = Self {
            namespace: namespace.to_string(),
            stop,
            thread: Some(thread),
        };
        match ready_rx.recv() {
            Ok(Ok(())) => {}
            Ok(Err(e)) => return Err(e),
            Err(_) => {
                return Err(ChaosError::Invalid(format!(
                    "delayer of {namespace}: the thread ended before it was ready"
                )));
            }
        }
        // On an error, dropping `delayer` ends the thread.
        in_namespace(namespace, "iptables-legacy", &rule("-A", "eth0"))?;
        Ok(delayer)
    }

    /// Removes the rule, lets every held packet go and ends the thread; returns how many
    /// packets were delayed.
    ///
    /// # Errors
    /// `iptables-legacy` refused to remove the rule, or the socket failed.
    pub fn stop(mut self) -> Result<u64, ChaosError> {
        self.finish()
    }

    fn finish(&mut self) -> Result<u64, ChaosError> {
        let Some(thread) = self.thread.take() else {
            return Ok(0);
        };
        // The rule first, so that nothing more is queued while the thread lets go of the rest.
        let removed = in_namespace(&self.namespace, "iptables-legacy", &rule("-D", "eth0"));
        self.stop.store(true, Ordering::Relaxed);
        let delayed = thread.join().map_err(|_| {
            ChaosError::Invalid(format!("the delayer of {} panicked", self.namespace))
        })?;
        removed?;
        delayed
    }
}

impl Drop for Delayer {
    fn drop(&mut self) {
        let _ = self.finish();
    }
}

/// Moves the calling thread into network namespace `name` (`ip netns` names it in /run/netns).
pub(crate) fn enter_namespace(name: &str) -> Result<(), ChaosError> {
    let path = std::path::Path::new("/run/netns").join(name);
    let file = std::fs::File::open(&path).map_err(|e| ChaosError::io(&path, e))?;
    use std::os::fd::AsRawFd;
    // SAFETY: a valid descriptor of a namespace file; setns changes only this thread.
    if unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
        return Err(ChaosError::io(&path, std::io::Error::last_os_error()));
    }
    Ok(())
}

/// The packets held, by the instant each is let go.
struct Hold {
    due: BinaryHeap<std::cmp::Reverse<(Instant, u32)>>,
    ms: u32,
    jitter_ms: u32,
    rng: Rng,
}

impl Hold {
    fn new(ms: u32, jitter_ms: u32, seed: u64) -> Self {
        Self {
            due: BinaryHeap::new(),
            ms,
            jitter_ms: jitter_ms.min(ms),
            rng: Rng::new(seed),
        }
    }

    /// The delay of the next packet: uniform in `ms - jitter ..= ms + jitter`, in microseconds.
    fn draw(&mut self) -> Duration {
        let (ms, jitter) = (u64::from(self.ms), u64::from(self.jitter_ms));
        let span = 2 * jitter * 1000 + 1;
        Duration::from_micros((ms - jitter) * 1000 + self.rng.below(span))
    }

    fn push(&mut self, now: Instant, id: u32) {
        let due = now + self.draw();
        self.due.push(std::cmp::Reverse((due, id)));
    }

    /// The packets due by `now`, earliest first.
    fn pop_due(&mut self, now: Instant) -> Option<u32> {
        match self.due.peek() {
            Some(std::cmp::Reverse((due, _))) if *due <= now => {
                self.due.pop().map(|std::cmp::Reverse((_, id))| id)
            }
            _ => None,
        }
    }

    fn next_due(&self) -> Option<Instant> {
        self.due.peek().map(|std::cmp::Reverse((due, _))| *due)
    }
}

/// A netlink socket bound to one NFQUEUE queue of the namespace it was opened in.
struct Queue {
    fd: std::os::fd::OwnedFd,
    queue: u16,
    seq: u32,
}

impl Queue {
    fn bind(queue: u16) -> Result<Self, ChaosError> {
        use std::os::fd::FromRawFd;
        // SAFETY: plain socket(2); the descriptor is owned from here on.
        let raw = unsafe {
            libc::socket(
                libc::AF_NETLINK,
                libc::SOCK_RAW | libc::SOCK_CLOEXEC,
                libc::NETLINK_NETFILTER,
            )
        };
        if raw < 0 {
            return Err(os_error("netlink socket"));
        }
        // SAFETY: `raw` is a fresh descriptor no one else owns.
        let fd = unsafe { std::os::fd::OwnedFd::from_raw_fd(raw) };
        let mut socket = Self { fd, queue, seq: 0 };
        // Room for a burst of packet messages (root may go beyond rmem_max).
        socket.set_option(libc::SOL_SOCKET, libc::SO_RCVBUFFORCE, 8 << 20)?;
        // A full receive buffer means packets the kernel let through (fail-open), not an error.
        socket.set_option(libc::SOL_NETLINK, libc::NETLINK_NO_ENOBUFS, 1)?;
        let mut command = vec![NFQNL_CFG_CMD_BIND, 0];
        command.extend_from_slice(&(libc::AF_INET as u16).to_be_bytes());
        socket.request(&[(NFQA_CFG_CMD, &command)])?;
        // Fail-open (see the module's comment); GSO: a segmented send (QUIC uses UDP GSO) is
        // queued whole rather than split into one message per segment: one hold for all of it.
        let flags = NFQA_CFG_F_FAIL_OPEN | NFQA_CFG_F_GSO;
        let mut params = 0u32.to_be_bytes().to_vec();
        params.push(NFQNL_COPY_META);
        socket.request(&[
            (NFQA_CFG_PARAMS, &params),
            (NFQA_CFG_QUEUE_MAXLEN, &QUEUE_PACKETS_MAX.to_be_bytes()),
            (NFQA_CFG_MASK, &flags.to_be_bytes()),
            (NFQA_CFG_FLAGS, &flags.to_be_bytes()),
        ])?;
        Ok(socket)
    }

    fn set_option(&self, level: i32, name: i32, value: i32) -> Result<(), ChaosError> {
        use std::os::fd::AsRawFd;
        // SAFETY: `value` outlives the call and its size is passed.
        let rc = unsafe {
            libc::setsockopt(
                self.fd.as_raw_fd(),
                level,
                name,
                (&value as *const i32).cast(),
                std::mem::size_of::<i32>() as libc::socklen_t,
            )
        };
        if rc != 0 {
            return Err(os_error("netlink setsockopt"));
        }
        Ok(())
    }

    /// Sends a configuration message and waits for the kernel's acknowledgement.
    fn request(&mut self, attributes: &[(u16, &[u8])]) -> Result<(), ChaosError> {
        self.seq += 1;
        let message = encode(
            NFQNL_MSG_CONFIG,
            NLM_F_REQUEST | NLM_F_ACK,
            self.seq,
            self.queue,
            attributes,
        );
        self.send(&message)?;
        let mut buffer = vec![0u8; 8192];
        loop {
            let n = self.receive(&mut buffer, false)?;
            for message in Messages::new(&buffer[..n]) {
                if message.kind == NLMSG_ERROR && message.seq == self.seq {
                    let code = message
                        .payload
                        .get(..4)
                        .map(|b| i32::from_ne_bytes([b[0], b[1], b[2], b[3]]))
                        .unwrap_or(-libc::EINVAL);
                    if code != 0 {
                        return Err(ChaosError::Command {
                            command: "nfqueue configuration".into(),
                            message: std::io::Error::from_raw_os_error(-code).to_string(),
                        });
                    }
                    return Ok(());
                }
            }
        }
    }

    fn send(&self, message: &[u8]) -> Result<(), ChaosError> {
        use std::os::fd::AsRawFd;
        // SAFETY: a zeroed sockaddr_nl addresses the kernel; the buffer outlives the call.
        let rc = unsafe {
            let mut kernel: libc::sockaddr_nl = std::mem::zeroed();
            kernel.nl_family = libc::AF_NETLINK as u16;
            libc::sendto(
                self.fd.as_raw_fd(),
                message.as_ptr().cast(),
                message.len(),
                0,
                (&kernel as *const libc::sockaddr_nl).cast(),
                std::mem::size_of::<libc::sockaddr_nl>() as libc::socklen_t,
            )
        };
        if rc < 0 {
            return Err(os_error("netlink send"));
        }
        Ok(())
    }

    /// One datagram into `buffer`; 0 when `nonblocking` and nothing is there.
    fn receive(&self, buffer: &mut [u8], nonblocking: bool) -> Result<usize, ChaosError> {
        use std::os::fd::AsRawFd;
        let flags = if nonblocking { libc::MSG_DONTWAIT } else { 0 };
        loop {
            // SAFETY: the buffer is valid for its length.
            let n = unsafe {
                libc::recv(
                    self.fd.as_raw_fd(),
                    buffer.as_mut_ptr().cast(),
                    buffer.len(),
                    flags,
                )
            };
            if n >= 0 {
                return Ok(n as usize);
            }
            let error = std::io::Error::last_os_error();
            match error.raw_os_error() {
                Some(libc::EINTR) => continue,
                Some(libc::EAGAIN) if nonblocking => return Ok(0),
                Some(libc::ENOBUFS) => continue,
                _ => return Err(os_error("netlink receive")),
            }
        }
    }

    /// Waits up to `timeout` for the socket to be readable.
    fn wait(&self, timeout: Duration) -> Result<(), ChaosError> {
        use std::os::fd::AsRawFd;
        let mut pollfd = libc::pollfd {
            fd: self.fd.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        let spec = libc::timespec {
            tv_sec: timeout.as_secs() as libc::time_t,
            tv_nsec: timeout.subsec_nanos() as libc::c_long,
        };
        // SAFETY: one valid pollfd; no signal mask change.
        let rc = unsafe { libc::ppoll(&mut pollfd, 1, &spec, std::ptr::null()) };
        if rc < 0 && std::io::Error::last_os_error().raw_os_error() != Some(libc::EINTR) {
            return Err(os_error("netlink poll"));
        }
        Ok(())
    }

    fn accept(&self, id: u32) -> Result<(), ChaosError> {
        let mut verdict = NF_ACCEPT.to_be_bytes().to_vec();
        verdict.extend_from_slice(&id.to_be_bytes());
        let message = encode(
            NFQNL_MSG_VERDICT,
            NLM_F_REQUEST,
            0,
            self.queue,
            &[(NFQA_VERDICT_HDR, &verdict)],
        );
        self.send(&message)
    }

    /// Holds packets until `stop`, then lets go of every one held or still queued. Returns
    /// how many packets it held.
    fn serve(self, mut hold: Hold, stop: &AtomicBool) -> Result<u64, ChaosError> {
        let mut buffer = vec![0u8; 64 * 1024];
        let mut delayed = 0u64;
        while !stop.load(Ordering::Relaxed) {
            let now = Instant::now();
            while let Some(id) = hold.pop_due(now) {
                self.accept(id)?;
            }
            let timeout = hold
                .next_due()
                .map_or(TICK, |due| due.saturating_duration_since(now).min(TICK));
            self.wait(timeout)?;
            loop {
                let n = self.receive(&mut buffer, true)?;
                if n == 0 {
                    break;
                }
                let now = Instant::now();
                for id in packet_ids(&buffer[..n]) {
                    hold.push(now, id);
                    delayed += 1;
                }
            }
        }
        // The rule is gone: what is held or queued goes now (closing the socket would drop it).
        while let Some(id) = hold.pop_due(Instant::now() + Duration::from_secs(3600)) {
            self.accept(id)?;
        }
        loop {
            let n = self.receive(&mut buffer, true)?;
            if n == 0 {
                break;
            }
            for id in packet_ids(&buffer[..n]) {
                self.accept(id)?;
            }
        }
        Ok(delayed)
    }
}

fn os_error(what: &str) -> ChaosError {
    ChaosError::Command {
        command: what.into(),
        message: std::io::Error::last_os_error().to_string(),
    }
}

/// A netlink message of the queue subsystem: header, `nfgenmsg` (family unspecified, version
/// 0, the queue number), attributes each padded to 4 bytes.
fn encode(kind: u16, flags: u16, seq: u32, queue: u16, attributes: &[(u16, &[u8])]) -> Vec<u8> {
    let mut message = vec![0u8; 16];
    message[4..6].copy_from_slice(&((NFNL_SUBSYS_QUEUE << 8) | kind).to_ne_bytes());
    message[6..8].copy_from_slice(&flags.to_ne_bytes());
    message[8..12].copy_from_slice(&seq.to_ne_bytes());
    message.extend_from_slice(&[libc::AF_UNSPEC as u8, 0]);
    message.extend_from_slice(&queue.to_be_bytes());
    for (kind, value) in attributes {
        message.extend_from_slice(&((4 + value.len()) as u16).to_ne_bytes());
        message.extend_from_slice(&kind.to_ne_bytes());
        message.extend_from_slice(value);
        message.resize(message.len().next_multiple_of(4), 0);
    }
    let length = message.len() as u32;
    message[0..4].copy_from_slice(&length.to_ne_bytes());
    message
}

/// One netlink message of a datagram.
struct Message<'a> {
    kind: u16,
    seq: u32,
    payload: &'a [u8],
}

/// The messages of one datagram; stops at the first malformed one.
struct Messages<'a> {
    rest: &'a [u8],
}

impl<'a> Messages<'a> {
    fn new(datagram: &'a [u8]) -> Self {
        Self { rest: datagram }
    }
}

impl<'a> Iterator for Messages<'a> {
    type Item = Message<'a>;

    fn next(&mut self) -> Option<Message<'a>> {
        let header = self.rest.get(..16)?;
        let length = u32::from_ne_bytes([header[0], header[1], header[2], header[3]]) as usize;
        if length < 16 || length > self.rest.len() {
            self.rest = &[];
            return None;
        }
        let message = Message {
            kind: u16::from_ne_bytes([header[4], header[5]]),
            seq: u32::from_ne_bytes([header[8], header[9], header[10], header[11]]),
            payload: &self.rest[16..length],
        };
        self.rest = self
            .rest
            .get(length.next_multiple_of(4)..)
            .unwrap_or_default();
        Some(message)
    }
}

/// The ids of the packets a datagram hands over (`NFQA_PACKET_HDR` of each packet message).
fn packet_ids(datagram: &[u8]) -> Vec<u32> {
    let packet = (NFNL_SUBSYS_QUEUE << 8) | NFQNL_MSG_PACKET;
    Messages::new(datagram)
        .filter(|m| m.kind == packet)
        .filter_map(|m| {
            // After the 4 bytes of nfgenmsg, the attributes.
            let mut rest = m.payload.get(4..)?;
            while rest.len() >= 4 {
                let length = usize::from(u16::from_ne_bytes([rest[0], rest[1]]));
                let kind = u16::from_ne_bytes([rest[2], rest[3]]) & NLA_TYPE_MASK;
                if length < 4 || length > rest.len() {
                    return None;
                }
                if kind == NFQA_PACKET_HDR {
                    let id = rest.get(4..8)?;
                    return Some(u32::from_be_bytes([id[0], id[1], id[2], id[3]]));
                }
                rest = rest.get(length.next_multiple_of(4)..).unwrap_or_default();
            }
            None
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delays_are_drawn_within_the_jitter_and_cover_it() {
        let mut hold = Hold::new(50, 25, 7);
        let draws: Vec<Duration> = (0..10_000).map(|_| hold.draw()).collect();
        let (low, high) = (Duration::from_millis(25), Duration::from_millis(75));
        assert!(draws.iter().all(|d| *d >= low && *d <= high), "{draws:?}");
        let mean = draws.iter().sum::<Duration>() / draws.len() as u32;
        assert!(
            mean > Duration::from_millis(48) && mean < Duration::from_millis(52),
            "mean {mean:?}"
        );
        assert!(draws.iter().any(|d| *d < Duration::from_millis(30)));
        assert!(draws.iter().any(|d| *d > Duration::from_millis(70)));
    }

    #[test]
    fn held_packets_go_in_the_order_they_are_due() {
        let mut hold = Hold::new(50, 25, 1);
        let start = Instant::now();
        for id in 0..100 {
            hold.push(start, id);
        }
        assert_eq!(hold.pop_due(start), None, "nothing is due at once");
        let mut last = start;
        let mut released = Vec::new();
        while let Some(due) = hold.next_due() {
            assert!(due >= last);
            last = due;
            released.push(hold.pop_due(due).unwrap_or(u32::MAX));
        }
        released.sort_unstable();
        assert_eq!(released, (0..100).collect::<Vec<_>>());
    }

    #[test]
    fn a_packet_message_gives_its_id_and_other_messages_none() {
        // A packet message as the kernel sends it: nfgenmsg, then NFQA_PACKET_HDR (id 0x01020304,
        // hw protocol, hook) and another attribute.
        let hdr = [1u8, 2, 3, 4, 0x08, 0x00, 3];
        let packet = encode(
            NFQNL_MSG_PACKET,
            0,
            0,
            0,
            &[(9, &[0xaa; 5]), (NFQA_PACKET_HDR, &hdr)],
        );
        let config = encode(NFQNL_MSG_CONFIG, 0, 0, 0, &[(NFQA_PACKET_HDR, &hdr)]);
        let mut datagram = packet.clone();
        datagram.extend_from_slice(&config);
        datagram.extend_from_slice(&packet);
        assert_eq!(packet_ids(&datagram), vec![0x0102_0304, 0x0102_0304]);
        // Truncated: no id, no panic.
        assert_eq!(packet_ids(&packet[..packet.len() - 6]), Vec::<u32>::new());
        assert_eq!(packet_ids(&[0xff; 40]), Vec::<u32>::new());
    }

    #[test]
    fn a_verdict_is_one_accept_of_one_id() {
        let mut verdict = NF_ACCEPT.to_be_bytes().to_vec();
        verdict.extend_from_slice(&7u32.to_be_bytes());
        let message = encode(NFQNL_MSG_VERDICT, NLM_F_REQUEST, 0, 0, &[(2, &verdict)]);
        assert_eq!(message.len(), 16 + 4 + 4 + 8);
        assert_eq!(&message[0..4], &32u32.to_ne_bytes());
        assert_eq!(&message[4..6], &0x0301u16.to_ne_bytes());
        assert_eq!(&message[24..32], &[0, 0, 0, 1, 0, 0, 0, 7]);
    }

    /// Round trips of UDP from the harness's namespace to an echo on host `a` (whose answers
    /// are what gets delayed), one at a time.
    fn round_trips(
        socket: &std::net::UdpSocket,
        to: std::net::SocketAddr,
        n: usize,
    ) -> Vec<Duration> {
        let mut rtts = Vec::new();
        let mut buffer = [0u8; 16];
        for i in 0..n as u64 {
            let start = Instant::now();
            let sent = socket.send_to(&i.to_be_bytes(), to);
            assert!(sent.is_ok(), "send to {to}: {sent:?}");
            // A reply to an earlier probe (none expected) is skipped.
            loop {
                match socket.recv_from(&mut buffer) {
                    Ok((8, _)) if buffer[..8] == i.to_be_bytes() => break,
                    Ok(_) => continue,
                    Err(e) => panic!("probe {i} to {to} unanswered: {e} (so far {rtts:?})"),
                }
            }
            rtts.push(start.elapsed());
        }
        rtts.sort();
        rtts
    }

    /// Needs root (namespaces, iptables-legacy): as the chaos runs do.
    #[test]
    fn a_delayed_host_answers_late_until_the_delay_is_healed() {
        use crate::net::{DelayMethod, LinkFault, Network};
        let network = Network::create(std::process::id(), &["a", "b"]);
        let mut network = match network {
            Ok(network) => network,
            Err(e) => panic!("this test needs root and ip netns: {e}"),
        };
        assert!(network.delay_method().is_some(), "no way to delay here");
        let a = network
            .host("a")
            .cloned()
            .unwrap_or_else(|| panic!("host a"));
        let echo_at = std::net::SocketAddr::from((a.ip, 9999));
        let (bound_tx, bound_rx) = mpsc::channel();
        let namespace = a.namespace.clone();
        let echo = std::thread::spawn(move || {
            let socket = enter_namespace(&namespace)
                .map_err(|e| e.to_string())
                .and_then(|()| std::net::UdpSocket::bind(echo_at).map_err(|e| e.to_string()));
            let socket = match socket {
                Ok(socket) => {
                    let _ = bound_tx.send(Ok(()));
                    socket
                }
                Err(e) => return drop(bound_tx.send(Err(e))),
            };
            let _ = socket.set_read_timeout(Some(Duration::from_secs(30)));
            let mut buffer = [0u8; 16];
            while let Ok((n, from)) = socket.recv_from(&mut buffer) {
                if n == 1 {
                    return;
                }
                let _ = socket.send_to(&buffer[..n], from);
            }
        });
        assert_eq!(bound_rx.recv(), Ok(Ok(())), "echo on host a");
        let probe = std::net::UdpSocket::bind((network.control_ip(), 0));
        let probe = probe.unwrap_or_else(|e| panic!("probe socket: {e}"));
        let _ = probe.set_read_timeout(Some(Duration::from_secs(2)));

        let before = round_trips(&probe, echo_at, 20);
        let delay = LinkFault::Delay {
            ms: 50,
            jitter_ms: 25,
        };
        let degraded = network.degrade("a", delay);
        assert!(degraded.is_ok(), "{degraded:?}");
        let during = round_trips(&probe, echo_at, 60);
        let healed = network.heal();
        assert!(healed.is_ok(), "{healed:?}");
        let after = round_trips(&probe, echo_at, 20);
        let _ = probe.send_to(&[0], echo_at);
        let _ = echo.join();

        let median = |rtts: &[Duration]| rtts[rtts.len() / 2];
        let method = network.delay_method();
        let seen = format!("{method:?}: before {before:?}\nduring {during:?}\nafter {after:?}");
        assert!(median(&before) < Duration::from_millis(10), "{seen}");
        // 50 ms ± 25 ms on the answer, plus a loaded machine's scheduling.
        assert!(during[0] >= Duration::from_millis(24), "{seen}");
        assert!(
            during[during.len() - 1] < Duration::from_millis(150),
            "{seen}"
        );
        let mid = median(&during);
        assert!(
            mid > Duration::from_millis(35) && mid < Duration::from_millis(70),
            "{seen}"
        );
        // Spread by the jitter, not one fixed delay.
        assert!(
            during[during.len() * 9 / 10] - during[during.len() / 10] > Duration::from_millis(15),
            "{seen}"
        );
        assert!(median(&after) < Duration::from_millis(10), "{seen}");
        if method == Some(DelayMethod::Nfqueue) {
            assert!(!network.is_faulty(), "{seen}");
        }
    }
}
