//! View-state tests: keys and updates in, a rendered 80x24 `TestBackend` buffer out.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::PathBuf;

use ratatui::Terminal;
use ratatui::backend::TestBackend;
use ratatui::crossterm::event::{KeyCode, KeyEvent, KeyModifiers};

use super::app::{Action, App, Command, ContactInit, ConvKind, LineKind, RoomCommand, Update, parse_command};
use super::ui::{self, wrap};
use super::worker::split_room_line;
use crate::engine::Event;

fn render(app: &App, w: u16, h: u16) -> Vec<String> {
    let mut t = Terminal::new(TestBackend::new(w, h)).unwrap();
    t.draw(|f| ui::draw(f, app)).unwrap();
    let buf = t.backend().buffer().clone();
    (0..h).map(|y| (0..w).map(|x| buf[(x, y)].symbol().to_string()).collect::<String>()).collect()
}

fn screen(app: &App) -> String {
    render(app, 80, 24).join("\n")
}

fn key(c: KeyCode) -> KeyEvent {
    KeyEvent::new(c, KeyModifiers::NONE)
}

fn type_line(app: &mut App, text: &str) -> Vec<Action> {
    for c in text.chars() {
        assert!(app.handle_key(key(KeyCode::Char(c))).is_empty());
    }
    app.handle_key(key(KeyCode::Enter))
}

fn app_with_contacts() -> App {
    let mut app = App::new("alice", "127.0.0.1:8443", "X25519MLKEM768");
    app.apply(Update::Ready {
        contacts: vec![
            ContactInit {
                name: "bob".into(),
                verified: false,
                history: vec!["bob: hi alice".into(), "alice: hi bob".into()],
            },
            ContactInit { name: "carol".into(), verified: true, history: vec![] },
        ],
        rooms: vec![],
    });
    app
}

#[test]
fn list_history_and_unread_counts_in_80x24() {
    let mut app = app_with_contacts();
    assert_eq!(app.select(0), Some(Action::ViewLimited { peer: "bob".into() }));
    for text in ["one", "two"] {
        app.apply(Update::Received(Event::Text { from: "carol".into(), text: text.into(), views: None }));
    }
    app.apply(Update::Received(Event::Text { from: "bob".into(), text: "live line".into(), views: None }));
    let rows = render(&app, 80, 24);
    assert_eq!(rows.len(), 24);
    assert!(rows[1].contains("│bob "), "{}", rows[1]);
    assert!(rows[2].contains("│carol (2)"), "{}", rows[2]);
    let s = rows.join("\n");
    assert!(s.contains("bob: hi alice") && s.contains("alice: hi bob") && s.contains("bob: live line"), "{s}");
    assert!(!s.contains("carol: one"), "another conversation's lines are not shown");
    // Switching clears the unread count and shows carol's lines.
    assert_eq!(app.handle_key(key(KeyCode::Tab)), vec![Action::ViewLimited { peer: "carol".into() }]);
    let s = screen(&app);
    assert!(s.contains("carol: one") && s.contains("carol: two"), "{s}");
    assert!(!s.contains("carol (2)"), "{s}");
    assert!(app.handle_key(key(KeyCode::Up)).is_empty(), "bob's limited messages were requested already");
    assert_eq!(app.current().unwrap().name, "bob");
}

#[test]
fn status_bar_shows_server_group_and_verification() {
    let mut app = app_with_contacts();
    app.select(0);
    let rows = render(&app, 80, 24);
    let status = &rows[23];
    assert!(status.contains("alice@127.0.0.1:8443"), "{status}");
    assert!(status.contains("connected"), "{status}");
    assert!(status.contains("X25519MLKEM768"), "{status}");
    assert!(status.contains("bob: unverified"), "{status}");
    app.apply(Update::Verified { peer: "bob".into(), verified: true });
    assert!(render(&app, 80, 24)[23].contains("bob: verified"));
    app.apply(Update::Disconnected("timed out".into()));
    let s = screen(&app);
    assert!(s.lines().last().unwrap().contains("DISCONNECTED"), "{s}");
    assert!(s.contains("disconnected: timed out; reconnecting"), "{s}");
    app.apply(Update::Reconnected);
    let s = screen(&app);
    assert!(!s.lines().last().unwrap().contains("DISCONNECTED"), "{s}");
    assert!(s.contains("reconnected"), "{s}");
}

