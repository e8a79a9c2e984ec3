//! Prometheus metrics (`--metrics-listen ADDR`): counters kept always (atomics, cheap), served
//! as the Prometheus/OpenMetrics text format at `http://ADDR/metrics` when asked for.
//!
//! | metric | labels | what |
//! |---|---|---|
//! | `smtp_connections_total` | `listener` | connections accepted (loopback, public, tls, submission) |
//! | `smtp_sessions_total` | `listener`, `outcome` (`mail`: a message was accepted, `no_mail`) | sessions ended |
//! | `smtp_tls_sessions_total` | `listener` | sessions encrypted (implicit TLS or STARTTLS) |
//! | `smtp_auth_total` | `result` (`ok`, `failed`, `temporary`) | AUTH attempts decided |
//! | `smtp_recipients_refused_total` | `class` (`4xx`, `5xx`) | RCPT refused by policy |
//! | `smtp_messages_total` | `listener`, `class` (`2xx`, `4xx`, `5xx`) | the reply to each message |
//! | `smtp_received_bytes_total` | | message octets received |
//! | `smtp_deliveries_total` | `destination` (`local`, `lmtp`, `mx`, `smarthost`), `outcome` (`delivered`, `deferred`, `bounced`) | per recipient (local: per mailbox) |
//! | `smtp_outbound_tls_total` | `destination` (`mx`, `smarthost`), `tls` (`yes`, `no`) | transactions relayed to other hosts, by encryption (LMTP not counted) |
//! | `smtp_queue_entries` | | entries in the queue now (held ones included) |
//! | `smtp_queue_oldest_seconds` | | age of the oldest entry |
//!
//! Every series a listener or destination of this configuration can have exists from the
//! start at zero (as Prometheus' `rate()` wants), not only after its first event.
//!
//! The queue gauges are read from the queue directory at each scrape (the queue is the
//! truth, shared by other nodes and the queue tool). The endpoint is plain HTTP meant for a
//! loopback address (a warning is logged for any other): `GET /metrics` answers, anything else
//! is a 404; one request per connection, bounded in size and time.

use std::net::SocketAddr;
use std::sync::OnceLock;
use std::time::{Duration, SystemTime};

