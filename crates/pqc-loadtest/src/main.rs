//! `pqc-loadtest`: simulated E2E clients against one pqc-server on loopback.

use std::net::SocketAddr;
use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;
use pqc_loadtest::{LoadError, chat, idle, room};

/// Load test for pqc-server: N simulated clients (each its own QUIC
/// connection and hybrid identity) do a real E2E handshake in pairs, then
/// send M messages to their partner while receiving. Bounded in count and
/// time; stops by itself.
#[derive(Debug, Parser)]
#[command(version, about)]
struct Args {
    /// Server QUIC address (loopback only).
    #[arg(long)]
    server: SocketAddr,
    /// Simulated clients (even: they talk in pairs).
    #[arg(long, default_value_t = 100)]
    clients: usize,
    /// Messages each client sends to its partner.
    #[arg(long, default_value_t = 100)]
    messages: usize,
    /// Plaintext bytes per message.
    #[arg(long, default_value_t = 256)]
    payload: usize,
    /// Unacknowledged sends allowed per client.
    #[arg(long, default_value_t = 1)]
    window: usize,
    /// Relay only: after the handshakes, send the payloads without
    /// end-to-end encryption (the relay sees opaque bytes either way), so
    /// the load generator's own crypto does not compete with the server for
    /// the CPU. Measures the relay as the MQTT benchmark measures mosquitto.
    #[arg(long)]
    opaque: bool,
    /// Registrations in flight during setup.
    #[arg(long, default_value_t = 32)]
    setup_concurrency: usize,
    /// Hard stop after this many seconds (everything included).
    #[arg(long, default_value_t = 120)]
    duration_limit: u64,
    /// Idle mode: open N idle logged-in connections and report the server's RSS.
    #[arg(long)]
    idle: Option<usize>,
    /// Idle mode: seconds to hold the connections before measuring.
    #[arg(long, default_value_t = 5)]
    idle_hold: u64,
    /// Server process id (idle mode reads its VmRSS, chat and room modes its CPU time, from /proc).
    #[arg(long)]
    server_pid: Option<u32>,
    /// Room mode: N members join one room, then --senders of them send
    /// --messages each to everyone (--payload is the MLS ciphertext size).
    #[arg(long)]
    room: Option<usize>,
    /// Room mode: members that send.
    #[arg(long, default_value_t = 1)]
    senders: usize,
    /// Room mode: each sender pauses this long before each message (a room
    /// where messages are sparse; 0: back to back).
    #[arg(long, default_value_t = 0)]
    pause_ms: u64,
    /// Room mode: bytes of each external commit [default: OpenMLS X-Wing, 100 members,
    /// as `cargo bench -p pqc-rooms --bench rooms` prints].
    #[arg(long, default_value_t = 49_626)]
    commit_bytes: usize,
    /// Room mode: bytes of the sealed GroupInfo stored per epoch [default: X-Wing, 100 members].
    #[arg(long, default_value_t = 146_345)]
    group_info_bytes: usize,
}

/// mimalloc, as in every binary of the workspace (the workspace manifest says why).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    let args = Args::parse();
    if !args.server.ip().is_loopback() {
        eprintln!("pqc-loadtest: --server must be a loopback address");
        return ExitCode::FAILURE;
    }
    let rt = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("pqc-loadtest: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = rt.block_on(real_main(args));
    // Do not wait for lingering connection tasks.
    rt.shutdown_timeout(Duration::from_secs(1));
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("pqc-loadtest: {e}");
            ExitCode::FAILURE
        }
    }
}