#[test]
fn help_opens_on_question_mark_and_closes_on_any_key() {
    let mut app = app_with_contacts();
    app.select(0);
    assert!(app.handle_key(key(KeyCode::Char('?'))).is_empty());
    assert!(app.show_help);
    let s = screen(&app);
    assert!(s.contains("Help"), "{s}");
    for cmd in ["/msg NAME TEXT", "/file PATH", "/views N TEXT", "/verify", "/join ROOM", "/quit"] {
        assert!(s.contains(cmd), "help lacks {cmd}:\n{s}");
    }
    app.handle_key(key(KeyCode::Char('x')));
    assert!(!app.show_help);
    assert!(app.input.is_empty(), "the closing key is not typed");
    // On a non-empty line, ? is just a character.
    app.handle_key(key(KeyCode::Char('a')));
    app.handle_key(key(KeyCode::Char('?')));
    assert!(!app.show_help);
    assert_eq!(app.input, "a?");
}

#[test]
fn commands_become_actions() {
    let mut app = app_with_contacts();
    app.select(0);
    assert_eq!(
        type_line(&mut app, "hello there"),
        vec![Action::Send { to: "bob".into(), text: "hello there".into(), views: None }]
    );
    assert_eq!(
        type_line(&mut app, "/views 3 once thrice"),
        vec![Action::Send { to: "bob".into(), text: "once thrice".into(), views: Some(3) }]
    );
    // /msg to someone new opens the conversation and selects it.
    assert_eq!(
        type_line(&mut app, "/msg dave hello from the terminal"),
        vec![
            Action::ViewLimited { peer: "dave".into() },
            Action::Send { to: "dave".into(), text: "hello from the terminal".into(), views: None }
        ]
    );
    assert_eq!(app.current().unwrap().name, "dave");
    assert_eq!(type_line(&mut app, "/verify"), vec![Action::Verify { peer: "dave".into() }]);
    assert_eq!(type_line(&mut app, "/verified"), vec![Action::MarkVerified { peer: "dave".into() }]);
    assert_eq!(
        type_line(&mut app, "/file /tmp/x y.bin"),
        vec![Action::SendFile { to: "dave".into(), path: PathBuf::from("/tmp/x y.bin") }]
    );
    assert_eq!(type_line(&mut app, "/join lobby"), vec![Action::Room(RoomCommand::Join("lobby".into()))]);
    assert_eq!(type_line(&mut app, "/leave"), vec![Action::Room(RoomCommand::Leave(None))]);
    assert_eq!(type_line(&mut app, "/audio on"), vec![Action::Room(RoomCommand::Audio(None, true))]);
    // Bad input is explained, not sent.
    assert!(type_line(&mut app, "/views many text").is_empty());
    assert!(screen(&app).contains("usage: /views N TEXT"));
    assert!(type_line(&mut app, "/bogus").is_empty());
    assert!(screen(&app).contains("unknown command /bogus"));
    assert!(type_line(&mut app, "/quit").is_empty());
    assert!(app.quit);
}

#[test]
fn parse_command_cases() {
    assert_eq!(parse_command("hi"), Ok(Command::Text("hi".into())));
    assert_eq!(parse_command("?"), Ok(Command::Help));
    assert_eq!(parse_command("/msg bob  two words "), Ok(Command::Msg { to: "bob".into(), text: "two words".into() }));
    assert!(parse_command("/msg bob").is_err());
    assert!(parse_command("/views 0 x").is_err());
    assert_eq!(parse_command("/create room1"), Ok(Command::Room(RoomCommand::Create("room1".into()))));
    assert!(parse_command("/join two words").is_err());
    assert_eq!(parse_command("/video off"), Ok(Command::Room(RoomCommand::Video(None, false))));
    assert!(parse_command("/video maybe").is_err());
}

#[test]
fn plain_text_without_a_conversation_is_explained() {
    let mut app = App::new("alice", "srv:1", "X25519MLKEM768");
    assert!(type_line(&mut app, "hello").is_empty());
    let s = screen(&app);
    assert!(s.contains("No conversations yet"), "{s}");
    assert!(s.contains("select a contact first"), "{s}");
}

