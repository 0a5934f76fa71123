//! The engine side of the terminal UI: owns the [`Client`], runs the UI's
//! [`Action`]s one at a time and reports [`Update`]s; on a server push it
//! fetches, decrypts and acknowledges the mailbox through the engine.
//!
//! Rooms: the engine has no room methods yet, so [`room`] answers every
//! room command with "rooms are not available in this build yet". That
//! function is the one place to hook them in.

use std::path::{Path, PathBuf};

use pqc_wire::Push;
use tokio::sync::mpsc::{UnboundedReceiver, UnboundedSender};

use super::app::{Action, ContactInit, HISTORY_LOAD, RoomCommand, Update};
use crate::engine::Client;
use crate::error::ClientError;

/// Profile namespace of the "verified" marks: sealed, keyed by contact, the
/// value is the identity key that was verified (a new key is unverified).
pub const NS_VERIFIED: &str = "verified";

/// Whether `peer` was verified for the identity key pinned now.
pub fn is_verified(client: &Client, peer: &str) -> bool {
    let profile = client.profile();
    match (profile.get_sealed(NS_VERIFIED, peer), profile.contact_key(peer)) {
        (Ok(Some(marked)), Ok(Some(pinned))) => pqc_crypto::kdf::ct_eq(&marked, &pinned),
        _ => false,
    }
}

/// Runs until `actions` closes; returns the client for a clean close.
pub async fn run(
    mut client: Client,
    mut pushes: Option<UnboundedReceiver<Push>>,
    mut actions: UnboundedReceiver<Action>,
    tx: UnboundedSender<Update>,
    out_dir: PathBuf,
) -> Client {
    let send = |u: Update| {
        let _ = tx.send(u);
    };
    send(Update::Ready { contacts: contacts(&client, &send) });
    fetch(&mut client, &out_dir, &send).await;
    loop {
        tokio::select! {
            a = actions.recv() => match a {
                Some(a) => act(&mut client, a, &send).await,
                None => break,
            },
            p = next_push(&mut pushes) => match p {
                Some(Push::NewEnvelope { .. }) => {
                    // One fetch drains the mailbox: drop the pushes already queued.
                    while let Some(rx) = pushes.as_mut() {
                        match rx.try_recv() {
                            Ok(Push::LowPrekeys { remaining, remaining_kem }) => {
                                top_up(&mut client, remaining, remaining_kem, &send).await;
                            }
                            Ok(_) => {}
                            Err(_) => break,
                        }
                    }
                    fetch(&mut client, &out_dir, &send).await;
                }
                Some(Push::LowPrekeys { remaining, remaining_kem }) => {
                    top_up(&mut client, remaining, remaining_kem, &send).await;
                }
                Some(_) => {}
                None => {
                    pushes = None;
                    let why = client
                        .connection()
                        .close_reason()
                        .map(|r| r.to_string())
                        .unwrap_or_else(|| "the connection closed".into());
                    send(Update::Disconnected(why));
                }
            },
        }
    }
    client
}

async fn next_push(rx: &mut Option<UnboundedReceiver<Push>>) -> Option<Push> {
    match rx {
        Some(rx) => rx.recv().await,
        None => std::future::pending().await,
    }
}

fn contacts(client: &Client, send: &dyn Fn(Update)) -> Vec<ContactInit> {
    let names = match client.profile().contacts() {
        Ok(n) => n,
        Err(e) => {
            send(Update::Error { conv: None, text: format!("cannot read the contacts: {e}") });
            return Vec::new();
        }
    };
    names
        .into_iter()
        .map(|name| {
            let history = client.history(&name, HISTORY_LOAD).unwrap_or_else(|e| {
                send(Update::Error { conv: Some(name.clone()), text: format!("cannot read the history: {e}") });
                Vec::new()
            });
            ContactInit { verified: is_verified(client, &name), history, name }
        })
        .collect()
}

async fn top_up(client: &mut Client, remaining: u32, remaining_kem: u32, send: &dyn Fn(Update)) {
    if let Err(e) = client.ensure_prekeys(Some((remaining, remaining_kem))).await {
        send(Update::Error { conv: None, text: format!("could not upload new prekeys: {e}") });
    }
}

