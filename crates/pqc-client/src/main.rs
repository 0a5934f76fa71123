//! `pqc-client`: the scriptable command-line client of pqc-chat.

use std::io::{IsTerminal, Read, Write};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand};
use pqc_client::config::ClientConfig;
use pqc_client::profile::{self, Profile};
use pqc_client::{Client, ClientError, ConnectOptions, Event, Result};

mod cli_rooms;

/// pqc-chat client: end-to-end encrypted, post-quantum messaging.
///
/// Messages and files are encrypted on this machine (hybrid X25519 + ML-KEM
/// key agreement, Double Ratchet with a post-quantum ratchet) and the server
/// only relays ciphertext. The profile (keys, sessions, history) is sealed
/// with a key derived from your passphrase ($PQC_PASSPHRASE or a prompt).
/// One command at a time uses a profile: another waits up to 10 s for it
/// (use `chat` to send and receive at once).
#[derive(Parser, Debug)]
#[command(name = "pqc-client", version, about, long_about)]
struct Cli {
    /// Profile folder [default: $PQC_PROFILE, else ~/.local/share/pqc-chat/profile].
    #[arg(long, global = true, value_name = "DIR")]
    profile: Option<PathBuf>,
    /// Server HOST:PORT [default: the one you registered with, else 127.0.0.1:8443].
    #[arg(long, global = true, value_name = "HOST:PORT")]
    server: Option<String>,
    /// Verify the server with this CA certificate (PEM) instead of pinning its certificate on first use.
    #[arg(long, global = true, value_name = "FILE")]
    ca: Option<PathBuf>,
    /// Client config file [default: config/client.toml if present].
    #[arg(long, global = true, value_name = "FILE")]
    config: Option<PathBuf>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Create this profile's identity and register NAME on the server.
    Register {
        /// User name: 1-32 characters of a-z, 0-9, '_', '.', '-'.
        name: String,
    },
    /// Send an end-to-end encrypted text message; exits 0 once the server has stored it.
    Send {
        /// Recipient.
        name: String,
        /// The text; `-` reads it from standard input.
        text: String,
        /// Let the recipient view the message at most N times.
        #[arg(long, value_name = "N")]
        max_views: Option<u32>,
    },
    /// Encrypt and send a file (with a progress bar on a terminal).
    ///
    /// A lost connection is re-established (for up to a minute) and the
    /// upload goes on where the server's copy ends; an upload interrupted
    /// otherwise (Ctrl-C, a crash) resumes when the same unchanged file is
    /// sent to the same recipient again.
    SendFile {
        /// Recipient.
        name: String,
        /// The file.
        path: PathBuf,
    },
    /// Receive messages: prints `NAME: TEXT` per message and saves files.
    Recv {
        /// After the mailbox is drained, keep waiting this many seconds for more.
        #[arg(long, value_name = "SECS")]
        wait: Option<u64>,
        /// Folder to save received files in [default: current folder].
        #[arg(long, value_name = "DIR")]
        out: Option<PathBuf>,
    },
    /// Print the safety number you share with NAME, to compare out of band.
    Verify {
        /// The contact.
        name: String,
    },
    /// Accept NAME's new identity key after comparing safety numbers.
    Trust {
        /// The contact.
        name: String,
    },
    /// Show the conversation with NAME (limited-view messages count a view).
    History {
        /// The contact.
        name: String,
        /// How many lines.
        #[arg(long, default_value_t = 50)]
        limit: usize,
    },
    /// Show this profile's user name, server and identity fingerprint.
    Whoami,
    /// Rooms: end-to-end encrypted group chats (MLS); `rooms --help` lists the commands.
    Rooms {
        #[command(subcommand)]
        command: cli_rooms::RoomsCommand,
    },
    /// Interactive terminal chat: conversations, live messages, files (type ? inside for help).
    Chat {
        /// Folder to save received files in [default: current folder].
        #[arg(long, value_name = "DIR")]
        out: Option<PathBuf>,
    },
}

/// mimalloc, as in every binary of the workspace (the workspace manifest says why).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    let cli = Cli::parse();
    let config_path = cli.config.clone().unwrap_or_else(|| PathBuf::from("config/client.toml"));
    let config = match ClientConfig::load(&config_path, cli.config.is_some()) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(2);
        }
    };
    // Log lines on stderr would tear the chat screen: there, only RUST_LOG turns them on.
    let chat = matches!(cli.command, Command::Chat { .. });
    let filter = std::env::var("RUST_LOG")
        .ok()
        .or(if chat { Some("off".into()) } else { config.log_level.clone() })
        .unwrap_or_else(|| "warn".into());
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::new(filter))
        .with_writer(std::io::stderr)
        // Colour codes only on a terminal, not in redirected logs.
        .with_ansi(std::io::stderr().is_terminal())
        .init();
    let runtime = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(cli, config)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