#[test]
fn received_views_files_and_progress_are_shown() {
    let mut app = app_with_contacts();
    app.select(0);
    app.apply(Update::Received(Event::Text { from: "bob".into(), text: "secret".into(), views: Some((1, 3)) }));
    app.apply(Update::Received(Event::File { from: "bob".into(), path: PathBuf::from("/dl/cat.jpg"), size: 1234 }));
    app.apply(Update::Limited { peer: "bob".into(), limited: vec![("bob: older secret".into(), 2, 2)] });
    app.apply(Update::Sent { to: "bob".into(), line: "alice: twice".into(), views: Some(2) });
    app.apply(Update::Progress { name: "movie.mkv".into(), done: 512 << 10, total: 1 << 20 });
    let s = screen(&app);
    assert!(s.contains("bob: secret [view 1/3]"), "{s}");
    assert!(s.contains("bob sent file /dl/cat.jpg (1234 bytes)"), "{s}");
    assert!(s.contains("bob: older secret [view 2/2]"), "{s}");
    assert!(s.contains("alice: twice [2 views]"), "{s}");
    assert!(s.contains("sending movie.mkv  50% 0.5/1.0 MiB"), "{s}");
    assert!(s.contains("X25519MLKEM768"), "the status line stays while sending:\n{s}");
    // A second file while one is being sent is refused.
    assert!(type_line(&mut app, "/file other.bin").is_empty());
    app.apply(Update::TransferDone);
    assert!(!screen(&app).contains("sending movie.mkv"));
}

#[test]
fn control_sequences_in_messages_are_neutralised() {
    let mut app = app_with_contacts();
    app.select(0);
    app.apply(Update::Received(Event::Text { from: "bob".into(), text: "a\u{1b}[2Jb\u{7}c\nd".into(), views: None }));
    let s = screen(&app);
    assert!(!s.contains('\u{1b}') && !s.contains('\u{7}'), "{s:?}");
    assert!(s.contains("bob: a\u{fffd}[2Jb\u{fffd}c d"), "{s}");
}

#[test]
fn long_lines_wrap_and_small_or_large_terminals_render() {
    assert_eq!(wrap("hello world", 5), vec!["hello", "world"]);
    assert_eq!(wrap("abcdefgh", 3), vec!["abc", "def", "gh"]);
    assert_eq!(wrap("", 4), vec![""]);
    let mut app = app_with_contacts();
    app.select(0);
    let long = "word ".repeat(60);
    app.apply(Update::Received(Event::Text { from: "bob".into(), text: long, views: None }));
    for (w, h) in [(80, 24), (20, 6), (200, 60), (1, 1)] {
        let rows = render(&app, w, h);
        assert_eq!(rows.len(), usize::from(h));
    }
    // With more lines than fit, the newest is at the bottom of the history pane in 80x24.
    for i in 0..30 {
        app.apply(Update::Received(Event::Text { from: "bob".into(), text: format!("filler {i}"), views: None }));
    }
    app.apply(Update::Received(Event::Text { from: "bob".into(), text: "the newest".into(), views: None }));
    let rows = render(&app, 80, 24);
    assert!(rows[18].contains("bob: the newest"), "{}", rows[18]);
}

#[test]
fn typing_editing_and_paste() {
    let mut app = app_with_contacts();
    app.select(0);
    for c in "helo".chars() {
        app.handle_key(key(KeyCode::Char(c)));
    }
    app.handle_key(key(KeyCode::Backspace));
    app.paste("lo\nthere");
    assert_eq!(app.input, "hello there");
    assert!(screen(&app).contains("│hello there"));
    app.handle_key(key(KeyCode::Esc));
    assert!(app.input.is_empty());
    app.handle_key(KeyEvent::new(KeyCode::Char('c'), KeyModifiers::CONTROL));
    assert!(app.quit);
}

fn app_with_room() -> App {
    let mut app = App::new("alice", "127.0.0.1:8443", "X25519MLKEM768");
    app.apply(Update::Ready {
        contacts: vec![ContactInit { name: "bob".into(), verified: false, history: vec![] }],
        rooms: vec!["lounge".into()],
    });
    app
}

