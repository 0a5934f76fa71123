//! Rendering of [`App`] with ratatui: conversation list, history, input
//! line, status bar (with the upload progress), help overlay.
//!
//! Everything shown that came from the network or the profile goes through
//! [`clean`] first, so a message cannot smuggle terminal control sequences.

use ratatui::Frame;
use ratatui::layout::{Constraint, Layout, Position, Rect};
use ratatui::style::{Color, Modifier, Style};
use ratatui::text::{Line, Span};
use ratatui::widgets::{Block, Borders, Clear, LineGauge, List, ListItem, ListState, Paragraph};

use super::app::{App, ConnState, ConvKind, HELP, LineKind};

/// Width of the conversation list (borders included).
const LIST_WIDTH: u16 = 22;

/// Replaces control characters (escape sequences, newlines, tabs) with safe ones.
pub fn clean(text: &str) -> String {
    text.chars()
        .map(|c| match c {
            '\t' | '\n' | '\r' => ' ',
            c if c.is_control() => '\u{fffd}',
            c => c,
        })
        .collect()
}

fn char_width(c: char) -> usize {
    let mut buf = [0u8; 4];
    Span::raw(&*c.encode_utf8(&mut buf)).width()
}

/// Splits `text` into rows of at most `width` columns, breaking after
/// spaces where it can and inside words where it must.
pub fn wrap(text: &str, width: usize) -> Vec<String> {
    let width = width.max(1);
    let mut rows = Vec::new();
    let mut row: Vec<(char, usize)> = Vec::new();
    let mut used = 0;
    for c in clean(text).chars() {
        if c == ' ' && row.is_empty() && !rows.is_empty() {
            continue;
        }
        let w = char_width(c);
        if used + w > width && !row.is_empty() {
            // Break after the last space of the row, unless that leaves the row nearly empty.
            let cut = match row.iter().rposition(|(ch, _)| *ch == ' ') {
                Some(i) if i + 1 > row.len() / 2 => i + 1,
                _ => row.len(),
            };
            let rest = row.split_off(cut);
            rows.push(row.iter().map(|(ch, _)| *ch).collect::<String>().trim_end().to_string());
            row = rest;
            used = row.iter().map(|(_, w)| w).sum();
            if c == ' ' && row.is_empty() {
                continue;
            }
        }
        row.push((c, w));
        used += w;
    }
    rows.push(row.iter().map(|(ch, _)| *ch).collect());
    rows
}

fn line_style(kind: LineKind) -> Style {
    match kind {
        LineKind::Incoming => Style::default(),
        LineKind::Outgoing => Style::default().fg(Color::Cyan),
        LineKind::Info => Style::default().fg(Color::Yellow),
        LineKind::Error => Style::default().fg(Color::Red),
    }
}

/// Draws the whole screen.
pub fn draw(frame: &mut Frame, app: &App) {
    let status_rows = if app.transfer.is_some() { 2 } else { 1 };
    let [main, input, status] =
        Layout::vertical([Constraint::Min(3), Constraint::Length(3), Constraint::Length(status_rows)])
            .areas(frame.area());
    let list_width = LIST_WIDTH.min(main.width / 3);
    let [list, history] = Layout::horizontal([Constraint::Length(list_width), Constraint::Min(10)]).areas(main);
    draw_list(frame, app, list);
    draw_history(frame, app, history);
    draw_input(frame, app, input);
    draw_status(frame, app, status);
    if app.show_help {
        draw_help(frame, frame.area());
    }
}

fn draw_list(frame: &mut Frame, app: &App, area: Rect) {
    let inner_width = usize::from(area.width.saturating_sub(2));
    let items: Vec<ListItem> = app
        .convs
        .iter()
        .map(|c| {
            let prefix = if c.kind == ConvKind::Room { "#" } else { "" };
            let unread = if c.unread > 0 { format!(" ({})", c.unread) } else { String::new() };
            let name_room = inner_width.saturating_sub(unread.chars().count() + prefix.len()).max(1);
            let name: String = clean(&c.name).chars().take(name_room).collect();
            let mut spans = vec![Span::raw(format!("{prefix}{name}"))];
            if c.unread > 0 {
                spans.push(Span::styled(unread, Style::default().fg(Color::Green).add_modifier(Modifier::BOLD)));
            }
            ListItem::new(Line::from(spans))
        })
        .collect();
    let list = List::new(items)
        .block(Block::default().borders(Borders::ALL).title(" Chats "))
        .highlight_style(Style::default().add_modifier(Modifier::REVERSED));
    let mut state = ListState::default();
    if !app.convs.is_empty() {
        state.select(Some(app.selected));
    }
    frame.render_stateful_widget(list, area, &mut state);
}