fn notice(msg: String) {
    eprintln!("{msg}");
}

/// A notice during a transfer (a lost connection, a resumed upload): on a
/// terminal it replaces the progress bar's line, which the next update
/// draws again below it.
pub(crate) fn transfer_notice(msg: String) {
    if std::io::stderr().is_terminal() {
        eprint!("\r\x1b[K");
    }
    eprintln!("{msg}");
}

/// How long a command waits for another `pqc-client` that has the profile
/// open (a `send` while another `send` finishes) before it gives up.
const PROFILE_WAIT: std::time::Duration = std::time::Duration::from_secs(10);

/// Opens the profile, waiting up to [`PROFILE_WAIT`] while another process
/// has it open (saying so once on stderr).
async fn open_profile(dir: &std::path::Path, pass: &str, create: bool) -> Result<Profile> {
    let deadline = std::time::Instant::now() + PROFILE_WAIT;
    let mut told = false;
    loop {
        match Profile::open(dir, pass, create) {
            Err(ClientError::ProfileInUse { holder, .. }) if std::time::Instant::now() < deadline => {
                if !told {
                    notice(format!("waiting for the other pqc-client{holder} using this profile to finish..."));
                    told = true;
                }
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
            }
            other => return other,
        }
    }
}

async fn run(cli: Cli, config: ClientConfig) -> Result<()> {
    let dir = cli.profile.clone().or(config.profile.clone()).unwrap_or_else(profile::default_dir);
    let registering = matches!(cli.command, Command::Register { .. });
    if !registering && !Profile::exists(&dir) {
        return Err(ClientError::NotRegistered);
    }
    let pass = profile::passphrase(registering && !Profile::exists(&dir))?;
    let profile = open_profile(&dir, &pass, registering).await?;
    let server = cli
        .server
        .clone()
        .or(profile.meta("server")?)
        .or(config.server.clone())
        .unwrap_or_else(|| format!("127.0.0.1:{}", pqc_client::engine::DEFAULT_PORT));
    let opts = ConnectOptions { server, ca: cli.ca.clone().or(config.ca.clone()) };
    let mut notice = notice;

    match cli.command {
        Command::Register { name } => {
            let client = Client::register(profile, &opts, &name, &mut notice).await?;
            println!("registered {} on {}", client.username(), opts.server);
            client.close().await;
        }
        Command::Whoami => {
            let name = profile.username()?.ok_or(ClientError::NotRegistered)?;
            let id = profile.identity()?;
            println!("user:     {name}");
            println!("server:   {}", opts.server);
            println!("identity: {}", pqc_client::engine::key_fingerprint(&id.identity_key().to_bytes()));
            println!("profile:  {}", dir.display());
        }
        Command::Send { name, text, max_views } => {
            let text = if text == "-" {
                let mut s = String::new();
                std::io::stdin()
                    .read_to_string(&mut s)
                    .map_err(|e| ClientError::io("cannot read standard input", e))?;
                s.trim_end_matches('\n').to_string()
            } else {
                text
            };
            let mut client = Client::login(profile, &opts, &mut notice).await?;
            let sent = client.send_text(&name, &text, max_views).await;
            client.close_with(sent).await?;
        }
        Command::SendFile { name, path } => {
            let mut client = Client::login(profile, &opts, &mut notice).await?;
            client.set_notices(transfer_notice);
            let tty = std::io::stderr().is_terminal();
            let mut bar = Progress::new(tty);
            let started = std::time::Instant::now();
            let sent = client.send_file(&name, &path, &mut |done, total| bar.update(done, total)).await;
            bar.finish();
            client.close_with(sent).await?;
            print_line(&format!("sent {} to {name}: {}", path.display(), bar.summary(started.elapsed())));
        }
        Command::Recv { wait, out } => {
            let out = out.or(config.download_dir.clone()).unwrap_or_else(|| PathBuf::from("."));
            let mut client = Client::login(profile, &opts, &mut notice).await?;
            client.set_notices(transfer_notice);
            // Room messages and events follow the mailbox, and with --wait they
            // are shown live: `[NAME] SENDER: TEXT`, `[NAME] * SENDER joined`.
            let received = client
                .receive_with_rooms(
                    &out,
                    wait.map(Duration::from_secs),
                    &mut |ev| {
                        let line = match ev {
                            Event::Text { from, text, views: None } => format!("{from}: {text}"),
                            Event::Text { from, text, views: Some((v, n)) } => {
                                format!("{from}: {text} [view {v}/{n}]")
                            }
                            Event::File { from, path, .. } => format!("file from {from}: {}", path.display()),
                            Event::Warning(w) => {
                                eprintln!("warning: {w}");
                                return;
                            }
                        };
                        print_line(&line);
                    },
                    Some(&mut |line| print_line(&line)),
                )
                .await;
            client.close_with(received).await?;
        }
        Command::Rooms { command } => {
            let mut client = Client::login(profile, &opts, &mut notice).await?;
            let result = cli_rooms::run(&mut client, command).await;
            client.close_with(result).await?;
        }
        Command::Verify { name } => {
            let mut client = Client::login(profile, &opts, &mut notice).await?;
            let number = client.safety_number(&name).await;
            let number = client.close_with(number).await?;
            println!("Safety number with {name}:");
            println!("{number}");
            println!("Compare it with {name} in person or on a call; if it differs, someone is intercepting.");
        }
        Command::Trust { name } => {
            let mut client = Client::login(profile, &opts, &mut notice).await?;
            let trusted = client.trust_new_key(&name).await;
            client.close_with(trusted).await?;
            println!("now trusting {name}'s current identity key; verify it with `pqc-client verify {name}`");
        }
        Command::Chat { out } => {
            let out = out.or(config.download_dir.clone()).unwrap_or_else(|| PathBuf::from("."));
            let client = Client::login(profile, &opts, &mut notice).await?;
            pqc_client::tui::run(client, &opts.server, out).await?;
        }
        Command::History { name, limit } => {
            let client = Client::login(profile, &opts, &mut notice).await?;
            let lines = client.history(&name, limit).and_then(|h| Ok((h, client.view_limited(&name)?)));
            let (history, limited) = client.close_with(lines).await?;
            for line in history {
                println!("{line}");
            }
            for (line, v, n) in limited {
                println!("{line} [view {v}/{n}]");
            }
        }
    }
    Ok(())
}