#[test]
fn rooms_from_start_are_listed_and_room_lines_render() {
    let mut app = app_with_room();
    assert_eq!(app.convs.len(), 2);
    assert_eq!(app.convs[1].kind, ConvKind::Room);
    // A room line while the contact is selected counts as unread.
    app.select(0);
    for line in ["[lounge] * bob joined", "[lounge] bob: hello room"] {
        let (room, text) = split_room_line(line).unwrap();
        app.apply(Update::RoomLine { room: room.into(), kind: LineKind::Incoming, text: text.into() });
    }
    let rows = render(&app, 80, 24);
    assert!(rows[2].contains("│#lounge (2)"), "{}", rows[2]);
    assert!(app.handle_key(key(KeyCode::Tab)).is_empty(), "no limited-view request for a room");
    let s = screen(&app);
    assert!(s.contains(" #lounge "), "{s}");
    assert!(s.contains("* bob joined") && s.contains("bob: hello room"), "{s}");
    assert!(s.contains("Message #lounge"), "{s}");
    assert!(!s.contains("#lounge (2)"), "{s}");
    // Our own message, echoed by the worker after the send.
    app.apply(Update::RoomLine { room: "lounge".into(), kind: LineKind::Outgoing, text: "alice: hi all".into() });
    assert!(screen(&app).contains("alice: hi all"));
    assert_eq!(split_room_line("no prefix"), None);
    assert_eq!(split_room_line("[a b] x: y"), Some(("a b", "x: y")));
}

#[test]
fn room_commands_and_text_in_a_room() {
    let mut app = app_with_room();
    assert_eq!(type_line(&mut app, "/join lounge-x"), vec![Action::Room(RoomCommand::Join("lounge-x".into()))]);
    assert_eq!(type_line(&mut app, "/create newroom"), vec![Action::Room(RoomCommand::Create("newroom".into()))]);
    // With a contact selected, /leave and /audio carry no room.
    app.select(0);
    assert_eq!(type_line(&mut app, "/leave"), vec![Action::Room(RoomCommand::Leave(None))]);
    assert_eq!(type_line(&mut app, "/video on"), vec![Action::Room(RoomCommand::Video(None, true))]);
    // The worker opened a room: it is added and selected; text goes to it.
    app.apply(Update::RoomOpened { room: "lounge-x".into() });
    app.apply(Update::Info { conv: None, text: "joined room lounge-x".into() });
    assert_eq!(app.current().map(|c| (c.name.as_str(), c.kind)), Some(("lounge-x", ConvKind::Room)));
    assert!(screen(&app).contains("joined room lounge-x"));
    assert_eq!(
        type_line(&mut app, "hello everyone"),
        vec![Action::RoomSend { room: "lounge-x".into(), text: "hello everyone".into() }]
    );
    assert_eq!(type_line(&mut app, "/audio on"), vec![Action::Room(RoomCommand::Audio(Some("lounge-x".into()), true))]);
    assert_eq!(
        type_line(&mut app, "/video off"),
        vec![Action::Room(RoomCommand::Video(Some("lounge-x".into()), false))]
    );
    assert_eq!(
        type_line(&mut app, "/invite carol"),
        vec![Action::Room(RoomCommand::Invite(Some("lounge-x".into()), "carol".into()))]
    );
    assert_eq!(type_line(&mut app, "/leave"), vec![Action::Room(RoomCommand::Leave(Some("lounge-x".into())))]);
    // Limited views and contact commands are refused in a room.
    assert!(type_line(&mut app, "/views 2 secret").is_empty());
    let s = screen(&app);
    assert!(s.contains("limited-view messages (/views)"), "{s}");
    assert!(type_line(&mut app, "/verify").is_empty());
    // An error line for the room shows in it.
    app.apply(Update::RoomLine { room: "lounge-x".into(), kind: LineKind::Error, text: "not sent: boom".into() });
    assert!(screen(&app).contains("not sent: boom"));
    // Leaving removes the conversation; the selection stays valid.
    app.apply(Update::RoomLeft { room: "lounge-x".into() });
    assert_eq!(app.convs.len(), 2);
    assert!(app.current().is_some());
    assert!(app.convs.iter().all(|c| c.name != "lounge-x"));
}