async fn real_main(args: Args) -> Result<ExitCode, LoadError> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(args.duration_limit);
    if let Some(n) = args.idle {
        let r = idle::run(
            args.server,
            n,
            args.setup_concurrency,
            Duration::from_secs(args.idle_hold),
            args.server_pid,
            deadline,
        )
        .await?;
        let kib = |v: Option<u64>| v.map_or("-".into(), |v| v.to_string());
        println!("idle connections: {} logged in (setup {:.1} s)", r.connections, r.setup.as_secs_f64());
        println!("server RSS: before {} KiB, with connections {} KiB", kib(r.rss_before_kib), kib(r.rss_after_kib));
        let per = r.per_connection_kib().map_or("-".into(), |v| format!("{v:.1}"));
        println!("per connection: {per} KiB");
        println!(
            "RESULT mode=idle connections={} rss_before_kib={} rss_after_kib={} per_conn_kib={per}",
            r.connections,
            kib(r.rss_before_kib),
            kib(r.rss_after_kib)
        );
        return Ok(if r.connections == n { ExitCode::SUCCESS } else { ExitCode::FAILURE });
    }
    if let Some(members) = args.room {
        return room_main(&args, members, deadline).await;
    }
    let cfg = chat::ChatConfig {
        server: args.server,
        clients: args.clients,
        messages: args.messages,
        payload: args.payload,
        window: args.window,
        setup_concurrency: args.setup_concurrency,
        server_pid: args.server_pid,
        opaque: args.opaque,
    };
    let mut r = chat::run(&cfg, deadline).await?;
    let cpu_us = r.cpu_per_message_us().map_or("-".into(), |v| format!("{v:.1}"));
    let gen_us = r.generator_cpu_per_message_us().map_or("-".into(), |v| format!("{v:.1}"));
    let expected = (cfg.clients * cfg.messages) as u64;
    println!(
        "clients {} (pairs {}), {} messages each, payload {} B, window {}{}",
        cfg.clients,
        cfg.clients / 2,
        cfg.messages,
        cfg.payload,
        cfg.window,
        if cfg.opaque { ", opaque payloads (no E2E encryption in the load generator)" } else { "" }
    );
    println!("setup (connect + register + prekeys): {:.2} s", r.setup.as_secs_f64());
    println!("E2E handshake per pair: {}", r.handshakes.summary_ms());
    println!(
        "messages: {} acked, {} delivered of {expected} in {:.2} s{}",
        r.acked,
        r.delivered,
        r.elapsed.as_secs_f64(),
        if r.timed_out { " (TIME LIMIT REACHED)" } else { "" }
    );
    println!("throughput: {:.0} messages relayed/s", r.throughput());
    println!("delivery latency (send → decrypted): {}", r.latency.summary_ms());
    println!("server CPU per message: {cpu_us} us");
    println!("load generator CPU per message (its QUIC clients, both ends): {gen_us} us");
    let total_errors = print_errors(&r.errors);
    println!(
        "RESULT mode={} clients={} messages={} delivered={} msgs_per_s={:.0} p50_ms={} p99_ms={} max_ms={} cpu_per_msg_us={cpu_us} gen_cpu_per_msg_us={gen_us} errors={total_errors}",
        if cfg.opaque { "relay" } else { "chat" },
        cfg.clients,
        cfg.messages,
        r.delivered,
        r.throughput(),
        r.latency.quantile_ms(0.5),
        r.latency.quantile_ms(0.99),
        r.latency.quantile_ms(1.0),
    );
    Ok(if r.delivered == expected && !r.timed_out { ExitCode::SUCCESS } else { ExitCode::FAILURE })
}

async fn room_main(args: &Args, members: usize, deadline: tokio::time::Instant) -> Result<ExitCode, LoadError> {
    let cfg = room::RoomConfig {
        server: args.server,
        members,
        senders: args.senders,
        pause: Duration::from_millis(args.pause_ms),
        messages: args.messages,
        payload: args.payload,
        commit_bytes: args.commit_bytes,
        group_info_bytes: args.group_info_bytes,
        setup_concurrency: args.setup_concurrency,
        server_pid: args.server_pid,
    };
    let mut r = room::run(&cfg, deadline).await?;
    let us = |v: Option<f64>| v.map_or("-".into(), |v| format!("{v:.1}"));
    println!(
        "room of {} members; {} senders x {} messages of {} B; commits {} B, GroupInfo {} B",
        cfg.members, cfg.senders, cfg.messages, cfg.payload, cfg.commit_bytes, cfg.group_info_bytes
    );
    println!("setup (connect + register): {:.2} s", r.setup.as_secs_f64());
    println!(
        "joins: {}, relay latency (join sent -> every member has applied the commit): {}; last join {:.2} ms",
        r.joins,
        r.join_latency.summary_ms(),
        r.last_join.as_secs_f64() * 1e3
    );
    println!("server CPU per join: {} us (average over room sizes 1..{})", us(r.cpu_per_join_us()), cfg.members - 1);
    println!(
        "messages: {} sent, {} of {} deliveries in {:.2} s{}",
        r.sent,
        r.deliveries,
        r.expected_deliveries,
        r.elapsed.as_secs_f64(),
        if r.timed_out { " (TIME LIMIT REACHED)" } else { "" }
    );
    println!("throughput: {:.0} messages/s to {} members", r.messages_per_s(), cfg.members - 1);
    println!("delivery latency (send -> fetched): {}", r.latency.summary_ms());
    println!("server CPU per message (to all members): {} us", us(r.cpu_per_message_us()));
    let total_errors = print_errors(&r.errors);
    println!(
        "RESULT mode=room members={} sent={} deliveries={} msgs_per_s={:.0} p50_ms={} p99_ms={} cpu_per_msg_us={} cpu_per_join_us={} last_join_ms={:.3} errors={total_errors}",
        cfg.members,
        r.sent,
        r.deliveries,
        r.messages_per_s(),
        r.latency.quantile_ms(0.5),
        r.latency.quantile_ms(0.99),
        us(r.cpu_per_message_us()),
        us(r.cpu_per_join_us()),
        r.last_join.as_secs_f64() * 1e3,
    );
    Ok(if r.deliveries == r.expected_deliveries && !r.timed_out { ExitCode::SUCCESS } else { ExitCode::FAILURE })
}

/// Prints the failures by kind; returns their total.
fn print_errors(errors: &std::collections::BTreeMap<String, u64>) -> u64 {
    let total: u64 = errors.values().sum();
    println!("errors: {total}");
    for (k, v) in errors {
        println!("  {k}: {v}");
    }
    total
}
