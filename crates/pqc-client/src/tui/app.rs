//! The view state of the terminal UI: conversations, input line, status.
//!
//! Pure: no I/O, no clock, no terminal. Keys go in through
//! [`App::handle_key`] (which may return an [`Action`] for the engine
//! worker), results come back through [`App::apply`] (an [`Update`] from the
//! worker); [`super::ui::draw`] renders the state. Unit tests drive it
//! directly and render into a `TestBackend`.

use std::path::PathBuf;

use ratatui::crossterm::event::{KeyCode, KeyEvent, KeyEventKind, KeyModifiers};

use crate::engine::Event;

/// Most lines kept per conversation in memory (the profile keeps them all).
pub const MAX_LINES: usize = 1000;
/// History lines loaded from the profile per contact at start.
pub const HISTORY_LOAD: usize = 200;

/// What kind of conversation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConvKind {
    /// A one-to-one conversation with a contact.
    Contact,
    /// A room (group conversation).
    Room,
}

/// How a line is shown.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LineKind {
    /// A message from someone else.
    Incoming,
    /// A message we sent.
    Outgoing,
    /// Information from the client (safety numbers, file saved, …).
    Info,
    /// Something went wrong.
    Error,
}

/// One line of a conversation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChatLine {
    /// How it is shown.
    pub kind: LineKind,
    /// The text.
    pub text: String,
}

/// One entry of the conversation list.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Conversation {
    /// Contact or room name.
    pub name: String,
    /// Contact or room.
    pub kind: ConvKind,
    /// The lines shown (history, then live).
    pub lines: Vec<ChatLine>,
    /// Messages arrived while another conversation was selected.
    pub unread: usize,
    /// Whether the kept limited-view messages were requested already.
    pub loaded: bool,
    /// Whether the user has verified the contact's safety number (for its current key).
    pub verified: bool,
    /// Lines scrolled back from the bottom.
    pub scroll: usize,
}

impl Conversation {
    fn new(name: &str, kind: ConvKind) -> Self {
        Self { name: name.to_string(), kind, lines: Vec::new(), unread: 0, loaded: false, verified: false, scroll: 0 }
    }

    fn push(&mut self, kind: LineKind, text: String) {
        self.lines.push(ChatLine { kind, text });
        if self.lines.len() > MAX_LINES {
            let extra = self.lines.len() - MAX_LINES;
            self.lines.drain(..extra);
        }
    }
}

/// The state of the server connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ConnState {
    /// Logged in.
    Connected,
    /// The connection was lost.
    Disconnected(String),
}

/// A file upload in progress.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Transfer {
    /// The file name.
    pub name: String,
    /// Bytes done.
    pub done: u64,
    /// Bytes in all.
    pub total: u64,
}

impl Transfer {
    /// Progress from 0.0 to 1.0.
    pub fn ratio(&self) -> f64 {
        if self.total == 0 { 1.0 } else { (self.done as f64 / self.total as f64).clamp(0.0, 1.0) }
    }
}

/// Room commands, parsed; the worker runs them through the engine's rooms.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RoomCommand {
    /// `/join ROOM`.
    Join(String),
    /// `/leave` (the selected room).
    Leave(Option<String>),
    /// `/create ROOM`.
    Create(String),
    /// `/audio on|off` in the selected room (`None` from the parser; the
    /// selected room is filled in by the app).
    Audio(Option<String>, bool),
    /// `/video on|off` in the selected room (like [`RoomCommand::Audio`]).
    Video(Option<String>, bool),
    /// `/invite NAME`: add NAME to the selected room (like [`RoomCommand::Audio`]).
    Invite(Option<String>, String),
}

/// A parsed input line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    /// Plain text for the selected conversation.
    Text(String),
    /// `/msg NAME TEXT`.
    Msg {
        /// Recipient.
        to: String,
        /// Text.
        text: String,
    },
    /// `/file PATH`.
    File(PathBuf),
    /// `/views N TEXT`.
    Views {
        /// Views allowed.
        n: u32,
        /// Text.
        text: String,
    },
    /// `/verify`: show the safety number.
    Verify,
    /// `/verified`: mark the selected contact verified.
    Verified,
    /// `/help` or `?`.
    Help,
    /// `/quit`.
    Quit,
    /// A room command.
    Room(RoomCommand),
}