fn draw_history(frame: &mut Frame, app: &App, area: Rect) {
    let title = match app.current() {
        Some(c) if c.kind == ConvKind::Room => format!(" #{} ", clean(&c.name)),
        Some(c) => format!(" {} ", clean(&c.name)),
        None => " pqc-chat ".to_string(),
    };
    let block = Block::default().borders(Borders::ALL).title(title);
    let inner = block.inner(area);
    frame.render_widget(block, area);
    let width = usize::from(inner.width);
    let height = usize::from(inner.height);
    let mut rows: Vec<Line> = Vec::new();
    match app.current() {
        Some(c) => {
            for l in &c.lines {
                let style = line_style(l.kind);
                rows.extend(wrap(&l.text, width).into_iter().map(|r| Line::styled(r, style)));
            }
            let end = rows.len().saturating_sub(c.scroll.min(rows.len().saturating_sub(height)));
            let start = end.saturating_sub(height);
            rows = rows.drain(start..end).collect();
        }
        None => {
            let mut text =
                vec!["No conversations yet.".to_string(), "Type /msg NAME TEXT to start one, ? for help.".to_string()];
            if let Some(n) = &app.notice {
                text.push(String::new());
                text.push(n.text.clone());
            }
            for t in text {
                let style = match &app.notice {
                    Some(n) if n.text == t => line_style(n.kind),
                    _ => Style::default(),
                };
                rows.extend(wrap(&t, width).into_iter().map(|r| Line::styled(r, style)));
            }
            rows.truncate(height);
        }
    }
    frame.render_widget(Paragraph::new(rows), inner);
}

fn draw_input(frame: &mut Frame, app: &App, area: Rect) {
    let title = match app.current() {
        Some(c) if c.kind == ConvKind::Room => format!(" Message #{} (? for help) ", clean(&c.name)),
        Some(c) => format!(" Message {} (? for help) ", clean(&c.name)),
        None => " /msg NAME TEXT (? for help) ".to_string(),
    };
    let block = Block::default().borders(Borders::ALL).title(title);
    let inner = block.inner(area);
    frame.render_widget(block, area);
    let width = usize::from(inner.width.max(1));
    let text = clean(&app.input);
    // Show the tail of a long input line, leaving a column for the cursor.
    let chars: Vec<char> = text.chars().collect();
    let mut shown = String::new();
    let mut used = 0;
    for c in chars.iter().rev() {
        let w = char_width(*c);
        if used + w + 1 > width {
            break;
        }
        used += w;
        shown.insert(0, *c);
    }
    frame.render_widget(Paragraph::new(shown), inner);
    if !app.show_help {
        let x = inner.x.saturating_add(u16::try_from(used).unwrap_or(u16::MAX)).min(inner.right().saturating_sub(1));
        frame.set_cursor_position(Position::new(x, inner.y));
    }
}

/// The status text: server, connection state, transport group, peer verification.
pub fn status_text(app: &App) -> String {
    let conn = match &app.conn {
        ConnState::Connected => "connected",
        ConnState::Disconnected(_) => "DISCONNECTED",
    };
    let mut s = format!(" {}@{} | {conn} | {}", clean(&app.me), clean(&app.server), clean(&app.group));
    if let Some(c) = app.current().filter(|c| c.kind == ConvKind::Contact) {
        let v = if c.verified { "verified" } else { "unverified" };
        s.push_str(&format!(" | {}: {v}", clean(&c.name)));
    }
    s
}

fn draw_status(frame: &mut Frame, app: &App, area: Rect) {
    let style = Style::default().bg(Color::Blue).fg(Color::White);
    let [line, progress] = Layout::vertical([Constraint::Length(1), Constraint::Min(0)]).areas(area);
    frame.render_widget(Paragraph::new(status_text(app)).style(style), line);
    if let Some(t) = &app.transfer {
        let name: String = clean(&t.name).chars().take(24).collect();
        let mib = |b: u64| b as f64 / 1_048_576.0;
        let gauge = LineGauge::default()
            .ratio(t.ratio())
            .label(format!(
                " sending {name} {:>3}% {:.1}/{:.1} MiB ",
                (t.ratio() * 100.0) as u32,
                mib(t.done),
                mib(t.total)
            ))
            .filled_style(Style::default().fg(Color::Green))
            .unfilled_style(Style::default().fg(Color::DarkGray));
        frame.render_widget(gauge, progress);
    }
}

fn draw_help(frame: &mut Frame, area: Rect) {
    let h = u16::try_from(HELP.len() + 2).unwrap_or(u16::MAX).min(area.height);
    let w = 64u16.min(area.width);
    let popup = Rect { x: area.x + (area.width - w) / 2, y: area.y + (area.height - h) / 2, width: w, height: h };
    let lines: Vec<Line> = HELP
        .iter()
        .map(|(k, v)| {
            Line::from(vec![
                Span::styled(format!(" {k:<16}"), Style::default().add_modifier(Modifier::BOLD)),
                Span::raw(*v),
            ])
        })
        .collect();
    frame.render_widget(Clear, popup);
    frame.render_widget(
        Paragraph::new(lines).block(Block::default().borders(Borders::ALL).title(" Help (any key closes) ")),
        popup,
    );
}
