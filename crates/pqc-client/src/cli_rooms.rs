//! `pqc-client rooms …`: the room subcommands (a thin layer over
//! [`pqc_client::rooms`]).

use clap::{Subcommand, ValueEnum};
use pqc_client::rooms::Media;
use pqc_client::{Client, Result};

/// On or off.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum OnOff {
    /// Turned on.
    On,
    /// Turned off.
    Off,
}

/// Room commands. A room's name works like an invitation link: whoever
/// knows it can join (up to the participant limit); use an unguessable name
/// for a private room.
#[derive(Subcommand, Debug)]
pub enum RoomsCommand {
    /// List the rooms this profile belongs to (name, members, epoch, audio/video).
    List,
    /// Create a room (end-to-end encrypted MLS group) and become its first member.
    Create {
        /// Room name (also the invitation: share it with those who may join).
        name: String,
        /// Participant limit [default: the server's].
        #[arg(long, value_name = "N")]
        max: Option<u32>,
    },
    /// Join a room by its name (works while every member is offline).
    Join {
        /// Room name.
        name: String,
    },
    /// Add USER to a room yourself (MLS commit + Welcome): works while USER
    /// is offline, without telling them the room name; they see
    /// `[NAME] * YOU added you` on their next `recv`. USER's key must be the
    /// one you verified (`pqc-client verify USER`).
    Invite {
        /// Room name.
        name: String,
        /// Who to add.
        user: String,
    },
    /// Leave a room; messages sent after that are unreadable to you.
    Leave {
        /// Room name.
        name: String,
    },
    /// Show a room's members (from the end-to-end group state).
    Members {
        /// Room name.
        name: String,
    },
    /// Send a text message to a room.
    Send {
        /// Room name.
        name: String,
        /// The text.
        text: String,
    },
    /// Encrypt a file once and send it to the room (with a progress bar on a
    /// terminal); the members at this moment can download it with `recv`.
    /// Interrupted uploads resume as `send-file`'s do.
    SendFile {
        /// Room name.
        name: String,
        /// The file.
        path: std::path::PathBuf,
    },
    /// Tell the room your microphone is on or off.
    Audio {
        /// Room name.
        name: String,
        /// on | off
        state: OnOff,
    },
    /// Tell the room your camera is on or off.
    Video {
        /// Room name.
        name: String,
        /// on | off
        state: OnOff,
    },
}

fn names(v: &[String]) -> String {
    if v.is_empty() { "-".into() } else { v.join(", ") }
}

/// Runs one room command with a logged-in client.
pub async fn run(client: &mut Client, cmd: RoomsCommand) -> Result<()> {
    match cmd {
        RoomsCommand::List => {
            for r in client.rooms_list()? {
                let state = if r.active { "" } else { " (removed)" };
                println!(
                    "{}{state}: {} member(s): {}; epoch {}; audio on: {}; video on: {}",
                    r.name,
                    r.members.len(),
                    names(&r.members),
                    r.epoch,
                    names(&r.audio),
                    names(&r.video)
                );
            }
        }
        RoomsCommand::Create { name, max } => {
            client.room_create(&name, max).await?;
            println!("created room {name}");
        }
        RoomsCommand::Join { name } => {
            client.room_join(&name).await?;
            println!("joined room {name}");
        }
        RoomsCommand::Invite { name, user } => {
            client.room_invite(&name, &user).await?;
            println!("added {user} to room {name}");
        }
        RoomsCommand::Leave { name } => {
            client.room_leave(&name).await?;
            println!("left room {name}");
        }
        RoomsCommand::Members { name } => {
            for m in client.room_members(&name).await? {
                println!("{m}");
            }
        }
        RoomsCommand::Send { name, text } => client.room_send_text(&name, &text).await?,
        RoomsCommand::SendFile { name, path } => {
            use std::io::IsTerminal;
            let mut bar = crate::Progress::new(std::io::stderr().is_terminal());
            let started = std::time::Instant::now();
            client.set_notices(crate::transfer_notice);
            client.room_send_file(&name, &path, &mut |done, total| bar.update(done, total)).await?;
            bar.finish();
            crate::print_line(&format!("sent {} to [{name}]: {}", path.display(), bar.summary(started.elapsed())));
        }
        RoomsCommand::Audio { name, state } => client.room_toggle(&name, Media::Audio, state == OnOff::On).await?,
        RoomsCommand::Video { name, state } => client.room_toggle(&name, Media::Video, state == OnOff::On).await?,
    }
    Ok(())
}