/// The help text (one entry per line).
pub const HELP: &[(&str, &str)] = &[
    ("TEXT", "send to the selected conversation"),
    ("/msg NAME TEXT", "send to NAME (opens the conversation)"),
    ("/file PATH", "send a file to the selected contact or room"),
    ("/views N TEXT", "message that can be viewed N times"),
    ("/verify", "show the safety number of the contact"),
    ("/verified", "mark the contact verified (after comparing)"),
    ("/join ROOM", "join a room"),
    ("/create ROOM", "create a room"),
    ("/invite NAME", "add NAME to the selected room"),
    ("/leave", "leave the selected room"),
    ("/audio on|off", "audio in the selected room"),
    ("/video on|off", "video in the selected room"),
    ("/quit", "leave (also Ctrl-C)"),
    ("Tab, Up/Down", "switch conversation"),
    ("PgUp/PgDn", "scroll the conversation"),
    ("?", "this help (on an empty input line)"),
];

fn on_off(arg: &str, what: &str) -> Result<bool, String> {
    match arg {
        "on" => Ok(true),
        "off" => Ok(false),
        _ => Err(format!("usage: /{what} on|off")),
    }
}

/// Parses one input line. Errors are usage messages for the user.
pub fn parse_command(line: &str) -> Result<Command, String> {
    let line = line.trim();
    if line == "?" {
        return Ok(Command::Help);
    }
    let Some(rest) = line.strip_prefix('/') else { return Ok(Command::Text(line.to_string())) };
    let (cmd, args) = match rest.split_once(char::is_whitespace) {
        Some((c, a)) => (c, a.trim()),
        None => (rest, ""),
    };
    let one_word = |usage: &str| -> Result<String, String> {
        if args.is_empty() || args.contains(char::is_whitespace) {
            Err(usage.to_string())
        } else {
            Ok(args.to_string())
        }
    };
    match cmd {
        "msg" | "m" => match args.split_once(char::is_whitespace) {
            Some((to, text)) if !text.trim().is_empty() => {
                Ok(Command::Msg { to: to.to_string(), text: text.trim().to_string() })
            }
            _ => Err("usage: /msg NAME TEXT".into()),
        },
        "file" => {
            if args.is_empty() {
                Err("usage: /file PATH".into())
            } else {
                Ok(Command::File(PathBuf::from(args)))
            }
        }
        "views" => match args.split_once(char::is_whitespace) {
            Some((n, text)) if !text.trim().is_empty() => match n.parse::<u32>() {
                Ok(n) if n >= 1 => Ok(Command::Views { n, text: text.trim().to_string() }),
                _ => Err("usage: /views N TEXT (N is a number of views, at least 1)".into()),
            },
            _ => Err("usage: /views N TEXT".into()),
        },
        "verify" => Ok(Command::Verify),
        "verified" => Ok(Command::Verified),
        "help" => Ok(Command::Help),
        "quit" | "q" | "exit" => Ok(Command::Quit),
        "join" => Ok(Command::Room(RoomCommand::Join(one_word("usage: /join ROOM")?))),
        "create" => Ok(Command::Room(RoomCommand::Create(one_word("usage: /create ROOM")?))),
        "leave" => Ok(Command::Room(RoomCommand::Leave(None))),
        "invite" => Ok(Command::Room(RoomCommand::Invite(None, one_word("usage: /invite NAME")?))),
        "audio" => Ok(Command::Room(RoomCommand::Audio(None, on_off(args, "audio")?))),
        "video" => Ok(Command::Room(RoomCommand::Video(None, on_off(args, "video")?))),
        other => Err(format!("unknown command /{other}; type ? for help")),
    }
}

