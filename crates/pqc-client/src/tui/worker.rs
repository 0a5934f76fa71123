//! The engine side of the terminal UI: owns the [`Client`], runs the UI's
//! [`Action`]s one at a time and reports [`Update`]s; on a server push it
//! fetches, decrypts and acknowledges the mailbox through the engine.
//!
//! Rooms: room commands go to the engine's room methods ([`room`]); on a
//! room push (and at start, and after each room command, whose sync may
//! have picked up lines) the rooms are synced with
//! [`Client::rooms_receive`] and each `[NAME] …` line becomes an
//! [`Update::RoomLine`] for that room's conversation.

use std::path::{Path, PathBuf};

use pqc_wire::Push;
use tokio::sync::mpsc::{UnboundedReceiver, UnboundedSender};

use super::app::{Action, ContactInit, HISTORY_LOAD, LineKind, RoomCommand, Update};
use crate::engine::{Client, Wake};
use crate::error::ClientError;
use crate::rooms::Media;

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
    // A lost connection being re-established, a resumed transfer: shown
    // as information lines.
    let notices = tx.clone();
    client.set_notices(move |text| {
        let _ = notices.send(Update::Info { conv: None, text });
    });
    send(Update::Ready { contacts: contacts(&client, &send), rooms: rooms(&client, &send) });
    fetch(&mut client, &out_dir, &send).await;
    room_fetch(&mut client, &out_dir, &send).await;
    loop {
        tokio::select! {
            () = ack_timer(client.ack_due()) => {
                if let Err(e) = client.flush_acks().await {
                    report(&client, None, "acknowledging failed", &e, &send);
                }
            }
            a = actions.recv() => match a {
                Some(a) => act(&mut client, a, &out_dir, &send).await,
                None => break,
            },
            p = next_push(&mut pushes) => match p {
                Some(first) => {
                    // Messages and room entries come inline and are handled at
                    // once; the pushes already queued are taken with this one,
                    // then one acknowledgement covers them all.
                    let (mut mailbox, mut rooms) = (false, false);
                    let mut next = Some(first);
                    while let Some(p) = next {
                        let on_event = &mut |ev| send(Update::Received(ev));
                        let on_line = &mut |line: String| room_line(line, &send);
                        match client.handle_push(p, &out_dir, on_event, Some(on_line)).await {
                            Ok((_, Wake::Mailbox)) => mailbox = true,
                            Ok((_, Wake::Rooms)) => rooms = true,
                            Ok((_, Wake::Nothing)) => {}
                            Err(e) => report(&client, None, "receiving failed", &e, &send),
                        }
                        next = pushes.as_mut().and_then(|rx| rx.try_recv().ok());
                    }
                    if let Err(e) = client.flush_acks_if_due().await {
                        report(&client, None, "acknowledging failed", &e, &send);
                    }
                    if mailbox {
                        fetch(&mut client, &out_dir, &send).await;
                    }
                    if rooms {
                        room_fetch(&mut client, &out_dir, &send).await;
                    }
                }
                None => {
                    // A transfer may have reconnected already; otherwise
                    // reconnect now and fetch what arrived meanwhile.
                    pushes = client.take_pushes();
                    if pushes.is_none() {
                        let why = client
                            .connection()
                            .close_reason()
                            .map_or_else(|| "the connection closed".into(), |r| r.to_string());
                        // The screen says it (and the status bar shows it), not the notices.
                        send(Update::Disconnected(why));
                        match client.reconnect(None).await {
                            Ok(()) => {
                                pushes = client.take_pushes();
                                send(Update::Reconnected);
                                fetch(&mut client, &out_dir, &send).await;
                                room_fetch(&mut client, &out_dir, &send).await;
                            }
                            Err(e) => send(Update::Error { conv: None, text: format!("{e}; restart pqc-client chat to try again") }),
                        }
                    }
                }
            },
        }
    }
    // Leaving: what was shown is acknowledged now rather than fetched again
    // next time (bounded: a dead connection must not hold up the exit).
    let _ = tokio::time::timeout(std::time::Duration::from_secs(2), client.flush_acks()).await;
    client
}