/// A one-line progress bar on standard error (only on a terminal).
struct Progress {
    tty: bool,
    last: u64,
    /// Bytes on the server, as last reported.
    done: u64,
    /// Bytes on the server at the first report (a resumed upload's start).
    start: Option<u64>,
}

impl Progress {
    fn new(tty: bool) -> Self {
        Self { tty, last: u64::MAX, done: 0, start: None }
    }

    fn update(&mut self, done: u64, total: u64) {
        self.done = done;
        self.start.get_or_insert(done);
        if !self.tty || total == 0 {
            return;
        }
        let pct = done.saturating_mul(100) / total;
        if pct == self.last {
            return;
        }
        self.last = pct;
        let filled = (pct / 4) as usize;
        eprint!(
            "\r[{}{}] {pct:>3}% {:.1}/{:.1} MiB",
            "#".repeat(filled),
            " ".repeat(25 - filled.min(25)),
            done as f64 / 1048576.0,
            total as f64 / 1048576.0
        );
    }

    fn finish(&self) {
        if self.tty {
            eprintln!();
        }
    }

    /// "12.5 MiB in 0.31 s (40.3 MiB/s)": what was sent, and how fast; for
    /// a resumed upload, also what the server had already.
    fn summary(&self, took: std::time::Duration) -> String {
        let start = self.start.unwrap_or(0);
        let mib = self.done.saturating_sub(start) as f64 / 1048576.0;
        let secs = took.as_secs_f64();
        let mut line = if secs > 0.0 {
            format!("{mib:.1} MiB in {secs:.2} s ({:.1} MiB/s)", mib / secs)
        } else {
            format!("{mib:.1} MiB")
        };
        if start > 0 {
            line.push_str(&format!("; resumed: {:.1} MiB were on the server already", start as f64 / 1048576.0));
        }
        line
    }
}

/// One line on stdout, flushed (for `recv --wait` behind a pipe).
fn print_line(line: &str) {
    let mut stdout = std::io::stdout().lock();
    let _ = writeln!(stdout, "{line}");
    let _ = stdout.flush();
}