/// What the UI asks the engine worker to do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Send a text message.
    Send {
        /// Recipient.
        to: String,
        /// Text.
        text: String,
        /// Limited views.
        views: Option<u32>,
    },
    /// Send a file.
    SendFile {
        /// Recipient.
        to: String,
        /// The file.
        path: PathBuf,
    },
    /// Send a file to a room (encrypted once, key shared through the group).
    RoomSendFile {
        /// Room name.
        room: String,
        /// The file.
        path: PathBuf,
    },
    /// Compute and show the safety number.
    Verify {
        /// Contact.
        peer: String,
    },
    /// Record that the user compared the safety number.
    MarkVerified {
        /// Contact.
        peer: String,
    },
    /// Show the limited-view messages kept from a contact (counts a view each).
    ViewLimited {
        /// Contact.
        peer: String,
    },
    /// Send a text message to a room.
    RoomSend {
        /// Room name.
        room: String,
        /// Text.
        text: String,
    },
    /// A room command.
    Room(RoomCommand),
}

/// What the engine worker reports back.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Update {
    /// Logged in: the known contacts, with their history, and the rooms.
    Ready {
        /// One entry per contact.
        contacts: Vec<ContactInit>,
        /// The rooms this profile belongs to.
        rooms: Vec<String>,
    },
    /// Something was received.
    Received(Event),
    /// A message was stored by the server.
    Sent {
        /// Recipient.
        to: String,
        /// The history line (`me: text`).
        line: String,
        /// Limited views.
        views: Option<u32>,
    },
    /// Upload progress.
    Progress {
        /// File name.
        name: String,
        /// Bytes done.
        done: u64,
        /// Bytes in all.
        total: u64,
    },
    /// The upload ended (successfully or not).
    TransferDone,
    /// The limited-view messages kept from a contact (line, this view, max views).
    Limited {
        /// Contact.
        peer: String,
        /// `(line, this view, max views)`.
        limited: Vec<(String, u32, u32)>,
    },
    /// The verification state of a contact.
    Verified {
        /// Contact.
        peer: String,
        /// Verified for the current key.
        verified: bool,
    },
    /// A line of information in a conversation (or the selected one).
    Info {
        /// The conversation, if any.
        conv: Option<String>,
        /// The text.
        text: String,
    },
    /// An error for the user.
    Error {
        /// The conversation, if any.
        conv: Option<String>,
        /// The text.
        text: String,
    },
    /// A room was created or joined: its conversation is added and selected.
    RoomOpened {
        /// Room name.
        room: String,
    },
    /// The room was left: its conversation is removed.
    RoomLeft {
        /// Room name.
        room: String,
    },
    /// A line in a room conversation (a message, an event, our own message, an error).
    RoomLine {
        /// Room name.
        room: String,
        /// How it is shown.
        kind: LineKind,
        /// The text (without the `[NAME] ` prefix).
        text: String,
    },
    /// The connection is gone (a new one is being made).
    Disconnected(String),
    /// A new connection replaced the lost one.
    Reconnected,
}

/// A contact as known at start.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ContactInit {
    /// Name.
    pub name: String,
    /// Verified for the current key.
    pub verified: bool,
    /// History lines from the profile, oldest first.
    pub history: Vec<String>,
}

/// The whole view state.
#[derive(Debug, Clone)]
pub struct App {
    /// Our user name.
    pub me: String,
    /// Server address.
    pub server: String,
    /// Connection state.
    pub conn: ConnState,
    /// Negotiated TLS key-exchange group.
    pub group: String,
    /// Conversations, in list order.
    pub convs: Vec<Conversation>,
    /// Index of the selected conversation.
    pub selected: usize,
    /// The input line.
    pub input: String,
    /// Whether the help overlay is shown.
    pub show_help: bool,
    /// A file upload in progress.
    pub transfer: Option<Transfer>,
    /// The last notice (shown in the status area when no conversation takes it).
    pub notice: Option<ChatLine>,
    /// Set when the user asked to quit.
    pub quit: bool,
}

impl App {
    /// A fresh state.
    pub fn new(me: &str, server: &str, group: &str) -> Self {
        Self {
            me: me.to_string(),
            server: server.to_string(),
            conn: ConnState::Connected,
            group: group.to_string(),
            convs: Vec::new(),
            selected: 0,
            input: String::new(),
            show_help: false,
            transfer: None,
            notice: None,
            quit: false,
        }
    }

