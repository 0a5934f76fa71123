//! `pqc-client chat`: the interactive terminal UI.
//!
//! Three parts, run concurrently on the caller's tokio runtime (no task is
//! spawned, so nothing needs to be `Send`):
//!
//! - an input thread: blocks on crossterm's `event::read` and feeds key,
//!   paste and resize events into a channel;
//! - the UI loop ([`app::App`] + [`ui::draw`]): turns keys into
//!   [`app::Action`]s for the worker, applies the worker's
//!   [`app::Update`]s, redraws;
//! - the engine worker ([`worker`]): owns the [`Client`], runs actions one
//!   at a time, and on each server push (`NewEnvelope`) fetches, decrypts and
//!   acknowledges the mailbox through [`Client::receive`]. While it uploads a
//!   file, the UI stays responsive and shows the progress.
//!
//! The terminal is restored on every exit path: a drop guard, and a panic
//! hook that restores it before the default hook prints the panic.
//!
//! # Layout
//!
//! - [`app`] — the view state (pure; unit-tested).
//! - [`ui`] — rendering with ratatui.
//! - [`worker`] — the engine side (the only place that calls the engine).

pub mod app;
pub mod ui;
pub mod worker;

#[cfg(test)]
mod tests;

use std::io::{IsTerminal, Stdout, stdout};
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use ratatui::Terminal;
use ratatui::backend::CrosstermBackend;
use ratatui::crossterm::event::{self, DisableBracketedPaste, EnableBracketedPaste, Event as TermEvent};
use ratatui::crossterm::execute;
use ratatui::crossterm::terminal::{EnterAlternateScreen, LeaveAlternateScreen, disable_raw_mode, enable_raw_mode};
use tokio::sync::mpsc::{UnboundedReceiver, UnboundedSender, unbounded_channel};

use crate::engine::Client;
use crate::error::{ClientError, Result};
use app::{Action, App, Update};

/// Runs the interactive chat until the user quits; closes the client at the end.
/// Received files are saved into `out_dir`.
pub async fn run(mut client: Client, server: &str, out_dir: PathBuf) -> Result<()> {
    if !stdout().is_terminal() {
        client.close().await;
        return Err(ClientError::Usage("`pqc-client chat` needs a terminal; use send/recv in scripts".into()));
    }
    let group = format!("{:?}", client.connection().info().group);
    let mut app = App::new(client.username(), server, &group);
    let pushes = client.take_pushes();
    let (act_tx, act_rx) = unbounded_channel();
    let (upd_tx, upd_rx) = unbounded_channel();

    let mut guard = TerminalGuard::enter().map_err(|e| ClientError::io("cannot set up the terminal", e))?;
    let stop = Arc::new(AtomicBool::new(false));
    let keys = spawn_input_thread(stop.clone());

    let worker = worker::run(client, pushes, act_rx, upd_tx, out_dir);
    tokio::pin!(worker);
    let mut client = None;
    let ui_result = {
        let ui = ui_loop(&mut guard.terminal, &mut app, keys, upd_rx, act_tx);
        tokio::pin!(ui);
        tokio::select! {
            r = &mut ui => r,
            c = &mut worker => {
                client = Some(c);
                ui.await
            }
        }
    };
    stop.store(true, Ordering::SeqCst);
    // Give the screen back first; then let the worker finish what it was doing.
    drop(guard);
    let client = match client {
        Some(c) => Some(c),
        None => tokio::time::timeout(Duration::from_secs(10), &mut worker).await.ok(),
    };
    if let Some(c) = client {
        c.close().await;
    }
    ui_result.map_err(|e| ClientError::io("terminal error", e))
}

async fn ui_loop(
    terminal: &mut Terminal<CrosstermBackend<Stdout>>,
    app: &mut App,
    mut keys: UnboundedReceiver<TermEvent>,
    updates: UnboundedReceiver<Update>,
    actions: UnboundedSender<Action>,
) -> std::io::Result<()> {
    let mut updates = Some(updates);
    terminal.draw(|f| ui::draw(f, app))?;
    loop {
        let mut todo = Vec::new();
        tokio::select! {
            ev = keys.recv() => match ev {
                None => break,
                Some(TermEvent::Key(k)) => todo = app.handle_key(k),
                Some(TermEvent::Paste(s)) => app.paste(&s),
                // Resizes are picked up by the next draw.
                Some(_) => {}
            },
            u = recv_update(&mut updates) => match u {
                Some(u) => app.apply(u),
                None => updates = None,
            },
        }
        // Apply whatever else is queued before redrawing.
        while let Some(u) = updates.as_mut().and_then(|rx| rx.try_recv().ok()) {
            app.apply(u);
        }
        todo.extend(app.select(app.selected));
        for a in todo {
            if actions.send(a).is_err() {
                break;
            }
        }
        if app.quit {
            break;
        }
        terminal.draw(|f| ui::draw(f, app))?;
    }
    Ok(())
}

async fn recv_update(rx: &mut Option<UnboundedReceiver<Update>>) -> Option<Update> {
    match rx {
        Some(rx) => rx.recv().await,
        None => std::future::pending().await,
    }
}

/// Reads terminal events on a thread of its own (crossterm's reader blocks).
fn spawn_input_thread(stop: Arc<AtomicBool>) -> UnboundedReceiver<TermEvent> {
    let (tx, rx) = unbounded_channel();
    std::thread::spawn(move || {
        while !stop.load(Ordering::SeqCst) {
            match event::poll(Duration::from_millis(100)) {
                Ok(true) => match event::read() {
                    Ok(ev) => {
                        if tx.send(ev).is_err() {
                            break;
                        }
                    }
                    Err(_) => break,
                },
                Ok(false) => {}
                Err(_) => break,
            }
        }
    });
    rx
}

/// Raw mode + alternate screen for as long as it lives.
struct TerminalGuard {
    terminal: Terminal<CrosstermBackend<Stdout>>,
}

impl TerminalGuard {
    fn enter() -> std::io::Result<Self> {
        install_panic_hook();
        enable_raw_mode()?;
        let setup = execute!(stdout(), EnterAlternateScreen, EnableBracketedPaste)
            .and_then(|()| Terminal::new(CrosstermBackend::new(stdout())));
        match setup {
            Ok(terminal) => Ok(Self { terminal }),
            Err(e) => {
                restore_terminal();
                Err(e)
            }
        }
    }
}

impl Drop for TerminalGuard {
    fn drop(&mut self) {
        restore_terminal();
    }
}

/// Leaves raw mode and the alternate screen and shows the cursor; safe to call twice.
pub fn restore_terminal() {
    let _ = disable_raw_mode();
    let _ = execute!(stdout(), DisableBracketedPaste, LeaveAlternateScreen, ratatui::crossterm::cursor::Show);
}

fn install_panic_hook() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            restore_terminal();
            previous(info);
        }));
    });
}