/// Fetches, decrypts and acknowledges everything waiting in the mailbox.
async fn fetch(client: &mut Client, out_dir: &Path, send: &dyn Fn(Update)) {
    let result = client.receive(out_dir, None, &mut |ev| send(Update::Received(ev))).await;
    if let Err(e) = result {
        report(client, None, "receiving failed", &e, send);
    }
}

fn report(client: &Client, conv: Option<String>, what: &str, e: &ClientError, send: &dyn Fn(Update)) {
    send(Update::Error { conv, text: format!("{what}: {e}") });
    if let Some(reason) = client.connection().close_reason() {
        send(Update::Disconnected(reason.to_string()));
    }
}

fn expand_home(path: PathBuf) -> PathBuf {
    match (path.strip_prefix("~"), std::env::var_os("HOME")) {
        (Ok(rest), Some(home)) => PathBuf::from(home).join(rest),
        _ => path,
    }
}

async fn act(client: &mut Client, action: Action, send: &dyn Fn(Update)) {
    match action {
        Action::Send { to, text, views } => match client.send_text(&to, &text, views).await {
            Ok(_) => {
                let line = format!("{}: {text}", client.username());
                send(Update::Sent { to, line, views });
            }
            Err(e) => report(client, Some(to), "not sent", &e, send),
        },
        Action::SendFile { to, path } => {
            let path = expand_home(path);
            let name = path.file_name().map(|n| n.to_string_lossy().to_string()).unwrap_or_else(|| "file".into());
            let size = std::fs::metadata(&path).map(|m| m.len()).unwrap_or(0);
            let progress_name = name.clone();
            let result = client
                .send_file(&to, &path, &mut |done, total| {
                    send(Update::Progress { name: progress_name.clone(), done, total });
                })
                .await;
            send(Update::TransferDone);
            match result {
                Ok(_) => {
                    let line = format!("{} sent file {name} ({size} bytes)", client.username());
                    send(Update::Sent { to, line, views: None });
                }
                Err(e) => report(client, Some(to), "file not sent", &e, send),
            }
        }
        Action::Verify { peer } => match client.safety_number(&peer).await {
            Ok(number) => {
                let groups: Vec<&str> = number.split(' ').collect();
                let (a, b) = groups.split_at(groups.len() / 2);
                let conv = Some(peer.clone());
                send(Update::Info { conv: conv.clone(), text: format!("Safety number with {peer}:") });
                send(Update::Info { conv: conv.clone(), text: format!("  {}", a.join(" ")) });
                send(Update::Info { conv: conv.clone(), text: format!("  {}", b.join(" ")) });
                send(Update::Info {
                    conv,
                    text: format!(
                        "Compare it with {peer} in person or on a call. If it matches, type /verified; if not, someone is intercepting."
                    ),
                });
            }
            Err(e) => report(client, Some(peer), "cannot compute the safety number", &e, send),
        },
        Action::MarkVerified { peer } => {
            let result = match client.peer_identity(&peer).await {
                Ok(key) => client.profile().put_sealed(NS_VERIFIED, &peer, &key),
                Err(e) => Err(e),
            };
            match result {
                Ok(()) => {
                    send(Update::Verified { peer: peer.clone(), verified: true });
                    send(Update::Info { conv: Some(peer.clone()), text: format!("{peer} is now marked verified.") });
                }
                Err(e) => report(client, Some(peer), "cannot mark verified", &e, send),
            }
        }
        Action::ViewLimited { peer } => match client.view_limited(&peer) {
            Ok(limited) if !limited.is_empty() => send(Update::Limited { peer, limited }),
            Ok(_) => {}
            Err(e) => report(client, Some(peer), "cannot read limited-view messages", &e, send),
        },
        Action::Room(cmd) => room(client, cmd, send).await,
    }
}

/// Room commands. HOOK for rooms: once the engine has room methods (create,
/// join, leave, send to a room, media on/off), call them here and report
/// with `Update::Info`/`Update::Error`; room messages arriving from the
/// server should then be sent as updates for `ConvKind::Room` conversations.
async fn room(_client: &mut Client, cmd: RoomCommand, send: &dyn Fn(Update)) {
    let what = match cmd {
        RoomCommand::Join(_) => "/join",
        RoomCommand::Leave(_) => "/leave",
        RoomCommand::Create(_) => "/create",
        RoomCommand::Audio(_) => "/audio",
        RoomCommand::Video(_) => "/video",
    };
    send(Update::Error { conv: None, text: format!("{what}: rooms are not available in this build yet") });
}