    /// The selected conversation.
    pub fn current(&self) -> Option<&Conversation> {
        self.convs.get(self.selected)
    }

    fn current_mut(&mut self) -> Option<&mut Conversation> {
        self.convs.get_mut(self.selected)
    }

    fn index_of(&self, name: &str, kind: ConvKind) -> Option<usize> {
        self.convs.iter().position(|c| c.name == name && c.kind == kind)
    }

    /// The conversation with `name`, added to the list if new.
    fn conv(&mut self, name: &str, kind: ConvKind) -> usize {
        match self.index_of(name, kind) {
            Some(i) => i,
            None => {
                self.convs.push(Conversation::new(name, kind));
                self.convs.len() - 1
            }
        }
    }

    /// Selects conversation `i`; the first time, returns the request to show
    /// the limited-view messages kept from the contact.
    pub fn select(&mut self, i: usize) -> Option<Action> {
        let conv = self.convs.get_mut(i)?;
        self.selected = i;
        conv.unread = 0;
        if !conv.loaded && conv.kind == ConvKind::Contact {
            conv.loaded = true;
            return Some(Action::ViewLimited { peer: conv.name.clone() });
        }
        None
    }

    fn select_next(&mut self, forward: bool) -> Option<Action> {
        let n = self.convs.len();
        if n == 0 {
            return None;
        }
        let i = if forward { (self.selected + 1) % n } else { (self.selected + n - 1) % n };
        self.select(i)
    }

    fn note(&mut self, conv: Option<&str>, kind: LineKind, text: String) {
        let target = match conv {
            Some(name) => Some(self.conv(name, ConvKind::Contact)),
            None if self.convs.is_empty() => None,
            None => Some(self.selected),
        };
        if let Some(c) = target.and_then(|i| self.convs.get_mut(i)) {
            c.push(kind, text.clone());
        }
        self.notice = Some(ChatLine { kind, text });
    }

    /// Handles a key press; returns what the engine should do, in order.
    pub fn handle_key(&mut self, key: KeyEvent) -> Vec<Action> {
        self.key(key).into_iter().flatten().collect()
    }

    fn key(&mut self, key: KeyEvent) -> Option<Vec<Action>> {
        if key.kind == KeyEventKind::Release {
            return None;
        }
        let ctrl = key.modifiers.contains(KeyModifiers::CONTROL);
        if self.show_help {
            // Any key closes the help (Ctrl-C still quits).
            self.show_help = false;
            if !(ctrl && key.code == KeyCode::Char('c')) {
                return None;
            }
        }
        match key.code {
            KeyCode::Char('c') | KeyCode::Char('d') if ctrl => {
                self.quit = true;
                None
            }
            KeyCode::Char('u') if ctrl => {
                self.input.clear();
                None
            }
            KeyCode::Char('?') if self.input.is_empty() => {
                self.show_help = true;
                None
            }
            KeyCode::Char(c) => {
                self.input.push(c);
                None
            }
            KeyCode::Backspace => {
                self.input.pop();
                None
            }
            KeyCode::Esc => {
                self.input.clear();
                None
            }
            KeyCode::Tab | KeyCode::Down => self.select_next(true).map(|a| vec![a]),
            KeyCode::BackTab | KeyCode::Up => self.select_next(false).map(|a| vec![a]),
            KeyCode::PageUp => {
                if let Some(c) = self.current_mut() {
                    c.scroll = c.scroll.saturating_add(10).min(c.lines.len());
                }
                None
            }
            KeyCode::PageDown => {
                if let Some(c) = self.current_mut() {
                    c.scroll = c.scroll.saturating_sub(10);
                }
                None
            }
            KeyCode::Enter => {
                let line = std::mem::take(&mut self.input);
                if line.trim().is_empty() {
                    return None;
                }
                Some(self.submit(&line))
            }
            _ => None,
        }
    }