use mailstore::queue::Queue;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tracing::{debug, info, warn};

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ListenerLabel {
    listener: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ResultLabel {
    result: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ClassLabel {
    class: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct MessageLabel {
    listener: &'static str,
    class: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct DeliveryLabel {
    destination: &'static str,
    outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct TlsLabel {
    destination: &'static str,
    tls: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct SessionLabel {
    listener: &'static str,
    outcome: &'static str,
}

/// The daemon's metrics.
pub struct Metrics {
    registry: Registry,
    connections: Family<ListenerLabel, Counter>,
    sessions: Family<SessionLabel, Counter>,
    tls_sessions: Family<ListenerLabel, Counter>,
    auth: Family<ResultLabel, Counter>,
    rcpt_refused: Family<ClassLabel, Counter>,
    messages: Family<MessageLabel, Counter>,
    bytes: Counter,
    deliveries: Family<DeliveryLabel, Counter>,
    outbound_tls: Family<TlsLabel, Counter>,
    queue_entries: Gauge,
    queue_oldest: Gauge,
}

static METRICS: OnceLock<Metrics> = OnceLock::new();

/// The process's metrics.
pub fn m() -> &'static Metrics {
    METRICS.get_or_init(Metrics::new)
}

/// `2xx`, `4xx` or `5xx` for a reply code.
pub fn class(code: u16) -> &'static str {
    match code / 100 {
        2 => "2xx",
        4 => "4xx",
        _ => "5xx",
    }
}

impl Metrics {
    fn new() -> Metrics {
        let mut registry = Registry::default();
        let m = Metrics {
            connections: Family::default(),
            sessions: Family::default(),
            tls_sessions: Family::default(),
            auth: Family::default(),
            rcpt_refused: Family::default(),
            messages: Family::default(),
            bytes: Counter::default(),
            deliveries: Family::default(),
            outbound_tls: Family::default(),
            queue_entries: Gauge::default(),
            queue_oldest: Gauge::default(),
            registry: Registry::default(),
        };
        registry.register(
            "smtp_connections",
            "Connections accepted, by listener",
            m.connections.clone(),
        );
        registry.register(
            "smtp_sessions",
            "Sessions ended, by listener and outcome (mail: a message was accepted, no_mail)",
            m.sessions.clone(),
        );
        registry.register(
            "smtp_tls_sessions",
            "Sessions encrypted (implicit TLS or STARTTLS), by listener",
            m.tls_sessions.clone(),
        );
        registry.register(
            "smtp_auth",
            "AUTH attempts decided, by result",
            m.auth.clone(),
        );
        registry.register(
            "smtp_recipients_refused",
            "Recipients refused by policy, by reply class",
            m.rcpt_refused.clone(),
        );
        registry.register(
            "smtp_messages",
            "Messages answered, by listener and reply class",
            m.messages.clone(),
        );
        registry.register(
            "smtp_received_bytes",
            "Message octets received",
            m.bytes.clone(),
        );
        registry.register(
            "smtp_deliveries",
            "Deliveries per recipient (local: per mailbox), by destination and outcome",
            m.deliveries.clone(),
        );
        registry.register(
            "smtp_outbound_tls",
            "Transactions relayed to other hosts, by destination and whether they were encrypted",
            m.outbound_tls.clone(),
        );
        registry.register(
            "smtp_queue_entries",
            "Entries in the outbound queue",
            m.queue_entries.clone(),
        );
        registry.register(
            "smtp_queue_oldest_seconds",
            "Age of the oldest queue entry in seconds",
            m.queue_oldest.clone(),
        );
        Metrics { registry, ..m }
    }

    /// Creates, at zero, the series of `listeners` (connections, sessions, messages by class,
    /// TLS sessions) and of `destinations` (deliveries by outcome; outbound TLS for the
    /// relayed ones), so that each exists before its first event.
    pub fn zero(
        &self,
        listeners: impl IntoIterator<Item = &'static str>,
        destinations: impl IntoIterator<Item = &'static str>,
    ) {
        // get_or_create makes the series; its guard is dropped at once.
        for listener in listeners {
            drop(self.connections.get_or_create(&ListenerLabel { listener }));
            drop(self.tls_sessions.get_or_create(&ListenerLabel { listener }));
            for outcome in ["mail", "no_mail"] {
                drop(
                    self.sessions
                        .get_or_create(&SessionLabel { listener, outcome }),
                );
            }
            for class in ["2xx", "4xx", "5xx"] {
                drop(
                    self.messages
                        .get_or_create(&MessageLabel { listener, class }),
                );
            }
        }
        for destination in destinations {
            for outcome in ["delivered", "deferred", "bounced"] {
                let label = DeliveryLabel {
                    destination,
                    outcome,
                };
                drop(self.deliveries.get_or_create(&label));
            }
            if destination == "mx" || destination == "smarthost" {
                for tls in ["yes", "no"] {
                    drop(
                        self.outbound_tls
                            .get_or_create(&TlsLabel { destination, tls }),
                    );
                }
            }
        }
        for class in ["4xx", "5xx"] {
            drop(self.rcpt_refused.get_or_create(&ClassLabel { class }));
        }
    }

    /// A connection on `listener`.
    pub fn connection(&self, listener: &'static str) {
        self.connections
            .get_or_create(&ListenerLabel { listener })
            .inc();
    }

    /// A session on `listener` ended: `mail` (a message was accepted) or `no_mail`.
    pub fn session(&self, listener: &'static str, outcome: &'static str) {
        self.sessions
            .get_or_create(&SessionLabel { listener, outcome })
            .inc();
    }

    /// A session on `listener` is encrypted.
    pub fn tls_session(&self, listener: &'static str) {
        self.tls_sessions
            .get_or_create(&ListenerLabel { listener })
            .inc();
    }

    /// An AUTH decision: `ok`, `failed` or `temporary`.
    pub fn auth(&self, result: &'static str) {
        self.auth.get_or_create(&ResultLabel { result }).inc();
    }

    /// A recipient refused with `code`.
    pub fn rcpt_refused(&self, code: u16) {
        self.rcpt_refused
            .get_or_create(&ClassLabel { class: class(code) })
            .inc();
    }

    /// A message on `listener` answered with `code`.
    pub fn message(&self, listener: &'static str, code: u16) {
        self.messages
            .get_or_create(&MessageLabel {
                listener,
                class: class(code),
            })
            .inc();
    }

    /// `n` octets of message content received.
    pub fn received(&self, n: usize) {
        self.bytes.inc_by(n as u64);
    }

    /// `n` deliveries to `destination` (`local`, `mx`, `smarthost`) with `outcome`.
    pub fn deliveries(&self, destination: &'static str, outcome: &'static str, n: usize) {
        self.deliveries
            .get_or_create(&DeliveryLabel {
                destination,
                outcome,
            })
            .inc_by(n as u64);
    }

    /// A transaction relayed to `destination` (`mx`, `smarthost`), encrypted or not.
    pub fn outbound(&self, destination: &'static str, tls: bool) {
        self.outbound_tls
            .get_or_create(&TlsLabel {
                destination,
                tls: if tls { "yes" } else { "no" },
            })
            .inc();
    }

    /// The text exposition, with the queue gauges read now.
    fn render(&self, queue: &Queue) -> String {
        match queue.list() {
            Ok(entries) => {
                let now = SystemTime::now();
                let oldest = entries
                    .iter()
                    .filter_map(|(_, e)| now.duration_since(e.created).ok())
                    .max()
                    .unwrap_or(Duration::ZERO);
                self.queue_entries
                    .set(i64::try_from(entries.len()).unwrap_or(i64::MAX));
                self.queue_oldest
                    .set(i64::try_from(oldest.as_secs()).unwrap_or(i64::MAX));
            }
            Err(e) => debug!(error = %e, "metrics: cannot list the queue"),
        }
        let mut out = String::new();
        if prometheus_client::encoding::text::encode(&mut out, &self.registry).is_err() {
            out.clear();
        }
        out
    }
}

/// Serves `GET /metrics` on `addr` until the process ends.
pub async fn serve(addr: SocketAddr, queue: Queue) -> std::io::Result<()> {
    let listener = tokio::net::TcpListener::bind(addr).await?;
    if !addr.ip().is_loopback() {
        warn!(%addr, "--metrics-listen is not a loopback address: anyone who reaches it can read the metrics");
    }
    info!(%addr, "metrics at http://{addr}/metrics");
    let queue = std::sync::Arc::new(queue);
    tokio::spawn(async move {
        loop {
            let Ok((mut s, _)) = listener.accept().await else {
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            };
            let queue = queue.clone();
            tokio::spawn(async move {
                let mut buf = vec![0u8; 8192];
                let mut used = 0;
                let head = tokio::time::timeout(Duration::from_secs(5), async {
                    while used < buf.len() {
                        let n = s.read(&mut buf[used..]).await.ok()?;
                        if n == 0 {
                            return None;
                        }
                        used += n;
                        if buf[..used].windows(4).any(|w| w == b"\r\n\r\n") {
                            return Some(());
                        }
                    }
                    None
                })
                .await;
                if !matches!(head, Ok(Some(()))) {
                    return;
                }
                let ok = buf.starts_with(b"GET /metrics ") || buf.starts_with(b"GET /metrics?");
                let response = if ok {
                    let body = tokio::task::spawn_blocking(move || m().render(&queue))
                        .await
                        .unwrap_or_default();
                    format!(
                        "HTTP/1.1 200 OK\r\nContent-Type: application/openmetrics-text; version=1.0.0; charset=utf-8\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                        body.len()
                    )
                } else {
                    "HTTP/1.1 404 Not Found\r\nContent-Length: 10\r\nConnection: close\r\n\r\nnot found\n".to_owned()
                };
                let _ =
                    tokio::time::timeout(Duration::from_secs(5), s.write_all(response.as_bytes()))
                        .await;
                let _ = s.shutdown().await;
            });
        }
    });
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classes() {
        assert_eq!((class(250), class(451), class(554)), ("2xx", "4xx", "5xx"));
    }
}