/// Fires when pending acknowledgements are due; never without any.
async fn ack_timer(due: Option<std::time::Instant>) {
    match due {
        Some(t) => tokio::time::sleep_until(t.into()).await,
        None => std::future::pending().await,
    }
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

fn rooms(client: &Client, send: &dyn Fn(Update)) -> Vec<String> {
    match client.rooms_list() {
        Ok(rooms) => rooms.into_iter().map(|r| r.name).collect(),
        Err(e) => {
            send(Update::Error { conv: None, text: format!("cannot read the rooms: {e}") });
            Vec::new()
        }
    }
}

/// Splits a `[NAME] TEXT` line from [`Client::rooms_receive`] into the room and the text.
pub fn split_room_line(line: &str) -> Option<(&str, &str)> {
    let rest = line.strip_prefix('[')?;
    let (room, text) = rest.split_once("] ")?;
    Some((room, text))
}

/// Syncs every room and sends its new lines to the room conversations.
async fn room_fetch(client: &mut Client, out_dir: &Path, send: &dyn Fn(Update)) {
    let result = client.rooms_receive(out_dir, &mut |line| room_line(line, send)).await;
    if let Err(e) = result {
        report(client, None, "receiving room messages failed", &e, send);
    }
}

/// Sends a `[NAME] TEXT` line to its room's conversation.
fn room_line(line: String, send: &dyn Fn(Update)) {
    match split_room_line(&line) {
        Some((room, text)) => {
            let kind = if text.starts_with("! ") { LineKind::Error } else { LineKind::Incoming };
            send(Update::RoomLine { room: room.to_string(), kind, text: text.to_string() });
        }
        None => send(Update::Info { conv: None, text: line }),
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

async fn act(client: &mut Client, action: Action, out_dir: &Path, send: &dyn Fn(Update)) {
    match action {
        Action::Send { to, text, views } => match client.send_text(&to, &text, views).await {
            Ok(_) => {
                let line = format!("{}: {text}", client.username());
                send(Update::Sent { to, line, views });
            }
            Err(e) => report(client, Some(to), "not sent", &e, send),
        },
        Action::SendFile { to, path } => {
            let (path, name, size) = file_to_send(path);
            let result = client.send_file(&to, &path, &mut progress_to(&name, send)).await;
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
        Action::RoomSendFile { room, path } => {
            let (path, name, size) = file_to_send(path);
            let result = client.room_send_file(&room, &path, &mut progress_to(&name, send)).await;
            send(Update::TransferDone);
            match result {
                Ok(()) => {
                    let text = format!("{} sent file {name} ({size} bytes)", client.username());
                    send(Update::RoomLine { room, kind: LineKind::Outgoing, text });
                }
                Err(e) => room_error(client, &room, "file not sent", &e, send),
            }
            room_fetch(client, out_dir, send).await;
        }
        Action::RoomSend { room, text } => {
            match client.room_send_text(&room, &text).await {
                Ok(()) => {
                    let text = format!("{}: {text}", client.username());
                    send(Update::RoomLine { room, kind: LineKind::Outgoing, text });
                }
                Err(e) => room_error(client, &room, "not sent", &e, send),
            }
            // The sync before sending may have picked up lines from others.
            room_fetch(client, out_dir, send).await;
        }
        Action::Room(cmd) => {
            room(client, cmd, send).await;
            room_fetch(client, out_dir, send).await;
        }
    }
}

/// The file's full path, its name and its size (0 if unreadable: sending reports why).
fn file_to_send(path: PathBuf) -> (PathBuf, String, u64) {
    let path = expand_home(path);
    let name = path.file_name().map(|n| n.to_string_lossy().to_string()).unwrap_or_else(|| "file".into());
    let size = std::fs::metadata(&path).map(|m| m.len()).unwrap_or(0);
    (path, name, size)
}

/// A progress callback that updates the status bar for `name`.
fn progress_to<'a>(name: &'a str, send: &'a dyn Fn(Update)) -> impl FnMut(u64, u64) + 'a {
    move |done, total| send(Update::Progress { name: name.to_string(), done, total })
}

fn room_error(client: &Client, room: &str, what: &str, e: &ClientError, send: &dyn Fn(Update)) {
    send(Update::RoomLine { room: room.to_string(), kind: LineKind::Error, text: format!("{what}: {e}") });
    if let Some(reason) = client.connection().close_reason() {
        send(Update::Disconnected(reason.to_string()));
    }
}

/// Room commands, through the engine's room methods; results are reported
/// as room conversation updates (opened, left, info and error lines).
async fn room(client: &mut Client, cmd: RoomCommand, send: &dyn Fn(Update)) {
    match cmd {
        RoomCommand::Create(name) => match client.room_create(&name, None).await {
            Ok(()) => {
                send(Update::RoomOpened { room: name.clone() });
                let text = format!("created room {name}; others join it with /join {name}");
                send(Update::RoomLine { room: name, kind: LineKind::Info, text });
            }
            Err(e) => report(client, None, &format!("cannot create room {name}"), &e, send),
        },
        RoomCommand::Join(name) => match client.room_join(&name).await {
            Ok(()) => {
                send(Update::RoomOpened { room: name.clone() });
                send(Update::RoomLine {
                    room: name.clone(),
                    kind: LineKind::Info,
                    text: format!("joined room {name}"),
                });
            }
            Err(e) => report(client, None, &format!("cannot join room {name}"), &e, send),
        },
        RoomCommand::Leave(Some(name)) => match client.room_leave(&name).await {
            Ok(()) => {
                send(Update::RoomLeft { room: name.clone() });
                send(Update::Info { conv: None, text: format!("left room {name}") });
            }
            Err(e) => room_error(client, &name, "cannot leave", &e, send),
        },
        RoomCommand::Audio(Some(name), on) => toggle(client, name, Media::Audio, on, send).await,
        RoomCommand::Video(Some(name), on) => toggle(client, name, Media::Video, on, send).await,
        RoomCommand::Invite(Some(name), user) => match client.room_invite(&name, &user).await {
            Ok(()) => {
                let text = format!("added {user} to {name}");
                send(Update::RoomLine { room: name, kind: LineKind::Info, text });
            }
            Err(e) => room_error(client, &name, &format!("cannot add {user}"), &e, send),
        },
        RoomCommand::Leave(None)
        | RoomCommand::Audio(None, _)
        | RoomCommand::Video(None, _)
        | RoomCommand::Invite(None, _) => {
            let text = "select a room first (Tab), or /join ROOM".to_string();
            send(Update::Error { conv: None, text });
        }
    }
}

async fn toggle(client: &mut Client, room: String, media: Media, on: bool, send: &dyn Fn(Update)) {
    let label = if media == Media::Audio { "audio" } else { "video" };
    match client.room_toggle(&room, media, on).await {
        Ok(()) => {
            let text = format!("your {} is {} in {room}", label, if on { "on" } else { "off" });
            send(Update::RoomLine { room, kind: LineKind::Info, text });
        }
        Err(e) => room_error(client, &room, &format!("{} not changed", label), &e, send),
    }
}