    /// Pasted text goes into the input line (newlines become spaces).
    pub fn paste(&mut self, text: &str) {
        self.input.extend(text.chars().map(|c| if c == '\n' || c == '\r' { ' ' } else { c }));
    }

    fn selected_contact(&mut self, what: &str) -> Option<String> {
        match self.current() {
            Some(c) if c.kind == ConvKind::Contact => Some(c.name.clone()),
            _ => {
                self.note(
                    None,
                    LineKind::Error,
                    format!("select a contact first (Tab), or use /msg NAME TEXT to start one; {what}"),
                );
                None
            }
        }
    }

    /// The name of the selected conversation if it is a room.
    fn selected_room(&self) -> Option<String> {
        self.current().filter(|c| c.kind == ConvKind::Room).map(|c| c.name.clone())
    }

    /// Runs one input line; returns what the engine should do, in order.
    pub fn submit(&mut self, line: &str) -> Vec<Action> {
        self.run_line(line).into_iter().flatten().collect()
    }

    fn run_line(&mut self, line: &str) -> Option<Vec<Action>> {
        let cmd = match parse_command(line) {
            Ok(c) => c,
            Err(e) => {
                self.note(None, LineKind::Error, e);
                return None;
            }
        };
        match cmd {
            Command::Help => {
                self.show_help = true;
                None
            }
            Command::Quit => {
                self.quit = true;
                None
            }
            Command::Text(text) => {
                if let Some(room) = self.selected_room() {
                    return Some(vec![Action::RoomSend { room, text }]);
                }
                let to = self.selected_contact("nothing was sent")?;
                Some(vec![Action::Send { to, text, views: None }])
            }
            Command::Views { n, text } => {
                if self.selected_room().is_some() {
                    let text = "limited-view messages (/views) are for contacts, not rooms; nothing was sent";
                    self.note(None, LineKind::Error, text.into());
                    return None;
                }
                let to = self.selected_contact("nothing was sent")?;
                Some(vec![Action::Send { to, text, views: Some(n) }])
            }
            Command::Msg { to, text } => {
                let i = self.conv(&to, ConvKind::Contact);
                let mut actions: Vec<Action> = self.select(i).into_iter().collect();
                actions.push(Action::Send { to, text, views: None });
                Some(actions)
            }
            Command::File(path) => {
                let room = self.selected_room();
                let to = if room.is_some() { String::new() } else { self.selected_contact("no file was sent")? };
                if self.transfer.is_some() {
                    self.note(None, LineKind::Error, "a file is being sent already; wait for it to finish".into());
                    return None;
                }
                Some(vec![match room {
                    Some(room) => Action::RoomSendFile { room, path },
                    None => Action::SendFile { to, path },
                }])
            }
            Command::Verify => {
                let peer = self.selected_contact("nothing to verify")?;
                Some(vec![Action::Verify { peer }])
            }
            Command::Verified => {
                let peer = self.selected_contact("nothing to mark")?;
                Some(vec![Action::MarkVerified { peer }])
            }
            Command::Room(RoomCommand::Leave(_)) => Some(vec![Action::Room(RoomCommand::Leave(self.selected_room()))]),
            Command::Room(RoomCommand::Audio(_, on)) => {
                Some(vec![Action::Room(RoomCommand::Audio(self.selected_room(), on))])
            }
            Command::Room(RoomCommand::Video(_, on)) => {
                Some(vec![Action::Room(RoomCommand::Video(self.selected_room(), on))])
            }
            Command::Room(RoomCommand::Invite(_, user)) => {
                Some(vec![Action::Room(RoomCommand::Invite(self.selected_room(), user))])
            }
            Command::Room(r) => Some(vec![Action::Room(r)]),
        }
    }

    /// Applies a report from the engine worker.
    pub fn apply(&mut self, update: Update) {
        match update {
            Update::Ready { contacts, rooms } => {
                let me = format!("{}: ", self.me);
                let me_file = format!("{} sent file ", self.me);
                for contact in contacts {
                    let i = self.conv(&contact.name, ConvKind::Contact);
                    if let Some(c) = self.convs.get_mut(i) {
                        c.verified = contact.verified;
                        let mut lines: Vec<ChatLine> = contact
                            .history
                            .into_iter()
                            .map(|text| {
                                let kind = if text.starts_with(&me) || text.starts_with(&me_file) {
                                    LineKind::Outgoing
                                } else {
                                    LineKind::Incoming
                                };
                                ChatLine { kind, text }
                            })
                            .collect();
                        lines.append(&mut c.lines);
                        c.lines = lines;
                    }
                }
                for room in rooms {
                    self.conv(&room, ConvKind::Room);
                }
            }
            Update::Received(ev) => self.received(ev),
            Update::Sent { to, line, views } => {
                let i = self.conv(&to, ConvKind::Contact);
                if let Some(c) = self.convs.get_mut(i) {
                    let text = match views {
                        Some(n) => format!("{line} [{n} view{}]", if n == 1 { "" } else { "s" }),
                        None => line,
                    };
                    c.push(LineKind::Outgoing, text);
                    c.scroll = 0;
                }
            }
            Update::Progress { name, done, total } => self.transfer = Some(Transfer { name, done, total }),
            Update::TransferDone => self.transfer = None,
            Update::Limited { peer, limited } => {
                let i = self.conv(&peer, ConvKind::Contact);
                if let Some(c) = self.convs.get_mut(i) {
                    for (text, v, n) in limited {
                        c.push(LineKind::Incoming, format!("{text} [view {v}/{n}]"));
                    }
                }
            }
            Update::Verified { peer, verified } => {
                let i = self.conv(&peer, ConvKind::Contact);
                if let Some(c) = self.convs.get_mut(i) {
                    c.verified = verified;
                }
            }
            Update::Info { conv, text } => self.note(conv.as_deref(), LineKind::Info, text),
            Update::Error { conv, text } => self.note(conv.as_deref(), LineKind::Error, text),
            Update::RoomOpened { room } => {
                let i = self.conv(&room, ConvKind::Room);
                self.select(i);
            }
            Update::RoomLeft { room } => {
                if let Some(i) = self.index_of(&room, ConvKind::Room) {
                    self.convs.remove(i);
                    if self.selected > i || self.selected >= self.convs.len() {
                        self.selected = self.selected.saturating_sub(1);
                    }
                }
            }
            Update::RoomLine { room, kind, text } => {
                let i = self.conv(&room, ConvKind::Room);
                let selected = i == self.selected;
                if let Some(c) = self.convs.get_mut(i) {
                    c.push(kind, text.clone());
                    if kind == LineKind::Outgoing {
                        c.scroll = 0;
                    } else if !selected && kind == LineKind::Incoming {
                        c.unread += 1;
                    }
                }
                if kind == LineKind::Error {
                    self.notice = Some(ChatLine { kind, text });
                }
            }
            Update::Disconnected(why) => {
                self.conn = ConnState::Disconnected(why.clone());
                self.note(None, LineKind::Error, format!("disconnected: {why}; reconnecting"));
            }
            Update::Reconnected => {
                self.conn = ConnState::Connected;
                self.note(None, LineKind::Info, "reconnected".to_string());
            }
        }
    }

    fn received(&mut self, ev: Event) {
        let (from, kind, text) = match ev {
            Event::Text { from, text, views: None } => {
                let line = format!("{from}: {text}");
                (from, LineKind::Incoming, line)
            }
            Event::Text { from, text, views: Some((v, n)) } => {
                let line = format!("{from}: {text} [view {v}/{n}]");
                (from, LineKind::Incoming, line)
            }
            Event::File { from, path, size } => {
                let line = format!("{from} sent file {} ({size} bytes)", path.display());
                (from, LineKind::Incoming, line)
            }
            Event::Warning(w) => {
                self.note(None, LineKind::Error, w);
                return;
            }
        };
        let i = self.conv(&from, ConvKind::Contact);
        let selected = i == self.selected;
        if let Some(c) = self.convs.get_mut(i) {
            c.push(kind, text);
            if !selected {
                c.unread += 1;
            }
        }
    }
}
